r"""Unmasking rules of the adaptive samplers: which masked positions to decode at a step.

Every rule is a frozen (hashable) dataclass derived from :class:`Rule`, with
``select(gumbel float32[L], logits float32[L, V], x0 int32[L], eligible bool[L], k int32[])
-> bool[L]`` for one row and a class constant ``uses_count_schedule`` (``True`` for top-k,
which runs a fixed ``num_steps`` with LLaDA's per-step counts ``k``). ``gumbel`` is standard
Gumbel noise for a stochastic position choice, independent of the noise that drew ``x0``.
The frame that runs them is :mod:`partext_jax.masked.adaptive`; the math of each rule is in
``docs/algorithms.md#confidence-based-adaptive-decoding`` and ``docs/algorithms.md#eb-sampler``.

:data:`RULES` maps a rule name to its class: ``make_rule(name, **hyper_parameters)`` builds one
(the confidence and block-cache samplers take their ``rule=`` by name through it). A new rule is
one dataclass here (its float hyper-parameters checked through ``FLOAT_BOUNDS``) plus one line
in :data:`RULES`.

Rules:

* ``"topk"`` (:class:`TopKRule`, LLaDA, Nie et al. 2025): the ``k_j`` most confident eligible
  positions, ``k_j = floor(n / S) + [j < n mod S]``; with ``alg_temp`` (Dream, Ye et al. 2025)
  Gumbel-top-k positions.
* ``"threshold"`` (:class:`ThresholdRule`, Fast-dLLM, Wu et al. 2025): the top-1, plus every
  eligible position with ``conf >= threshold``.
* ``"factor"`` (:class:`FactorRule`, Fast-dLLM): the largest ``n >= 1`` with
  ``(n + 1)(1 - c_(n)) < factor`` (without the reference's last-index quirk).
* ``"eb"`` (:class:`EntropyBoundRule`, Ben-Hamu et al. 2025): the largest entropy-sorted prefix
  with ``sum H - max H <= gamma``.

Confidence proxies (from the *untempered* ``p = softmax(logits)``): ``max_prob`` ``max_v p(v)``,
``margin`` ``p^(1) - p^(2)``, ``neg_entropy`` ``sum_v p(v) log p(v)``, ``sampled_prob`` ``p(x0)``
(LLaDA's code; depends on the sampled value, so not exact with ``tau = 1``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from partext_jax import ops
from partext_jax.base import checked_choice, checked_float_fields

PROXIES = ("max_prob", "margin", "neg_entropy", "sampled_prob")


# --------------------------------------------------------------------------- scores and selections
def llada_num_transfer(n, num_steps: int):
  """LLaDA's per-step counts ``k_j = floor(n / S) + [j < n mod S]``, ``j = 0..S-1``.

  ``n`` is an int array (any shape); returns ``int32[..., S]`` summing to ``n``.
  Example: ``llada_num_transfer(10, 4) == [3, 3, 2, 2]``.
  """
  n = jnp.asarray(n, jnp.int32)
  j = jnp.arange(num_steps, dtype=jnp.int32)
  return (n[..., None] // num_steps + (j < n[..., None] % num_steps)).astype(jnp.int32)


def confidence_scores(logits, x0, proxy: str):
  """Confidence ``c float32[..., L]`` of each position from the *untempered* ``softmax(logits)``.

  ``max_prob``: ``max_v p(v)``; ``margin``: ``p^(1) - p^(2)``; ``neg_entropy``:
  ``sum_v p(v) log p(v)`` (``0 log 0 = 0``); ``sampled_prob``: ``p(x0)``.
  Example: logits ``log([0.5, 0.3, 0.2])`` give 0.5, 0.2, -1.0297, and ``p(x0)``.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  p = jnp.exp(logp)
  if proxy == "max_prob":
    return jnp.max(p, axis=-1)
  if proxy == "margin":
    if p.shape[-1] == 1:
      return p[..., 0]
    top2 = jax.lax.top_k(p, 2)[0]
    return top2[..., 0] - top2[..., 1]
  if proxy == "neg_entropy":
    return jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
  if proxy == "sampled_prob":
    return jnp.take_along_axis(p, x0[..., None].astype(jnp.int32), axis=-1)[..., 0]
  raise ValueError(f"proxy={proxy!r} is not one of {PROXIES}")


