r"""ReMDM: remasking sampling for masked diffusion (``docs/algorithms.md#remdm-remasking``).

Reference: ``kuleshov-group/remdm: diffusion.py _ddpm_caching_update`` (Wang et al. 2025, "Remasking
Discrete Diffusion Models with Inference-Time Scaling"). Read to learn; the code here is ours.

Kernel. A step goes from time ``t`` to ``s < t`` (``alpha_t = alpha(t) < alpha_s = alpha(s)``)
with a remasking probability ``sigma_t`` in ``[0, sigma_max]``,
``sigma_max = (1 - alpha_s) / alpha_t``. Independently at every *generated* position:

* an unmasked token is remasked with probability ``sigma_t``, else kept;
* a masked token unmasks with probability
  ``p_unmask = (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t)`` and takes a value
  ``~ p_theta(. | x_t)``, else stays masked.

``sigma_t <= sigma_max`` is exactly ``p_unmask <= 1``. If a position is masked with probability
``1 - alpha_t`` before the step, it is masked after it with probability
``(1 - alpha_t)(1 - p_unmask) + alpha_t sigma_t = 1 - alpha_s``: the mask marginal of the plain
masking process is preserved (ReMDM's non-Markovian forward process has the same marginals
``q(x_t | x_0)``), and ``sigma_t = 0`` is MDLM ancestral sampling (tau-leaping, "analytic").

Exactness with an exact denoiser. Given the events (which positions unmask / remask / stay), the
*values* are drawn independently per position from ``p_theta``'s marginals, while the exact
reverse chain of the ReMDM process would draw the newly unmasked positions jointly from
``p(x_0 | x_t)``. Remask / keep / stay events do not depend on ``x_0``, and for the
strategies whose ``sigma_t`` depends only on ``t`` (``cap``, ``rescale``, ``loop``) the event
process is the same in both chains, so coupling them gives
``TV(sampler output, data) <= P(some step unmasks >= 2 positions)`` (see
``tests/test_remdm.py``). ``conf`` makes ``sigma`` depend on the state; no such bound is claimed.

Strategies (``sigma_t`` per step; defaults are the reference scripts': ``T = 1024``, ``p = 0.9``):

* ``"cap"`` (``eta = 0.008``): ``sigma_t = min(eta, sigma_max)``; ``eta`` when ``alpha_t = 0``.
* ``"rescale"`` (``eta = 0.015``): ``sigma_t = eta * min(1, sigma_max)``; ``eta`` when
  ``alpha_t = 0``.
* ``"conf"`` (no ``eta``): per position ``sigma_l = w_l * min(1, sigma_max)`` with
  ``w = softmax_l(-c_l)`` over the positions decoded *by this sampler* and currently unmasked,
  where ``c_l`` is ``p_theta`` (after temperature and top-p) of the token drawn when position
  ``l`` was last decoded; ``w_l = 0`` elsewhere (and ``sigma = 0`` when no position is
  eligible). Masked positions use ``sigma = 0`` in ``p_unmask`` (the MDLM rate), as in the
  reference: a row ends the step with, in expectation, ``sum_l sigma_l`` (up to
  ``min(1, sigma_max)``) more masks than under MDLM, so ``conf`` does *not* keep the mask
  marginal at ``1 - alpha_s``; only its per-position kernel is tested.
* ``"loop"`` (``eta = 0.02, t_on = 0.55, t_off = 0.05, alpha_on = 0.9``): ``alpha`` is replaced by
  the continuous piecewise-linear ``alpha_loop``:

  - ``t > t_on``: ``alpha_on (1 - t) / (1 - t_on)`` (0 -> ``alpha_on``), ``sigma = 0`` (MDLM);
  - ``t_off < t <= t_on``: ``alpha_on``, ``sigma = min(eta, sigma_max)`` (tokens keep being
    remasked and re-decoded at a constant mask level ``1 - alpha_on``);
  - ``t <= t_off``: ``1 - (1 - alpha_on) t / t_off`` (``alpha_on`` -> 1), ``sigma = 0`` (MDLM).

  The phase is chosen by the step's start time ``t``. ``loop`` defines its own ``alpha``, so it
  only accepts the default (linear) ``schedule``.

Nucleus (``top_p < 1``): ``p_theta = softmax(logits / temperature)`` restricted to the tokens
whose *inclusive* cumulative mass (descending order) is ``<= top_p``, always keeping the top token,
renormalised; applied to the ``V`` real tokens only, never to the MASK mass. (This is the
reference's rule; it drops the token that crosses ``top_p``, while
``logits_processors.top_p`` keeps it.)

Time grid, end of trajectory, draws, randomness: as :mod:`partext_jax.masked.tau_leaping`
(``t_i = 1 - (i / N)(1 - t_min)``; ``t_min = 1e-5`` is MDLM/ReMDM's ``linspace(1, 1e-5, N + 1)``;
``noise_removal`` = final argmax of positions still masked, else the last step goes to
``alpha = 1`` with ``sigma = 0``; ``precision="float32" | "float64"``, see
``docs/algorithms.md#exact-categorical-draws``; step ``i``, row ``r`` use
``fold_in(fold_in(key, i), r)``). One Bernoulli stream serves both events: a position's event
probability is ``p_unmask`` if masked, ``sigma`` if remaskable, 0 otherwise. With ``sigma = 0``,
``top_p = 1`` the draws, keys and arithmetic are those of ``tau_leaping(method="analytic")``, so
the two samplers return identical tokens for the same key.

Reference quirks and our choices:

* The reference resamples unmasked tokens from ``p_theta`` with probability ``1 - sigma``; with
  its SUBS model ``p_theta`` is the one-hot of the token there, i.e. "keep". We keep the token
  (the denoiser's output at unmasked positions is never used).
* Prompt / infilling positions (not MASK in ``x_init``) are never remasked (the reference is
  unconditional). ``conf`` only weighs positions this sampler decoded.
* ``conf``: the reference stores confidences in bfloat16 and its softmax over a row with no
  eligible position is NaN (harmless there only because that row is fully masked); we use
  float32 and ``sigma = 0`` for such rows.
* ``loop``: the reference extrapolates the ramp of phase 1 to ``s`` on the step that crosses
  ``t_on`` (so ``alpha_s`` overshoots ``alpha_on`` by up to ``alpha_on dt / (1 - t_on)``) and,
  on the step crossing ``t_off``, holds ``alpha_s = alpha_on``; ours is continuous. Its phase-2
  ``sigma = eta`` is not capped; ours is ``min(eta, sigma_max)``. Inside phase 2
  (``alpha_t = alpha_s = alpha_on``) ``sigma_max = (1 - alpha_on) / alpha_on``, and ``eta``
  above that is rejected at construction, so the cap is inactive there; on the step that
  crosses ``t_off`` (``alpha_s > alpha_on``) ``sigma_max = (1 - alpha_s) / alpha_on`` is
  smaller, and the cap can bind for any ``eta > 0`` (it keeps ``p_unmask <= 1``).
* The reference applies its final argmax to every position (the identity on unmasked ones under
  SUBS); we fill only positions still masked.
* The denoiser gets the grid time ``t`` (also for ``loop``, as the reference); the reference
  models are not time-conditioned.
* No output cache: with remasking almost every step changes a token (offered by tau_leaping).

Example::

    sampler = remdm(denoise_fn, mask_id=V, num_steps=1024, strategy="cap", top_p=0.9,
                    t_min=1e-5)
    x = jnp.full((8, 64), V, jnp.int32).at[:, :4].set(prompt)
    tokens, info = sampler.sample(jax.random.key(0), x)
    info.num_remasked.sum()          # how much remasking happened
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from partext_jax import ops
from partext_jax.base import (DenoiseFn, checked_choice, checked_float, checked_float_fields,
                              model_jit)
from partext_jax.masked import categorical, driver
from partext_jax.masked.driver import MaskedSampler
from partext_jax.schedules import MaskingSchedule, checked_schedule

STRATEGIES = ("cap", "rescale", "conf", "loop")
PRECISIONS = categorical.PRECISIONS
DEFAULT_ETA = {"cap": 0.008, "rescale": 0.015, "loop": 0.02}
LOOP_DEFAULTS = {"t_on": 0.55, "t_off": 0.05, "alpha_on": 0.9}
# Strategy parameter -> (its default for each strategy that uses it, checked_float bounds).
STRATEGY_PARAMETERS = {
    "eta": (DEFAULT_ETA, dict(lo=0.0, hi=1.0)),
    **{name: ({"loop": default}, dict(lo=0.0, lo_open=True, hi=1.0, hi_open=True))
       for name, default in LOOP_DEFAULTS.items()},
}


@dataclasses.dataclass(frozen=True)
class ReMDMConfig(driver.StepConfig):
  """Validated, hashable hyper-parameters (a static jit argument); see :func:`remdm`.

  ``eta``, ``t_on``, ``t_off``, ``alpha_on`` left as ``None`` take the reference defaults of the
  strategy; giving one that the strategy does not use is an error. Raises ``TypeError`` /
  ``ValueError`` naming the argument and its valid values.
  """
  strategy: str = "cap"
  eta: Any = None
  t_on: Any = None
  t_off: Any = None
  alpha_on: Any = None
  schedule: Any = MaskingSchedule("linear")
  top_p: float = 1.0
  temperature: float = 1.0
  noise_removal: bool = True
  t_min: float = 0.0

  def check(self):
    checked_choice("strategy", self.strategy, STRATEGIES)
    for name, (defaults, bounds) in STRATEGY_PARAMETERS.items():
      value = getattr(self, name)
      if self.strategy in defaults:
        self._set(name, checked_float(name, defaults[self.strategy] if value is None else value,
                                      **bounds))
      elif value is not None:
        raise ValueError(f"strategy={self.strategy!r} takes no {name} (got {name}={value!r}); "
                         f"{name} is used by strategy in {tuple(defaults)}")
    checked_schedule(self.schedule, methods=("alpha", "mask_probability"))
    checked_float_fields(self, {
        "top_p": dict(lo=0.0, lo_open=True, hi=1.0, hint=" (1 disables the nucleus filter)"),
        "temperature": dict(lo=0.0, lo_open=True),
        "t_min": dict(lo=0.0, hi=1.0, hi_open=True)})
    if self.strategy == "loop":
      self._check_loop()

  def _check_loop(self):
    """The relations between the ``loop`` parameters (each one is already in range)."""
    if not self.t_off < self.t_on:
      raise ValueError(f"strategy='loop' needs t_off < t_on, got t_off={self.t_off}, "
                       f"t_on={self.t_on}")
    if not self.t_min < self.t_off:
      raise ValueError(f"t_min={self.t_min} must be < t_off={self.t_off} for strategy='loop'")
    bound = (1.0 - self.alpha_on) / self.alpha_on
    if self.eta > bound:
      raise ValueError(f"eta={self.eta} exceeds the loop phase's valid remasking range "
                       f"[0, (1 - alpha_on) / alpha_on = {bound:.6g}]")
    if self.schedule != MaskingSchedule("linear"):
      raise ValueError(f"strategy='loop' defines its own piecewise-linear alpha(t); schedule must "
                       f"be the default MaskingSchedule('linear'), got {self.schedule!r}")


class ReMDMState(NamedTuple):
  """Carried state.

  Attributes:
    tokens: ``int32[B, L]`` current sequence (MASK id at masked positions).
    fixed: ``bool[B, L]`` prompt / constraint positions (not MASK in ``x_init``): never change.
    step: ``int32[]`` index ``i`` of the next step.
    confidence: ``float32[B, L]`` ``c_l`` of the ``conf`` strategy (else ``None``); meaningful
      only at positions decoded by the sampler and currently unmasked.
  """
  tokens: jax.Array
  fixed: jax.Array
  step: jax.Array
  confidence: Any = None


class ReMDMInfo(NamedTuple):
  """Per-step diagnostics (``sample`` stacks them along a leading ``[num_steps]`` axis).

  Attributes:
    nfe: ``int32[]`` denoiser calls of this step (0, 1, or 2 with noise removal).
    num_unmasked: ``int32[B]`` positions filled by this step (noise removal included).
    num_remasked: ``int32[B]`` positions remasked by this step.
    num_masked: ``int32[B]`` positions masked after the step.
    sigma: ``float32[]`` remasking probability (``conf``: ``min(1, sigma_max)``, the row total).
    unmask_probability: ``float32[]`` ``p_unmask`` of a masked position.
    alpha_t: ``float32[]``; alpha_s: ``float32[]`` (``loop``: of ``alpha_loop``).
    t: ``float32[]``; s: ``float32[]`` grid times of the step.
    tokens: ``int32[B, L]`` after the step if ``record_trajectory``, else ``None``.
  """
  nfe: jax.Array
  num_unmasked: jax.Array
  num_remasked: jax.Array
  num_masked: jax.Array
  sigma: jax.Array
  unmask_probability: jax.Array
  alpha_t: jax.Array
  alpha_s: jax.Array
  t: jax.Array
  s: jax.Array
  tokens: Any = None


def loop_alpha(config: ReMDMConfig, t):
  """``alpha_loop(t)``: ``alpha_on (1-t)/(1-t_on)`` above ``t_on``, ``alpha_on`` on
  ``(t_off, t_on]``, ``1 - (1 - alpha_on) t / t_off`` at or below ``t_off``."""
  t = jnp.asarray(t, jnp.float32)
  a_on = config.alpha_on
  ramp_up = a_on * (1.0 - t) / (1.0 - config.t_on)
  ramp_end = 1.0 - (1.0 - a_on) * t / config.t_off
  return jnp.where(t > config.t_on, ramp_up,
                   jnp.where(t > config.t_off, jnp.float32(a_on), ramp_end)).astype(jnp.float32)


def alphas(config: ReMDMConfig, t, s):
  """``(alpha_t, alpha_s)`` in float32: the schedule's, or ``alpha_loop`` for ``loop``."""
  if config.strategy == "loop":
    return loop_alpha(config, t), loop_alpha(config, s)
  sched = config.schedule
  return (jnp.asarray(sched.alpha(t), jnp.float32), jnp.asarray(sched.alpha(s), jnp.float32))


