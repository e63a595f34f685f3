r"""Tree attention: ``T`` draft-tree nodes attend to a ragged prefix cache plus their ancestors.

For every batch row ``b``, tree node ``t`` and query head ``h`` (KV head ``g = h // (H / G)``)::

    keys(b, t) = { cache slot s : start[b] <= s < start[b] + prefix_len[b] }      (the prefix)
               ∪ { tree node j  : tree_mask[b, t, j] }                            (its ancestors)
    out[b, t, h] = sum_{k in keys} softmax_k(scale * q[b,t,h] . K[k, g]) V[k, g]

with ``scale = 1 / sqrt(D)`` by default. ``start`` is the first valid slot of the row (left
padding: a row whose prompt starts at slot 3 has ``start = 3``); ``prefix_len`` may be 0. The
tree's own K/V are passed separately (``k_tree, v_tree``), so whether or not they were also
written into the cache does not matter, as long as the prefix range excludes them.

Computation (exact, see :mod:`partext_jax.kernels._common`): a Pallas kernel streams only the
valid cache blocks of each row with an online softmax and returns ``(o_prefix, lse_prefix)``; the
``[T, T]`` masked part runs in jnp; the two are merged with ``logaddexp``. No ``[T, S]`` score or
mask array is ever materialised. A node with no key at all (``prefix_len = 0`` and an all-False
mask row) gets zeros.

Gradients. ``jax.grad`` works through a ``custom_vjp`` whose backward pass differentiates
:func:`tree_attention_reference` (dense, ``O(T S)`` memory). The kernel is an inference fast
path; training through it is correct but not faster.

The kernel takes the tree as a mask (tree attention as in SpecInfer, Miao et al. 2024): usually
the ancestor mask of the draft tree (:func:`partext_jax.ar.speculative.trees.ancestor_mask`,
node ``i`` sees itself and its ancestors), but any ``bool[B, T, T]`` works
(``docs/algorithms.md#attention-kernels``).

Usage::

    # parents (-1, 0, 0, 1): node 0 is the root (child of the prefix), node 3 a child of node 1
    mask = jnp.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]], bool)
    out = tree_attention(q, k_cache, v_cache, k_tree, v_tree, mask[None],
                         start=jnp.array([0]), prefix_len=jnp.array([37]))

Targets: GPU (Pallas Triton lowering) and TPU (Mosaic); tested in interpret mode on CPU (the
default there). See :class:`BlockSizes` for tiling.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from partext_jax.kernels import _common
from partext_jax.kernels._common import BlockSizes

__all__ = ["BlockSizes", "tree_attention", "tree_attention_reference"]


# ----------------------------------------------------------------------------- the kernel


def _check(q, k_cache, v_cache, k_tree, v_tree, tree_mask):
  _common.check_heads(q, k_cache, v_cache, "cache", heads_major=True)
  _common.check_heads(q, k_tree, v_tree, "tree", heads_major=False)
  b, t = q.shape[:2]
  if k_tree.shape[1] != t or k_cache.shape[1] != k_tree.shape[2]:
    raise ValueError(f"k_tree.shape={k_tree.shape} must be [B, T={t}, G={k_cache.shape[1]}, D]")
  if tree_mask.shape != (b, t, t) or tree_mask.dtype != jnp.bool_:
    raise ValueError(f"tree_mask must be bool[B, T, T] = bool[{b}, {t}, {t}], got "
                     f"{tree_mask.dtype}{list(tree_mask.shape)}")


def tree_attention_reference(q, k_cache, v_cache, k_tree, v_tree, tree_mask, start, prefix_len,
                             *, scale=None):
  """Dense f32 oracle of :func:`tree_attention` (builds the ``[B, T, S + T]`` mask).

  Takes the same ``q``, ``k_cache``, ``v_cache``, ``k_tree``, ``v_tree``, ``tree_mask``,
  ``start``, ``prefix_len`` and ``scale`` as :func:`tree_attention`; returns
  ``float32[B, T, H, D]``.
  """
  b, t = q.shape[:2]
  s_len = k_cache.shape[2]
  scale = _common.default_scale(q.shape[-1], scale)
  bounds = _common.ranges_to_bounds([(start, prefix_len)], s_len, b)
  prefix = jnp.broadcast_to(_common.ranges_mask(bounds, s_len)[:, None, :], (b, t, s_len))
  mask = jnp.concatenate([prefix, tree_mask], axis=2)
  k = jnp.concatenate([_common.positions_major(k_cache), k_tree.astype(jnp.float32)], axis=1)
  v = jnp.concatenate([_common.positions_major(v_cache), v_tree.astype(jnp.float32)], axis=1)
  return _common.reference_attention(q, k, v, mask, scale=scale)


def _forward(q, k_cache, v_cache, k_tree, v_tree, tree_mask, bounds, *, scale, block_sizes,
             interpret):
  o_c, lse_c = _common.cache_attention_lse(q, k_cache, v_cache, bounds, scale=scale,
                                           block_sizes=block_sizes, interpret=interpret)
  o_t, lse_t = _common.dense_attention_lse(q, k_tree, v_tree, tree_mask, scale=scale)
  out, _ = _common.merge_partials(jnp.concatenate([o_c, o_t[None]], 0),
                                  jnp.concatenate([lse_c, lse_t[None]], 0))
  return out.astype(q.dtype)


@functools.lru_cache(maxsize=None)
def _differentiable(scale: float, block_sizes: BlockSizes, interpret: bool):
  """A ``custom_vjp`` function closed over the static configuration."""

  def ref(q, k_cache, v_cache, k_tree, v_tree, tree_mask, bounds):
    return tree_attention_reference(q, k_cache, v_cache, k_tree, v_tree, tree_mask,
                                    bounds[:, 0], bounds[:, 1], scale=scale).astype(q.dtype)

  @jax.custom_vjp
  def f(q, k_cache, v_cache, k_tree, v_tree, tree_mask, bounds):
    return _forward(q, k_cache, v_cache, k_tree, v_tree, tree_mask, bounds, scale=scale,
                    block_sizes=block_sizes, interpret=interpret)

  def fwd(*args):
    return f(*args), args

  def bwd(args, g):
    diff = args[:5]
    _, vjp = jax.vjp(lambda *d: ref(*d, *args[5:]), *diff)
    return (*vjp(g), None, None)

  f.defvjp(fwd, bwd)
  return f


@functools.partial(jax.jit, static_argnames=("scale", "block_sizes", "interpret"))
def _tree_attention_jit(q, k_cache, v_cache, k_tree, v_tree, tree_mask, start, prefix_len, *,
                        scale, block_sizes, interpret):
  bounds = _common.ranges_to_bounds([(start, prefix_len)], k_cache.shape[2], q.shape[0])
  return _differentiable(scale, block_sizes, interpret)(q, k_cache, v_cache, k_tree, v_tree,
                                                        tree_mask, bounds)


def tree_attention(q, k_cache, v_cache, k_tree, v_tree, tree_mask, start, prefix_len, *,
                   scale: float | None = None, block_sizes: BlockSizes | None = None,
                   interpret: bool | None = None):
  """Attention of ``T`` tree nodes over a ragged prefix cache and their ancestors (Pallas).

  Args:
    q: ``[B, T, H, D]`` queries of the tree nodes.
    k_cache, v_cache: ``[B, G, S, D]`` KV cache, heads-major (``H % G == 0``; ``S`` a multiple of
      ``block_sizes.block_k``).
    k_tree, v_tree: ``[B, T, G, D]`` the nodes' own keys / values.
    tree_mask: ``bool[B, T, T]``, ``tree_mask[b, i, j]`` = node ``i`` may attend to node ``j``
      (usually the tree's ancestor mask, which includes the node itself).
    start: ``int[B]`` (or scalar) first valid cache slot of each row.
    prefix_len: ``int[B]`` (or scalar) number of valid slots from ``start`` (0 allowed). The
      range is clipped to ``[0, S)``.
    scale: softmax scale (default ``1 / sqrt(D)``).
    block_sizes: tiling (:class:`BlockSizes`; defaults chosen from the shapes).
    interpret: run the Pallas interpreter (default: True on the CPU backend, else False).
  Returns:
    ``[B, T, H, D]`` in ``q.dtype``.
  Raises:
    ValueError: mismatched shapes / head counts, a bad mask, or a ``block_k`` not dividing ``S``.
  """
  q, k_cache, v_cache, k_tree, v_tree = map(jnp.asarray, (q, k_cache, v_cache, k_tree, v_tree))
  tree_mask = jnp.asarray(tree_mask)
  _check(q, k_cache, v_cache, k_tree, v_tree, tree_mask)
  _common.check_row_ints(q.shape[0], start=start, prefix_len=prefix_len)
  b, t, h, d = q.shape
  bs = (block_sizes or BlockSizes()).resolve(t * h // k_cache.shape[1], k_cache.shape[2])
  interpret = _common.default_interpret() if interpret is None else bool(interpret)
  return _tree_attention_jit(q, k_cache, v_cache, k_tree, v_tree, tree_mask, start, prefix_len,
                             scale=_common.default_scale(d, scale), block_sizes=bs,
                             interpret=interpret)