def entropy(logits):
  """``H(softmax(logits)) float32[...]`` in nats (``0 log 0 = 0``)."""
  return -confidence_scores(logits, None, "neg_entropy")


def descending_rank(score, eligible):
  """``int32[L]``: rank of each position when eligible positions are sorted by ``score``
  descending (ties: lower index first); ineligible positions rank after all eligible ones."""
  length = score.shape[-1]
  order = jnp.lexsort((-score, ~eligible))          # last key is primary: eligible first
  return jnp.zeros((length,), jnp.int32).at[order].set(jnp.arange(length, dtype=jnp.int32))


def take_prefix(rank, eligible, accept):
  """The ``n`` top-ranked eligible positions for the largest ``n >= 1`` whose ``accept`` holds
  at rank ``n - 1`` (``accept`` is indexed by position)."""
  n = jnp.max(jnp.where(eligible & accept, rank + 1, 0))
  return eligible & (rank < jnp.maximum(n, 1))


def select_topk(score, eligible, k):
  """``bool[L]``: the ``k`` eligible positions of highest ``score`` (one row)."""
  return eligible & (descending_rank(score, eligible) < k)


def select_threshold(conf, eligible, threshold):
  """``bool[L]``: the most confident eligible position, plus every eligible one with
  ``conf >= threshold`` (Fast-dLLM)."""
  rank = descending_rank(conf, eligible)
  return eligible & ((rank == 0) | (conf >= threshold))


def select_factor(conf, eligible, factor):
  """``bool[L]``: the ``n`` most confident eligible positions, ``n >= 1`` the largest with
  ``(n + 1)(1 - c_(n)) < factor`` (Fast-dLLM's rule without its last-index quirk)."""
  rank = descending_rank(conf, eligible)
  return take_prefix(rank, eligible, (rank + 2).astype(jnp.float32) * (1.0 - conf) < factor)


def token_edits(tokens, logits, editable, edit_threshold: float):
  """LLaDA 2.1's token-to-token (T2T) edit (``docs/algorithms.md#token-editing``).

  A committed position is replaced by the model's top token ``argmax_v p(v)`` when that token
  differs from the current one and ``max_v p(v) > edit_threshold`` (strict, as the reference:
  ``edit_threshold = 1`` never edits), ``p = softmax(logits)`` untempered.

  Args:
    tokens: ``int32[..., L]`` the tokens the logits were computed from.
    logits: ``float32[..., L, V]``.
    editable: ``bool[..., L]`` the positions that may be edited (committed, not prompt).
    edit_threshold: the token-to-token threshold in ``[0, 1]``.

  Returns:
    ``(tokens int32[..., L], edited bool[..., L])``.
  """
  top = ops.argmax(logits)
  conf = confidence_scores(logits, None, "max_prob")
  edited = editable & (top != tokens) & (conf > edit_threshold)
  return jnp.where(edited, top, tokens).astype(tokens.dtype), edited


def sample_x0(rng_key, logits, temperature: float):
  """``int32[..., L]``: a draw from ``softmax(logits / tau)`` at each position
  (:func:`partext_jax.ops.grouped_categorical`, the two-stage Gumbel-max of
  ``docs/algorithms.md#vocabulary-ops``); ``tau = 0``: the argmax (``rng_key`` unused)."""
  if temperature == 0.0:
    return ops.argmax(logits)
  return ops.grouped_categorical(rng_key, logits.astype(jnp.float32) / temperature)


# --------------------------------------------------------------------------- rules

@dataclasses.dataclass(frozen=True)
class Rule:
  """Base of the unmasking rules: a frozen dataclass whose float hyper-parameters, named with
  their :func:`partext_jax.base.checked_float` bounds in ``FLOAT_BOUNDS``, are validated (and
  converted to ``float``) on construction. Subclasses implement ``select`` and set
  ``uses_count_schedule``."""
  uses_count_schedule = False   # class constants, not fields
  FLOAT_BOUNDS = {}

  def __post_init__(self):
    checked_float_fields(self, self.FLOAT_BOUNDS)

  def select(self, gumbel, logits, x0, eligible, k):
    """``bool[L]``: the positions of one row to decode (see the module docstring)."""
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class ProxyRule(Rule):
  """Base of the rules that rank positions by a confidence ``proxy`` (one of ``PROXIES``)."""
  proxy: str = "max_prob"

  def __post_init__(self):
    checked_choice("proxy", self.proxy, PROXIES)
    super().__post_init__()

  def confidence(self, logits, x0):
    """``float32[..., L]``: :func:`confidence_scores` with this rule's proxy."""
    return confidence_scores(logits, x0, self.proxy)


