"""The drafter protocol of draft-and-verify decoding (every drafter follows it).

The protocol (stable: :mod:`partext_jax.ar.speculative.drafters.medusa` and user drafters plug into it)
-----------------------------------------------------------------------------------------------
A drafter is a **hashable** object (a frozen dataclass: it is a ``static_argnames`` value of the
jitted decode loop) with these attributes and pure methods::

    sibling_rule: str   # how siblings are drawn: "iid" | "without_replacement" | "topk"
                        # ("topk" = deterministic distinct siblings, e.g. argmax chains, top-k
                        #  trees, prompt lookup, Medusa); :func:`verify.verify` uses the matching
                        #  lossless rule (ALGORITHMS.md section 6).
    tree_size: int      # T, nodes per drafted tree *including the root* (node 0)
    max_depth: int      # D, the deepest node's depth (a chain of gamma drafts: T = D + 1 = gamma+1)
    needs_hidden: bool  # the decode loop passes the target's final hidden state (DraftContext)

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
        the drafter's KV cache exactly as the target's, see :func:`decode.compact_cache`) and
        drop the rest (roll back).

``params`` is the drafter's own parameter pytree (``None`` for training-free drafters); it is a
traced argument of the decode loop, so new weights never recompile.

Conventions. Everything is batched over rows ``b``. Node 0 of a tree is the root ``ctx.root``;
node ``i`` sits at position ``ctx.root_position + depth[i]`` and cache slot
``ctx.root_slot + i`` during the target's tree forward. ``Draft.draft_probs[b, i]`` is the
distribution ``q`` the children of node ``i`` were drawn from (after the same processor as the
target); it is only read by the ``"iid"`` and ``"without_replacement"`` rules and may be ``None``
for ``"topk"`` drafters.

Drafters in this module
-----------------------
* :class:`LMDrafter` -- any causal LM with the ``LlamaLM`` calling protocol (a small LM, an
  :mod:`adapter`-wrapped toy, or the target's first ``k`` layers: :func:`early_exit_drafter`).
  ``mode="chain"`` samples a chain (``"iid"`` rule, greedy under a greedy processor),
  ``"tree_iid"`` / ``"tree_wor"`` fill a static tree with i.i.d. / without-replacement
  (Gumbel-top-k) siblings, ``"eagle"`` grows an EAGLE-2 dynamic tree (top-k beams by cumulative
  log-probability, best ``N`` nodes; ``"topk"`` rule).
* :class:`PromptLookupDrafter` -- training-free n-gram lookup in the prompt and the text so far.
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


class Drafter(Protocol):
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


