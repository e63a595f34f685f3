r"""ReMDM: remasking sampling for masked diffusion (ALGORITHMS.md section 4).

Reference: ``kuleshov-group/remdm: diffusion.py _ddpm_caching_update`` (Wang et al., "Remasking
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
``alpha = 1`` with ``sigma = 0``; ``draw="two_stage" | "float64"``; step ``i``, row ``r`` use
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
  ``sigma = eta`` is not capped; ours is capped at ``sigma_max`` (only matters for
  ``eta > (1 - alpha_on) / alpha_on``, rejected at construction for a constant phase 2).
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
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.masked import categorical
from partext_jax.base import DenoiseFn, model_jit
from partext_jax.masked.driver import MaskedSampler, assemble_sampler
from partext_jax.schedules import MaskingSchedule

STRATEGIES = ("cap", "rescale", "conf", "loop")
DRAWS = categorical.DRAWS
DEFAULT_ETA = {"cap": 0.008, "rescale": 0.015, "loop": 0.02}
LOOP_DEFAULTS = {"t_on": 0.55, "t_off": 0.05, "alpha_on": 0.9}


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


def _is_real(x) -> bool:
  return not isinstance(x, bool) and isinstance(x, (int, float, np.integer, np.floating))


@dataclasses.dataclass(frozen=True)
class ReMDMConfig:
  """Validated, hashable hyper-parameters (a static jit argument).

  ``eta``, ``t_on``, ``t_off``, ``alpha_on`` left as ``None`` take the reference defaults of the
  strategy; giving one that the strategy does not use is an error.
  """
  mask_id: int
  num_steps: int
  strategy: str = "cap"
  eta: Any = None
  t_on: Any = None
  t_off: Any = None
  alpha_on: Any = None
  schedule: Any = MaskingSchedule("linear")
  top_p: float = 1.0
  draw: str = "two_stage"
  temperature: float = 1.0
  noise_removal: bool = True
  t_min: float = 0.0
  record_trajectory: bool = False

  def _set(self, name, value):
    object.__setattr__(self, name, value)

  def __post_init__(self):
    if isinstance(self.mask_id, bool) or not isinstance(self.mask_id, (int, np.integer)):
      raise TypeError(f"mask_id must be an int (usually V, the vocabulary size), got "
                      f"{self.mask_id!r}")
    if self.mask_id < 0:
      raise ValueError(f"mask_id={self.mask_id} must be >= 0 (usually V, the vocabulary size)")
    self._set("mask_id", int(self.mask_id))
    if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, (int, np.integer)):
      raise TypeError(f"num_steps must be an int >= 1, got {self.num_steps!r}")
    if self.num_steps < 1:
      raise ValueError(f"num_steps={self.num_steps} must be >= 1")
    self._set("num_steps", int(self.num_steps))
    if self.strategy not in STRATEGIES:
      raise ValueError(f"strategy={self.strategy!r} is not one of {STRATEGIES}")
    # eta
    if self.strategy == "conf":
      if self.eta is not None:
        raise ValueError("strategy='conf' takes no eta (its sigma is softmax(-confidence) * "
                         f"sigma_max); got eta={self.eta!r}. eta is used by 'cap', 'rescale', "
                         "'loop'")
    else:
      eta = DEFAULT_ETA[self.strategy] if self.eta is None else self.eta
      if not _is_real(eta):
        raise TypeError(f"eta must be a float in [0, 1], got {eta!r}")
      if not (math.isfinite(eta) and 0.0 <= eta <= 1.0):
        raise ValueError(f"eta={eta} must be a finite float in [0, 1]")
      self._set("eta", float(eta))
    # loop parameters
    for name in LOOP_DEFAULTS:
      value = getattr(self, name)
      if self.strategy != "loop":
        if value is not None:
          raise ValueError(f"{name}={value!r} is only used by strategy='loop', not "
                           f"strategy={self.strategy!r}")
        continue
      value = LOOP_DEFAULTS[name] if value is None else value
      if not _is_real(value):
        raise TypeError(f"{name} must be a float in (0, 1), got {value!r}")
      if not 0.0 < value < 1.0:
        raise ValueError(f"{name}={value} must be in (0, 1)")
      self._set(name, float(value))
    if self.strategy == "loop":
      if not self.t_off < self.t_on:
        raise ValueError(f"strategy='loop' needs t_off < t_on, got t_off={self.t_off}, "
                         f"t_on={self.t_on}")
      bound = (1.0 - self.alpha_on) / self.alpha_on
      if self.eta > bound:
        raise ValueError(f"eta={self.eta} exceeds the loop phase's valid remasking range "
                         f"[0, (1 - alpha_on) / alpha_on = {bound:.6g}]")
    # schedule
    if not (callable(getattr(self.schedule, "alpha", None))
            and callable(getattr(self.schedule, "mask_probability", None))):
      raise TypeError(f"schedule must be a MaskingSchedule (with alpha and mask_probability), "
                      f"got {self.schedule!r}")
    try:
      hash(self.schedule)
    except TypeError as e:
      raise TypeError(f"schedule={self.schedule!r} must be hashable (a frozen dataclass)") from e
    if self.strategy == "loop" and self.schedule != MaskingSchedule("linear"):
      raise ValueError(f"strategy='loop' defines its own piecewise-linear alpha(t); schedule must "
                       f"be the default MaskingSchedule('linear'), got {self.schedule!r}")
    if not _is_real(self.top_p):
      raise TypeError(f"top_p must be a float in (0, 1], got {self.top_p!r}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 disables the nucleus filter)")
    self._set("top_p", float(self.top_p))
    if self.draw not in DRAWS:
      raise ValueError(f"draw={self.draw!r} is not one of {DRAWS}")
    if not _is_real(self.temperature):
      raise TypeError(f"temperature must be a float > 0, got {self.temperature!r}")
    if not (math.isfinite(self.temperature) and self.temperature > 0):
      raise ValueError(f"temperature={self.temperature} must be a finite float > 0")
    self._set("temperature", float(self.temperature))
    if not _is_real(self.t_min):
      raise TypeError(f"t_min must be a float in [0, 1), got {self.t_min!r}")
    if not 0.0 <= self.t_min < 1.0:
      raise ValueError(f"t_min={self.t_min} must be in [0, 1)")
    self._set("t_min", float(self.t_min))
    if self.strategy == "loop" and self.t_min >= self.t_off:
      raise ValueError(f"t_min={self.t_min} must be < t_off={self.t_off} for strategy='loop'")
    for name in ("noise_removal", "record_trajectory"):
      if not isinstance(getattr(self, name), bool):
        raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")


def time_grid(config: ReMDMConfig, i):
  """``t_i = t_min + ((N - i) / N)(1 - t_min)`` in float32 (same as tau_leaping's)."""
  frac = jnp.asarray(config.num_steps - i, jnp.float32) / config.num_steps
  return (config.t_min + frac * (1.0 - config.t_min)).astype(jnp.float32)


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
  """Reference top-p on ``softmax(logits)`` over the last axis: keep tokens whose inclusive
  descending cumulative mass is ``<= top_p``, and always the top one; others get ``-inf``."""
  probs = jax.nn.softmax(logits, axis=-1)
  order = jnp.argsort(-logits, axis=-1)
  sorted_probs = jnp.take_along_axis(probs, order, axis=-1)
  keep_sorted = jnp.cumsum(sorted_probs, axis=-1) <= top_p
  keep_sorted = keep_sorted.at[..., 0].set(True)
  keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
  return jnp.where(keep, logits, -jnp.inf)


def build_kernel(denoise_fn: DenoiseFn, config: ReMDMConfig, vocab_size: int):
  """The pure ``step(rng_key, state) -> (state, info)`` for a fixed vocabulary size."""
  n = config.num_steps
  mask_id = config.mask_id

  def call_denoiser(tokens, t):
    b = tokens.shape[0]
    return denoise_fn(tokens, jnp.full((b,), t, jnp.float32)).astype(jnp.float32)

  def step(rng_key, state: ReMDMState):
    x, fixed = state.tokens, state.fixed
    b, l = x.shape
    i = state.step
    i_grid = jnp.minimum(i, n - 1)      # steps past the grid are no-ops (nothing masked)
    is_last = i == n - 1
    t, s = time_grid(config, i_grid), time_grid(config, i_grid + 1)
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
    logits = jax.lax.cond(need_call, lambda: call_denoiser(x, t),
                          lambda: jnp.zeros((b, l, vocab_size), jnp.float32))
    nfe = need_call.astype(jnp.int32)
    if config.top_p < 1.0:
      draw_logits = nucleus_logits(logits / config.temperature, config.top_p)
      draw_temperature = 1.0
    else:
      draw_logits, draw_temperature = logits, config.temperature

    step_key = jax.random.fold_in(rng_key, i)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(step_key, r))(jnp.arange(b))
    draw = functools.partial(categorical.unmask_draw, draw=config.draw,
                             temperature=draw_temperature)
    event, proposal = jax.vmap(draw)(row_keys, draw_logits, event_prob)
    unmask = event & masked
    remask = event & remaskable
    x_new = jnp.where(unmask, proposal, jnp.where(remask, mask_id, x))

    confidence = state.confidence
    if config.strategy == "conf":
      probs = jax.nn.softmax(draw_logits / draw_temperature, axis=-1)
      c_new = jnp.take_along_axis(probs, proposal[..., None], axis=-1)[..., 0]
      confidence = jnp.where(unmask, c_new, confidence)

    if config.noise_removal:
      still = x_new == mask_id
      need_removal = is_last & jnp.any(still)
      recompute = need_removal & jnp.any(unmask | remask)   # else logits are those of x_new
      final_logits = jax.lax.cond(recompute, lambda: call_denoiser(x_new, s), lambda: logits)
      nfe = nfe + recompute.astype(jnp.int32)
      greedy = jnp.argmax(final_logits, axis=-1).astype(jnp.int32)
      filled = still & is_last
      x_new = jnp.where(filled, greedy, x_new)
      if config.strategy == "conf":
        g_probs = jax.nn.softmax(final_logits, axis=-1)
        confidence = jnp.where(
            filled, jnp.take_along_axis(g_probs, greedy[..., None], axis=-1)[..., 0], confidence)

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


