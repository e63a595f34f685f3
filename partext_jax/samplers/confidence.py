r"""Heuristic adaptive decoding: confidence-ordered unmasking (ALGORITHMS.md section 3).

The common frame of LLaDA (``ML-GSAI/LLaDA: generate.py``), Fast-dLLM
(``NVlabs/Fast-dLLM: llada/generate.py``) and Dream (``generation_utils.py``). At every step,
with ``p = p_theta(. | x) = softmax(logits)`` the *untempered* denoiser distribution:

1. ``x0_i ~ softmax(logits_i / tau)`` at every position (``tau = 0``: ``x0_i = argmax p_i``);
2. a confidence ``c_i`` from the untempered ``p_i`` (``proxy``):

   * ``"max_prob"`` (survey eq. 13): ``c_i = max_v p_i(v)``;
   * ``"margin"`` (eq. 14): ``c_i = p_i^(1) - p_i^(2)`` (largest minus second largest);
   * ``"neg_entropy"`` (eq. 15): ``c_i = sum_v p_i(v) log p_i(v) = -H(p_i)``;
   * ``"sampled_prob"``: ``c_i = p_i(x0_i)``, what the LLaDA / Fast-dLLM code computes
     (``= max_prob`` at ``tau = 0``). It depends on the *sampled* values, so unlike the others it
     is not exact with ``tau = 1`` and an exact denoiser (see below).

3. only *eligible* positions (masked, and inside the current block in block mode, see
   :mod:`partext_jax.samplers.semi_ar`) can be chosen; the ``rule`` picks a set ``U`` of them
   (at least one per step while any is eligible);
4. ``x_i <- x0_i`` for ``i in U``; every other position is copied (decoded tokens are never
   revisited; MASK is never emitted).

Rules:

* ``"topk"`` (LLaDA): ``num_steps = S`` steps (per block: ``S / num_blocks``). With ``n`` the
  masked count of the window (block) at its first step, step ``j`` takes the ``k_j`` most
  confident eligible positions, ``k_j = floor(n / S) + [j < n mod S]`` (:func:`llada_num_transfer`;
  ``sum_j k_j = n``). Optional stochastic choice (Dream's ``alg_temp``): the ``k_j`` positions
  are drawn *without replacement* from ``softmax(c / alg_temp)`` over the eligible positions, by
  Gumbel-top-k (``argtop-k(c / alg_temp + Gumbel)``).
* ``"threshold"`` (Fast-dLLM parallel decoding): the top-1 always, plus every eligible position
  with ``c_i >= threshold`` (default 0.9).
* ``"factor"`` (Fast-dLLM's dynamic rule): sort the eligible confidences descending,
  ``c_(1) >= c_(2) >= ...``, and take the ``n`` most confident for the largest ``n >= 1`` with
  ``(n + 1)(1 - c_(n)) < factor`` (``n = 1`` if none; default ``factor = 1``). The reference
  implementation breaks at the first failing ``n`` and then, if that failure is at the *last*
  sorted position, accepts every position anyway (it cannot tell "failed at the end" from "never
  failed"). We do not copy that quirk: e.g. ``c = (0.99, 0.98, 0.5)``, ``factor = 1``: ``n = 2``
  passes (``3 * 0.02 = 0.06 < 1``), ``n = 3`` fails (``4 * 0.5 = 2``), so we take 2 tokens where
  the reference takes 3. (For conf <= 1, ``(n + 1)(1 - c_(n))`` is non-decreasing in ``n``, so
  "largest n" and "first failure" agree otherwise.)

The "topk" rule runs exactly ``num_steps`` steps; the other rules run until the window has no
MASK (a ``lax.while_loop`` capped at ``gen_length`` steps, since every step decodes at least
one token of each unfinished row). Steps in which no row decodes anything (e.g. ``k_j = 0``
when ``n < S``, or after the end) do not call the denoiser.

Exactness with an exact denoiser. If exactly one token is decoded per step, ``tau = 1``, and the
chosen position depends only on the current state (and randomness independent of ``x0``) --
true for ``max_prob``, ``margin``, ``neg_entropy``, with or without ``alg_temp`` -- the sampler
draws the joint exactly: for a fixed outcome ``y`` each position order ``o`` has some probability
``pi(o | y)`` (it is a function of the values revealed so far, all parts of ``y``), and each path
contributes ``prod_k p(y_{o_k} | y_{o_<k}) = p(y)`` (chain rule), so ``P(y) = p(y) sum_o pi(o | y)
= p(y)``. Several tokens per step draw them independently from their marginals (the usual
parallel-decoding error); ``sampled_prob`` picks positions by the drawn values (biased).

Randomness: step ``i`` uses ``fold_in(rng_key, i)`` and row ``r`` then ``fold_in(., r)``, from
which one ``[L, V + 1]`` Gumbel draw (JAX's "high" mode: rare tokens keep their probability)
gives the token noise (``[:, :V]``) and the position noise (``[:, V]``, used by ``alg_temp``):
a row's sample depends only on (key, row index, row contents), not on the rest of the batch.
Pass the *same* key to every :func:`step` call.

Example::

    sampler = confidence(denoise_fn, mask_id=V, rule="topk", num_steps=64, proxy="margin")
    x = jnp.full((8, 64), V, jnp.int32).at[:, :4].set(prompt)
    tokens, info = sampler.sample(jax.random.key(0), x)   # tau = 0: greedy tokens
    info.nfe.sum(), info.num_decoded                      # denoiser calls; tokens per step/row
    fast = confidence(denoise_fn, mask_id=V, rule="threshold", threshold=0.9, block_length=32)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.samplers import semi_ar as blocks
from partext_jax.samplers.base import (DenoiseFn, MaskedSampler, assemble_sampler, checked_int,
                                       model_jit, run_blockwise_loop)

RULES = ("topk", "threshold", "factor")
PROXIES = ("max_prob", "margin", "neg_entropy", "sampled_prob")


# --------------------------------------------------------------------------- pure pieces

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


def _take_prefix(rank, eligible, accept):
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
  return _take_prefix(rank, eligible, (rank + 2).astype(jnp.float32) * (1.0 - conf) < factor)


def _sample_x0(token_gumbel, logits, temperature: float):
  """Gumbel-max: ``argmax(logits / tau + g)`` ~ ``softmax(logits / tau)``; ``tau = 0``: argmax."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits.astype(jnp.float32) / temperature
  return jnp.argmax(scaled + token_gumbel, axis=-1).astype(jnp.int32)


