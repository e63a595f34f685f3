"""Token trees in a static-shape encoding (ALGORITHMS.md section 6).

A tree of ``T`` nodes is four arrays (leading batch axes allowed):

* ``tokens[T]`` -- node tokens; node 0 is the root (the last committed token);
* ``parent[T]`` -- ``-1`` for the root, else ``parent[i] < i`` (topological order);
* ``depth[T]`` -- ``depth[0] = 0``, ``depth[i] = depth[parent[i]] + 1``;
* ``valid[T]`` -- padding / dropped nodes are ``False`` (their descendants too).

Derived quantities::

    anc[i] = anc[parent[i]] | e_i                  (ancestor mask, bool[T, T], self included)
    position[i] = prefix_len + depth[i]            (RoPE position of node i)
    paths[i] = (root, .., i) padded with -1        (int[T, D + 1]; never padded with token 0)

A chain of ``gamma`` drafts is the degenerate tree ``parent = (-1, 0, 1, .., gamma - 1)``.

Static trees (:class:`TreeSpec`) fix the shape at trace time: from a parent tuple, a chain, or a
Medusa-style *choices* list (each choice a tuple of sibling ranks ``(c_1, .., c_d)``: the
``c_d``-th child of the node ``(c_1, .., c_{d-1})``; the list must be prefix-closed). Dynamic
EAGLE-2 trees (:func:`eagle_tree`) are built on device with a static node budget.

Usage::

    spec = TreeSpec.from_choices(((0,), (1,), (0, 0)))      # root + 3 nodes
    spec.parent, spec.depth, spec.sibling_rank              # (-1, 0, 0, 1), (0, 1, 1, 2), ..
    anc = ancestor_mask(jnp.asarray(spec.parent))           # bool[4, 4]
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class Tree(NamedTuple):
  """A token tree (see the module docstring); all fields share the shape ``[..., T]``."""

  tokens: jax.Array
  parent: jax.Array
  depth: jax.Array
  valid: jax.Array

  @property
  def size(self) -> int:
    return self.tokens.shape[-1]


def validate_parents(parent: Sequence[int], *, name: str = "parent") -> np.ndarray:
  """Checks a static parent array: one root at index 0 and ``parent[i] < i`` elsewhere."""
  p = np.asarray(parent, np.int64)
  if p.ndim != 1 or p.size < 1:
    raise ValueError(f"{name} must be a non-empty 1-d sequence, got shape {p.shape}")
  if p[0] != -1:
    raise ValueError(f"{name}[0]={p[0]} must be -1: node 0 is the root")
  bad = [i for i in range(1, p.size) if not 0 <= p[i] < i]
  if bad:
    i = bad[0]
    raise ValueError(f"{name} is not topologically ordered: {name}[{i}]={p[i]} must satisfy "
                     f"0 <= {name}[i] < i (parents before children, only node 0 is the root)")
  return p


def depths_from_parents(parent: np.ndarray) -> np.ndarray:
  d = np.zeros(len(parent), np.int64)
  for i in range(1, len(parent)):
    d[i] = d[parent[i]] + 1
  return d


@dataclasses.dataclass(frozen=True)
class TreeSpec:
  """A static tree shape (hashable). ``parent[i] < i``; node 0 is the root.

  ``sibling_rank[i]`` is node ``i``'s index among its parent's children in node order
  (``0`` for the first child); drafters fill rank ``r`` with the ``r``-th sibling draw.
  """

  parent: tuple

  def __post_init__(self):
    p = validate_parents(self.parent)
    object.__setattr__(self, "parent", tuple(int(x) for x in p))

  @property
  def size(self) -> int:
    return len(self.parent)

  @property
  def depth(self) -> tuple:
    return tuple(int(x) for x in depths_from_parents(np.asarray(self.parent)))

  @property
  def max_depth(self) -> int:
    return max(self.depth)

  @property
  def sibling_rank(self) -> tuple:
    seen: dict[int, int] = {}
    ranks = [0]
    for i in range(1, self.size):
      ranks.append(seen.get(self.parent[i], 0))
      seen[self.parent[i]] = ranks[-1] + 1
    return tuple(ranks)

  @property
  def max_children(self) -> int:
    counts = np.bincount(np.asarray(self.parent[1:], np.int64), minlength=self.size)
    return int(counts.max()) if self.size > 1 else 0

  def depth_ranges(self) -> tuple:
    """``((start, end), ..)`` node-index range of every depth (requires depth-sorted nodes)."""
    d = np.asarray(self.depth)
    if np.any(np.diff(d) < 0):
      raise ValueError("nodes must be sorted by depth for depth_ranges()")
    return tuple((int(np.argmax(d == k)), int(d.size - np.argmax(d[::-1] == k)))
                 for k in range(int(d.max()) + 1))

  @classmethod
  def chain(cls, gamma: int) -> "TreeSpec":
    """Root + ``gamma`` drafts in a line."""
    if not isinstance(gamma, (int, np.integer)) or gamma < 0:
      raise ValueError(f"gamma={gamma!r} must be an int >= 0")
    return cls(tuple(range(-1, int(gamma))))

  @classmethod
  def from_choices(cls, choices: Sequence[Sequence[int]]) -> "TreeSpec":
    """Medusa-style choices (prefix-closed tuples of sibling ranks), sorted by depth then rank."""
    chs = sorted({tuple(int(r) for r in c) for c in choices}, key=lambda c: (len(c), c))
    if any(len(c) == 0 or min(c) < 0 for c in chs):
      raise ValueError("choices must be non-empty tuples of ranks >= 0")
    index = {(): 0}
    parent = [-1]
    for c in chs:
      if c[:-1] not in index:
        raise ValueError(f"choices are not prefix-closed: {c} has no parent {c[:-1]}")
      # Ranks must be contiguous from 0 for every parent (rank r needs ranks 0..r-1).
      if c[-1] > 0 and c[:-1] + (c[-1] - 1,) not in index:
        raise ValueError(f"choice {c}: sibling rank {c[-1]} without rank {c[-1] - 1}")
      index[c] = len(parent)
      parent.append(index[c[:-1]])
    return cls(tuple(parent))

  def tree(self, tokens, valid=None) -> Tree:
    """A :class:`Tree` with this shape, broadcast to ``tokens``' batch shape."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.shape[-1] != self.size:
      raise ValueError(f"tokens has {tokens.shape[-1]} nodes, the spec {self.size}")
    bshape = tokens.shape
    parent = jnp.broadcast_to(jnp.asarray(self.parent, jnp.int32), bshape)
    depth = jnp.broadcast_to(jnp.asarray(self.depth, jnp.int32), bshape)
    valid = jnp.ones(bshape, bool) if valid is None else jnp.broadcast_to(valid, bshape)
    return Tree(tokens, parent, depth, close_valid(parent, valid))