def sigma_max(alpha_t, alpha_s):
  """``(1 - alpha_s) / alpha_t``, ``+inf`` when ``alpha_t = 0``."""
  return jnp.where(alpha_t > 0, (1.0 - alpha_s) / jnp.where(alpha_t > 0, alpha_t, 1.0), jnp.inf)


def remasking_sigma(config: ReMDMConfig, t, s):
  """The strategy's ``sigma_t`` for a step ``t -> s`` (float32 scalar).

  For ``conf`` this is the per-row total ``min(1, sigma_max)`` (the per-position values are
  :func:`conf_sigma`).
  """
  t = jnp.asarray(t, jnp.float32)
  a_t, a_s = alphas(config, t, s)
  smax = sigma_max(a_t, a_s)
  if config.strategy == "cap":
    sigma = jnp.minimum(config.eta, smax)
  elif config.strategy == "rescale":
    sigma = config.eta * jnp.minimum(1.0, smax)
  elif config.strategy == "conf":
    sigma = jnp.minimum(1.0, smax)
  else:   # loop: remask only in the middle phase
    middle = (t <= config.t_on) & (t > config.t_off)
    sigma = jnp.where(middle, jnp.minimum(config.eta, smax), 0.0)
  return jnp.asarray(sigma, jnp.float32)


