"""Shared pieces of the cached-attention kernels: block sizes, the Pallas cache kernel, LSE merge.

Both public kernels (:mod:`partext_jax.kernels.tree_attention`,
:mod:`partext_jax.kernels.block_attention`) split attention over the key set
``K = C ∪ N`` (``C``: slot ranges of a long KV cache, ``N``: a few new keys under a small mask)
into two partial softmaxes and merge them exactly::

    o_C, l_C = attn(q, K_C)       # Pallas: streams only the valid cache blocks, online softmax
    o_N, l_N = attn(q, K_N, mask) # jnp: a [T, T] problem, tiny
    l   = logaddexp(l_C, l_N)
    out = exp(l_C - l) o_C + exp(l_N - l) o_N

where ``l_X = log sum_{k in X} exp(s_k)`` is the log-sum-exp of the scaled scores ``s`` and
``o_X`` the softmax-weighted value average over ``X``. An empty set has ``l = -inf`` and
contributes nothing; a query with no key at all gets ``0`` (never NaN), like
``partext_jax.models.attention.xla_attention``.

Layout inside the cache kernel. Grouped-query attention shares one KV head among ``R = H / G``
query heads, so the wrapper folds those heads into the query rows: ``q [B, T, H, D]`` becomes
``[B, G, T * R, D]`` (row ``t * R + r`` is query ``t``, head ``g * R + r``) and every KV block is
read from HBM once per group instead of once per head. The grid is
``(B, G, rows / block_q, num_splits)``; program ``(b, g, i, j)`` walks the cache blocks of split
``j`` that intersect the row's valid ranges (a dynamic trip count: blocks outside the ranges are
never read), so HBM traffic is ``O(valid prefix)``, not ``O(max_len)``, and no ``[T, S]`` score
or mask matrix exists outside one ``[block_q, block_k]`` tile. Splits (flash-decoding) give the
GPU more programs when ``B * G`` is small; they are merged with the same LSE formula. Rows are
zero-padded up to a multiple of ``block_q`` (so ``block_q`` never has to divide ``T * R``);
``block_k`` must divide the cache length.

Caches are heads-major, ``[B, G, S, D]`` (the layout of
``partext_jax.models.attention.KVCache``): program ``(b, g, ...)`` reads the contiguous ``[S, D]``
row of its KV head. Backends. GPU: lowered with Triton (``compiler_params`` chosen from
``jax.default_backend()``); the ``[S, D]`` cache row stays in HBM and only visited blocks are
loaded. TPU (Mosaic): scalars go to SMEM and the
whole ``[S, D]`` row is staged in VMEM once per ``(b, g)``: correct, but its HBM traffic is
``O(max_len)`` and ``S * D`` is bounded by VMEM; a TPU-tuned version would keep K/V in HBM
(``memory_space=pl.ANY``) and DMA only the valid blocks. Both lowerings are checked through
``jax.export`` in the tests; neither has been compiled or timed on hardware yet.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

# Masked scores inside the kernel: finite, so that ``exp(mask - m)`` is exactly 0 and never NaN.
_MASK_VALUE = -1e30


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiling of the cache kernel (static, hashable).

  Attributes:
    block_q: query rows per program (rows = ``T * H / G``; padded up to a multiple). A power
      of two >= 8 (Triton needs powers of two; 16 or more feeds GPU tensor cores).
    block_k: cache slots per inner step; must divide the cache length ``S``. A power of two
      >= 8 (128 is the natural TPU lane width).
    num_splits: programs sharing one row block's cache range (flash-decoding split-K); raise it
      on a GPU when ``B * G * rows / block_q`` is below the number of SMs.

  ``None`` fields are chosen by :meth:`resolve` from the shapes.
  """

  block_q: int | None = None
  block_k: int | None = None
  num_splits: int = 1

  def __post_init__(self):
    for name in ("block_q", "block_k"):
      v = getattr(self, name)
      if v is not None and (not isinstance(v, int) or v < 8 or v & (v - 1)):
        raise ValueError(f"BlockSizes.{name}={v!r} must be a power of two >= 8")
    if not isinstance(self.num_splits, int) or self.num_splits <= 0:
      raise ValueError(f"BlockSizes.num_splits={self.num_splits!r} must be a positive int")

  def resolve(self, rows: int, cache_len: int) -> "BlockSizes":
    """Fills ``None`` fields and checks that ``block_k`` divides ``cache_len``."""
    block_q = self.block_q
    if block_q is None:
      block_q = min(64, max(16, pl.next_power_of_2(rows)))
    block_k = self.block_k
    if block_k is None:
      # A cache length with no such divisor is read as one block (fine in interpret mode; on an
      # accelerator allocate caches with a multiple of 128 slots).
      block_k = next((c for c in (128, 64, 32, 16, 8) if cache_len % c == 0), cache_len)
    if cache_len % block_k:
      raise ValueError(f"BlockSizes.block_k={block_k} must divide the cache length "
                       f"{cache_len} (k_cache.shape[2])")
    # The whole-cache fallback need not be a power of two, which __post_init__ (for values
    # users choose) rejects: build the resolved instance without it.
    resolved = object.__new__(BlockSizes)
    for name, value in (("block_q", block_q), ("block_k", block_k),
                        ("num_splits", self.num_splits)):
      object.__setattr__(resolved, name, value)
    return resolved


