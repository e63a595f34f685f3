r"""Block cached attention: ``Q`` queries over (prefix cache) ∪ (the block) ∪ (suffix cache).

The one kernel behind every diffusion-LM cache (Fast-dLLM's prefix / dual caches, Wu et al. 2025;
``docs/algorithms.md#block-caches``, ``docs/algorithms.md#attention-kernels``). For every batch
row ``b``, block query ``i`` and query head ``h`` (KV head ``g = h // (H / G)``)::

    keys(b, i) = { cache slot s : prefix_start[b] <= s < prefix_start[b] + prefix_len[b] }
               ∪ { cache slot s : suffix_start[b] <= s < suffix_start[b] + suffix_len[b] }
               ∪ { block key j  : causal_block_size is None  or  j // c <= i // c }
    out[b, i, h] = sum_{k in keys} softmax_k(scale * q[b,i,h] . K[k, g]) V[k, g]

(``c = causal_block_size``; ``scale = 1 / sqrt(D)`` by default). The block's own K/V are passed
separately as ``k_block, v_block``: they are the freshly computed keys of the current step and
need not be in the cache. The two cache ranges must not overlap each other or the block's slots
(a slot in two sets would be counted twice).

How the caching schemes map onto it (``s0`` = first slot of the current block, ``L`` = length of
the sequence held in the cache, ``first[b]`` = first valid slot of a left-padded row):

==============================  ============================================================
Fast-dLLM prefix cache          block = every position from ``s0`` on (recomputed each step);
                                ``prefix = [first, s0)``; no suffix; ``causal_block_size=None``
Fast-dLLM dual cache            block = the current block ``[s0, s0 + Q)``;
                                ``prefix = [first, s0)``, ``suffix = [s0 + Q, L)``
exact block-causal (BD3-LM)     block = current block, ``prefix = [first, s0)`` (blocks already
                                committed), no suffix, ``causal_block_size=None``; several
                                blocks at once: ``causal_block_size = block length``
causal chunk (AR prefill)       ``causal_block_size = 1``
==============================  ============================================================

Computation: the Pallas cache kernel of :mod:`partext_jax.kernels._common` streams only the cache
blocks inside the (ragged, per-row) ranges with an online softmax and returns a log-sum-exp; the
``[Q, Q]`` block part runs in jnp; an exact LSE merge combines them. Nothing of size
``[Q, S]`` is materialised. Queries with no key at all get zeros.

Gradients: a ``custom_vjp`` differentiates :func:`block_attention_reference` (dense, ``O(Q S)``
memory), so ``jax.grad`` works; the kernel is an inference fast path.

Usage (dual cache, one row, block of 32 at slot 64 in a 256-slot cache holding 160 tokens)::

    out = block_attention(q, k_cache, v_cache, k_block, v_block,
                          prefix_start=0, prefix_len=64,
                          suffix_start=96, suffix_len=160 - 96)

Targets: GPU (Pallas Triton lowering) and TPU (Mosaic); interpret mode on CPU (the default there).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from partext_jax.kernels import _common
from partext_jax.kernels._common import BlockSizes

__all__ = ["BlockSizes", "block_attention", "block_attention_reference", "block_causal_mask"]


def block_causal_mask(q_len: int, causal_block_size: int | None):
  """``bool[Q, Q]`` with ``Q = q_len``: ``True`` everywhere (``causal_block_size`` ``None``) or
  ``j // c <= i // c`` with ``c = causal_block_size``."""
  if causal_block_size is None:
    return jnp.ones((q_len, q_len), bool)
  idx = jnp.arange(q_len) // causal_block_size
  return idx[None, :] <= idx[:, None]


def _ranges(prefix_start, prefix_len, suffix_start, suffix_len):
  if (suffix_start is None) != (suffix_len is None):
    raise ValueError("suffix_start and suffix_len must be given together (or both None)")
  ranges = [(prefix_start, prefix_len)]
  if suffix_start is not None:
    ranges.append((suffix_start, suffix_len))
  return ranges


def _check(q, k_cache, v_cache, k_block, v_block, causal_block_size):
  _common.check_heads(q, k_cache, v_cache, "cache", heads_major=True)
  _common.check_heads(q, k_block, v_block, "block", heads_major=False)
  if k_block.shape[1] != q.shape[1] or k_block.shape[2] != k_cache.shape[1]:
    raise ValueError(f"k_block.shape={k_block.shape} must be [B, Q={q.shape[1]}, "
                     f"G={k_cache.shape[1]}, D]")
  if causal_block_size is not None and (not isinstance(causal_block_size, int)
                                        or causal_block_size <= 0):
    raise ValueError(f"causal_block_size={causal_block_size!r} must be None or a positive int")


def block_attention_reference(q, k_cache, v_cache, k_block, v_block, prefix_start, prefix_len,
                              suffix_start=None, suffix_len=None, *, causal_block_size=None,
                              scale=None):
  """Dense f32 oracle of :func:`block_attention` (builds the ``[B, Q, S + Q]`` mask).

  Takes the same ``q``, ``k_cache``, ``v_cache``, ``k_block``, ``v_block``, ``prefix_start``,
  ``prefix_len``, ``suffix_start``, ``suffix_len``, ``causal_block_size`` and ``scale`` as
  :func:`block_attention`; returns ``float32[B, Q, H, D]``.
  """
  b, ql = q.shape[:2]
  s_len = k_cache.shape[2]
  scale = _common.default_scale(q.shape[-1], scale)
  bounds = _common.ranges_to_bounds(_ranges(prefix_start, prefix_len, suffix_start, suffix_len),
                                    s_len, b)
  cache = jnp.broadcast_to(_common.ranges_mask(bounds, s_len)[:, None, :], (b, ql, s_len))
  block = jnp.broadcast_to(block_causal_mask(ql, causal_block_size), (b, ql, ql))
  mask = jnp.concatenate([cache, block], axis=2)
  k = jnp.concatenate([_common.positions_major(k_cache), k_block.astype(jnp.float32)], axis=1)
  v = jnp.concatenate([_common.positions_major(v_cache), v_block.astype(jnp.float32)], axis=1)
  return _common.reference_attention(q, k, v, mask, scale=scale)