def conf_sigma(confidence, eligible, total):
  """``sigma_l = softmax_l(-c_l) * total`` over ``eligible`` positions (last axis), 0 elsewhere
  and for rows with no eligible position."""
  neg = jnp.where(eligible, -confidence, -jnp.inf)
  any_eligible = jnp.any(eligible, axis=-1, keepdims=True)
  weights = jax.nn.softmax(jnp.where(any_eligible, neg, 0.0), axis=-1)
  return jnp.where(eligible, weights * total, 0.0).astype(jnp.float32)


def unmask_probability(alpha_t, alpha_s, sigma):
  """``(alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t)``, clipped to ``[0, 1]``; 1 when
  ``alpha_t = 1``. Written ``((alpha_s - alpha_t) + sigma alpha_t) / (1 - alpha_t)`` so that
  ``sigma = 0`` gives tau_leaping's float32 value bit for bit."""
  p = ((alpha_s - alpha_t) + sigma * alpha_t) / (1.0 - alpha_t)
  p = jnp.where(1.0 - alpha_t > 0, p, 1.0)
  return jnp.clip(p, 0.0, 1.0).astype(jnp.float32)


def nucleus_logits(logits, top_p: float):
  """Reference top-p on ``softmax(logits)`` over the last axis (``float[..., V]``): keep tokens
  whose inclusive descending cumulative mass is ``<= top_p``, and always the top one; others get
  ``-inf``. No sort: :func:`partext_jax.ops.nucleus_mask` with ``rule="inclusive"``
  (``docs/algorithms.md#vocabulary-ops``)."""
  return jnp.where(ops.nucleus_mask(logits, top_p, rule="inclusive"), logits, -jnp.inf)


