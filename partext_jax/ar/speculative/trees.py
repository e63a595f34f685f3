"""Token trees in a static-shape encoding (``docs/algorithms.md#token-trees-and-kv-compaction``).

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

Static trees (:class:`TreeSpec`, the one static-tree type of every drafter) fix the shape at
trace time: from a parent tuple, a chain, or a Medusa-style *choices* list (Cai et al. 2024: each
choice a tuple of sibling ranks ``(c_1, .., c_d)``, the ``c_d``-th child of the node
``(c_1, .., c_{d-1})``; the list must be prefix-closed with contiguous ranks). Dynamic EAGLE-2
trees (:func:`eagle_select`, Li et al. 2024) are built on device with a static node budget.

Tree forward: node ``i`` is scored at cache slot ``root_slot + i`` and sees the prefix
``[first_slot, root_slot)`` and its ancestors (:func:`tree_mask`), so its logits equal a plain
causal forward over ``prefix + path(i)``.

Usage::

    spec = TreeSpec.from_choices(((0,), (1,), (0, 0)))      # root + 3 nodes
    spec.parent, spec.depth, spec.sibling_rank              # (-1, 0, 0, 1), (0, 1, 1, 2), ..
    anc = ancestor_mask(spec.parent)                        # bool[4, 4]
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.models.attention import CacheBlockMask


class Tree(NamedTuple):
  """A token tree (see the module docstring); all fields share the shape ``[..., T]``."""

  tokens: jax.Array
  parent: jax.Array
  depth: jax.Array
  valid: jax.Array

  @property
  def size(self) -> int:
    return self.tokens.shape[-1]


def validate_parents(parent, *, name: str = "parent") -> np.ndarray:
  """Checks concrete parent arrays (``int[T]`` or ``int[B, T]``); returns them as numpy.

  Every row must have one root, node 0 (``parent[0] == -1``), and ``0 <= parent[i] < i``
  elsewhere. Raises ``ValueError`` naming ``name``, the offending node and the problem: a
  second root, an index out of range, a cycle, or parents after their children.
  """
  p = np.asarray(parent)
  if p.ndim not in (1, 2) or p.shape[-1] < 1 or not np.issubdtype(p.dtype, np.integer):
    raise ValueError(f"{name} must be a non-empty int array [T] or [B, T], got dtype={p.dtype}, "
                     f"shape={p.shape}")
  for row in p.reshape(-1, p.shape[-1]):
    n = row.shape[0]
    if row[0] != -1:
      raise ValueError(f"{name}[0]={row[0]} must be -1: node 0 is the root")
    bad = np.nonzero((row < -1) | (row >= n))[0]
    if bad.size:
      i = int(bad[0])
      raise ValueError(f"{name}[{i}]={int(row[i])} is out of range [-1, {n})")
    roots = np.nonzero(row[1:] == -1)[0]
    if roots.size:
      raise ValueError(f"{name}[{int(roots[0]) + 1}]=-1: only node 0 is the root")
    late = np.nonzero(row[1:] >= np.arange(1, n))[0]
    if late.size:
      i = int(late[0]) + 1
      j, steps = i, 0  # follow the parent pointers: more than n steps is a cycle
      while j != -1 and steps <= n:
        j, steps = int(row[j]), steps + 1
      if j != -1:
        raise ValueError(f"{name} has a cycle through node {i}: {row.tolist()}")
      raise ValueError(f"{name} is not topologically ordered: {name}[{i}]={int(row[i])} must "
                       f"satisfy 0 <= {name}[i] < i (renumber the nodes so that parents come "
                       "before their children)")
  return p


def _vmap_leading(fn, n):
  for _ in range(n):
    fn = jax.vmap(fn)
  return fn


def ancestor_mask(parent):
  """``anc[..., i, j]``: node ``j`` is ``i`` or an ancestor of ``i`` (``bool[..., T, T]``).

  ``anc[i] = anc[parent[i]] | e_i`` in one ``T``-step loop (parents come first). ``parent`` is
  ``int[..., T]``; a concrete value (e.g. a static ``TreeSpec.parent`` tuple) is checked with
  :func:`validate_parents` first, a traced one is trusted. Jittable.
  """
  try:
    concrete = np.asarray(parent)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    concrete = None
  if concrete is not None:
    validate_parents(concrete.reshape(-1, concrete.shape[-1]) if concrete.ndim > 2 else concrete)
  parent = jnp.asarray(parent, jnp.int32)

  def one(par):
    t = par.shape[0]
    eye = jnp.eye(t, dtype=bool)

    def body(i, anc):
      row = jnp.where(par[i] >= 0, anc[jnp.maximum(par[i], 0)], False) | eye[i]
      return anc.at[i].set(row)
    return jax.lax.fori_loop(0, t, body, eye)

  return _vmap_leading(one, parent.ndim - 1)(parent)


def tree_mask(anc, *, root_slot, first_slot) -> CacheBlockMask:
  """What tree nodes scored at cache slots ``root_slot + i`` may attend to.

  Args:
    anc: ``bool[B, Q, T]`` ancestor rows (:func:`ancestor_mask`) of the ``Q`` scored nodes over
      the ``T`` tree nodes (``Q = T`` for a whole-tree forward).
    root_slot: ``int[B]`` cache slot of the root (node ``j`` sits at ``root_slot + j``).
    first_slot: ``int[B]`` first valid slot of each row (left padding).
  Returns:
    a :class:`~partext_jax.models.attention.CacheBlockMask`: the prefix
    ``[first_slot, root_slot)`` plus the ancestors. A model takes it as is when ``Q = T`` (the
    Pallas tree-attention path reads it directly); ``.to_dense(S)`` gives ``bool[B, Q, S]``.
  """
  return CacheBlockMask(start=first_slot, prefix_len=root_slot - first_slot, block_mask=anc,
                        write_slots=root_slot)


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


def _checked_choices(choices) -> list[tuple[int, ...]]:
  if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence) or not choices:
    raise ValueError(f"choices must be a non-empty sequence of rank tuples, got {choices!r}")
  out = []
  for c in choices:
    if isinstance(c, (int, np.integer)) or not isinstance(c, Sequence) or not c:
      raise ValueError(f"choices: every choice must be a non-empty tuple of ranks, got {c!r}")
    if not all(isinstance(r, (int, np.integer)) and r >= 0 for r in c):
      raise ValueError(f"choices: ranks must be ints >= 0, got {tuple(c)!r}")
    out.append(tuple(int(r) for r in c))
  if len(set(out)) != len(out):
    raise ValueError("choices contains duplicates")
  return out


@dataclasses.dataclass(frozen=True)
class TreeSpec:
  """A static tree shape (hashable). ``parent[i] < i``; node 0 is the root.

  ``sibling_rank[i]`` is node ``i``'s index among its parent's children in node order
  (``0`` for the first child); drafters fill rank ``r`` with the ``r``-th sibling draw (the
  ``r``-th most likely token for deterministic siblings). ``choices[i - 1]`` spells node ``i``
  as the ranks on its root path.
  """

  parent: tuple

  def __post_init__(self):
    p = validate_parents(self.parent)
    if p.ndim != 1:
      raise ValueError(f"parent must be 1-d, got shape {p.shape}")
    object.__setattr__(self, "parent", tuple(int(x) for x in p))

  @property
  def size(self) -> int:
    return len(self.parent)

  @property
  def depth(self) -> tuple:
    d = [0]
    for i in range(1, self.size):
      d.append(d[self.parent[i]] + 1)
    return tuple(d)

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

  @property
  def choices(self) -> tuple:
    """The choice tuple of every non-root node (``choices[i - 1]`` is node ``i``)."""
    paths = [()]
    for i in range(1, self.size):
      paths.append(paths[self.parent[i]] + (self.sibling_rank[i],))
    return tuple(paths[1:])

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
    """Medusa-style choices, nodes sorted by depth then choice (so ``parent[i] < i``).

    ``choices`` is a non-empty sequence of distinct non-empty tuples of ranks ``>= 0``,
    prefix-closed (every proper prefix of a choice is a choice) with contiguous sibling ranks
    (rank ``r > 0`` needs rank ``r - 1`` under the same parent), so that ``sibling_rank``
    equals each choice's last rank. Raises ``ValueError`` naming the offending choice.
    """
    chs = sorted(_checked_choices(choices), key=lambda c: (len(c), c))
    index = {(): 0}
    parent = [-1]
    for c in chs:
      if c[:-1] not in index:
        raise ValueError(f"choices are not prefix-closed (parent-closed): {c} is listed but its "
                         f"parent {c[:-1]} is not")
      if c[-1] > 0 and c[:-1] + (c[-1] - 1,) not in index:
        raise ValueError(f"choice {c}: sibling rank {c[-1]} without rank {c[-1] - 1} (ranks "
                         "must be contiguous from 0)")
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
    raise ValueError(f"num_nodes={num_nodes} needs a pool of >= {num_nodes + 1} candidates, "
                     f"got {c}")

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