def close_valid(parent, valid):
  """``valid[i] &= valid[parent[i]]`` (an invalid node invalidates its subtree)."""
  parent = jnp.asarray(parent)
  valid = jnp.asarray(valid, bool)

  def one(par, val):
    def body(i, v):
      return v.at[i].set(v[i] & v[jnp.maximum(par[i], 0)])
    return jax.lax.fori_loop(1, par.shape[-1], body, val)

  return _vmap_leading(one, parent.ndim - 1)(parent, valid)


def _vmap_leading(fn, n):
  for _ in range(n):
    fn = jax.vmap(fn)
  return fn


def ancestor_mask(parent):
  """``anc[..., i, j]``: node ``j`` is ``i`` or an ancestor of ``i`` (``bool[..., T, T]``)."""
  parent = jnp.asarray(parent, jnp.int32)

  def one(par):
    t = par.shape[0]
    eye = jnp.eye(t, dtype=bool)

    def body(i, anc):
      row = jnp.where(par[i] >= 0, anc[jnp.maximum(par[i], 0)], False) | eye[i]
      return anc.at[i].set(row)
    return jax.lax.fori_loop(0, t, body, eye)

  return _vmap_leading(one, parent.ndim - 1)(parent)


def depths(parent):
  """``depth[..., i]`` from a parent array (on device)."""
  return ancestor_mask(parent).sum(-1).astype(jnp.int32) - 1


