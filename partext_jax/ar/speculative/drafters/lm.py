"""LM drafters: any causal LM (chain, static trees, EAGLE-2 dynamic trees) and early exit.

Chains after Leviathan et al. (2023) / Chen et al. (2023); static trees with i.i.d. siblings after
SpecInfer (Miao et al. 2024), without-replacement siblings after Sequoia (Chen et al. 2024);
dynamic trees after EAGLE-2 (Li et al. 2024); early exit as in LayerSkip's self-speculative
decoding (Elhoushi et al. 2024). See :mod:`partext_jax.ar.speculative.drafters.base` for the
protocol and ``docs/algorithms.md#drafters`` for the rules.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.ar import processors as lp
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import trees as trees_lib
from partext_jax.ar.speculative.drafters.base import BaseDrafter, Draft, DraftContext
from partext_jax.base import vocab_size_of_lm
from partext_jax.models.attention import causal_cache_mask
from partext_jax.models import llama as llama_lib
from partext_jax.models.llama import LlamaLM

LM_MODES = ("chain", "tree_iid", "tree_wor", "tree_topk", "eagle")
_MODE_RULE = {"chain": "iid", "tree_iid": "iid", "tree_wor": "without_replacement",
              "tree_topk": "topk", "eagle": "topk"}


class LMState(NamedTuple):
  """The LM drafter's state: its cache, valid on ``[first_slot, dslot)``."""

  cache: Any
  dslot: jax.Array  # int32[B]


def _log_probs(processor, logits):
  """``log softmax(processor(logits))`` over the last axis, for logits of any batch shape."""
  shape = logits.shape
  z = processor(logits.reshape(-1, shape[-1])).reshape(shape)
  return jax.nn.log_softmax(z, axis=-1)


def _node_keys(rng_key, start: int, stop: int):
  """One key per tree node ``start .. stop - 1`` (``fold_in`` of the node index)."""
  return jax.vmap(lambda c: jax.random.fold_in(rng_key, c))(jnp.arange(start, stop))