@dataclasses.dataclass(frozen=True)
class TopKRule(ProxyRule):
  """LLaDA's top-k with the per-step count schedule; ``alg_temp`` > 0: Gumbel-top-k positions
  (Dream), i.e. ``k`` draws without replacement from ``softmax(conf / alg_temp)``."""
  alg_temp: Any = None
  uses_count_schedule = True   # needs num_steps and k_j
  FLOAT_BOUNDS = {"alg_temp": dict(lo=0.0, lo_open=True, allow_none=True)}

  def select(self, gumbel, logits, x0, eligible, k):
    score = self.confidence(logits, x0)
    if self.alg_temp is not None:
      score = score / self.alg_temp + gumbel
    return select_topk(score, eligible, k)


@dataclasses.dataclass(frozen=True)
class ThresholdRule(ProxyRule):
  """Fast-dLLM: top-1 plus every eligible position with ``conf >= threshold``."""
  threshold: float = 0.9
  FLOAT_BOUNDS = {"threshold": {}}

  def select(self, gumbel, logits, x0, eligible, k):
    del gumbel, k
    return select_threshold(self.confidence(logits, x0), eligible, self.threshold)


@dataclasses.dataclass(frozen=True)
class FactorRule(ProxyRule):
  """Fast-dLLM's factor rule: the largest ``n >= 1`` with ``(n + 1)(1 - c_(n)) < factor``.

  The reference breaks at the first failing ``n`` and then, if that failure is at the *last*
  sorted position, accepts every position (it cannot tell "failed at the end" from "never
  failed"). We do not copy that quirk: e.g. ``c = (0.99, 0.98, 0.5)``, ``factor = 1``: ``n = 2``
  passes (``3 * 0.02 = 0.06 < 1``), ``n = 3`` fails (``4 * 0.5 = 2``), so we take 2 tokens where
  the reference takes 3. (For ``conf <= 1``, ``(n + 1)(1 - c_(n))`` is non-decreasing in ``n``,
  so "largest n" and "first failure" agree otherwise.)
  """
  factor: float = 1.0
  FLOAT_BOUNDS = {"factor": dict(lo=0.0, lo_open=True)}

  def select(self, gumbel, logits, x0, eligible, k):
    del gumbel, k
    return select_factor(self.confidence(logits, x0), eligible, self.factor)


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
  return take_prefix(rank, eligible, excl[rank] <= gamma)


@dataclasses.dataclass(frozen=True)
class EntropyBoundRule(Rule):
  """EB rule: largest entropy-sorted prefix with ``sum H - max H <= gamma`` (>= 1 token), union
  the positions with ``max_prob >= threshold`` if ``threshold`` is set. At ``gamma = 0`` the
  prefix is every eligible position of entropy exactly 0 plus the lowest-entropy other one."""
  gamma: float = 0.0
  threshold: Any = None
  FLOAT_BOUNDS = {"gamma": dict(lo=0.0), "threshold": dict(allow_none=True)}

  def select(self, gumbel, logits, x0, eligible, k):
    del gumbel, k
    chosen = select_entropy_bound(entropy(logits), eligible, self.gamma)
    if self.threshold is not None:
      chosen = chosen | (eligible & (confidence_scores(logits, x0, "max_prob")
                                     >= self.threshold))
    return chosen


RULES = {"topk": TopKRule, "threshold": ThresholdRule, "factor": FactorRule,
         "eb": EntropyBoundRule}


def make_rule(name: str, **hyper_parameters):
  """The rule called ``name`` (one of :data:`RULES`) with its hyper-parameters.

  ``None`` values take the rule's default; a hyper-parameter the rule does not use raises a
  ``ValueError`` naming the rules that do (e.g. ``threshold`` with ``rule="topk"``).
  """
  checked_choice("rule", name, tuple(RULES))
  cls = RULES[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  for key, value in hyper_parameters.items():
    if value is not None and key not in fields:
      users = tuple(n for n, c in RULES.items() if key in {f.name for f in dataclasses.fields(c)})
      raise ValueError(f"{key}={value!r} is only used by rule in {users} (rule={name!r})")
  return cls(**{k: v for k, v in hyper_parameters.items() if v is not None and k in fields})

