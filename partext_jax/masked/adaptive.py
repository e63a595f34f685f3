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
   :mod:`partext_jax.masked.blocks`) can be chosen; the ``rule`` picks a set ``U`` of them
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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from partext_jax.base import (DenoiseFn, checked_bool, checked_callable, checked_float,
                              checked_hashable, checked_int, checked_optional_int, model_jit)
from partext_jax.masked import blocks
from partext_jax.masked.driver import MaskedSampler, assemble_sampler, row_keys, run_blockwise_loop
from partext_jax.masked.rules import (  # noqa: F401  (re-exported for users of this module)
    PROXIES, RULES, EntropyBoundRule, FactorRule, ThresholdRule, TopKRule, confidence_scores,
    llada_num_transfer, make_rule, sample_x0, select_factor, select_threshold, select_topk)

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
    set_ = functools.partial(object.__setattr__, self)
    set_("mask_id", checked_int("mask_id", self.mask_id, minimum=0,
                                hint=" (usually V, the vocabulary size)"))
    if not (callable(getattr(self.rule, "select", None))
            and hasattr(self.rule, "uses_count_schedule")):
      raise TypeError(f"rule must be a rule object with select() (e.g. TopKRule()), got "
                      f"{self.rule!r}")
    checked_hashable("rule", self.rule)
    if self.rule.uses_count_schedule:
      set_("num_steps", checked_int("num_steps", self.num_steps, minimum=1,
                                    hint=" (required by a top-k rule)"))
    elif self.num_steps is not None:
      raise ValueError(
          f"num_steps={self.num_steps!r} is only used by rule='topk'; the {self.rule!r} rule "
          "runs until no MASK is left (at most gen_length steps): leave num_steps=None")
    set_("temperature", checked_float("temperature", self.temperature, lo=0.0))
    checked_optional_int("block_length", self.block_length)
    checked_optional_int("gen_length", self.gen_length)
    if (self.block_length is not None and self.gen_length is not None
        and self.gen_length % self.block_length):
      raise ValueError(f"gen_length={self.gen_length} must be a multiple of block_length="
                       f"{self.block_length}")
    checked_bool("record_trajectory", self.record_trajectory)

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
  x0 = sample_x0(gumbel[:, :v], logits, temperature)
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

    x0, chosen = jax.vmap(row_select)(row_keys(rng_key, i, b), logits, eligible, k)
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
  checked_callable("denoise_fn", denoise_fn)
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


def decode_config(*, mask_id: int, rule: str, num_steps=None, proxy=None,
                  temperature: float = 0.0, threshold=None, factor=None, alg_temp=None,
                  gamma=None, block_length=None, gen_length=None,
                  record_trajectory: bool = False) -> DecodeConfig:
  """The :class:`DecodeConfig` of :func:`confidence`'s keyword arguments (also used by
  :func:`partext_jax.masked.block_cache.block_cache`): ``rule`` by name through
  :func:`partext_jax.masked.rules.make_rule`; ``proxy`` defaults to ``"max_prob"`` and is not
  accepted by ``"eb"``."""
  if rule == "eb" and proxy not in (None, "max_prob"):
    raise ValueError(f"proxy={proxy!r} is not used by rule='eb' (it ranks by entropy)")
  rule_obj = make_rule(rule, proxy=None if rule == "eb" else proxy, threshold=threshold,
                       factor=factor, alg_temp=alg_temp, gamma=gamma)
  return DecodeConfig(mask_id=mask_id, rule=rule_obj, num_steps=num_steps,
                      temperature=temperature, block_length=block_length,
                      gen_length=gen_length, record_trajectory=record_trajectory)


def confidence(denoise_fn: DenoiseFn, *, mask_id: int, rule: str = "topk", num_steps=None,
               proxy=None, temperature: float = 0.0, threshold=None, factor=None,
               alg_temp=None, gamma=None, block_length=None, gen_length=None,
               record_trajectory: bool = False) -> MaskedSampler:
  """Builds a confidence-ordered :class:`MaskedSampler` (math in the module docstring).

  Args:
    denoise_fn: ``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]``;
      ``t`` is given the masked fraction of each row.
    mask_id: the MASK token id, ``>= V``.
    rule: a name in :data:`partext_jax.masked.rules.RULES`: ``"topk"`` (LLaDA count schedule),
      ``"threshold"`` or ``"factor"`` (Fast-dLLM), ``"eb"`` (EB-sampler, as :func:`eb_sampler`).
    num_steps: ``S``, required for ``"topk"`` (a multiple of the number of blocks); must be
      ``None`` otherwise (those rules run until no MASK is left).
    proxy: ``"max_prob"`` (default), ``"margin"``, ``"neg_entropy"`` or ``"sampled_prob"``
      (not used by ``"eb"``, which ranks by entropy).
    temperature: ``tau >= 0`` for the token draw (``0``: argmax); never for the confidence.
    threshold: ``rule="threshold"`` only (default 0.9).
    factor: ``rule="factor"`` only, ``> 0`` (default 1.0).
    alg_temp: ``rule="topk"`` only: ``None``/deterministic top-k, or ``> 0`` to draw positions
      from ``softmax(conf / alg_temp)`` without replacement (Dream).
    gamma: ``rule="eb"`` only, entropy budget in nats (default 0).
    block_length, gen_length: semi-autoregressive blocks (see
      :mod:`partext_jax.masked.blocks`); default one block over the whole sequence.
    record_trajectory: also return the tokens after every step in ``info.tokens``.
  """
  return make_sampler(denoise_fn, decode_config(
      mask_id=mask_id, rule=rule, num_steps=num_steps, proxy=proxy, temperature=temperature,
      threshold=threshold, factor=factor, alg_temp=alg_temp, gamma=gamma,
      block_length=block_length, gen_length=gen_length, record_trajectory=record_trajectory))


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
    block_length, gen_length: semi-autoregressive blocks (:mod:`partext_jax.masked.blocks`).
    record_trajectory: also return the tokens after every step in ``info.tokens``.

  Returns:
    ``MaskedSampler``; ``sample`` returns ``(tokens, DecodeInfo)`` with a leading
    ``[gen_length]`` step axis.
  """
  return confidence(denoise_fn, mask_id=mask_id, rule="eb", gamma=gamma, threshold=threshold,
                    temperature=temperature, block_length=block_length, gen_length=gen_length,
                    record_trajectory=record_trajectory)
