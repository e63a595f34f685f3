"""Prompt lookup: training-free n-gram drafting from the prompt and the text so far.

Saxena (2023), "Prompt Lookup Decoding"; ``docs/algorithms.md#drafters``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from partext_jax.ar.speculative import trees as trees_lib
from partext_jax.ar.speculative.drafters.base import BaseDrafter, Draft, DraftContext


@dataclasses.dataclass(frozen=True)
class PromptLookupDrafter(BaseDrafter):
  """Training-free n-gram drafting from the prompt and the text generated so far.

  Find the latest earlier occurrence of the last ``n`` committed tokens (``n`` from ``max_ngram``
  down to ``min_ngram``; the longest match wins) and propose the ``gamma`` tokens that followed
  it as a chain. Deterministic: ``sibling_rule = "topk"`` (accept ``x`` w.p. ``p(x)``).
  No match leaves the chain invalid (the step then yields the target's own token).
  """

  gamma: int = 8
  max_ngram: int = 3
  min_ngram: int = 1

  def __post_init__(self):
    if not isinstance(self.gamma, int) or self.gamma < 1:
      raise ValueError(f"gamma={self.gamma!r} must be an int >= 1")
    if not 1 <= self.min_ngram <= self.max_ngram:
      raise ValueError(f"need 1 <= min_ngram ({self.min_ngram}) <= max_ngram ({self.max_ngram})")

  sibling_rule = "topk"
  may_draft_nothing = True  # no match: an empty draft (decode.generate's cheap 1-token step)

  @property
  def spec(self) -> trees_lib.TreeSpec:
    return trees_lib.TreeSpec.chain(self.gamma)

  def draft(self, rng_key, params, state, ctx: DraftContext, *, processor):
    h, rs, first = ctx.history, ctx.root_slot, ctx.first_slot
    b, s_len = h.shape
    j = jnp.arange(s_len)[None]
    # Token at the root is ctx.root (history holds it too).
    match = jnp.ones((b, s_len), bool)
    best = jnp.full((b,), -1, jnp.int32)
    found = jnp.zeros((b,), bool)
    runs = []
    for k in range(self.max_ngram):
      hk = jnp.take_along_axis(h, jnp.clip(j - k, 0, s_len - 1), axis=1)
      tk = jnp.take_along_axis(h, jnp.clip(rs - k, 0, s_len - 1)[:, None], axis=1)
      match = match & (hk == tk) & (j - k >= first[:, None]) & (rs[:, None] - k >= first[:, None])
      runs.append(match & (j < rs[:, None]))
    for k in range(self.max_ngram, self.min_ngram - 1, -1):
      m = runs[k - 1]
      last = jnp.max(jnp.where(m, j, -1), axis=1).astype(jnp.int32)
      take = ~found & (last >= 0)
      best = jnp.where(take, last, best)
      found = found | take
    idx = best[:, None] + 1 + jnp.arange(self.gamma)[None]
    cont = jnp.take_along_axis(h, jnp.clip(idx, 0, s_len - 1), axis=1)
    ok = found[:, None] & (idx <= rs[:, None])
    tokens = jnp.concatenate([ctx.root[:, None], cont], axis=1).astype(jnp.int32)
    valid = jnp.concatenate([jnp.ones((b, 1), bool), ok], axis=1)
    return state, Draft(self.spec.tree(tokens, valid), None)

