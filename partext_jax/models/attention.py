"""Attention for both models: one entry point with a swappable implementation, the KV cache and
the cache masks.

Both models call :func:`attention`; ``impl`` selects the implementation: ``"xla"`` (plain jnp,
the reference every kernel is tested against) or ``"pallas"`` (the kernels of
``partext_jax.kernels``; imported on first use).

KV cache. :class:`KVCache` ``(k, v)``, each ``[layers, B, kv_heads, S, head_dim]``
(heads-major), is the one cache type: the causal LM writes a block's rotary-embedded K/V into it
at chosen slots (:meth:`KVCache.write`), speculative decoding moves accepted rows
(:meth:`KVCache.compact`), the denoiser returns the K/V of the rows it ran, and
:class:`partext_jax.parallel.MeshLM` pins it to a mesh. Which slots are valid is not stored: the
attention mask says it. Layers run under a scan over the stacked layer axis, so a layer's K/V
are read with dynamic slices; :func:`cache_attention` reads only the chunks of slots that cover
what the mask lets any query see (:func:`visible_span`), chunk by chunk with an online softmax:
the cost of a decode step follows the valid length, not the allocated ``S``, and the
heads-major layout is what the attention contractions take (``[S, D]`` rows per KV head), so no
transposed copy of the cache is made
(``docs/algorithms.md#autoregressive-sampling-and-logits-processors``).

Masks. ``mask`` is either a dense boolean array broadcastable to ``[B, Tq, Tk]`` or a
:class:`CacheBlockMask`, the structured mask of a block of ``T`` queries whose K/V were just
written into a cache at slots ``write_slots[b] + j``: query ``t`` sees the cache range
``[start[b], start[b] + prefix_len[b])`` and block slot ``write_slots[b] + j`` iff
``block_mask[b, t, j]`` (a causal chunk, a draft chain, a token tree's ancestor mask, a
bidirectional diffusion block). ``"xla"`` expands it with :meth:`CacheBlockMask.to_dense`;
``"pallas"`` runs :func:`partext_jax.kernels.tree_attention.tree_attention`, which never builds
the ``[T, max_len]`` mask and reads only the valid prefix. ``"pallas"`` with a dense mask (or
none) falls back to ``"xla"``: dense masks carry no structure to exploit. The usual dense mask,
causal over a left-padded cache, is :func:`causal_cache_mask`
(``docs/algorithms.md#autoregressive-sampling-and-logits-processors``).

Layouts: queries ``[B, T, H, D]``; keys and values ``[B, G, S, D]`` (heads-major, as stored in
the cache). Math (per batch row ``b``, query head ``h`` with KV head ``g = h // (H / G)``)::

    out[b, q, h] = sum_k softmax_k(q.k / sqrt(D) + bias[b, q, k]) v[b, k, g]

where ``bias`` is ``0`` where ``mask`` is True and ``-inf`` elsewhere. A query row with no
allowed key returns zeros (never NaN): padding rows are harmless
(``docs/algorithms.md#attention-kernels``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

AttentionFn = Callable[..., jax.Array]
_IMPLS: dict[str, AttentionFn] = {}
_STRUCTURED: set[str] = set()


class KVCache(NamedTuple):
  """Keys and values of every layer, ``k, v: [layers, B, kv_heads, max_len, head_dim]``.

  Heads-major: the ``[max_len, head_dim]`` rows of one (layer, row, KV head) are contiguous, so
  an attention over a chunk of a layer's slots reads them as they lie (no transposed copy; see
  the module docstring). Holds nothing else: the attention mask says which slots are valid and
  where each row's sequence starts.
  """

  k: jax.Array
  v: jax.Array

  # Logical axis names of ``k`` and ``v`` (``partext_jax.parallel`` places caches by them).
  LOGICAL_AXES = ("layers", "batch", "kv_heads", "length", "head_dim")

  @classmethod
  def zeros(cls, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
            dtype) -> "KVCache":
    shape = (num_layers, batch, num_kv_heads, max_len, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

  @property
  def max_len(self) -> int:
    return self.k.shape[3]

  @property
  def nbytes(self) -> int:
    return self.k.size * self.k.dtype.itemsize + self.v.size * self.v.dtype.itemsize

  def write(self, layer, write_slots, k, v) -> "KVCache":
    """Stores a block's ``k, v [B, T, kv_heads, head_dim]`` at slots ``write_slots[b] + t`` of
    ``layer`` (an int or a traced index, e.g. inside a scan over layers; slots ``>= max_len``
    are dropped).

    Only the ``B * T`` new rows are scattered: inside a jit with the cache carried or donated
    this is an in-place update, never a copy of the whole cache (scanned or unrolled layers;
    the compiled HLO is checked by ``tests/test_cache_no_copy.py``).
    """
    b, t = k.shape[:2]
    rows = jnp.arange(b)[:, None]
    slots = jnp.asarray(write_slots, jnp.int32)[:, None] + jnp.arange(t)[None, :]
    # Advanced indices (rows, slots) around a slice: the update is indexed [B, T, kv_heads, D].
    ck = self.k.at[layer, rows, :, slots].set(k.astype(self.k.dtype), mode="drop")
    cv = self.v.at[layer, rows, :, slots].set(v.astype(self.v.dtype), mode="drop")
    return KVCache(ck, cv)

  def compact(self, src, dst) -> "KVCache":
    """Moves slot ``src[b, j]`` to ``dst[b, j]`` (``int[B, J]``) in every layer: all reads
    before all writes, ``dst >= max_len`` drops
    (``docs/algorithms.md#token-trees-and-kv-compaction``)."""
    rows = jnp.arange(self.k.shape[1])[:, None]
    return KVCache(self.k.at[:, rows, :, dst].set(self.k[:, rows, :, src], mode="drop"),
                   self.v.at[:, rows, :, dst].set(self.v[:, rows, :, src], mode="drop"))


def causal_cache_mask(q_slots, first_slot, max_len: int):
  """``mask[b, t, s] = first_slot[b] <= s <= q_slots[b, t]``: causal attention over a cache.

  Args:
    q_slots: ``int[B, T]`` cache slot of every query (the slot its K/V is written to).
    first_slot: ``int[B]`` (or scalar) first valid slot of each row (left-padding offset).
    max_len: cache length ``S``.
  Returns:
    ``bool[B, T, S]``.
  """
  q = jnp.asarray(q_slots)[:, :, None]
  first = jnp.broadcast_to(jnp.asarray(first_slot), (q.shape[0],))[:, None, None]
  s = jnp.arange(max_len)[None, None, :]
  return (s >= first) & (s <= q)


class CacheBlockMask(NamedTuple):
  """Structured mask for a block of ``T`` queries over a KV cache (see the module docstring).

  Attributes:
    start: ``int[B]`` first valid cache slot of each row (left padding).
    prefix_len: ``int[B]`` valid slots from ``start`` (0 allowed). The range must end at or
      before ``write_slots`` (the prefix never includes the block itself).
    block_mask: ``bool[B, T, K]``; ``block_mask[b, t, j]``: query ``t`` sees block key ``j``
      (cache slot ``write_slots[b] + j``). A model call takes ``K = T`` (the queries' own keys);
      :meth:`to_dense` also takes ``K != T`` (e.g. the nodes of one tree depth over the whole
      tree).
    write_slots: ``int[B]`` cache slot of block key 0; the model fills it in when ``None``.
      Block keys at slots ``>= max_len`` are dropped by the cache write and invisible here.

  Usage (a token tree of ``T`` nodes after a ragged prompt of ``n[b]`` tokens)::

      mask = CacheBlockMask(start=first, prefix_len=n - first, block_mask=ancestors)
      logits, cache, _ = model(params, tree_tokens, tree_positions, mask, cache, write_slots=n)
  """

  start: jax.Array
  prefix_len: jax.Array
  block_mask: jax.Array
  write_slots: jax.Array | None = None

  def block_slots(self) -> jax.Array:
    """``int[B, K]`` cache slot of every block key."""
    if self.write_slots is None:
      raise ValueError("CacheBlockMask.write_slots is None: pass write_slots to the model")
    k = self.block_mask.shape[-1]
    return jnp.asarray(self.write_slots, jnp.int32)[:, None] + jnp.arange(k)[None, :]

  def to_dense(self, max_len: int) -> jax.Array:
    """The equivalent dense ``bool[B, T, max_len]`` mask (what ``"xla"`` attends with)."""
    bm = jnp.asarray(self.block_mask, bool)
    b, t = bm.shape[0], bm.shape[1]
    start = jnp.broadcast_to(jnp.asarray(self.start, jnp.int32), (b,))[:, None, None]
    n = jnp.broadcast_to(jnp.asarray(self.prefix_len, jnp.int32), (b,))[:, None, None]
    s = jnp.arange(max_len)[None, None, :]
    dense = jnp.broadcast_to((s >= start) & (s < start + n), (b, t, max_len))
    # Column ``slot[b, j]`` gets ``block_mask[b, :, j]``; slots >= max_len are dropped.
    slots = self.block_slots()
    rows = jnp.arange(b)[:, None]
    cols = jnp.swapaxes(bm, 1, 2)                   # [B, K, T]
    old = dense[rows, :, jnp.minimum(slots, max_len - 1)]
    return dense.at[rows, :, slots].set(old | cols, mode="drop")


def register(name: str, fn: AttentionFn, *, structured: bool = False) -> None:
  """Makes ``fn(q, k, v, mask) -> out`` selectable as ``attention(..., impl=name)``.

  With ``structured=True`` ``fn`` also receives :class:`CacheBlockMask` masks as they are;
  otherwise they are expanded to dense masks before the call.
  """
  _IMPLS[name] = fn
  if structured:
    _STRUCTURED.add(name)
  else:
    _STRUCTURED.discard(name)


def available() -> tuple[str, ...]:
  """The names of the attention implementations :func:`attention` accepts (``impl=``), sorted."""
  return tuple(sorted(_IMPLS))


def xla_attention(q, k, v, mask):
  """Reference grouped-query attention in jnp.

  Args:
    q: ``[B, Tq, H, D]``.
    k, v: ``[B, G, Tk, D]`` (heads-major, the cache layout) with ``H % G == 0``.
    mask: boolean, broadcastable to ``[B, Tq, Tk]`` (True = may attend), or None.
  Returns:
    ``[B, Tq, H, D]`` in ``q.dtype``.
  """
  b, tq, h, d = q.shape
  g = k.shape[1]
  qg = q.reshape(b, tq, g, h // g, d).astype(jnp.float32)
  scores = jnp.einsum("bqgrd,bgkd->bgrqk", qg, k.astype(jnp.float32)) / jnp.sqrt(d).astype(
      jnp.float32)
  if mask is not None:
    m = jnp.broadcast_to(mask, (b, tq, k.shape[2]))[:, None, None]
    scores = jnp.where(m, scores, -jnp.inf)
  smax = jnp.max(scores, axis=-1, keepdims=True)
  smax = jnp.where(jnp.isfinite(smax), smax, 0.0)
  p = jnp.exp(scores - smax)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  p = p / jnp.where(denom == 0, 1.0, denom)
  out = jnp.einsum("bgrqk,bgkd->bqgrd", p, v.astype(jnp.float32))
  return out.reshape(b, tq, h, d).astype(q.dtype)


register("xla", xla_attention)


def pallas_attention(q, k, v, mask):
  """``"pallas"``: :class:`CacheBlockMask` -> the tree-attention kernel; dense -> ``"xla"``.

  ``k, v`` are the cache ``[B, G, max_len, D]`` *after* the block was written, so the block's own
  keys are gathered from ``write_slots[b] + j`` (``T`` rows, not the cache).
  """
  if not isinstance(mask, CacheBlockMask):
    return xla_attention(q, k, v, mask)
  # The kernels import Pallas: loaded on first use, so the xla path never pays for it.
  # pylint: disable-next=import-outside-toplevel
  from partext_jax.kernels import tree_attention as kernel
  max_len = k.shape[2]
  slots = mask.block_slots()
  idx = jnp.minimum(slots, max_len - 1)[:, None, :, None]
  k_block = jnp.take_along_axis(k, idx, axis=2).transpose(0, 2, 1, 3)   # [B, T, G, D]
  v_block = jnp.take_along_axis(v, idx, axis=2).transpose(0, 2, 1, 3)
  block_mask = jnp.asarray(mask.block_mask, bool) & (slots < max_len)[:, None, :]
  return kernel.tree_attention(q, k, v, k_block, v_block, block_mask, mask.start,
                               mask.prefix_len)


register("pallas", pallas_attention, structured=True)


def resolve_mask(mask, *, impl: str, max_len: int, write_slots=None):
  """``mask`` as implementation ``impl`` takes it. A :class:`CacheBlockMask` gets
  ``write_slots`` (``int[B]``, the block's first slot) if it has none, and is expanded to its
  dense ``bool[B, T, max_len]`` form unless ``impl`` was registered as ``structured``; other
  masks pass unchanged."""
  if not isinstance(mask, CacheBlockMask):
    return mask
  if mask.write_slots is None:
    mask = mask._replace(write_slots=write_slots)
  return mask if impl in _STRUCTURED else mask.to_dense(max_len)


def attention(q, k, v, mask=None, *, impl: str = "xla"):
  """Dispatches to the implementation named ``impl`` (see :func:`available`).

  ``q [B, Tq, H, D]``, ``k, v [B, G, Tk, D]`` (heads-major). ``mask`` is a dense boolean mask,
  ``None``, or a :class:`CacheBlockMask` (expanded to a dense mask for implementations that were
  not registered as ``structured``). Raises ``ValueError`` for an unknown ``impl`` or query heads
  that are not a multiple of the key/value heads.
  """
  if impl not in _IMPLS:
    raise ValueError(f"attention impl={impl!r} is not one of {available()}")
  h, g = q.shape[2], k.shape[1]
  if h % g:
    raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({g})")
  return _IMPLS[impl](q, k, v, resolve_mask(mask, impl=impl, max_len=k.shape[2]))


# --------------------------------------------------------------------------------------------
# Reading only the slots a call can see.

CHUNK = 256


def visible_span(mask, max_len: int) -> tuple[jax.Array, jax.Array]:
  """``(lo, hi)``, int32 scalars: every slot any query of ``mask`` may see lies in ``[lo, hi)``.

  ``mask`` is a dense boolean mask broadcastable to ``[B, T, max_len]`` or a
  :class:`CacheBlockMask` with ``write_slots`` set. ``(0, 0)`` when nothing is visible.
  """
  if isinstance(mask, CacheBlockMask):
    start = jnp.asarray(mask.start, jnp.int32)
    n = jnp.asarray(mask.prefix_len, jnp.int32)
    block = jnp.asarray(mask.write_slots, jnp.int32)
    k = mask.block_mask.shape[-1]
    lo = jnp.minimum(jnp.min(jnp.where(n > 0, start, max_len)), jnp.min(block))
    hi = jnp.maximum(jnp.max(jnp.where(n > 0, start + n, 0)), jnp.max(block) + k)
    lo, hi = jnp.clip(lo, 0, max_len), jnp.clip(hi, 0, max_len)
    return lo, jnp.maximum(hi, lo)
  mask = jnp.asarray(mask, bool)
  cols = jnp.broadcast_to(jnp.any(mask.reshape(-1, mask.shape[-1]), axis=0), (max_len,))
  anything = jnp.any(cols)
  lo = jnp.argmax(cols).astype(jnp.int32)
  hi = (max_len - jnp.argmax(cols[::-1])).astype(jnp.int32)
  return jnp.where(anything, lo, 0), jnp.where(anything, hi, 0)


def cache_attention(q, cache: KVCache, layer, mask, span, *, impl: str = "xla",
                    chunk: int = CHUNK) -> tuple[jax.Array, KVCache]:
  """Attention of ``q`` over layer ``layer`` of ``cache``, reading only the chunks of slots that
  intersect ``span``.

  ``"xla"`` (and any implementation taking dense masks): an online softmax over the chunks of
  ``chunk`` slots that intersect ``span = (lo, hi)`` (a ``fori_loop`` with a data-dependent trip
  count; each chunk is one dynamic slice of the heads-major layer), so the slots read and the
  cost follow the visible length, not the allocated ``max_len``. Slots outside ``span`` are
  masked out anyway: the result equals :func:`attention` over the whole layer up to float
  reassociation. Structured implementations (``"pallas"``) get the whole layer and the
  :class:`CacheBlockMask`: their kernels already visit only the valid blocks.

  Args:
    q: ``[B, T, H, D]``.
    cache: a :class:`KVCache`; ``layer`` an int or a traced index.
    mask: a dense mask broadcastable to ``[B, T, max_len]``, or a :class:`CacheBlockMask` (with
      ``write_slots``) for a structured ``impl``.
    span: ``(lo, hi)`` int32 scalars from :func:`visible_span` of the same mask.
  Returns:
    ``(out [B, T, H, D] in q.dtype, cache)``: the cache comes back unchanged. It is threaded
    through the chunk loop's carry (behind an optimization barrier), so that XLA neither hoists
    whole-layer reads out of the loop nor copies the cache to keep a closed-over value alive.
  """
  if impl in _STRUCTURED and isinstance(mask, CacheBlockMask):
    layer_kv = [jax.lax.dynamic_index_in_dim(x, layer, 0, keepdims=False) for x in cache]
    return attention(q, *layer_kv, mask, impl=impl), cache
  s_len = cache.max_len
  c = min(chunk, s_len)
  b, t, h, d = q.shape
  g = cache.k.shape[2]
  if h % g:
    raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({g})")
  qg = q.reshape(b, t, g, h // g, d).astype(jnp.float32) / jnp.sqrt(jnp.float32(d))
  mask = jnp.broadcast_to(jnp.asarray(mask, bool), (b, t, s_len))
  lo, hi = span

  def body(j, carry):
    m, l, acc, cache = carry                                 # [B, G, R, T] x2, [.., T, D]
    # Opaque to XLA's loop-invariant code motion, which would otherwise hoist a whole layer
    # slice (and q.K over all its slots) out of the loop: O(max_len) work again.
    cache = jax.lax.optimization_barrier(cache)
    start = jnp.minimum(j * c, s_len - c)                    # the last chunk may overlap
    read = lambda x: jax.lax.dynamic_slice(x, (layer, 0, 0, start, 0),
                                           (1, b, g, c, d))[0].astype(jnp.float32)
    ok = jax.lax.dynamic_slice_in_dim(mask, start, c, axis=2)
    ok &= (start + jnp.arange(c) >= j * c)[None, None]       # ... the slots before j * c
    scores = jnp.einsum("bqgrd,bgkd->bgrqk", qg, read(cache.k))
    scores = jnp.where(ok[:, None, None], scores, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.exp(scores - m_safe[..., None])
    alpha = jnp.exp(m - m_safe)                              # 0 while m = -inf
    acc = alpha[..., None] * acc + jnp.einsum("bgrqk,bgkd->bgrqd", p, read(cache.v))
    return m_new, alpha * l + jnp.sum(p, axis=-1), acc, cache

  shape = (b, g, h // g, t)
  init = (jnp.full(shape, -jnp.inf), jnp.zeros(shape), jnp.zeros(shape + (d,)), cache)
  _, l, acc, cache = jax.lax.fori_loop(lo // c, (hi + c - 1) // c, body, init)
  out = acc / jnp.where(l > 0, l, 1.0)[..., None]           # no visible slot: zeros
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d).astype(q.dtype), cache