# --------------------------------------------------------------------------- rules

def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {choices}")


def _check_float(name, value, *, lo=None, lo_open=False, hi=None, allow_none=False):
  if value is None and allow_none:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
    raise TypeError(f"{name} must be a float, got {value!r}")
  value = float(value)
  ok = math.isfinite(value)
  if lo is not None:
    ok = ok and (value > lo if lo_open else value >= lo)
  if hi is not None:
    ok = ok and value <= hi
  if not ok:
    bounds = f"{'(' if lo_open else '['}{lo}, {'inf)' if hi is None else str(hi) + ']'}"
    raise ValueError(f"{name}={value} must be a finite float in {bounds}")
  return value


@dataclasses.dataclass(frozen=True)
class TopKRule:
  """LLaDA's top-k with the per-step count schedule; ``alg_temp`` > 0: Gumbel-top-k positions."""
  proxy: str = "max_prob"
  alg_temp: Any = None
  uses_count_schedule = True   # class constant: needs num_steps and k_j

  def __post_init__(self):
    _check_choice("proxy", self.proxy, PROXIES)
    object.__setattr__(self, "alg_temp", _check_float("alg_temp", self.alg_temp, lo=0.0,
                                                      lo_open=True, allow_none=True))

  def select(self, gumbel, logits, x0, eligible, k):
    score = confidence_scores(logits, x0, self.proxy)
    if self.alg_temp is not None:
      # Gumbel-top-k = k draws without replacement from softmax(score / alg_temp).
      score = score / self.alg_temp + gumbel
    return select_topk(score, eligible, k)


@dataclasses.dataclass(frozen=True)
class ThresholdRule:
  """Fast-dLLM: top-1 plus every eligible position with ``conf >= threshold``."""
  proxy: str = "max_prob"
  threshold: float = 0.9
  uses_count_schedule = False

  def __post_init__(self):
    _check_choice("proxy", self.proxy, PROXIES)
    object.__setattr__(self, "threshold", _check_float("threshold", self.threshold))

  def select(self, gumbel, logits, x0, eligible, k):
    del gumbel, k
    return select_threshold(confidence_scores(logits, x0, self.proxy), eligible, self.threshold)


