"""The Medusa drafter: static token trees filled from the heads of :mod:`partext_jax.models.medusa`.

Cai et al. (2024), "Medusa". Head ``k`` guesses the token ``k`` places after the target's next
token from the target's final hidden state (see :mod:`partext_jax.models.medusa` for the heads).

Static trees (Medusa "choices"). A choice is a tuple ``(c_1, .., c_d)`` of ranks: the node reached
by taking the ``c_1``-th most likely token of head 1, then the ``c_2``-th of head 2, ... A choice
list is parent-closed (every prefix of a choice is a choice). The root (node 0) is the last
committed token ``x_{t+1}``, which the target itself produced from ``h_t`` (the decoder hands
``h_t`` to the drafter); the tree has ``T = 1 + len(choices)`` nodes, sorted by depth then
lexicographically, so ``parent[i] < i``. Node ``i`` at depth ``d >= 1`` is a guess for
``x_{t+1+d}`` and holds ``top_{c_d}(logits_d(t))``: the token
depends only on the depth and the rank, not on the path -- a Medusa tree is a set of
Cartesian-product paths over per-head top-k lists. Siblings are deterministic distinct top-k
tokens, so a lossless verifier must use the deterministic-sibling rule (greedy: accept the child
equal to the target's argmax; sampling: accept ``x`` w.p. ``p(x)``, then zero ``p(x)`` and
renormalise). Medusa's own "typical acceptance" is lossy and is not used here.

Usage::

    mcfg = MedusaConfig(num_heads=4, hidden_size=576)
    mparams = init_params(jax.random.key(0), mcfg)
    logits = head_logits(mparams, hidden, base_params, config=mcfg, base_config=llama_cfg)
    tree = tree_from_choices(DEFAULT_CHOICES)               # static numpy arrays
    tokens = draft_tree_tokens(logits[:, :, -1], root_token, tree=tree)   # int32[B, T]

    # Inside the speculative decoder (lossless: greedy output == plain greedy decoding):
    drafter = MedusaDrafter(mcfg, llama_cfg, choices=DEFAULT_CHOICES)
    tokens, info = decode.generate(key, model, params, prompts, drafter=drafter,
                                   drafter_params=drafter_params(mparams, params,
                                                                 base_config=llama_cfg),
                                   max_new_tokens=64)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.ar.speculative import trees as trees_lib
from partext_jax.ar.speculative.drafters.base import Draft
from partext_jax.models.medusa import MedusaConfig, head_logits

# A 16-node tree (root + 15) for 4 heads: wide near the root where acceptance is likely,
# one path deeper. Ranks are 0-based (0 = top-1 of that head).
DEFAULT_CHOICES = ((0,), (1,), (2,), (3,),
                   (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0),
                   (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0),
                   (0, 0, 0, 0))


def chain_choices(depth: int) -> tuple[tuple[int, ...], ...]:
  """``((0,), (0, 0), ..)``: the top-1 path of length ``depth`` (``depth + 1`` nodes).

  The cheapest tree, best when verification cost grows fast with the number of nodes
  (small-batch CPU).
  """
  if not isinstance(depth, int) or depth < 1:
    raise ValueError(f"depth={depth!r} must be an int >= 1")
  return tuple((0,) * d for d in range(1, depth + 1))


# ----------------------------------------------------------------------------- static trees


class MedusaTree(NamedTuple):
  """A static Medusa tree (numpy, so it can sit in a hashable static argument's closure).

  Node 0 is the root (the target's next token); for node ``i >= 1``:
  ``parent[i] < i``, ``depth[i] = depth[parent[i]] + 1``, and the node's token is the
  ``rank[i]``-th most likely token of head ``depth[i]`` (``rank[0] = -1``).
  ``topk[d - 1]`` = the largest rank used at depth ``d``, plus one.
  """

  choices: tuple  # the sorted choice tuples, node i >= 1 <-> choices[i - 1]
  parent: np.ndarray  # int32[T]
  depth: np.ndarray  # int32[T]
  rank: np.ndarray  # int32[T]
  topk: tuple  # per depth 1 .. D

  @property
  def num_nodes(self) -> int:
    return int(self.parent.shape[0])

  @property
  def max_depth(self) -> int:
    return int(self.depth.max())

  def ancestor_mask(self) -> np.ndarray:
    """``anc[i, j]`` = node ``j`` is ``i`` or an ancestor of ``i`` (``anc[i] = anc[parent] | e_i``)."""
    t = self.num_nodes
    anc = np.zeros((t, t), bool)
    for i in range(t):
      if self.parent[i] >= 0:
        anc[i] = anc[self.parent[i]]
      anc[i, i] = True
    return anc

  def paths(self) -> np.ndarray:
    """``int32[num_leaves, D + 1]`` root-to-leaf node indices, padded with ``-1``."""
    t = self.num_nodes
    is_parent = np.zeros(t, bool)
    is_parent[self.parent[self.parent >= 0]] = True
    out = []
    for leaf in np.flatnonzero(~is_parent):
      path, i = [], int(leaf)
      while i >= 0:
        path.append(i)
        i = int(self.parent[i])
      out.append(path[::-1] + [-1] * (self.max_depth + 1 - len(path)))
    return np.asarray(out, np.int32)


def tree_from_choices(choices: Sequence[Sequence[int]], *, num_heads: int | None = None
                      ) -> MedusaTree:
  """Builds the static tree of a Medusa choice list (see the module docstring).

  Args:
    choices: non-empty sequence of non-empty tuples of non-negative ranks, parent-closed (every
      proper prefix of a choice is also a choice), without duplicates.
    num_heads: if given, depths above it are rejected (head ``d`` feeds depth ``d``).
  Returns:
    :class:`MedusaTree` with nodes ordered by ``(depth, choice)`` (so ``parent[i] < i``).
  """
  if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence) or not choices:
    raise ValueError(f"choices must be a non-empty sequence of rank tuples, got {choices!r}")
  norm = []
  for c in choices:
    if isinstance(c, (int, np.integer)) or not isinstance(c, Sequence) or not c:
      raise ValueError(f"choices: every choice must be a non-empty tuple of ranks, got {c!r}")
    if not all(isinstance(r, (int, np.integer)) and r >= 0 for r in c):
      raise ValueError(f"choices: ranks must be ints >= 0, got {tuple(c)!r}")
    norm.append(tuple(int(r) for r in c))
  if len(set(norm)) != len(norm):
    raise ValueError("choices contains duplicates")
  present = set(norm)
  for c in norm:
    if len(c) > 1 and c[:-1] not in present:
      raise ValueError(f"choices is not parent-closed: {c} is listed but its parent {c[:-1]} "
                       "is not")
  ordered = sorted(norm, key=lambda c: (len(c), c))
  if num_heads is not None and len(ordered[-1]) > num_heads:
    raise ValueError(f"choices reach depth {len(ordered[-1])} but there are only "
                     f"num_heads={num_heads} Medusa heads")
  index = {(): 0}
  parent, depth, rank = [-1], [0], [-1]
  for i, c in enumerate(ordered, start=1):
    index[c] = i
    parent.append(index[c[:-1]])
    depth.append(len(c))
    rank.append(c[-1])
  max_d = len(ordered[-1])
  topk = tuple(1 + max(c[-1] for c in ordered if len(c) == d) for d in range(1, max_d + 1))
  return MedusaTree(tuple(ordered), np.asarray(parent, np.int32), np.asarray(depth, np.int32),
                    np.asarray(rank, np.int32), topk)


def draft_tree_tokens(logits, root_token, *, tree: MedusaTree):
  """Fills a static tree with tokens: ``int32[B, T]``.

  Args:
    logits: ``float[K, B, V]`` head logits at the last accepted position (``K >= max depth``).
    root_token: ``int[B]`` the target's next token (node 0).
    tree: from :func:`tree_from_choices`.
  ``tokens[:, i] = top_{rank[i]}(logits[depth[i] - 1])`` for ``i >= 1`` (ties broken by lower id,
  as ``lax.top_k``).
  """
  if logits.shape[0] < tree.max_depth:
    raise ValueError(f"tree depth {tree.max_depth} needs >= that many heads; logits has "
                     f"{logits.shape[0]}")
  kmax = max(tree.topk)
  _, ids = jax.lax.top_k(logits[:tree.max_depth], kmax)  # [D, B, kmax]
  d = jnp.asarray(np.maximum(tree.depth[1:] - 1, 0))
  r = jnp.asarray(np.maximum(tree.rank[1:], 0))
  nodes = ids[d, :, r].T  # [B, T - 1]
  return jnp.concatenate([jnp.asarray(root_token, jnp.int32)[:, None],
                          nodes.astype(jnp.int32)], axis=1)


# ------------------------------------------------------------------------------- the drafter


def drafter_params(heads_params, base_params, *, base_config):
  """The drafter's parameter pytree: the heads plus the base LM head they share (no copy)."""
  if base_config.tie_embeddings:
    base = {"embed": {"embedding": base_params["embed"]["embedding"]}}
  else:
    base = {"lm_head": {"kernel": base_params["lm_head"]["kernel"]}}
  return {"heads": heads_params, "base": base}


@dataclasses.dataclass(frozen=True)
class MedusaDrafter:
  """Medusa heads as a :mod:`partext_jax.ar.speculative.drafters` protocol drafter.

  At every step the decode loop hands over ``ctx.hidden = h`` (the target's final hidden state at
  the node whose logits produced the root ``x_t``); head ``d`` proposes ``x_{t+d}`` and the static
  tree of ``choices`` is filled by :func:`draft_tree_tokens`. Siblings are distinct deterministic
  top-k tokens: ``sibling_rule = "topk"`` (greedy decoding uses exact match), which keeps
  verification lossless whatever the heads predict -- untrained heads only lower acceptance.
  The processor is not applied to the heads (top-k ranks of raw logits; a greedy processor would
  leave a single finite logit).

  Usage::

    drafter = MedusaDrafter(config=mcfg, base_config=model.config, choices=DEFAULT_CHOICES)
    dparams = drafter_params(heads, params, base_config=model.config)
    tokens, info = decode.generate(key, model, params, prompts, drafter=drafter,
                                   drafter_params=dparams, max_new_tokens=64)
  """

  config: MedusaConfig
  base_config: object  # LlamaConfig (hashable): LM-head layout, dtype, vocabulary
  choices: tuple = DEFAULT_CHOICES

  sibling_rule = "topk"
  needs_hidden = True

  def __post_init__(self):
    if not isinstance(self.config, MedusaConfig):
      raise ValueError(f"config must be a MedusaConfig, got {type(self.config).__name__}")
    if getattr(self.base_config, "hidden_size", None) != self.config.hidden_size:
      raise ValueError(f"base_config.hidden_size={getattr(self.base_config, 'hidden_size', None)} "
                       f"!= MedusaConfig.hidden_size={self.config.hidden_size}")
    tree = tree_from_choices(self.choices, num_heads=self.config.num_heads)
    object.__setattr__(self, "choices", tree.choices)  # canonical (sorted, hashable) form

  @property
  def tree(self) -> MedusaTree:
    return tree_from_choices(self.choices)

  @property
  def tree_size(self) -> int:
    return len(self.choices) + 1

  @property
  def max_depth(self) -> int:
    return max(len(c) for c in self.choices)

  @property
  def vocab_size(self) -> int:
    return self.base_config.vocab_size

  def init(self, params, prompt, first_slot, *, cache_len: int):
    return ()

  def commit(self, params, state, info):
    return state

  def draft(self, rng_key, params, state, ctx, *, processor):
    del rng_key, processor
    tree = self.tree
    # Only the heads the tree reaches (each one is a pass over the [V, E] LM head).
    d = tree.max_depth
    heads = jax.tree_util.tree_map(lambda x: x[:d], params["heads"])
    logits = head_logits(heads, ctx.hidden, params["base"],
                         config=dataclasses.replace(self.config, num_heads=d),
                         base_config=self.base_config)  # [D, B, V]
    tokens = draft_tree_tokens(logits, ctx.root, tree=tree)
    spec = trees_lib.TreeSpec(tuple(int(p) for p in tree.parent))
    return state, Draft(spec.tree(tokens), None)
