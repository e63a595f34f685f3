"""The drafter protocol of draft-and-verify decoding (``docs/algorithms.md#drafters``).

The protocol (stable: the drafters of this package and user drafters plug into it)
----------------------------------------------------------------------------------
A drafter is a **hashable** object (a frozen dataclass: it is a ``static_argnames`` value of the
jitted decode loop) with these attributes and pure methods::

    sibling_rule: str   # how siblings are drawn: "iid" | "without_replacement" | "topk"
                        # ("topk" = deterministic distinct siblings, e.g. argmax chains, top-k
                        #  trees, prompt lookup, Medusa); :func:`verify.verify` uses the matching
                        #  lossless rule (docs/algorithms.md#speculative-decoding).
    tree_size: int      # T, nodes per drafted tree *including the root* (node 0)
    max_depth: int      # D, the deepest node's depth (a chain of gamma drafts: T = D + 1 = gamma+1)
    needs_hidden: bool  # the decode loop passes the target's final hidden state (DraftContext)
    may_draft_nothing: bool  # optional (default False): drafts may be empty, see decode.generate

    init(params, prompt, first_slot, *, cache_len) -> state
        Prefill. ``prompt int32[B, P]`` is the left-padded prompt (row b's real tokens occupy
        slots ``[first_slot[b], P)``), ``cache_len`` the number of cache slots the target uses
        (drafters with a KV cache allocate the same). ``state`` is any pytree.
    draft(rng_key, params, state, ctx: DraftContext, *, processor) -> (state, Draft)
        Proposes a tree rooted at ``ctx.root`` (the last committed token, whose K/V is *not* yet
        in any cache). ``processor`` is the decode loop's logits processor; stochastic drafters
        sample from ``softmax(processor(drafter_logits))`` and report those probabilities.
    commit(params, state, info: CommitInfo) -> state
        Called after verification: keep what the accepted path ``info.path`` needs (e.g. compact
        the drafter's KV cache exactly as the target's, ``KVCache.compact``) and drop the rest
        (roll back). ``info.logits`` holds the target's raw logits at every node of the tree
        forward (the lookahead drafter reads its Jacobi window's next guesses there).

``params`` is the drafter's own parameter pytree (``None`` for training-free drafters); it is a
traced argument of the decode loop, so new weights never recompile.

Conventions. Everything is batched over rows ``b``. Node 0 of a tree is the root ``ctx.root``;
node ``i`` sits at position ``ctx.root_position + depth[i]`` and cache slot
``ctx.root_slot + i`` during the target's tree forward. ``Draft.draft_probs[b, i]`` is the
distribution ``q`` the children of node ``i`` were drawn from (after the same processor as the
target); it is only read by the ``"iid"`` and ``"without_replacement"`` rules and may be ``None``
for ``"topk"`` drafters.

A new drafter is one module in :mod:`partext_jax.ar.speculative.drafters`: a frozen dataclass
implementing the protocol, usually deriving from :class:`BaseDrafter` (no-op ``init`` /
``commit``, ``tree_size`` / ``max_depth`` from a static :class:`~..trees.TreeSpec` ``spec``).
The shipped drafters: :class:`~.lm.LMDrafter` (any causal LM; modes ``chain``, ``tree_iid``,
``tree_wor``, ``tree_topk``, ``eagle``) and :func:`~.lm.early_exit_drafter`,
:class:`~.prompt_lookup.PromptLookupDrafter`, :class:`~.medusa.MedusaDrafter`.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax

from partext_jax.ar.speculative import trees as trees_lib

SIBLING_RULES = ("iid", "without_replacement", "topk")


class DraftContext(NamedTuple):
  """What the decode loop tells the drafter at every step (all batched over rows)."""

  root: jax.Array  # int32[B]: last committed token = tree node 0 (not yet in any KV cache)
  root_slot: jax.Array  # int32[B]: cache slot of the root (slots < root_slot hold the prefix)
  root_position: jax.Array  # int32[B]: RoPE position of the root
  first_slot: jax.Array  # int32[B]: first real slot of the row (left padding)
  history: jax.Array  # int32[B, S]: token at every slot; valid on [first_slot, root_slot]
  hidden: Any  # float32[B, E] target's final hidden state (after the final norm) at the node
  #              whose logits produced ``root``; zeros unless the drafter ``needs_hidden``.


class Draft(NamedTuple):
  """A drafted tree per row."""

  tree: trees_lib.Tree  # batched [B, T]; tokens[:, 0] == ctx.root
  draft_probs: Any  # float32[B, T, V] or None (see the module docstring)


class CommitInfo(NamedTuple):
  """The verification outcome handed to :meth:`Drafter.commit`."""

  tree: trees_lib.Tree  # the drafted tree [B, T]
  path: jax.Array  # int32[B, D + 1]: accepted node indices root first, -1 padded
  num_accepted: jax.Array  # int32[B]: accepted draft nodes (path[:, 1:num_accepted + 1])
  root_slot: jax.Array  # int32[B]: the (old) root's slot; path node j moves to root_slot + j
  first_slot: jax.Array  # int32[B]
  active: jax.Array  # bool[B]: rows that committed anything this step (finished rows: False)
  logits: Any = None  # float32[B, T, V]: the target's raw logits at every node (before the
  #                     processor), for drafters that learn from the tree forward (lookahead)


class Drafter(Protocol):
  """The drafter protocol (see the module docstring)."""

  sibling_rule: str
  tree_size: int
  max_depth: int
  needs_hidden: bool

  def init(self, params, prompt, first_slot, *, cache_len: int):
    ...

  def draft(self, rng_key, params, state, ctx: DraftContext, *, processor) -> tuple[Any, Draft]:
    ...

  def commit(self, params, state, info: CommitInfo):
    ...


class BaseDrafter:
  """Optional base class with the protocol's defaults.

  Subclasses (frozen dataclasses) define ``sibling_rule``, ``draft`` and either a static tree
  ``spec`` (:class:`~partext_jax.ar.speculative.trees.TreeSpec`, giving ``tree_size`` and
  ``max_depth``) or those two attributes. The defaults keep no state: ``init`` returns ``()`` and
  ``commit`` returns the state unchanged.
  """

  needs_hidden = False
  may_draft_nothing = False

  @property
  def tree_size(self) -> int:
    return self.spec.size

  @property
  def max_depth(self) -> int:
    return self.spec.max_depth

  def init(self, params, prompt, first_slot, *, cache_len: int):
    del params, prompt, first_slot, cache_len
    return ()

  def commit(self, params, state, info: CommitInfo):
    del params, info
    return state