@dataclasses.dataclass(frozen=True)
class LMDrafter(BaseDrafter):
  """A causal LM drafter (any :class:`~partext_jax.base.CausalLM`: a small LM, a
  :class:`~partext_jax.testing.function_lm.FunctionLM` toy, the target's first layers).

  Modes (``sibling_rule`` in brackets):

  * ``"chain"`` -- ``gamma`` tokens sampled one after another from ``q`` [``"iid"``].
  * ``"tree_iid"`` / ``"tree_wor"`` / ``"tree_topk"`` -- the static tree of ``choices``
    (Medusa-style, :meth:`trees.TreeSpec.from_choices`); the children of a node are i.i.d.
    draws [``"iid"``], Gumbel-top-k draws without replacement [``"without_replacement"``] or the
    top-``m`` tokens [``"topk"``] of ``q`` at that node.
  * ``"eagle"`` -- EAGLE-2 dynamic tree: ``gamma`` expansions of the ``top_k`` beams with the
    highest cumulative log ``q``, ``top_k`` children each, then the best ``num_nodes``
    candidates overall (parent-closed) [``"topk"``].

  Drafting costs ``max_depth`` drafter forwards: the first re-feeds the tokens committed since
  the last draft (``<= max_depth + 1``, so the drafter rolls back by simply forgetting slots past
  the committed prefix: ``commit`` keeps the state), the others score one depth of the tree with
  an ancestor mask. ``model`` is any :class:`~partext_jax.base.CausalLM` whose cache has
  ``max_len``; ``ValueError`` for an unknown mode, ``gamma < 1``, missing ``choices`` or an EAGLE
  budget beyond the candidate pool.
  """

  model: Any
  mode: str = "chain"
  gamma: int = 4
  choices: tuple | None = None
  top_k: int = 4
  num_nodes: int = 16

  def __post_init__(self):
    if self.mode not in LM_MODES:
      raise ValueError(f"mode={self.mode!r} is not one of {LM_MODES}")
    if not isinstance(self.gamma, int) or self.gamma < 1:
      raise ValueError(f"gamma={self.gamma!r} must be an int >= 1")
    if self.mode.startswith("tree_"):
      if self.choices is None:
        raise ValueError(f"mode={self.mode!r} needs choices (Medusa-style rank tuples)")
      # Canonical (sorted, hashable) form; bad lists raise here.
      object.__setattr__(self, "choices", trees_lib.TreeSpec.from_choices(self.choices).choices)
    if self.mode == "eagle":
      pool = 1 + self.top_k + (self.gamma - 1) * self.top_k ** 2
      if self.num_nodes + 1 > pool:
        raise ValueError(f"num_nodes={self.num_nodes} exceeds the EAGLE candidate pool "
                         f"({pool - 1}) of top_k={self.top_k}, gamma={self.gamma}")

  @property
  def spec(self) -> trees_lib.TreeSpec:
    if self.mode == "chain":
      return trees_lib.TreeSpec.chain(self.gamma)
    return trees_lib.TreeSpec.from_choices(self.choices)

  @property
  def sibling_rule(self) -> str:
    return _MODE_RULE[self.mode]

  @property
  def tree_size(self) -> int:
    return self.num_nodes + 1 if self.mode == "eagle" else self.spec.size

  @property
  def max_depth(self) -> int:
    return self.gamma if self.mode == "eagle" else self.spec.max_depth

  @property
  def vocab_size(self):
    return vocab_size_of_lm(self.model)

  def _extra_slots(self) -> int:
    return self.max_depth + 2 + (self.gamma * self.top_k if self.mode == "eagle" else 0)

  def init(self, params, prompt, first_slot, *, cache_len: int):
    b, p = prompt.shape
    out = ar.prefill(self.model, params, prompt, first_slot, cache_len + self._extra_slots(),
                     logits_at=jnp.zeros((b, 1), jnp.int32))
    return LMState(out.cache, jnp.full((b,), p - 1, jnp.int32))

  def _catch_up(self, params, state, ctx):
    """Feeds the committed tokens not yet in the drafter cache, root included -> log q(root)."""
    width = self.max_depth + 1
    start = jnp.minimum(jnp.maximum(state.dslot, ctx.first_slot), ctx.root_slot)
    start = jnp.maximum(start, ctx.root_slot - width + 1)  # >= first_slot: a real token
    slots = start[:, None] + jnp.arange(width)[None]
    hist = jnp.take_along_axis(ctx.history, jnp.clip(slots, 0, ctx.history.shape[1] - 1), axis=1)
    toks = jnp.where(slots == ctx.root_slot[:, None], ctx.root[:, None], hist)
    logits, cache, _ = self.model(params, toks, slots - ctx.first_slot[:, None],
                                  causal_cache_mask(slots, ctx.first_slot, state.cache.max_len),
                                  state.cache, start, logits_at=(ctx.root_slot - start)[:, None])
    return logits[:, 0], cache

  def _forward_nodes(self, params, cache, ctx, toks, write_start, depth, anc):
    """Scores nodes ``toks [B, n]`` written at slots ``write_start + i``; node ``i`` sees the
    prefix and the slots ``root_slot + j`` with ``anc[b, i, j]`` (``bool[B, n, K]``)."""
    mask = trees_lib.tree_mask(anc, root_slot=ctx.root_slot, first_slot=ctx.first_slot)
    pos = jnp.broadcast_to(ctx.root_position[:, None] + depth, toks.shape)
    logits, cache, _ = self.model(params, toks, pos, mask.to_dense(cache.max_len), cache,
                                  write_start)
    return logits, cache

  def draft(self, rng_key, params, state, ctx: DraftContext, *, processor):
    logits0, cache = self._catch_up(params, state, ctx)
    if self.sibling_rule == "topk":
      # Deterministic siblings may be any tokens (the "topk" rule never reads q): rank them by
      # the drafter's raw distribution, so a greedy / top-k target processor keeps the tree wide.
      processor = lp.identity()
    logq0 = _log_probs(processor, logits0)  # [B, V]
    if self.mode == "eagle":
      cache, draft = self._draft_eagle(params, cache, ctx, logq0, processor)
    else:
      cache, draft = self._draft_static(rng_key, params, cache, ctx, logq0, processor)
    return LMState(cache, ctx.root_slot + 1), draft

  def _draft_static(self, rng_key, params, cache, ctx, logq0, processor):
    spec = self.spec
    b, v = logq0.shape
    t = spec.size
    parent = np.asarray(spec.parent)
    rank = np.asarray(spec.sibling_rank)
    ranges = spec.depth_ranges()
    anc = trees_lib.ancestor_mask(spec.parent)  # [T, T]
    tokens = jnp.zeros((b, t), jnp.int32).at[:, 0].set(ctx.root)
    valid = jnp.ones((b, t), bool)
    logq = jnp.zeros((b, t, v), jnp.float32).at[:, 0].set(logq0)
    m = max(spec.max_children, 1)
    for d in range(len(ranges) - 1):
      a, e = ranges[d]  # nodes at depth d (their logq is known)
      ca, ce = ranges[d + 1]
      par = parent[ca:ce]
      lq_par = logq[:, par]  # [B, nc, V]
      if self.sibling_rule == "iid":
        child = jax.vmap(lambda k, lq: jax.random.categorical(k, lq, axis=-1),
                         in_axes=(0, 1), out_axes=1)(_node_keys(rng_key, ca, ce), lq_par)
      else:
        score = logq[:, a:e]  # [B, nd, V]
        if self.sibling_rule == "without_replacement":
          score = score + jax.vmap(lambda k: jax.random.gumbel(k, (b, v)), out_axes=1)(
              _node_keys(rng_key, a, e))
        _, top = jax.lax.top_k(score, m)  # [B, nd, m]
        child = top[:, par - a, rank[ca:ce]]
      child = child.astype(jnp.int32)
      ok = jnp.isfinite(jnp.take_along_axis(lq_par, child[..., None], axis=-1)[..., 0])
      tokens = tokens.at[:, ca:ce].set(child)
      valid = valid.at[:, ca:ce].set(ok)
      if d + 1 < len(ranges) - 1 and ranges[d + 2][1] > ranges[d + 2][0]:
        # Score depth d + 1 to draw its children.
        lg, cache = self._forward_nodes(params, cache, ctx, child, ctx.root_slot + ca, d + 1,
                                        jnp.broadcast_to(anc[ca:ce], (b, ce - ca, t)))
        logq = logq.at[:, ca:ce].set(_log_probs(processor, lg))
    tree = spec.tree(tokens, valid)
    probs = None if self.sibling_rule == "topk" else jnp.exp(logq)
    return cache, Draft(tree, probs)

  def _draft_eagle(self, params, cache, ctx, logq0, processor):
    b, v = logq0.shape
    k, d_max = self.top_k, self.gamma
    region = 1 + d_max * k  # scratch offsets from root_slot: 0 = root, then K per depth
    sc, tok = jax.lax.top_k(logq0, k)  # depth-1 candidates = depth-1 beams
    pool_tok = [jnp.zeros((b, 1), jnp.int32), tok.astype(jnp.int32)]
    pool_sc = [jnp.zeros((b, 1)), sc]
    pool_par = [jnp.full((b, 1), -1, jnp.int32), jnp.zeros((b, k), jnp.int32)]
    pool_depth = [0] + [1] * k
    beam_tok, beam_sc = tok.astype(jnp.int32), sc
    beam_pool = jnp.broadcast_to(jnp.arange(1, k + 1, dtype=jnp.int32), (b, k))
    beam_anc = jnp.zeros((b, k, region), bool).at[:, :, 0].set(True)
    beam_anc = beam_anc.at[:, jnp.arange(k), 1 + jnp.arange(k)].set(True)
    size = 1 + k
    for d in range(1, d_max):
      lg, cache = self._forward_nodes(params, cache, ctx, beam_tok,
                                      ctx.root_slot + 1 + (d - 1) * k, d, beam_anc)
      lq = _log_probs(processor, lg)
      csc, ctok = jax.lax.top_k(lq, k)  # [B, K, K]
      csc = beam_sc[:, :, None] + csc
      pool_tok.append(ctok.reshape(b, k * k).astype(jnp.int32))
      pool_sc.append(csc.reshape(b, k * k))
      pool_par.append(jnp.broadcast_to(beam_pool[:, :, None], (b, k, k)).reshape(b, k * k))
      pool_depth += [d + 1] * (k * k)
      # New beams: the top-K candidates of this depth.
      bsc, bidx = jax.lax.top_k(csc.reshape(b, k * k), k)
      from_beam = bidx // k
      beam_tok = jnp.take_along_axis(ctok.reshape(b, k * k), bidx, axis=1).astype(jnp.int32)
      beam_sc = bsc
      beam_pool = size + bidx
      beam_anc = jnp.take_along_axis(beam_anc, from_beam[:, :, None], axis=1)
      if d + 1 < d_max:
        beam_anc = beam_anc.at[:, jnp.arange(k), 1 + d * k + jnp.arange(k)].set(True)
      size += k * k
    pool_tok = jnp.concatenate(pool_tok, 1)
    pool_sc = jnp.concatenate(pool_sc, 1)
    pool_par = jnp.concatenate(pool_par, 1)
    kept, tpar, valid = trees_lib.eagle_select(pool_sc, pool_par, num_nodes=self.num_nodes)
    tokens = jnp.take_along_axis(pool_tok, kept, axis=1).at[:, 0].set(ctx.root)
    depth = jnp.asarray(pool_depth, jnp.int32)[kept]
    valid = trees_lib.close_valid(tpar, valid)
    return cache, Draft(trees_lib.Tree(tokens, tpar, depth, valid), None)