def root_paths(parent, *, max_depth: int):
  """``paths[..., i, d]`` = ancestor of ``i`` at depth ``d`` (``i`` at its own depth), else -1."""
  parent = jnp.asarray(parent, jnp.int32)
  anc = ancestor_mask(parent)
  dep = anc.sum(-1) - 1  # [..., T]
  t = parent.shape[-1]
  # paths[i, d] = the j with anc[i, j] and depth[j] == d.
  hit = anc[..., :, :, None] & (dep[..., None, :, None] == jnp.arange(max_depth + 1))
  idx = jnp.arange(t)[:, None]
  return jnp.where(hit.any(-2), jnp.sum(jnp.where(hit, idx, 0), axis=-2), -1).astype(jnp.int32)


def check_headroom(tree_size: int, *, cache_len: int, prefix_len: int,
                   max_new_tokens: int) -> None:
  """Raises if a tree scored after the longest prefix would not fit in the cache."""
  need = prefix_len + max_new_tokens + tree_size
  if need > cache_len:
    raise ValueError(f"tree_size={tree_size} does not fit: prefix ({prefix_len}) + max_new_tokens "
                     f"({max_new_tokens}) + tree_size needs {need} cache slots but the cache "
                     f"(context_length) has {cache_len}; use a smaller tree or fewer tokens")


def eagle_select(scores, parents, *, num_nodes: int):
  """EAGLE-2 reranking: keep the best ``num_nodes`` candidates, parent-closed, in creation order.

  Args:
    scores: ``float[..., C]`` cumulative log-probabilities of the candidate pool in creation
      order; candidate 0 is the root (score 0). ``-inf`` marks impossible candidates.
    parents: ``int[..., C]`` pool index of each candidate's parent (``-1`` for the root;
      ``parents[c] < c``).
    num_nodes: ``N``; the tree has ``T = N + 1`` nodes (root included).
  Returns:
    ``(pool_index int[..., T], parent int[..., T], valid bool[..., T])``: kept candidates sorted by
    creation index (root first) and their parents re-indexed into the tree. Ties are broken by
    creation index, so an ancestor (score >= its descendants', created earlier) always ranks
    before its descendants: the kept set is parent-closed.
  """
  c = scores.shape[-1]
  if num_nodes + 1 > c:
    raise ValueError(f"num_nodes={num_nodes} needs a pool of >= {num_nodes + 1} candidates, got {c}")

  def one(sc, par):
    sc = sc.at[0].set(jnp.inf)  # the root always survives
    order = jnp.lexsort((jnp.arange(c), -sc))  # score desc, then creation index asc
    kept = jnp.sort(order[:num_nodes + 1])  # creation order
    # tree index of every pool candidate (or -1 when dropped)
    pos = jnp.full((c,), -1, jnp.int32).at[kept].set(jnp.arange(num_nodes + 1, dtype=jnp.int32))
    par_pool = par[kept]
    tpar = jnp.where(par_pool >= 0, pos[jnp.maximum(par_pool, 0)], -1)
    is_root = jnp.arange(num_nodes + 1) == 0
    valid = is_root | (jnp.isfinite(sc[kept]) & (tpar >= 0))
    tpar = jnp.where(is_root, -1, jnp.maximum(tpar, 0))  # dropped parent: hang it (invalid) on 0
    return kept.astype(jnp.int32), tpar.astype(jnp.int32), valid

  return _vmap_leading(one, scores.ndim - 1)(scores, parents)