@dataclasses.dataclass(frozen=True)
class FactorRule:
  """Fast-dLLM's factor rule: largest ``n`` with ``(n + 1)(1 - c_(n)) < factor``, ``n >= 1``."""
  proxy: str = "max_prob"
  factor: float = 1.0
  uses_count_schedule = False

  def __post_init__(self):
    _check_choice("proxy", self.proxy, PROXIES)
    object.__setattr__(self, "factor", _check_float("factor", self.factor, lo=0.0,
                                                    lo_open=True))

  def select(self, gumbel, logits, x0, eligible, k):
    del gumbel, k
    return select_factor(confidence_scores(logits, x0, self.proxy), eligible, self.factor)


# --------------------------------------------------------------------------- the frame

class DecodeState(NamedTuple):
  """Carried state.

  Attributes:
    tokens: ``int32[B, L]`` current sequence (MASK at positions still to decode).
    step: ``int32[]`` index of the next step.
    block_count: ``int32[B]`` masked count of the current block at its first step (the ``n`` of
      LLaDA's count schedule; used by ``rule="topk"`` only).
  """
  tokens: jax.Array
  step: jax.Array
  block_count: jax.Array


class DecodeInfo(NamedTuple):
  """Per-step diagnostics (``sample`` stacks them along a leading ``[max_steps]`` axis; steps
  after the loop ended read ``nfe = 0``, ``num_decoded = 0``, ``block = -1``, final tokens).

  Attributes:
    nfe: ``int32[]`` denoiser calls of this step (0 or 1, batch level).
    num_decoded: ``int32[B]`` tokens decoded by this step, per row. A row's own NFE (what it
      would cost alone) is the number of steps with ``num_decoded > 0``.
    block: ``int32[B]`` the block the row decoded in, ``-1`` if it decoded nothing.
    tokens: ``int32[B, L]`` tokens after the step if ``record_trajectory``, else ``None``.
  """
  nfe: jax.Array
  num_decoded: jax.Array
  block: jax.Array
  tokens: Any = None


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Validated, hashable hyper-parameters of the frame (a static jit argument).

  ``rule`` is a frozen rule object with ``select(gumbel[L], logits[L, V], x0[L], eligible[L], k)
  -> bool[L]`` (one row; ``gumbel`` is standard Gumbel noise for a stochastic position choice,
  independent of the noise that drew ``x0``) and a class constant ``uses_count_schedule``.
  """
  mask_id: int
  rule: Any
  num_steps: Any = None
  temperature: float = 0.0
  block_length: Any = None
  gen_length: Any = None
  record_trajectory: bool = False

  def __post_init__(self):
    object.__setattr__(self, "mask_id", checked_int(
        "mask_id", self.mask_id, minimum=0, hint=" (usually V, the vocabulary size)"))
    if not (callable(getattr(self.rule, "select", None))
            and hasattr(self.rule, "uses_count_schedule")):
      raise TypeError(f"rule must be a rule object with select() (e.g. TopKRule()), got "
                      f"{self.rule!r}")
    try:
      hash(self.rule)
    except TypeError as e:
      raise TypeError(f"rule={self.rule!r} must be hashable (a frozen dataclass)") from e
    if self.rule.uses_count_schedule:
      if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, (int, np.integer)):
        raise TypeError(f"num_steps must be an int >= 1 for a top-k rule, got "
                        f"{self.num_steps!r}")
      if self.num_steps < 1:
        raise ValueError(f"num_steps={self.num_steps} must be >= 1")
      object.__setattr__(self, "num_steps", int(self.num_steps))
    elif self.num_steps is not None:
      raise ValueError(
          f"num_steps={self.num_steps!r} is only used by rule='topk'; the {self.rule!r} rule "
          "runs until no MASK is left (at most gen_length steps): leave num_steps=None")
    object.__setattr__(self, "temperature",
                       _check_float("temperature", self.temperature, lo=0.0))
    blocks._check_optional_length("block_length", self.block_length)
    blocks._check_optional_length("gen_length", self.gen_length)
    if not isinstance(self.record_trajectory, bool):
      raise TypeError(f"record_trajectory must be True or False, got {self.record_trajectory!r}")

  def layout(self, length: int) -> blocks.BlockLayout:
    layout = blocks.resolve_layout(length, gen_length=self.gen_length,
                                   block_length=self.block_length)
    if self.rule.uses_count_schedule and self.num_steps % layout.num_blocks:
      raise ValueError(
          f"num_steps={self.num_steps} must be a multiple of the number of blocks "
          f"{layout.num_blocks} (gen_length={layout.gen_length} / block_length="
          f"{layout.block_length}): the steps are split evenly per block")
    return layout

  def max_steps(self, length: int) -> int:
    """Steps ``sample`` may take: ``num_steps`` (top-k) or ``gen_length`` (one token or more
    per step)."""
    if self.rule.uses_count_schedule:
      return self.num_steps
    return self.layout(length).gen_length


def select_row(row_key, logits, eligible, k, *, rule, temperature: float):
  """One row's proposal ``x0`` and chosen positions for a step.

  One draw per row and step: ``V`` Gumbels per position for the token, one more for the position
  choice. "high" mode (two 23-bit uniforms) keeps rare tokens' probabilities right.
  """
  l, v = logits.shape
  gumbel = jax.random.gumbel(row_key, (l, v + 1), jnp.float32, mode="high")
  x0 = _sample_x0(gumbel[:, :v], logits, temperature)
  return x0, rule.select(gumbel[:, v], logits, x0, eligible, k)


def build_kernel(denoise_fn: DenoiseFn, config: DecodeConfig, vocab_size: int):
  """The pure ``step(rng_key, state) -> (state, info)`` for a fixed vocabulary size."""
  mask_id, rule = config.mask_id, config.rule

  def call_denoiser(tokens):
    # Adaptive samplers have no time grid; the (time-conditioned) model gets t = masked fraction.
    t = jnp.mean((tokens == mask_id).astype(jnp.float32), axis=1)
    return denoise_fn(tokens, t).astype(jnp.float32)

  row_select = functools.partial(select_row, rule=rule, temperature=config.temperature)

  def step(rng_key, state: DecodeState):
    x = state.tokens
    b, l = x.shape
    layout = config.layout(l)
    i = state.step
    masked = x == mask_id
    if rule.uses_count_schedule:
      spb = config.num_steps // layout.num_blocks
      current = jnp.full((b,), jnp.minimum(i // spb, layout.num_blocks), jnp.int32)
      eligible = blocks.eligible_positions(masked, layout, current)
      count_now = jnp.sum(eligible, axis=1, dtype=jnp.int32)
      j = i % spb
      block_count = jnp.where(j == 0, count_now, state.block_count)
      k = block_count // spb + (j < block_count % spb).astype(jnp.int32)
      k = jnp.minimum(k, count_now)
    else:
      current = blocks.first_masked_block(masked, layout)
      eligible = blocks.eligible_positions(masked, layout, current)
      block_count = state.block_count
      k = jnp.sum(eligible, axis=1, dtype=jnp.int32)
    wants = jnp.any(eligible, axis=1) & (k > 0)
    need_call = jnp.any(wants)
    logits = jax.lax.cond(need_call, lambda: call_denoiser(x),
                          lambda: jnp.zeros((b, l, vocab_size), jnp.float32))

    step_key = jax.random.fold_in(rng_key, i)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(step_key, r))(jnp.arange(b))
    x0, chosen = jax.vmap(row_select)(row_keys, logits, eligible, k)
    chosen = chosen & eligible & wants[:, None]
    x_new = jnp.where(chosen, x0, x)
    num_decoded = jnp.sum(chosen, axis=1, dtype=jnp.int32)
    new_state = DecodeState(tokens=x_new, step=i + 1, block_count=block_count)
    info = DecodeInfo(nfe=need_call.astype(jnp.int32), num_decoded=num_decoded,
                      block=jnp.where(num_decoded > 0, current, -1).astype(jnp.int32),
                      tokens=x_new if config.record_trajectory else None)
    return new_state, info

  return step


def _init_state(x_init) -> DecodeState:
  tokens = jnp.asarray(x_init).astype(jnp.int32)
  return DecodeState(tokens, jnp.zeros((), jnp.int32), jnp.zeros((tokens.shape[0],), jnp.int32))


def _sample_impl(rng_key, x_init, *, denoise_fn, config, vocab_size):
  step = build_kernel(denoise_fn, config, vocab_size)
  state = _init_state(x_init)
  b, l = state.tokens.shape
  layout = config.layout(l)
  num = config.max_steps(l)
  in_window = jnp.asarray(layout.in_window())
  buffers = DecodeInfo(
      nfe=jnp.zeros((num,), jnp.int32), num_decoded=jnp.zeros((num, b), jnp.int32),
      block=jnp.full((num, b), -1, jnp.int32),
      tokens=jnp.zeros((num, b, l), jnp.int32) if config.record_trajectory else None)
  return run_blockwise_loop(step, rng_key, state, buffers, num_steps=num,
                            mask_id=config.mask_id, in_window=in_window,
                            record_trajectory=config.record_trajectory)


_sample = model_jit(_sample_impl, static_argnames=("config", "vocab_size"))


def make_sampler(denoise_fn: DenoiseFn, config: DecodeConfig) -> MaskedSampler:
  """A :class:`MaskedSampler` running the frame with ``config`` (its rule and block layout).

  ``sample(rng_key, x_init) -> (tokens int32[B, L], info)``, ``info`` a :class:`DecodeInfo`
  with a leading ``[config.max_steps(L)]`` axis; compiled once per (shapes, config, model).
  """
  if not callable(denoise_fn):
    raise TypeError(f"denoise_fn must be callable, got {denoise_fn!r}")
  if not isinstance(config, DecodeConfig):
    raise TypeError(f"config must be a DecodeConfig, got {config!r}")

  def check_input(x_init, vocab_size):
    del vocab_size
    blocks.check_prompt_region(x_init, config.mask_id, config.layout(x_init.shape[1]))

  return assemble_sampler(
      denoise_fn, config.mask_id,
      kernel=lambda v: build_kernel(denoise_fn, config, v),
      init_state=lambda x, v: _init_state(x),
      sample=lambda key, x, v: _sample(key, x, denoise_fn=denoise_fn, config=config,
                                       vocab_size=v),
      check_shape=lambda b, l, v: config.layout(l), check_input=check_input)


def confidence(denoise_fn: DenoiseFn, *, mask_id: int, rule: str = "topk", num_steps=None,
               proxy: str = "max_prob", temperature: float = 0.0, threshold=None, factor=None,
               alg_temp=None, block_length=None, gen_length=None,
               record_trajectory: bool = False) -> MaskedSampler:
  """Builds a confidence-ordered :class:`MaskedSampler` (math in the module docstring).

  Args:
    denoise_fn: ``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]``;
      ``t`` is given the masked fraction of each row.
    mask_id: the MASK token id, ``>= V``.
    rule: ``"topk"`` (LLaDA count schedule), ``"threshold"`` or ``"factor"`` (Fast-dLLM).
    num_steps: ``S``, required for ``"topk"`` (a multiple of the number of blocks); must be
      ``None`` otherwise (those rules run until no MASK is left).
    proxy: ``"max_prob"``, ``"margin"``, ``"neg_entropy"`` or ``"sampled_prob"``.
    temperature: ``tau >= 0`` for the token draw (``0``: argmax); never for the confidence.
    threshold: ``rule="threshold"`` only (default 0.9).
    factor: ``rule="factor"`` only, ``> 0`` (default 1.0).
    alg_temp: ``rule="topk"`` only: ``None``/deterministic top-k, or ``> 0`` to draw positions
      from ``softmax(conf / alg_temp)`` without replacement (Dream).
    block_length, gen_length: semi-autoregressive blocks (see
      :mod:`partext_jax.samplers.semi_ar`); default one block over the whole sequence.
    record_trajectory: also return the tokens after every step in ``info.tokens``.
  """
  _check_choice("rule", rule, RULES)
  if threshold is not None and rule != "threshold":
    raise ValueError(f"threshold={threshold!r} is only used by rule='threshold' (rule={rule!r})")
  if factor is not None and rule != "factor":
    raise ValueError(f"factor={factor!r} is only used by rule='factor' (rule={rule!r})")
  if alg_temp is not None and rule != "topk":
    raise ValueError(f"alg_temp={alg_temp!r} is only used by rule='topk' (rule={rule!r})")
  if rule == "topk":
    rule_obj = TopKRule(proxy=proxy, alg_temp=alg_temp)
  elif rule == "threshold":
    rule_obj = ThresholdRule(proxy=proxy, threshold=0.9 if threshold is None else threshold)
  else:
    rule_obj = FactorRule(proxy=proxy, factor=1.0 if factor is None else factor)
  config = DecodeConfig(mask_id=mask_id, rule=rule_obj, num_steps=num_steps,
                        temperature=temperature, block_length=block_length,
                        gen_length=gen_length, record_trajectory=record_trajectory)
  return make_sampler(denoise_fn, config)