def early_exit_drafter(model, params, *, num_layers: int, **lm_drafter_kwargs):
  """Self-speculative drafter: the target's first ``num_layers`` layers + final norm + head.

  Returns ``(LMDrafter, drafter_params)``; the params share ``params``' embedding, final norm
  and head, and hold its first ``num_layers`` layers
  (:func:`~partext_jax.models.llama.first_layers`: with stacked layers a slice, i.e. a copy of
  ``num_layers / L`` of the layer weights). ``lm_drafter_kwargs`` go to :class:`LMDrafter` (mode,
  gamma, ...). Raises ``TypeError`` unless ``model`` is a
  :class:`~partext_jax.models.llama.LlamaLM`, ``ValueError`` for ``num_layers`` outside
  ``[1, num_layers of the target)``.
  """
  if not isinstance(model, LlamaLM):
    raise TypeError(f"early_exit_drafter needs a LlamaLM target, got {type(model).__name__}")
  config = model.config
  if not isinstance(num_layers, int) or not 1 <= num_layers < config.num_layers:
    raise ValueError(f"num_layers={num_layers!r} must be an int in [1, {config.num_layers})")
  drafter = LMDrafter(LlamaLM(config.replace(num_layers=num_layers)), **lm_drafter_kwargs)
  return drafter, llama_lib.first_layers(params, config, num_layers)


