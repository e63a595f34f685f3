"""The EAGLE feature-level drafter: chains and EAGLE-2 dynamic trees from the head of
:mod:`partext_jax.models.eagle`.

Li et al. (2024), EAGLE-1 (feature-level drafting) and EAGLE-2 (dynamic draft trees);
``docs/algorithms.md#eagle-feature-drafter``. The head keeps its own one-layer KV cache over
*pairs*: slot ``s`` holds the head's K/V of ``(f_{s-1}, x_s)`` (feature of the previous slot,
token of this one; ``f = 0`` before the first real token), at position ``s - first_slot``.

Features. ``init`` runs the target over the prompt to get its features ``f_s`` (one extra prompt
forward: the decode loop hands the drafter only the last one). At every step the loop passes
``ctx.hidden`` = the target's true feature of the slot before the root; the features of the other
tokens accepted since the last step are the head's own guesses ``f^`` (the features they were
drafted from). ``state.feats[b, s]`` keeps, per slot, the best feature known (true or guessed);
``draft`` first re-feeds the last ``max_depth + 1`` committed slots (root included) with those
features -- which also overwrites whatever the previous tree wrote there, so ``commit`` only has
to record the accepted nodes' guessed features. The root's feature ``f^_root`` then drafts:

* ``mode="chain"``: ``gamma`` tokens, each drawn from ``q = softmax(processor(f^ W_d))`` of its
  parent and fed back with the parent's ``f^``; siblings i.i.d. (one child per node), the
  drafter's ``q`` reported: ``sibling_rule = "iid"`` (lossless at any temperature; a greedy
  processor makes it the argmax chain).
* ``mode="eagle"``: the EAGLE-2 dynamic tree: ``gamma`` depths, each expanding the ``top_k``
  beams with the highest cumulative log ``q`` (raw head distribution) into their ``top_k`` most
  likely children, then the best ``num_nodes`` candidates overall (parent-closed,
  :func:`~partext_jax.ar.speculative.trees.eagle_select`). Siblings are distinct deterministic
  top-k tokens: ``sibling_rule = "topk"``.

Tokens outside the draft vocabulary are never proposed (``q = 0``); verification stays lossless.

Usage::

    drafter = EagleDrafter(ecfg, LlamaLM(llama_cfg), mode="eagle", gamma=5, top_k=6,
                           num_nodes=15)
    dparams = drafter_params(eagle_params, params, vocab_ids, base_config=llama_cfg)
    tokens, info = decode.generate(key, model, params, prompts, drafter=drafter,
                                   drafter_params=dparams, max_new_tokens=64)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from partext_jax.ar import processors as lp
from partext_jax.ar.speculative import trees as trees_lib
from partext_jax.ar.speculative.drafters.base import BaseDrafter, Draft, DraftContext
from partext_jax.models import eagle as eagle_lib
from partext_jax.models.attention import causal_cache_mask
from partext_jax.models.llama import LlamaLM

EAGLE_MODES = ("chain", "eagle")


class EagleState(NamedTuple):
  """The drafter's state (``S`` = the target's cache length plus the tree scratch)."""

  cache: Any  # KVCache (one layer) of the head, valid on [first_slot, root_slot]
  feats: jax.Array  # float32[B, S, E]: best known target feature at every slot
  node_feat: jax.Array  # float32[B, T, E]: the feature each node of the last tree was fed with


def drafter_params(head_params, base_params, vocab_ids, *, base_config):
  """The drafter's parameters: :func:`partext_jax.models.eagle.draft_params` plus the target's
  own parameters under ``"target"`` (the same arrays; ``init`` runs the target on the prompt)."""
  return {**eagle_lib.draft_params(head_params, base_params, vocab_ids, base_config=base_config),
          "target": base_params}


@dataclasses.dataclass(frozen=True)
class EagleDrafter(BaseDrafter):
  """EAGLE feature drafter in the :mod:`~partext_jax.ar.speculative.drafters` protocol.

  Args:
    config: the head's :class:`~partext_jax.models.eagle.EagleConfig`.
    target: the target :class:`~partext_jax.models.llama.LlamaLM` (its features feed the head).
    mode: ``"chain"`` or ``"eagle"`` (module docstring).
    gamma: chain length / tree depth ``D``.
    top_k, num_nodes: EAGLE-2 beam width and node budget (tree of ``num_nodes + 1`` nodes).
  Raises ``ValueError`` for an unknown mode, ``gamma < 1``, an EAGLE budget beyond the candidate
  pool, a head narrower or wider than the target, or a target that is not a ``LlamaLM``.
  """

  config: eagle_lib.EagleConfig
  target: Any
  mode: str = "eagle"
  gamma: int = 5
  top_k: int = 6
  num_nodes: int = 15

  needs_hidden = True

  def __post_init__(self):
    if self.mode not in EAGLE_MODES:
      raise ValueError(f"mode={self.mode!r} is not one of {EAGLE_MODES}")
    if not isinstance(self.config, eagle_lib.EagleConfig):
      raise ValueError(f"config must be an EagleConfig, got {type(self.config).__name__}")
    if not isinstance(self.target, LlamaLM):
      raise ValueError(f"target must be a LlamaLM, got {type(self.target).__name__}")
    if self.target.config.hidden_size != self.config.hidden_size:
      raise ValueError(f"target hidden_size={self.target.config.hidden_size} != "
                       f"EagleConfig.hidden_size={self.config.hidden_size}")
    for name in ("gamma", "top_k", "num_nodes"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name}={v!r} must be an int >= 1")
    pool = 1 + self.top_k + (self.gamma - 1) * self.top_k ** 2
    if self.mode == "eagle" and self.num_nodes + 1 > pool:
      raise ValueError(f"num_nodes={self.num_nodes} exceeds the EAGLE candidate pool "
                       f"({pool - 1}) of top_k={self.top_k}, gamma={self.gamma}")

  @property
  def sibling_rule(self) -> str:
    return "iid" if self.mode == "chain" else "topk"

  @property
  def tree_size(self) -> int:
    return self.gamma + 1 if self.mode == "chain" else self.num_nodes + 1

  @property
  def max_depth(self) -> int:
    return self.gamma

  @property
  def vocab_size(self) -> int:
    return self.target.config.vocab_size

  def _head(self, params, feat_prev, toks, positions, mask, cache, write_start):
    """``(f^ [B, n, E], draft logits [B, n, V_d], cache)`` of pairs written at ``write_start``."""
    feat, cache = eagle_lib.apply_head(params, feat_prev, toks, positions, mask, cache,
                                       write_start, config=self.config)
    return feat, eagle_lib.draft_logits(params, feat), cache

  def init(self, params, prompt, first_slot, *, cache_len: int):
    b, p = prompt.shape
    s_len = cache_len + self.gamma * max(self.top_k, 1) + self.gamma + 2
    slots = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[None], (b, p))
    pos = jnp.maximum(slots - first_slot[:, None], 0)
    mask = causal_cache_mask(slots, first_slot, p)
    hidden = self.target(params["target"], prompt, pos, mask, None, None,
                         logits_at=slots, return_hidden=True).hidden
    feats = jnp.zeros((b, s_len, self.config.hidden_size), jnp.float32)
    feats = feats.at[:, :p].set(hidden.astype(jnp.float32))
    prev = self._previous_features(feats, slots, first_slot)
    _, _, cache = self._head(params, prev, prompt, pos,
                             causal_cache_mask(slots, first_slot, s_len),
                             self.config.init_cache(b, s_len), jnp.zeros((b,), jnp.int32))
    node_feat = jnp.zeros((b, self.tree_size, self.config.hidden_size), jnp.float32)
    return EagleState(cache, feats, node_feat)

  @staticmethod
  def _previous_features(feats, slots, first_slot):
    """``feats[b, slots - 1]``, zero at (and before) a row's first slot."""
    prev = jnp.take_along_axis(feats, jnp.maximum(slots - 1, 0)[..., None], axis=1)
    return jnp.where((slots > first_slot[:, None])[..., None], prev, 0.0)

  def _catch_up(self, params, state, ctx: DraftContext):
    """Re-feeds the last ``D + 1`` committed slots (root included) -> ``(f^_root, logits)``."""
    b = ctx.root.shape[0]
    rows = jnp.arange(b)
    feats = state.feats.at[rows, jnp.maximum(ctx.root_slot - 1, 0)].set(
        ctx.hidden.astype(jnp.float32))
    width = self.gamma + 1
    start = jnp.maximum(ctx.first_slot, ctx.root_slot - width + 1)
    slots = start[:, None] + jnp.arange(width)[None]
    hist = jnp.take_along_axis(ctx.history, jnp.clip(slots, 0, ctx.history.shape[1] - 1), axis=1)
    toks = jnp.where(slots == ctx.root_slot[:, None], ctx.root[:, None], hist)
    s_len = state.cache.max_len
    feat, logits, cache = self._head(params, self._previous_features(feats, slots, ctx.first_slot),
                                     toks, slots - ctx.first_slot[:, None],
                                     causal_cache_mask(slots, ctx.first_slot, s_len), state.cache,
                                     start)
    at = (ctx.root_slot - start)[:, None, None]
    f_root = jnp.take_along_axis(feat, at, axis=1)[:, 0]
    lg_root = jnp.take_along_axis(logits, at, axis=1)[:, 0]
    return feats, cache, f_root, lg_root

  def _score_nodes(self, params, cache, ctx, feat_prev, toks, write_start, depth, anc):
    """Tree nodes ``toks [B, n]`` at slots ``write_start + i``, seeing the prefix, the root and
    the scratch slots ``root_slot + j`` with ``anc[b, i, j]``."""
    mask = trees_lib.tree_mask(anc, root_slot=ctx.root_slot, first_slot=ctx.first_slot)
    pos = jnp.broadcast_to(ctx.root_position[:, None] + depth, toks.shape)
    return self._head(params, feat_prev, toks, pos, mask.to_dense(cache.max_len), cache,
                      write_start)

  def draft(self, rng_key, params, state, ctx: DraftContext, *, processor):
    feats, cache, f_root, lg_root = self._catch_up(params, state, ctx)
    if self.mode == "chain":
      cache, draft, node_feat = self._draft_chain(rng_key, params, cache, ctx, f_root, lg_root,
                                                  processor)
    else:
      cache, draft, node_feat = self._draft_tree(params, cache, ctx, f_root, lg_root)
    return EagleState(cache, feats, node_feat), draft

  def _draft_chain(self, rng_key, params, cache, ctx, f_root, lg_root, processor):
    b = ctx.root.shape[0]
    v = self.vocab_size
    t = self.gamma + 1
    tokens = [ctx.root.astype(jnp.int32)]
    probs = []
    node_feat = [ctx.hidden.astype(jnp.float32)]
    f_cur, lg_cur = f_root, lg_root
    for d in range(1, t):
      z = processor(eagle_lib.full_vocab_logits(params, lg_cur, v))
      logq = jax.nn.log_softmax(z, axis=-1)
      child = jax.random.categorical(jax.random.fold_in(rng_key, d), logq).astype(jnp.int32)
      tokens.append(child)
      probs.append(jnp.exp(logq))
      node_feat.append(f_cur)
      if d < t - 1:  # score the child to draw its own child
        slot = ctx.root_slot + d
        f_new, lg_new, cache = self._head(
            params, f_cur[:, None], child[:, None], (slot - ctx.first_slot)[:, None],
            causal_cache_mask(slot[:, None], ctx.first_slot, cache.max_len), cache, slot)
        f_cur, lg_cur = f_new[:, 0], lg_new[:, 0]
    probs.append(jnp.zeros((b, v), jnp.float32))  # the leaf has no children: never read
    tree = trees_lib.TreeSpec.chain(self.gamma).tree(jnp.stack(tokens, axis=1))
    return cache, Draft(tree, jnp.stack(probs, axis=1)), jnp.stack(node_feat, axis=1)

  def _draft_tree(self, params, cache, ctx, f_root, lg_root):
    b = ctx.root.shape[0]
    k, d_max = self.top_k, self.gamma
    ids = params["vocab_ids"]
    # Feature table: 0 = the root's input (true) feature, 1 = f^_root, 2 + (d-1) k + j = f^ of
    # the j-th beam of depth d. Every pool candidate records the row it is fed with (`src`).
    table = [ctx.hidden.astype(jnp.float32)[:, None], f_root[:, None]]
    lq = jax.nn.log_softmax(lg_root, axis=-1)
    beam_sc, beam_idx = jax.lax.top_k(lq, k)
    beam_tok = ids[beam_idx]
    pool_tok = [ctx.root[:, None].astype(jnp.int32), beam_tok]
    pool_sc = [jnp.zeros((b, 1)), beam_sc]
    pool_par = [jnp.full((b, 1), -1, jnp.int32), jnp.zeros((b, k), jnp.int32)]
    pool_src = [jnp.zeros((b, 1), jnp.int32), jnp.ones((b, k), jnp.int32)]
    pool_depth = [0] + [1] * k
    beam_pool = jnp.broadcast_to(jnp.arange(1, k + 1, dtype=jnp.int32), (b, k))
    beam_feat = jnp.broadcast_to(f_root[:, None], (b, k, f_root.shape[-1]))
    region = 1 + d_max * k  # scratch offsets from root_slot: 0 = root, then k per depth
    beam_anc = jnp.zeros((b, k, region), bool).at[:, :, 0].set(True)
    beam_anc = beam_anc.at[:, jnp.arange(k), 1 + jnp.arange(k)].set(True)
    size = 1 + k
    for d in range(1, d_max):
      f_beam, lg, cache = self._score_nodes(params, cache, ctx, beam_feat, beam_tok,
                                            ctx.root_slot + 1 + (d - 1) * k, d, beam_anc)
      table.append(f_beam)
      csc, cidx = jax.lax.top_k(jax.nn.log_softmax(lg, axis=-1), k)  # [B, k, k]
      csc = (beam_sc[:, :, None] + csc).reshape(b, k * k)
      ctok = ids[cidx].reshape(b, k * k)
      pool_tok.append(ctok)
      pool_sc.append(csc)
      pool_par.append(jnp.repeat(beam_pool, k, axis=1))
      pool_src.append(jnp.broadcast_to(
          jnp.repeat(2 + (d - 1) * k + jnp.arange(k, dtype=jnp.int32), k), (b, k * k)))
      pool_depth += [d + 1] * (k * k)
      beam_sc, top = jax.lax.top_k(csc, k)
      from_beam = top // k
      beam_tok = jnp.take_along_axis(ctok, top, axis=1)
      beam_pool = size + top
      beam_feat = jnp.take_along_axis(f_beam, from_beam[:, :, None], axis=1)
      beam_anc = jnp.take_along_axis(beam_anc, from_beam[:, :, None], axis=1)
      beam_anc = beam_anc.at[:, jnp.arange(k), 1 + d * k + jnp.arange(k)].set(True)
      size += k * k
    pool_tok, pool_sc, pool_par, pool_src = (jnp.concatenate(x, axis=1) for x in
                                             (pool_tok, pool_sc, pool_par, pool_src))
    kept, tpar, valid = trees_lib.eagle_select(pool_sc, pool_par, num_nodes=self.num_nodes)
    tokens = jnp.take_along_axis(pool_tok, kept, axis=1).at[:, 0].set(ctx.root)
    depth = jnp.asarray(pool_depth, jnp.int32)[kept]
    valid = trees_lib.close_valid(tpar, valid)
    src = jnp.take_along_axis(pool_src, kept, axis=1)
    node_feat = jnp.take_along_axis(jnp.concatenate(table, axis=1), src[:, :, None], axis=1)
    return cache, Draft(trees_lib.Tree(tokens, tpar, depth, valid), None), node_feat

  def commit(self, params, state, info):
    """Records the guessed features of the accepted drafts: ``feats[root_slot + j - 1] =
    node_feat[path[j]]`` for ``1 <= j <= num_accepted`` (active rows)."""
    del params
    b, s_len = state.feats.shape[:2]
    j = jnp.arange(1, info.path.shape[1])[None]
    ok = (j <= info.num_accepted[:, None]) & info.active[:, None] & (info.path[:, 1:] >= 0)
    feat = jnp.take_along_axis(state.node_feat, jnp.maximum(info.path[:, 1:], 0)[..., None],
                               axis=1)
    dst = jnp.where(ok, info.root_slot[:, None] + j - 1, s_len)
    feats = state.feats.at[jnp.arange(b)[:, None], dst].set(feat, mode="drop")
    return state._replace(feats=feats)
