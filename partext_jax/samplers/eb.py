r"""EB-sampler: entropy-bounded unmasking (Ben-Hamu et al. 2025; survey eq. 16).

Same frame as :mod:`partext_jax.samplers.confidence` (``x0 ~ softmax(logits / tau)``, only
masked / in-block positions eligible, chosen positions take ``x0``, decoded tokens are never
revisited); the rule chooses *how many* tokens to decode from an error proxy, the entropy of the
untempered ``p_i = softmax(logits_i)``:

    H_i = -sum_v p_i(v) log p_i(v)                                   (nats)

Sort the eligible positions by entropy *ascending*, ``H_(1) <= H_(2) <= ...``, and take the
largest prefix ``U = {(1), ..., (n)}``, ``n >= 1``, with

    sum_{j in U} H_j - max_{j in U} H_j  =  H_(1) + ... + H_(n-1)  <=  gamma.

The left side bounds the error of decoding ``U`` from its marginals in one step: the KL from
the true joint of ``x_U`` to the product of its marginals is ``sum_U H_j - H(x_U) <= sum_U H_j -
max_U H_j`` (a joint entropy is at least each marginal one). ``gamma = 0``
decodes exactly one token per step (the lowest-entropy one), unless the lowest entropies are
exactly 0 (deterministic tokens: they join for free, no error). Note the prefix is taken in
*sorted* order: one public copy accumulates the entropies in positional order, which is wrong.

``threshold`` (optional): additionally decode every eligible position whose max probability is
``>= threshold`` (the Fast-dLLM confident-token rule, as a union with the entropy bound).

The sampler runs until the window has no MASK: a ``lax.while_loop`` capped at
``gen_length`` (= ``L`` without blocks) steps, since every step decodes at least one token of
every unfinished row; ``info.nfe`` counts the denoiser calls (their sum is the NFE). Block
mode (``block_length=``) works as for the confidence family (:mod:`partext_jax.samplers.semi_ar`).

Exactness: with ``gamma = 0``, ``temperature = 1`` and an exact denoiser of a joint the sampler
draws the joint exactly (one token per step, position chosen from the current state; see
:mod:`partext_jax.samplers.confidence`).

Example::

    sampler = eb_sampler(denoise_fn, mask_id=V, gamma=0.01)
    tokens, info = sampler.sample(jax.random.key(0), x)
    int(info.nfe.sum())             # denoiser calls, at most L
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from partext_jax.samplers.base import DenoiseFn, MaskedSampler
from partext_jax.samplers.confidence import (DecodeConfig, _check_float, _take_prefix,
                                             confidence_scores, descending_rank, entropy,
                                             make_sampler)


def select_entropy_bound(entropies, eligible, gamma):
  """``bool[L]``: the largest prefix of eligible positions sorted by entropy ascending with
  ``sum H - max H <= gamma``, at least one (one row).

  Example: entropies ``(0.3, 0.1, 0.2)``, ``gamma = 0.15`` -> sorted ``0.1, 0.2, 0.3``; prefix
  sums without the last ``0, 0.1, 0.3``: take positions 1 and 2.
  """
  rank = descending_rank(-entropies, eligible)
  order = jnp.argsort(rank)                                   # position at each rank
  sorted_h = jnp.where(eligible[order], entropies[order], 0.0)
  # sum of the n - 1 smallest = sum_U H - max_U H for U the n lowest-entropy positions.
  excl = jnp.concatenate([jnp.zeros((1,), sorted_h.dtype), jnp.cumsum(sorted_h)[:-1]])
  return _take_prefix(rank, eligible, excl[rank] <= gamma)


@dataclasses.dataclass(frozen=True)
class EntropyBoundRule:
  """EB rule: largest entropy-sorted prefix with ``sum H - max H <= gamma`` (>= 1 token), union
  the positions with ``max_prob >= threshold`` if ``threshold`` is set."""
  gamma: float = 0.0
  threshold: Any = None
  uses_count_schedule = False

  def __post_init__(self):
    object.__setattr__(self, "gamma", _check_float("gamma", self.gamma, lo=0.0))
    object.__setattr__(self, "threshold", _check_float("threshold", self.threshold,
                                                       allow_none=True))

  def select(self, gumbel, logits, x0, eligible, k):
    del gumbel, k
    chosen = select_entropy_bound(entropy(logits), eligible, self.gamma)
    if self.threshold is not None:
      chosen = chosen | (eligible & (confidence_scores(logits, x0, "max_prob")
                                     >= self.threshold))
    return chosen


def eb_sampler(denoise_fn: DenoiseFn, *, mask_id: int, gamma: float = 0.0, threshold=None,
               temperature: float = 0.0, block_length=None, gen_length=None,
               record_trajectory: bool = False) -> MaskedSampler:
  """Builds an EB-sampler :class:`MaskedSampler` (math in the module docstring).

  Args:
    denoise_fn: ``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]``.
    mask_id: the MASK token id, ``>= V``.
    gamma: entropy budget ``>= 0`` (nats); 0 decodes one token per step.
    threshold: optional; also decode every eligible position with max prob ``>= threshold``.
    temperature: ``tau >= 0`` of the token draw (0: argmax); the entropy uses ``tau = 1``.
    block_length, gen_length: semi-autoregressive blocks (:mod:`partext_jax.samplers.semi_ar`).
    record_trajectory: also return the tokens after every step in ``info.tokens``.

  Returns:
    ``MaskedSampler``; ``sample`` returns ``(tokens, DecodeInfo)`` with a leading
    ``[gen_length]`` step axis.
  """
  config = DecodeConfig(mask_id=mask_id, rule=EntropyBoundRule(gamma=gamma, threshold=threshold),
                        temperature=temperature, block_length=block_length,
                        gen_length=gen_length, record_trajectory=record_trajectory)
  return make_sampler(denoise_fn, config)