def _init_state(x_init, config: ReMDMConfig) -> ReMDMState:
  tokens = jnp.asarray(x_init).astype(jnp.int32)
  confidence = (jnp.zeros(tokens.shape, jnp.float32) if config.strategy == "conf" else None)
  return ReMDMState(tokens, tokens != config.mask_id, jnp.zeros((), jnp.int32), confidence)


def _sample_impl(rng_key, x_init, *, denoise_fn, config, vocab_size):
  step = build_kernel(denoise_fn, config, vocab_size)
  state = _init_state(x_init, config)
  state, info = jax.lax.scan(lambda st, _: step(rng_key, st), state, None,
                             length=config.num_steps)
  return state.tokens, info


_sample = model_jit(_sample_impl, static_argnames=("config", "vocab_size"))


def remdm(denoise_fn: DenoiseFn, *, mask_id: int, num_steps: int, strategy: str = "cap",
          eta: float | None = None, t_on: float | None = None, t_off: float | None = None,
          alpha_on: float | None = None,
          schedule: MaskingSchedule = MaskingSchedule("linear"), top_p: float = 1.0,
          draw: str = "two_stage", temperature: float = 1.0, noise_removal: bool = True,
          t_min: float = 0.0, record_trajectory: bool = False) -> MaskedSampler:
  """Builds a ReMDM :class:`MaskedSampler` (the math is in the module docstring).

  Args:
    denoise_fn: ``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]``.
    mask_id: the MASK id, ``>= V``.
    num_steps: ``N >= 1`` steps on ``t_i = 1 - (i / N)(1 - t_min)``.
    strategy: ``"cap"``, ``"rescale"``, ``"conf"`` or ``"loop"``.
    eta: remasking strength (``cap`` 0.008, ``rescale`` 0.015, ``loop`` 0.02 when ``None``);
      ``conf`` takes none. ``strategy="cap", eta=0`` is MDLM.
    t_on, t_off, alpha_on: ``loop`` only (0.55, 0.05, 0.9 when ``None``).
    schedule: ``alpha(t)`` (``loop`` uses its own and needs the default).
    top_p: nucleus mass on ``p_theta`` (reference rule, top token always kept); 1 disables.
    draw: ``"two_stage"`` (exact in float32) or ``"float64"`` (needs ``jax_enable_x64``).
    temperature: ``p_theta = softmax(logits / temperature)`` (before ``top_p``).
    noise_removal: final argmax for positions still masked; else the last step unmasks all.
    t_min: end of the grid (1e-5 for the reference's ``linspace(1, 1e-5, N + 1)``).
    record_trajectory: return the tokens after every step in ``info.tokens``.

  Returns:
    ``MaskedSampler(init, step, sample)``; ``sample(rng_key, x_init) -> (tokens, info)`` with
    ``info`` a :class:`ReMDMInfo` stacked over steps, jit-compiled once per shapes and
    hyper-parameters (a ``jax.tree_util.Partial`` model keeps its parameters traced).
  """
  if not callable(denoise_fn):
    raise TypeError(f"denoise_fn must be callable, got {denoise_fn!r}")
  config = ReMDMConfig(
      mask_id=mask_id, num_steps=num_steps, strategy=strategy, eta=eta, t_on=t_on, t_off=t_off,
      alpha_on=alpha_on, schedule=schedule, top_p=top_p, draw=draw, temperature=temperature,
      noise_removal=noise_removal, t_min=t_min, record_trajectory=record_trajectory)
  if config.draw == "float64":
    categorical.require_x64("remdm(draw='float64')")

  def check_input(x_init, vocab_size):
    del x_init, vocab_size
    if config.draw == "float64":
      categorical.require_x64("remdm(draw='float64')")

  return assemble_sampler(
      denoise_fn, config.mask_id,
      kernel=lambda v: build_kernel(denoise_fn, config, v),
      init_state=lambda x, v: _init_state(x, config),
      sample=lambda key, x, v: _sample(key, x, denoise_fn=denoise_fn, config=config,
                                       vocab_size=v),
      check_input=check_input)