@functools.lru_cache(maxsize=None)
def _differentiable(scale: float, causal_block_size, block_sizes: BlockSizes, interpret: bool):
  """A ``custom_vjp`` function closed over the static configuration."""

  def ref(q, k_cache, v_cache, k_block, v_block, bounds):
    ranges = [(bounds[:, 2 * i], bounds[:, 2 * i + 1]) for i in range(bounds.shape[1] // 2)]
    flat = [x for r in ranges for x in r] + [None] * (4 - 2 * len(ranges))
    return block_attention_reference(q, k_cache, v_cache, k_block, v_block, *flat,
                                     causal_block_size=causal_block_size,
                                     scale=scale).astype(q.dtype)

  @jax.custom_vjp
  def f(q, k_cache, v_cache, k_block, v_block, bounds):
    o_c, lse_c = _common.cache_attention_lse(q, k_cache, v_cache, bounds, scale=scale,
                                             block_sizes=block_sizes, interpret=interpret)
    mask = block_causal_mask(q.shape[1], causal_block_size)[None]
    o_b, lse_b = _common.dense_attention_lse(q, k_block, v_block, mask, scale=scale)
    out, _ = _common.merge_partials(jnp.concatenate([o_c, o_b[None]], 0),
                                    jnp.concatenate([lse_c, lse_b[None]], 0))
    return out.astype(q.dtype)

  def fwd(*args):
    return f(*args), args

  def bwd(args, g):
    _, vjp = jax.vjp(lambda *d: ref(*d, args[5]), *args[:5])
    return (*vjp(g), None)

  f.defvjp(fwd, bwd)
  return f


@functools.partial(jax.jit, static_argnames=("causal_block_size", "scale", "block_sizes",
                                             "interpret"))
def _block_attention_jit(q, k_cache, v_cache, k_block, v_block, prefix_start, prefix_len,
                         suffix_start, suffix_len, *, causal_block_size, scale, block_sizes,
                         interpret):
  bounds = _common.ranges_to_bounds(_ranges(prefix_start, prefix_len, suffix_start, suffix_len),
                                    k_cache.shape[2], q.shape[0])
  return _differentiable(scale, causal_block_size, block_sizes, interpret)(
      q, k_cache, v_cache, k_block, v_block, bounds)


def block_attention(q, k_cache, v_cache, k_block, v_block, prefix_start, prefix_len,
                    suffix_start=None, suffix_len=None, *, causal_block_size: int | None = None,
                    scale: float | None = None, block_sizes: BlockSizes | None = None,
                    interpret: bool | None = None):
  """A block of queries over a prefix cache range, itself, and optionally a suffix range (Pallas).

  Args:
    q: ``[B, Q, H, D]`` the block's queries.
    k_cache, v_cache: ``[B, G, S, D]`` cache, heads-major (``H % G == 0``; ``S`` a multiple of
      ``block_sizes.block_k``).
    k_block, v_block: ``[B, Q, G, D]`` the block's own keys / values (this step's).
    prefix_start, prefix_len: ``int[B]`` or scalars: cache slots
      ``[prefix_start, prefix_start + prefix_len)`` (length 0 allowed; clipped to ``[0, S)``).
    suffix_start, suffix_len: optional second range (dual cache); both or neither.
    causal_block_size: ``None`` = the block attends to itself bidirectionally; ``c`` = block key
      ``j`` is visible to query ``i`` iff ``j // c <= i // c`` (``1`` = causal).
    scale: softmax scale (default ``1 / sqrt(D)``).
    block_sizes: tiling (:class:`BlockSizes`; defaults chosen from the shapes).
    interpret: Pallas interpreter (default: True on the CPU backend, else False).
  Returns:
    ``[B, Q, H, D]`` in ``q.dtype``.
  Raises:
    ValueError: mismatched shapes / head counts, half a suffix, or ``block_k`` not dividing ``S``.
  """
  q, k_cache, v_cache, k_block, v_block = map(jnp.asarray, (q, k_cache, v_cache, k_block, v_block))
  _check(q, k_cache, v_cache, k_block, v_block, causal_block_size)
  _ranges(prefix_start, prefix_len, suffix_start, suffix_len)
  _common.check_row_ints(q.shape[0], prefix_start=prefix_start, prefix_len=prefix_len,
                         suffix_start=suffix_start, suffix_len=suffix_len)
  b, ql, h, d = q.shape
  bs = (block_sizes or BlockSizes()).resolve(ql * h // k_cache.shape[1], k_cache.shape[2])
  interpret = _common.default_interpret() if interpret is None else bool(interpret)
  return _block_attention_jit(q, k_cache, v_cache, k_block, v_block, prefix_start, prefix_len,
                              suffix_start, suffix_len, causal_block_size=causal_block_size,
                              scale=_common.default_scale(d, scale), block_sizes=bs,
                              interpret=interpret)