def build_kernel(denoise_fn: DenoiseFn, config: ReMDMConfig, vocab_size: int):
  """The pure ``step(rng_key, state) -> (state, info)`` for a fixed vocabulary size."""
  mask_id = config.mask_id
  nucleus = (None if config.top_p == 1.0
             else functools.partial(nucleus_logits, top_p=config.top_p))

  def draw_logits(logits):          # the logits of p_theta: tempered, then nucleus-filtered
    tempered = logits / config.temperature
    return tempered if nucleus is None else nucleus(tempered)

  def step(rng_key, state: ReMDMState):
    x, fixed = state.tokens, state.fixed
    b, l = x.shape
    i = state.step
    t, s, is_last = driver.step_times(config.num_steps, config.t_min, i)
    a_t, a_s = alphas(config, t, s)
    sigma = remasking_sigma(config, t, s)
    if not config.noise_removal:        # the last step goes to clean data: alpha_s = 1
      a_s = jnp.where(is_last, jnp.float32(1.0), a_s)
      sigma = jnp.where(is_last, jnp.float32(0.0), sigma)

    masked = x == mask_id
    remaskable = ~masked & ~fixed
    if config.strategy == "conf":
      sigma_pos = conf_sigma(state.confidence, remaskable, sigma)
      p = unmask_probability(a_t, a_s, jnp.float32(0.0))     # reference: sigma = 0 if masked
    else:
      sigma_pos = jnp.where(remaskable, sigma, 0.0)
      p = unmask_probability(a_t, a_s, sigma)
    if not config.noise_removal:
      p = jnp.where(is_last, jnp.float32(1.0), p)
    event_prob = jnp.where(masked, p, sigma_pos)

    need_call = jnp.any(masked)
    logits = jax.lax.cond(need_call, lambda: driver.call_at_time(denoise_fn, x, t),
                          lambda: jnp.zeros((b, l, vocab_size), jnp.float32))
    nfe = need_call.astype(jnp.int32)
    event, proposal = categorical.unmask_draw(
        driver.row_keys(rng_key, i, b), logits, event_prob, where=masked,
        precision=config.precision, temperature=config.temperature, logits_fn=nucleus)
    unmask = event & masked
    remask = event & remaskable
    x_new = jnp.where(unmask, proposal, jnp.where(remask, mask_id, x))

    confidence = state.confidence
    if config.strategy == "conf":   # p_theta (tempered, filtered) of the drawn tokens
      drawn = categorical.at_positions(
          lambda _, z, tokens: token_probability(draw_logits(z), tokens), unmask, logits,
          proposal)
      confidence = jnp.where(unmask, drawn, confidence)

    if config.noise_removal:
      # Unless a token changed since the model call, its logits are those of x_new.
      x_new, filled, final_logits, extra = driver.noise_removal(
          denoise_fn, x_new, s, logits, mask_id=mask_id, is_last=is_last,
          stale=jnp.any(unmask | remask))
      nfe = nfe + extra
      if config.strategy == "conf":
        confidence = jnp.where(filled, token_probability(final_logits, x_new), confidence)

    new_state = ReMDMState(tokens=x_new, fixed=fixed, step=i + 1, confidence=confidence)
    info = ReMDMInfo(
        nfe=nfe,
        num_unmasked=jnp.sum(masked & (x_new != mask_id), axis=1).astype(jnp.int32),
        num_remasked=jnp.sum(remask, axis=1).astype(jnp.int32),
        num_masked=jnp.sum(x_new == mask_id, axis=1).astype(jnp.int32),
        sigma=sigma, unmask_probability=p, alpha_t=a_t, alpha_s=a_s, t=t, s=s,
        tokens=x_new if config.record_trajectory else None)
    return new_state, info

  return step


