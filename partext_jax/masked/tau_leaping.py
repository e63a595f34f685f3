r"""Tau-leaping (ancestral) sampling for masked diffusion (``docs/algorithms.md#tau-leaping``).

MDLM's ancestral sampler (Sahoo et al. 2024), SEDD's analytic / Euler predictors (Lou et al.
2024), MD4's grid (Shi et al. 2024).

Time grid: ``t_i = 1 - (i / N) (1 - t_min)`` for ``i = 0..N`` (``N = num_steps``); step ``i``
goes from ``t = t_i`` to ``s = t_{i+1} < t``. At every step the denoiser gives
``p_theta(. | x_t) = softmax(logits / temperature)`` over the ``V`` real tokens and every masked
position independently

* unmasks with probability ``p_i`` and takes a value ``~ p_theta`` at that position,
* otherwise stays masked.

Unmasked positions (prompt, infilling constraints, tokens decoded earlier) are copied unchanged
(carry-over) and the MASK id is never emitted.

``method`` chooses ``p_i``:

* ``"analytic"`` (Tweedie tau-leaping, SEDD's AnalyticPredictor): the exact posterior of the
  absorbing process, ``p_i = (alpha(s) - alpha(t)) / (1 - alpha(t))``. With an exact denoiser
  the only approximation left is that positions unmasked in the *same* step are drawn
  independently (from their marginals); it vanishes as ``N`` grows (``N = 1`` samples the
  product of the marginals).
* ``"euler"``: the first-order (Euler) discretisation of the reverse rate,
  ``one_hot + dt * rate``, i.e. ``p_i = clip((t - s) * (-alpha'(t)) / (1 - alpha(t)), 0, 1)``.

For the linear schedule ``alpha = 1 - t`` both are ``(t - s) / t``: the methods coincide (up to
float rounding). For other schedules Euler is biased at finite ``N`` (e.g. cosine: ``alpha'(1) = 0``
so Euler unmasks nothing in the first step).

End of the trajectory (MASK must never be emitted):

* ``noise_removal=True`` (MDLM): after the last stochastic step, positions still masked take the
  argmax of ``p_theta(. | x, t_min)`` (one extra denoiser call, skipped when nothing is masked).
* ``noise_removal=False``: the last step goes to clean data, ``p_{N-1} = 1``: every remaining
  mask is sampled from ``p_theta``. With ``t_min = 0`` and an unshifted schedule
  (``alpha(0) = 1``) this *is* the analytic probability; with ``t_min > 0`` or ``eps > 0`` it
  completes the step to ``alpha = 1``.

Output cache (``cache_outputs=True``, MDLM's ``_ddpm_caching_update``): when a step changes no
token, the next step reuses the previous logits instead of calling the denoiser. This is exact
only for a *time-independent* denoiser (its output depends on the tokens only: true for SUBS /
MDLM models without time conditioning and for :func:`partext_jax.testing.exact_denoiser`);
setting the flag asserts that. Under ``jit`` the decision is a batch-level ``lax.cond``: the
denoiser runs on the whole batch if any row changed. Independently of the flag, a step where no
position of the batch is masked does not call the denoiser (exact for any denoiser).
``info.nfe`` counts denoiser calls.

Randomness: step ``i``, row ``r`` draw from ``fold_in(fold_in(rng_key, i), r)``
(:func:`partext_jax.masked.driver.row_keys`), so a row's sample depends only on (key, row index,
row contents): it is the same alone as inside a bigger batch (at index 0), whatever the other
rows hold. Pass the *same* key to every ``step`` call of a trajectory to reproduce ``sample``.

Categorical draws use :mod:`partext_jax.masked.categorical`
(``docs/algorithms.md#exact-categorical-draws``): ``precision="float32"`` is the exact two-stage
draw, ``precision="float64"`` the one-stage float64 draw (needs ``jax_enable_x64``); never a
float32 Gumbel over ``[V + MASK]``, which under-samples rare tokens.

Example::

    sampler = tau_leaping(denoise_fn, mask_id=V, num_steps=256)
    x = jnp.full((8, 64), V, jnp.int32).at[:, :4].set(prompt)    # MASK everywhere but a prompt
    tokens, info = sampler.sample(jax.random.key(0), x)          # one jit-compiled lax.scan
    info.nfe.sum()                                               # number of denoiser calls

    # step by step (e.g. for trajectory plots)
    state = sampler.init(x)
    step = jax.jit(sampler.step)
    for _ in range(256):
      state, info = step(jax.random.key(0), state)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from partext_jax.base import DenoiseFn, checked_choice, checked_float_fields, model_jit
from partext_jax.masked import categorical, driver
from partext_jax.masked.driver import MaskedSampler
from partext_jax.schedules import MaskingSchedule, checked_schedule

METHODS = ("analytic", "euler")
PRECISIONS = categorical.PRECISIONS


@dataclasses.dataclass(frozen=True)
class TauLeapingConfig(driver.StepConfig):
  """Validated, hashable hyper-parameters (a static jit argument); see :func:`tau_leaping`.

  Raises ``TypeError`` / ``ValueError`` naming the argument and its valid values.
  """
  schedule: Any = MaskingSchedule("linear")
  method: str = "analytic"
  temperature: float = 1.0
  noise_removal: bool = True
  t_min: float = 0.0
  cache_outputs: bool = False

  def check(self):
    checked_schedule(self.schedule, methods=("alpha", "dalpha"))
    checked_choice("method", self.method, METHODS)
    checked_float_fields(self, {
        "temperature": dict(lo=0.0, lo_open=True,
                            hint=" (use an argmax decoder for temperature 0)"),
        "t_min": dict(lo=0.0, hi=1.0, hi_open=True)})


class TauLeapingState(NamedTuple):
  """Carried state.

  Attributes:
    tokens: ``int32[B, L]`` current sequence (MASK id at positions still to generate).
    step: ``int32[]`` index ``i`` of the next step.
    logits: ``float32[B, L, V]`` last denoiser output (``cache_outputs`` only, else ``None``).
    cache_valid: ``bool[]``, ``logits`` were computed on ``tokens`` (``cache_outputs`` only).
  """
  tokens: jax.Array
  step: jax.Array
  logits: Any = None
  cache_valid: Any = None


class TauLeapingInfo(NamedTuple):
  """Per-step diagnostics (``sample`` stacks them along a leading ``[num_steps]`` axis).

  Attributes:
    nfe: ``int32[]`` denoiser calls made by this step (0, 1, or 2 with noise removal).
    num_unmasked: ``int32[B]`` positions unmasked by this step, per row.
    unmask_probability: ``float32[]`` per-position unmask probability ``p_i`` of this step.
    t: ``float32[]`` time at the start of the step.
    s: ``float32[]`` time at the end of the step.
    tokens: ``int32[B, L]`` tokens after the step if ``record_trajectory``, else ``None``.
  """
  nfe: jax.Array
  num_unmasked: jax.Array
  unmask_probability: jax.Array
  t: jax.Array
  s: jax.Array
  tokens: Any = None


def unmask_probability(config: TauLeapingConfig, t, s):
  """``p_i`` of the chosen method, clipped to ``[0, 1]`` (see the module docstring)."""
  sched = config.schedule
  a_t = sched.alpha(t)
  if config.method == "analytic":
    p = (sched.alpha(s) - a_t) / (1.0 - a_t)
  else:
    p = (t - s) * (-sched.dalpha(t)) / (1.0 - a_t)
  # alpha(t) == 1 (e.g. t**k underflowing near 0): nothing should be masked any more at t.
  p = jnp.where(1.0 - a_t > 0, p, 1.0)
  return jnp.clip(p, 0.0, 1.0).astype(jnp.float32)


def build_kernel(denoise_fn: DenoiseFn, config: TauLeapingConfig, vocab_size: int):
  """The pure ``step(rng_key, state) -> (state, info)`` for a fixed vocabulary size."""
  mask_id = config.mask_id

  def step(rng_key, state: TauLeapingState):
    x = state.tokens
    b, l = x.shape
    i = state.step
    t, s, is_last = driver.step_times(config.num_steps, config.t_min, i)
    p = unmask_probability(config, t, s)
    if not config.noise_removal:
      p = jnp.where(is_last, jnp.float32(1.0), p)

    masked = x == mask_id
    if config.cache_outputs:
      cache_valid, prev_logits = state.cache_valid, state.logits
    else:
      cache_valid, prev_logits = jnp.array(False), jnp.zeros((b, l, vocab_size), jnp.float32)
    need_call = jnp.any(masked) & ~cache_valid
    logits = jax.lax.cond(need_call, lambda: driver.call_at_time(denoise_fn, x, t),
                          lambda: prev_logits)
    nfe = need_call.astype(jnp.int32)
    fresh = cache_valid | need_call   # logits correspond to x

    unmask, proposal = categorical.unmask_draw(
        driver.row_keys(rng_key, i, b), logits, p, where=masked, precision=config.precision,
        temperature=config.temperature)
    unmask = unmask & masked
    x_new = jnp.where(unmask, proposal, x)
    valid_after = fresh & ~jnp.any(unmask)

    if config.noise_removal:
      x_new, filled, logits, extra = driver.noise_removal(
          denoise_fn, x_new, s, logits, mask_id=mask_id, is_last=is_last, stale=~valid_after)
      nfe = nfe + extra
      valid_after = valid_after & ~jnp.any(filled)

    new_state = TauLeapingState(
        tokens=x_new, step=i + 1,
        logits=logits if config.cache_outputs else None,
        cache_valid=valid_after if config.cache_outputs else None)
    info = TauLeapingInfo(
        nfe=nfe, num_unmasked=jnp.sum(x_new != x, axis=1).astype(jnp.int32),
        unmask_probability=p, t=t, s=s,
        tokens=x_new if config.record_trajectory else None)
    return new_state, info

  return step


def init_state(x_init, config: TauLeapingConfig, vocab_size: int) -> TauLeapingState:
  """The state before step 0 (``x_init int[B, L]``)."""
  tokens = jnp.asarray(x_init).astype(jnp.int32)
  b, l = tokens.shape
  if config.cache_outputs:
    return TauLeapingState(tokens, jnp.zeros((), jnp.int32),
                           jnp.zeros((b, l, vocab_size), jnp.float32), jnp.array(False))
  return TauLeapingState(tokens, jnp.zeros((), jnp.int32))


jitted_sample = model_jit(driver.scan_sample(build_kernel, init_state),
                          static_argnames=("config", "vocab_size"))
"""The whole trajectory, compiled once per (shapes, config, model) for every sampler built here."""


def tau_leaping(denoise_fn: DenoiseFn, *, mask_id: int, num_steps: int,
                schedule: MaskingSchedule = MaskingSchedule("linear"),
                method: str = "analytic", precision: str = "float32",
                temperature: float = 1.0, noise_removal: bool = True, t_min: float = 0.0,
                cache_outputs: bool = False, record_trajectory: bool = False) -> MaskedSampler:
  """Builds a tau-leaping :class:`MaskedSampler` (see the module docstring for the math).

  Args:
    denoise_fn: ``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]``
      over the ``V`` real tokens.
    mask_id: the MASK token id: ``>= V``, or inside ``[0, V)`` (never emitted, see base.py).
    num_steps: ``N >= 1`` steps on the grid ``t_i = 1 - (i / N)(1 - t_min)``.
    schedule: the masking schedule ``alpha(t)``.
    method: ``"analytic"`` (exact posterior) or ``"euler"`` (first-order rate).
    precision: ``"float32"`` (Bernoulli then categorical over ``V``: the exact two-stage draw)
      or ``"float64"`` (one ``V + 1``-way float64 draw; needs ``jax_enable_x64``).
    temperature: ``p_theta = softmax(logits / temperature)``, ``> 0``.
    noise_removal: MDLM's final argmax for positions still masked after the last step;
      otherwise the last step unmasks everything by sampling.
    t_min: end of the time grid, in ``[0, 1)`` (MDLM uses 1e-5, MD4 0).
    cache_outputs: reuse the previous logits when a step changed no token. Exact ONLY for a
      time-independent denoiser; setting it asserts that yours is one.
    record_trajectory: return the tokens after every step in ``info.tokens``.

  Returns:
    ``MaskedSampler(init, step, sample)``: ``sample(rng_key, x_init) -> (tokens int32[B, L],
    info)`` with ``info`` a :class:`TauLeapingInfo` whose fields have a leading
    ``[num_steps]`` axis; ``sample`` is jit-compiled once per (shapes, hyper-parameters,
    denoise_fn); a ``jax.tree_util.Partial`` model is compiled once per function and parameter
    shapes (see :mod:`partext_jax.masked.driver`).

  Raises:
    TypeError / ValueError: a bad hyper-parameter (named, with its valid values), before any
      compilation; ``sample`` / ``init`` likewise for a bad ``x_init`` or key.
    RuntimeError: ``precision="float64"`` while ``jax_enable_x64`` is off.
  """
  config = TauLeapingConfig(
      mask_id=mask_id, num_steps=num_steps, schedule=schedule, method=method,
      precision=precision, temperature=temperature, noise_removal=noise_removal, t_min=t_min,
      cache_outputs=cache_outputs, record_trajectory=record_trajectory)
  return driver.scan_sampler("tau_leaping", denoise_fn, config, build_kernel=build_kernel,
                             init_state=init_state, sample=jitted_sample)