def _round_up(x: int, m: int) -> int:
  return (x + m - 1) // m * m


def default_interpret() -> bool:
  """Pallas only runs in interpret mode on the CPU backend."""
  return jax.default_backend() == "cpu"


def check_heads(q, k, v, what: str, *, heads_major: bool) -> None:
  """Shape checks shared by the wrappers: ``q [B, T, H, D]``; ``k, v [B, G, S, D]`` for a cache
  (``heads_major``), ``[B, T, G, D]`` for a block's own keys."""
  if q.ndim != 4:
    raise ValueError(f"q must be [B, T, H, D], got q.shape={q.shape}")
  layout = "[B, G, S, D]" if heads_major else "[B, T, G, D]"
  for name, x in ((f"k_{what}", k), (f"v_{what}", v)):
    if x.ndim != 4:
      raise ValueError(f"{name} must be {layout}, got {name}.shape={x.shape}")
    if x.shape[0] != q.shape[0] or x.shape[3] != q.shape[3]:
      raise ValueError(f"{name}.shape={x.shape} does not match q.shape={q.shape} in batch "
                       "or head_dim")
  if k.shape != v.shape:
    raise ValueError(f"k_{what}.shape={k.shape} != v_{what}.shape={v.shape}")
  axis = 1 if heads_major else 2
  h, g = q.shape[2], k.shape[axis]
  if h % g:
    raise ValueError(f"query heads H={h} (q.shape[2]) must be a multiple of key/value heads "
                     f"G={g} (k_{what}.shape[{axis}])")


def check_row_ints(batch: int, **named) -> None:
  """Each value must be a scalar or an ``int[batch]`` (per-row starts / lengths)."""
  for name, x in named.items():
    if x is None:
      continue
    shape = np.shape(x)
    dtype = getattr(x, "dtype", np.asarray(x).dtype if not shape else None)
    if shape not in ((), (batch,)) or (dtype is not None and not np.issubdtype(dtype,
                                                                                np.integer)):
      raise ValueError(f"{name} must be an int scalar or int[B={batch}], got shape={shape}, "
                       f"dtype={dtype}")


def ranges_to_bounds(ranges, cache_len: int, batch: int):
  """``[(start, length), ...]`` (scalars or ``int[B]``) -> clipped ``int32[B, 2 * n]``.

  Each range is intersected with ``[0, cache_len)`` so that the kernel never reads out of bounds.
  """
  cols = []
  for start, length in ranges:
    start = jnp.broadcast_to(jnp.asarray(start, jnp.int32), (batch,))
    length = jnp.broadcast_to(jnp.asarray(length, jnp.int32), (batch,))
    lo = jnp.clip(start, 0, cache_len)
    hi = jnp.clip(start + jnp.maximum(length, 0), lo, cache_len)
    cols += [lo, hi - lo]
  return jnp.stack(cols, axis=1)