def token_probability(logits, tokens):
  """``softmax(logits)`` at ``tokens``: ``float32[B, L]`` from ``logits float32[B, L, V]`` and
  ``tokens int32[B, L]`` (the confidence ``c_l`` of the ``conf`` strategy)."""
  probs = jax.nn.softmax(logits, axis=-1)
  return jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]


def init_state(x_init, config: ReMDMConfig, vocab_size: int) -> ReMDMState:
  """The state before step 0 (``x_init int[B, L]``; its non-MASK positions are fixed)."""
  del vocab_size
  tokens = jnp.asarray(x_init).astype(jnp.int32)
  confidence = (jnp.zeros(tokens.shape, jnp.float32) if config.strategy == "conf" else None)
  return ReMDMState(tokens, tokens != config.mask_id, jnp.zeros((), jnp.int32), confidence)


jitted_sample = model_jit(driver.scan_sample(build_kernel, init_state),
                          static_argnames=("config", "vocab_size"))
"""The whole trajectory, compiled once per (shapes, config, model) for every sampler built here."""


def remdm(denoise_fn: DenoiseFn, *, mask_id: int, num_steps: int, strategy: str = "cap",
          eta: float | None = None, t_on: float | None = None, t_off: float | None = None,
          alpha_on: float | None = None,
          schedule: MaskingSchedule = MaskingSchedule("linear"), top_p: float = 1.0,
          precision: str = "float32", temperature: float = 1.0, noise_removal: bool = True,
          t_min: float = 0.0, record_trajectory: bool = False) -> MaskedSampler:
  """Builds a ReMDM :class:`MaskedSampler` (Wang et al. 2025; math in the module docstring).

  Args:
    denoise_fn: ``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]``.
    mask_id: the MASK id: ``>= V``, or inside ``[0, V)`` (never emitted, see base.py).
    num_steps: ``N >= 1`` steps on ``t_i = 1 - (i / N)(1 - t_min)``.
    strategy: ``"cap"``, ``"rescale"``, ``"conf"`` or ``"loop"``.
    eta: remasking strength in ``[0, 1]`` (``cap`` 0.008, ``rescale`` 0.015, ``loop`` 0.02
      when ``None``); ``conf`` takes none. ``strategy="cap", eta=0`` is MDLM.
    t_on, t_off, alpha_on: ``loop`` only, in ``(0, 1)`` (0.55, 0.05, 0.9 when ``None``).
    schedule: ``alpha(t)`` (``loop`` uses its own and needs the default).
    top_p: nucleus mass on ``p_theta`` in ``(0, 1]`` (reference rule, top token always kept);
      1 disables.
    precision: ``"float32"`` (the exact two-stage draw) or ``"float64"`` (needs
      ``jax_enable_x64``), see ``docs/algorithms.md#exact-categorical-draws``.
    temperature: ``p_theta = softmax(logits / temperature)`` (before ``top_p``), ``> 0``.
    noise_removal: final argmax for positions still masked; else the last step unmasks all.
    t_min: end of the grid in ``[0, 1)`` (1e-5 for the reference's
      ``linspace(1, 1e-5, N + 1)``).
    record_trajectory: return the tokens after every step in ``info.tokens``.

  Returns:
    ``MaskedSampler(init, step, sample)``; ``sample(rng_key, x_init int32[B, L]) -> (tokens
    int32[B, L], info)`` with ``info`` a :class:`ReMDMInfo` stacked over steps, jit-compiled
    once per shapes and hyper-parameters (a ``jax.tree_util.Partial`` model keeps its
    parameters traced).

  Raises:
    TypeError / ValueError: a bad hyper-parameter (named, with its valid values), before any
      compilation; ``sample`` / ``init`` likewise for a bad ``x_init`` or key.
    RuntimeError: ``precision="float64"`` while ``jax_enable_x64`` is off.
  """
  config = ReMDMConfig(
      mask_id=mask_id, num_steps=num_steps, strategy=strategy, eta=eta, t_on=t_on, t_off=t_off,
      alpha_on=alpha_on, schedule=schedule, top_p=top_p, precision=precision,
      temperature=temperature, noise_removal=noise_removal, t_min=t_min,
      record_trajectory=record_trajectory)
  return driver.scan_sampler("remdm", denoise_fn, config, build_kernel=build_kernel,
                             init_state=init_state, sample=jitted_sample)
