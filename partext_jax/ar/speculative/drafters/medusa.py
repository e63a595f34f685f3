"""The Medusa drafter: static token trees filled from the heads of :mod:`partext_jax.models.medusa`.

Cai et al. (2024), "Medusa"; ``docs/algorithms.md#drafters``. Head ``k`` guesses the token ``k``
places after the target's next token from the target's final hidden state (see
:mod:`partext_jax.models.medusa` for the heads).

Static trees (Medusa "choices", :meth:`partext_jax.ar.speculative.trees.TreeSpec.from_choices`).
A choice is a tuple ``(c_1, .., c_d)`` of ranks: the node reached by taking the ``c_1``-th most
likely token of head 1, then the ``c_2``-th of head 2, ... The root (node 0) is the last
committed token ``x_{t+1}``, which the target itself produced from ``h_t`` (the decoder hands
``h_t`` to the drafter); the tree has ``T = 1 + len(choices)`` nodes, sorted by depth then
lexicographically, so ``parent[i] < i``. Node ``i`` at depth ``d >= 1`` is a guess for
``x_{t+1+d}`` and holds ``top_{c_d}(logits_d(t))``: the token depends only on the depth and the
rank, not on the path -- a Medusa tree is a set of Cartesian-product paths over per-head top-k
lists. Siblings are deterministic distinct top-k tokens, so a lossless verifier must use the
deterministic-sibling rule (greedy: accept the child equal to the target's argmax; sampling:
accept ``x`` w.p. ``p(x)``, then zero ``p(x)`` and renormalise). Medusa's own "typical
acceptance" is lossy and is not used here.

Usage::

    mcfg = MedusaConfig(num_heads=4, hidden_size=576)
    mparams = init_params(jax.random.key(0), mcfg)
    logits = head_logits(mparams, hidden, base_params, config=mcfg, base_config=llama_cfg)
    spec = TreeSpec.from_choices(DEFAULT_CHOICES)
    tokens = draft_tree_tokens(logits[:, :, -1], root_token, spec=spec)   # int32[B, T]

    # Inside the speculative decoder (lossless: greedy output == plain greedy decoding):
    drafter = MedusaDrafter(mcfg, llama_cfg, choices=DEFAULT_CHOICES)
    tokens, info = decode.generate(key, model, params, prompts, drafter=drafter,
                                   drafter_params=drafter_params(mparams, params,
                                                                 base_config=llama_cfg),
                                   max_new_tokens=64)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.ar.speculative import trees as trees_lib
from partext_jax.ar.speculative.drafters.base import BaseDrafter, Draft
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


def draft_tree_tokens(logits, root_token, *, spec: trees_lib.TreeSpec):
  """Fills a static Medusa tree with tokens: ``int32[B, T]``.

  Args:
    logits: ``float[K, B, V]`` head logits at the last accepted position (``K >= max depth``).
    root_token: ``int[B]`` the target's next token (node 0).
    spec: the tree (:meth:`~partext_jax.ar.speculative.trees.TreeSpec.from_choices`).
  ``tokens[:, i] = top_{rank[i]}(logits[depth[i] - 1])`` for ``i >= 1``, ``rank`` the sibling
  rank (ties broken by lower id, as ``lax.top_k``). Raises ``ValueError`` if there are fewer
  heads than the tree is deep.
  """
  if logits.shape[0] < spec.max_depth:
    raise ValueError(f"tree depth {spec.max_depth} needs >= that many heads; logits has "
                     f"{logits.shape[0]}")
  _, ids = jax.lax.top_k(logits[:spec.max_depth], spec.max_children)  # [D, B, max_children]
  d = np.asarray(spec.depth[1:]) - 1
  nodes = ids[d, :, np.asarray(spec.sibling_rank[1:])].T  # [B, T - 1]
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
class MedusaDrafter(BaseDrafter):
  """Medusa heads as a :mod:`partext_jax.ar.speculative.drafters` protocol drafter.

  At every step the decode loop hands over ``ctx.hidden = h`` (the target's final hidden state at
  the node whose logits produced the root ``x_t``); head ``d`` proposes ``x_{t+d}`` and the static
  tree of ``choices`` is filled by :func:`draft_tree_tokens`. Siblings are distinct deterministic
  top-k tokens: ``sibling_rule = "topk"`` (greedy decoding uses exact match), which keeps
  verification lossless whatever the heads predict -- untrained heads only lower acceptance.
  The processor is not applied to the heads (top-k ranks of raw logits; a greedy processor would
  leave a single finite logit).

  Raises ``ValueError`` for a config that is not a ``MedusaConfig``, a width other than the
  base model's, bad ``choices``
  (:meth:`~partext_jax.ar.speculative.trees.TreeSpec.from_choices`) or a tree deeper than
  ``num_heads``.

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
    spec = trees_lib.TreeSpec.from_choices(self.choices)
    if spec.max_depth > self.config.num_heads:
      raise ValueError(f"choices reach depth {spec.max_depth} but there are only "
                       f"num_heads={self.config.num_heads} Medusa heads")
    object.__setattr__(self, "choices", spec.choices)  # canonical (sorted, hashable) form

  @property
  def spec(self) -> trees_lib.TreeSpec:
    return trees_lib.TreeSpec.from_choices(self.choices)

  @property
  def vocab_size(self) -> int:
    return self.base_config.vocab_size

  def draft(self, rng_key, params, state, ctx, *, processor):
    del rng_key, processor
    spec = self.spec
    # Only the heads the tree reaches (each one is a pass over the [V, E] LM head).
    d = spec.max_depth
    heads = jax.tree_util.tree_map(lambda x: x[:d], params["heads"])
    logits = head_logits(heads, ctx.hidden, params["base"],
                         config=dataclasses.replace(self.config, num_heads=d),
                         base_config=self.base_config)  # [D, B, V]
    return state, Draft(spec.tree(draft_tree_tokens(logits, ctx.root, spec=spec)), None)