def ranges_mask(bounds, cache_len: int):
  """Dense ``bool[B, S]`` of the slots inside any range of ``bounds`` (references only)."""
  s = jnp.arange(cache_len)[None, :]
  mask = jnp.zeros((bounds.shape[0], cache_len), bool)
  for i in range(bounds.shape[1] // 2):
    lo, n = bounds[:, 2 * i, None], bounds[:, 2 * i + 1, None]
    mask |= (s >= lo) & (s < lo + n)
  return mask


# ----------------------------------------------------------------------------- the Pallas kernel


def _cache_kernel(bounds_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, scale: float, block_k: int,
                  num_ranges: int, num_splits: int, tpu: bool):
  """One ``(b, g, row block, split)`` program: online softmax over its share of the ranges.

  Refs (leading grid dims squeezed): ``q [block_q, D]``, ``k, v [S, D]`` (the whole cache row of
  this KV head; only the blocks inside the ranges are read), ``o [block_q, D]`` f32, ``lse``
  f32 ``[block_q]`` (GPU) or ``[block_q, 1]`` (TPU). ``bounds`` holds (start, length) per range:
  ``[2 * num_ranges]`` of this row on GPU, the whole ``[B, 2 * num_ranges]`` in SMEM on TPU
  (scalars there must live in SMEM, and a squeezed batch dim is not a legal TPU block).
  """
  split = pl.program_id(3)
  row = pl.program_id(0)
  q = q_ref[...]
  block_q, head_dim = q.shape
  # Fold the softmax scale into q once ([block_q, D] multiplies instead of [block_q, block_k]).
  q = (q.astype(jnp.float32) * scale).astype(q_ref.dtype)

  def body(j, carry, lo, hi):
    m_prev, l_prev, acc_prev = carry                    # [block_q, 1], [block_q, 1], [bq, D]
    k_start = pl.multiple_of(j * block_k, block_k)
    k = k_ref[pl.ds(k_start, block_k), :]
    v = v_ref[pl.ds(k_start, block_k), :]
    s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    # Only the first and last block of a range are partial; the mask depends on the column
    # only, so every block that is visited has >= 1 valid column in every row and m stays finite.
    cols = k_start + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
    s = jnp.where((cols >= lo) & (cols < hi), s, _MASK_VALUE)
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp(m_prev - m_new)          # 0 on the first visited block (m_prev = -inf)
    p = jnp.exp(s - m_new)
    l_new = alpha * l_prev + jnp.sum(p, axis=1, keepdims=True)
    pv = lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())),
                         preferred_element_type=jnp.float32)
    return m_new, l_new, alpha * acc_prev + pv

  carry = (jnp.full((block_q, 1), -jnp.inf, jnp.float32), jnp.zeros((block_q, 1), jnp.float32),
           jnp.zeros((block_q, head_dim), jnp.float32))
  for r in range(num_ranges):  # static: 1 (prefix) or 2 (prefix + suffix)
    lo = bounds_ref[row, 2 * r] if tpu else bounds_ref[2 * r]
    hi = lo + (bounds_ref[row, 2 * r + 1] if tpu else bounds_ref[2 * r + 1])
    # Blocks [first, last) intersect [lo, hi); split j takes a contiguous share of them.
    first = lo // block_k
    last = jnp.where(hi > lo, (hi + block_k - 1) // block_k, first)  # empty range: no block
    per_split = (last - first + num_splits - 1) // num_splits
    b0 = jnp.minimum(first + split * per_split, last)
    b1 = jnp.minimum(b0 + per_split, last)
    carry = lax.fori_loop(b0, b1, functools.partial(body, lo=lo, hi=hi), carry)
  m, l, acc = carry
  nonempty = l > 0
  o_ref[...] = (acc / jnp.where(nonempty, l, 1.0)).astype(o_ref.dtype)
  lse = jnp.where(nonempty, m + jnp.log(jnp.where(nonempty, l, 1.0)), -jnp.inf)
  lse_ref[...] = lse if tpu else lse[:, 0]


def _compiler_params(backend: str):
  """Backend-specific lowering choice: Triton on GPUs (the Mosaic GPU default would stage the
  whole ``[S, D]`` cache row in shared memory), Mosaic defaults on TPU."""
  if backend in ("gpu", "cuda", "rocm"):
    # pylint: disable-next=import-outside-toplevel
    from jax.experimental.pallas import triton as pltriton
    return pltriton.CompilerParams(num_warps=4, num_stages=2)
  return None


def cache_attention_lse(q, k_cache, v_cache, bounds, *, scale: float, block_sizes: BlockSizes,
                        interpret: bool, backend: str | None = None):
  """Partial attention of ``q`` over the cache slots inside ``bounds`` (Pallas).

  Args:
    q: ``[B, T, H, D]``.
    k_cache, v_cache: ``[B, G, S, D]`` (heads-major).
    bounds: ``int32[B, 2 * n]`` from :func:`ranges_to_bounds` (already clipped to ``[0, S)``).
    scale: softmax scale.
    block_sizes: a resolved :class:`BlockSizes`.
    interpret: run the Pallas interpreter (required on CPU).
    backend: platform the call is lowered for (default ``jax.default_backend()``); selects the
      compiler parameters (a cross-platform ``jax.export`` passes it explicitly).
  Returns:
    ``(o [num_splits, B, T, H, D] f32, lse [num_splits, B, T, H] f32)``; merge the splits (and
    any other partial result) with :func:`merge_partials`.
  """
  b, t, h, d = q.shape
  g, s_len = k_cache.shape[1], k_cache.shape[2]
  r = h // g
  rows = t * r
  bs = block_sizes
  rows_p = _round_up(rows, bs.block_q)
  # [B, T, G, R, D] -> [B, G, T, R, D] -> [B, G, T*R, D]: the R heads of a group become rows.
  qr = q.reshape(b, t, g, r, d).transpose(0, 2, 1, 3, 4).reshape(b, g, rows, d)
  if rows_p != rows:
    qr = jnp.pad(qr, ((0, 0), (0, 0), (0, rows_p - rows), (0, 0)))
  num_ranges = bounds.shape[1] // 2
  grid = (b, g, rows_p // bs.block_q, bs.num_splits)
  backend = backend or jax.default_backend()
  tpu = backend == "tpu"
  kernel = functools.partial(_cache_kernel, scale=scale, block_k=bs.block_k,
                             num_ranges=num_ranges, num_splits=bs.num_splits, tpu=tpu)
  q_spec = pl.BlockSpec((None, None, bs.block_q, d), lambda bi, gi, qi, si: (bi, gi, qi, 0))
  o_spec = pl.BlockSpec((None, None, None, bs.block_q, d),
                        lambda bi, gi, qi, si: (si, bi, gi, qi, 0))
  o_shape = jax.ShapeDtypeStruct((bs.num_splits, b, g, rows_p, d), jnp.float32)
  # The whole [S, D] cache row of KV head g (contiguous, heads-major): the kernel slices it block
  # by block, so on GPU only the valid blocks are read from HBM.
  kv_spec = pl.BlockSpec((None, None, s_len, d), lambda bi, gi, qi, si: (bi, gi, 0, 0))
  if tpu:
    # pylint: disable-next=import-outside-toplevel
    from jax.experimental.pallas import tpu as pltpu
    bounds_spec = pl.BlockSpec(memory_space=pltpu.SMEM)
    lse_spec = pl.BlockSpec((None, None, None, bs.block_q, 1),
                            lambda bi, gi, qi, si: (si, bi, gi, qi, 0))
    lse_shape = jax.ShapeDtypeStruct((bs.num_splits, b, g, rows_p, 1), jnp.float32)
  else:
    bounds_spec = pl.BlockSpec((None, 2 * num_ranges), lambda bi, gi, qi, si: (bi, 0))
    lse_spec = pl.BlockSpec((None, None, None, bs.block_q), lambda bi, gi, qi, si: (si, bi, gi, qi))
    lse_shape = jax.ShapeDtypeStruct((bs.num_splits, b, g, rows_p), jnp.float32)
  o, lse = pl.pallas_call(
      kernel,
      grid=grid,
      in_specs=[bounds_spec, q_spec, kv_spec, kv_spec],
      out_specs=[o_spec, lse_spec],
      out_shape=[o_shape, lse_shape],
      interpret=interpret,
      compiler_params=None if interpret else _compiler_params(backend),
      name="cache_attention_lse",
  )(bounds, qr, k_cache, v_cache)
  lse = lse.reshape(lse.shape[:4])
  o = o[:, :, :, :rows].reshape(bs.num_splits, b, g, t, r, d).transpose(0, 1, 3, 2, 4, 5)
  lse = lse[:, :, :, :rows].reshape(bs.num_splits, b, g, t, r).transpose(0, 1, 3, 2, 4)
  return o.reshape(bs.num_splits, b, t, h, d), lse.reshape(bs.num_splits, b, t, h)


# ----------------------------------------------------------------------------- jnp pieces


def dense_attention_lse(q, k, v, mask, *, scale: float):
  """Partial attention in jnp for a small key set: ``(o [B,T,H,D] f32, lse [B,T,H] f32)``.

  ``mask`` is boolean, broadcastable to ``[B, T, Tk]`` (True = may attend).
  """
  b, t, h, d = q.shape
  g = k.shape[2]
  qg = q.reshape(b, t, g, h // g, d)
  s = jnp.einsum("btgrd,bkgd->btgrk", qg, k, preferred_element_type=jnp.float32) * scale
  m4 = jnp.broadcast_to(mask, (b, t, k.shape[1]))[:, :, None, None, :]
  s = jnp.where(m4, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.exp(s - m)
  l = jnp.sum(p, axis=-1, keepdims=True)
  o = jnp.einsum("btgrk,bkgd->btgrd", p, v.astype(jnp.float32)) / jnp.where(l > 0, l, 1.0)
  lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), -jnp.inf)
  return o.reshape(b, t, h, d), lse.reshape(b, t, h)


def merge_partials(os, lses):
  """Exact merge of partial softmaxes stacked on axis 0: ``os [P, ..., D]``, ``lses [P, ...]``.

  ``lse = log sum_p exp(lse_p)``, ``out = sum_p exp(lse_p - lse) o_p``; all parts empty -> 0.
  """
  m = jnp.max(lses, axis=0)
  m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
  w = jnp.exp(lses - m_safe)              # exp(-inf) = 0 for empty parts
  total = jnp.sum(w, axis=0)
  out = jnp.sum(w[..., None] * os, axis=0) / jnp.where(total > 0, total, 1.0)[..., None]
  return out, jnp.where(total > 0, m_safe + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)


def reference_attention(q, k, v, mask, *, scale: float):
  """Dense f32 grouped-query attention (the oracle): ``[B, T, H, D]`` float32."""
  o, _ = dense_attention_lse(q.astype(jnp.float32), k.astype(jnp.float32),
                             v.astype(jnp.float32), mask, scale=scale)
  return o


def positions_major(cache):
  """A heads-major cache ``[B, G, S, D]`` as float32 ``[B, S, G, D]`` (the references only)."""
  return cache.astype(jnp.float32).transpose(0, 2, 1, 3)


def default_scale(head_dim: int, scale):
  return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
