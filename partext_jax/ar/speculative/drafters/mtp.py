"""The multi-token-prediction drafter: Gloeckle et al. heads and DeepSeek-V3 module chains.

``docs/algorithms.md#multi-token-prediction``. The target is an
:class:`partext_jax.models.mtp.MTPModel` (frozen trunk + predictors): its next-token logits are
the trunk's, so verification is against the trunk, and its ``hidden`` output at the node that
produced the root (``ctx.hidden``) already holds the predictors' LM-head inputs, so drafting is
one pass over the shared LM head ``W`` and no forward. ``D`` = ``config.depth``.

* **Gloeckle heads** (Gloeckle et al. 2024; self-speculative as Stern et al. 2018). Head ``k + 1``
  at the node predicts the token ``k`` places after the root, independently of the others.
  ``choices=None``: a chain; the depth-``k`` draft is drawn from ``q_k = softmax(processor(r_k
  W))`` (argmax under greedy), ``sibling_rule = "iid"`` with ``draft_probs[:, k - 1] = q_k``.
  A static tree (``choices``, Medusa-style ranks per head): the ranked top tokens of each head,
  ``sibling_rule = "topk"``.
* **DeepSeek modules** (DeepSeek-AI 2024). A causal chain: module 1 reads the root. The target ran
  the chain for each of its ``num_roots`` most likely next tokens (``MTPModel``); the drafter
  recomputes these candidates from ``h`` (the first ``E`` floats of ``ctx.hidden``) and takes the
  chain of the candidate equal to the root (none: nothing is drafted). The depth-1 draft is drawn
  from module 1's ``q_1 = softmax(processor(logits_1))``; deeper drafts are the chain's argmax
  tokens ``d_2 .. d_D``, which the target computed assuming ``d_1 = argmax logits_1``: they are
  kept only when the drawn ``d_1`` equals it (always under greedy). ``sibling_rule = "iid"`` with
  ``draft_probs[:, 0] = q_1`` and one-hot ``q`` at the deeper (deterministic) nodes, where the
  i.i.d. rule reduces to accepting ``x`` w.p. ``p(x)`` with residual ``p`` minus ``x``.

Both are lossless through :func:`partext_jax.ar.speculative.verify.verify` (greedy: exact match,
the output equals plain greedy decoding of the trunk).

Usage::

    model = MTPModel(trunk, cfg)
    drafter = MTPDrafter(cfg, trunk.config)
    tokens, info = decode.generate(key, model, {"trunk": tp, "mtp": mp}, prompts,
                                   drafter=drafter,
                                   drafter_params=drafter_params(tp, base_config=trunk.config),
                                   max_new_tokens=64)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from partext_jax.ar.speculative import trees as trees_lib
from partext_jax.ar.speculative.drafters import medusa as medusa_drafter
from partext_jax.ar.speculative.drafters.base import BaseDrafter, Draft
from partext_jax.models.medusa import lm_head_logits
from partext_jax.models.mtp import MTPConfig


def drafter_params(trunk_params, *, base_config):
  """The drafter's parameters: the trunk's LM head (the same arrays, no copy)."""
  return medusa_drafter.drafter_params(None, trunk_params, base_config=base_config)["base"]


@dataclasses.dataclass(frozen=True)
class MTPDrafter(BaseDrafter):
  """MTP predictors as a :mod:`partext_jax.ar.speculative.drafters` protocol drafter (module
  docstring). Use it with an :class:`~partext_jax.models.mtp.MTPModel` target of the same
  ``config``.

  Attributes:
    config: the predictors' :class:`~partext_jax.models.mtp.MTPConfig`.
    base_config: the trunk's config (LM-head layout and dtype; ``hidden_size`` must match).
    choices: Gloeckle only: a static tree of per-head ranks (Medusa-style, depth ``<= D``);
      ``None`` drafts the chain of ``D`` tokens.

  Raises ``ValueError`` for a config that is not an ``MTPConfig``, a width other than the
  trunk's, ``choices`` with DeepSeek modules or deeper than ``D``, and (while tracing) a target
  whose ``hidden`` is not an ``MTPModel``'s of this config.
  """

  config: MTPConfig
  base_config: object
  choices: tuple | None = None

  needs_hidden = True

  def __post_init__(self):
    if not isinstance(self.config, MTPConfig):
      raise ValueError(f"config must be an MTPConfig, got {type(self.config).__name__}")
    width = getattr(self.base_config, "hidden_size", None)
    if width != self.config.hidden_size:
      raise ValueError(f"base_config.hidden_size={width} != MTPConfig.hidden_size="
                       f"{self.config.hidden_size}")
    if self.choices is not None:
      if self.config.kind != "gloeckle":
        raise ValueError("choices (a static tree) needs kind='gloeckle' heads; DeepSeek modules "
                         "draft a causal chain")
      spec = trees_lib.TreeSpec.from_choices(self.choices)
      if spec.max_depth > self.config.depth:
        raise ValueError(f"choices reach depth {spec.max_depth} but the heads predict only "
                         f"depth={self.config.depth} tokens ahead")
      object.__setattr__(self, "choices", spec.choices)

  @property
  def spec(self) -> trees_lib.TreeSpec:
    if self.choices is None:
      return trees_lib.TreeSpec.chain(self.config.depth)
    return trees_lib.TreeSpec.from_choices(self.choices)

  @property
  def sibling_rule(self) -> str:
    return "iid" if self.choices is None else "topk"

  @property
  def vocab_size(self) -> int:
    return self.config.vocab_size

  def _rows(self, hidden):
    e, d = self.config.hidden_size, self.config.depth
    width = hidden.shape[-1]
    ok = (width == d * e if self.config.kind == "gloeckle"
          else width > e and (width // e - 1) % d == 0 and width % e == 0)
    if not ok:
      raise ValueError(f"ctx.hidden has width {width}, not the hidden output of an MTPModel with "
                       f"this MTPConfig (kind={self.config.kind!r}, depth={d}, hidden_size={e}):"
                       " pass MTPModel(trunk, config) as the target")
    return hidden.reshape(hidden.shape[0], width // e, e)

  def draft(self, rng_key, params, state, ctx, *, processor):
    rows = self._rows(ctx.hidden)
    b, d = rows.shape[0], self.config.depth
    # One pass over the shared LM head for every row the drafter reads.
    logits = lm_head_logits(rows, params, base_config=self.base_config)  # [B, R, V]
    if self.config.kind == "gloeckle" and self.choices is not None:
      spec = self.spec
      tokens = medusa_drafter.draft_tree_tokens(jnp.swapaxes(logits, 0, 1), ctx.root, spec=spec)
      return state, Draft(spec.tree(tokens), None)
    if self.config.kind == "gloeckle":
      head = logits  # [B, D, V]: q_k for the depth-k draft
      valid = jnp.ones((b, d), bool)
    else:
      m = (rows.shape[1] - 1) // d
      _, cand = jax.lax.top_k(logits[:, 0], m)  # the target's candidate roots
      match = cand == ctx.root[:, None]
      pick = jnp.argmax(match, axis=1)
      head = logits[:, 1:].reshape(b, m, d, -1)[jnp.arange(b), pick]  # [B, D, V]
      valid = jnp.broadcast_to(jnp.any(match, axis=1)[:, None], (b, d))
    v = head.shape[-1]
    logq = jax.nn.log_softmax(processor(head.reshape(b * d, v)).reshape(b, d, v), axis=-1)
    keys = jax.random.split(rng_key, d)
    drawn = jax.vmap(lambda k, lq: jax.random.categorical(k, lq, axis=-1), in_axes=(0, 1),
                     out_axes=1)(keys, logq).astype(jnp.int32)  # [B, D]
    probs = jnp.exp(logq)
    if self.config.kind == "deepseek" and d > 1:
      # d_2 .. d_D were computed by the target assuming d_1 = argmax logits_1.
      chain = jnp.argmax(head, axis=-1).astype(jnp.int32)
      drawn = drawn.at[:, 1:].set(chain[:, 1:])
      valid = valid.at[:, 1:].set(valid[:, 1:] & (drawn[:, :1] == chain[:, :1]))
      probs = probs.at[:, 1:].set(jax.nn.one_hot(chain[:, 1:], v, dtype=probs.dtype))
    tokens = jnp.concatenate([ctx.root[:, None].astype(jnp.int32), drawn], axis=1)
    # draft_probs[:, i]: the law node i's child was drawn from (the leaf has none).
    probs = jnp.concatenate([probs, jnp.zeros((b, 1, v), probs.dtype)], axis=1)
    valid = jnp.concatenate([jnp.ones((b, 1), bool), valid], axis=1)
    return state, Draft(self.spec.tree(tokens, valid), probs)
