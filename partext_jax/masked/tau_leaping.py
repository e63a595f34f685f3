r"""Tau-leaping (ancestral) sampling for masked diffusion (ALGORITHMS.md section 2, survey eq. 9).

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

Randomness: step ``i`` uses ``fold_in(rng_key, i)`` and row ``r`` of the batch then
``fold_in(., r)``, so a row's sample depends only on (key, row index, row contents): it is the same
alone as inside a bigger batch (at index 0), whatever the other rows hold. Pass the *same* key
to every :func:`step` call of a trajectory to reproduce ``sample``.

Categorical draws use :mod:`partext_jax.masked.categorical` (``draw="two_stage"``: exact in
float32; ``draw="float64"``: needs ``jax_enable_x64``); never a float32 Gumbel over
``[V + MASK]``, which under-samples rare tokens.

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
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from partext_jax.masked import categorical
from partext_jax.base import DenoiseFn, checked_int, model_jit
from partext_jax.masked.driver import MaskedSampler, assemble_sampler
from partext_jax.schedules import MaskingSchedule

METHODS = ("analytic", "euler")
DRAWS = categorical.DRAWS


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


@dataclasses.dataclass(frozen=True)
class TauLeapingConfig:
  """Validated, hashable hyper-parameters (a static jit argument)."""
  mask_id: int
  num_steps: int
  schedule: Any = MaskingSchedule("linear")
  method: str = "analytic"
  draw: str = "two_stage"
  temperature: float = 1.0
  noise_removal: bool = True
  t_min: float = 0.0
  cache_outputs: bool = False
  record_trajectory: bool = False

  def __post_init__(self):
    object.__setattr__(self, "mask_id", checked_int(
        "mask_id", self.mask_id, minimum=0, hint=" (usually V, the vocabulary size)"))
    object.__setattr__(self, "num_steps", checked_int("num_steps", self.num_steps, minimum=1))
    if not (callable(getattr(self.schedule, "alpha", None))
            and callable(getattr(self.schedule, "dalpha", None))):
      raise TypeError(f"schedule must be a MaskingSchedule (with alpha and dalpha), got "
                      f"{self.schedule!r}")
    try:
      hash(self.schedule)
    except TypeError as e:
      raise TypeError(f"schedule={self.schedule!r} must be hashable (a frozen dataclass)") from e
    if self.method not in METHODS:
      raise ValueError(f"method={self.method!r} is not one of {METHODS}")
    if self.draw not in DRAWS:
      raise ValueError(f"draw={self.draw!r} is not one of {DRAWS}")
    if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
      raise TypeError(f"temperature must be a float > 0, got {self.temperature!r}")
    if not (math.isfinite(self.temperature) and self.temperature > 0):
      raise ValueError(f"temperature={self.temperature} must be a finite float > 0 "
                       "(use an argmax decoder for temperature 0)")
    object.__setattr__(self, "temperature", float(self.temperature))
    if isinstance(self.t_min, bool) or not isinstance(self.t_min, (int, float)):
      raise TypeError(f"t_min must be a float in [0, 1), got {self.t_min!r}")
    if not 0.0 <= self.t_min < 1.0:
      raise ValueError(f"t_min={self.t_min} must be in [0, 1)")
    object.__setattr__(self, "t_min", float(self.t_min))
    for name in ("noise_removal", "cache_outputs", "record_trajectory"):
      if not isinstance(getattr(self, name), bool):
        raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")


def time_grid(config: TauLeapingConfig, i):
  """``t_i = 1 - (i / N) (1 - t_min)`` as float32 (``i`` may be traced).

  Evaluated as ``t_min + ((N - i) / N) (1 - t_min)``: exact at both ends and without
  cancellation near ``t_min``.
  """
  frac = jnp.asarray(config.num_steps - i, jnp.float32) / config.num_steps
  return (config.t_min + frac * (1.0 - config.t_min)).astype(jnp.float32)


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
  n = config.num_steps
  mask_id = config.mask_id

  def call_denoiser(tokens, t):
    b = tokens.shape[0]
    logits = denoise_fn(tokens, jnp.full((b,), t, jnp.float32))
    return logits.astype(jnp.float32)

  def step(rng_key, state: TauLeapingState):
    x = state.tokens
    b, l = x.shape
    i = state.step
    # Steps past the grid are no-ops (nothing is masked any more); clamp the times they use.
    i_grid = jnp.minimum(i, n - 1)
    is_last = i == n - 1
    t, s = time_grid(config, i_grid), time_grid(config, i_grid + 1)
    p = unmask_probability(config, t, s)
    if not config.noise_removal:
      p = jnp.where(is_last, jnp.float32(1.0), p)

    masked = x == mask_id
    any_masked = jnp.any(masked)
    if config.cache_outputs:
      cache_valid = state.cache_valid
      prev_logits = state.logits
    else:
      cache_valid = jnp.array(False)
      prev_logits = jnp.zeros((b, l, vocab_size), jnp.float32)
    need_call = any_masked & ~cache_valid
    logits = jax.lax.cond(need_call, lambda: call_denoiser(x, t), lambda: prev_logits)
    nfe = need_call.astype(jnp.int32)
    fresh = cache_valid | need_call   # logits correspond to x

    step_key = jax.random.fold_in(rng_key, i)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(step_key, r))(jnp.arange(b))
    draw = functools.partial(categorical.unmask_draw, draw=config.draw,
                             temperature=config.temperature)
    unmask, proposal = jax.vmap(lambda k, lg: draw(k, lg, p))(row_keys, logits)
    unmask = unmask & masked
    x_new = jnp.where(unmask, proposal, x)
    valid_after = fresh & ~jnp.any(unmask)

    if config.noise_removal:
      still = x_new == mask_id
      need_removal = is_last & jnp.any(still)
      recompute = need_removal & ~valid_after
      final_logits = jax.lax.cond(recompute, lambda: call_denoiser(x_new, s), lambda: logits)
      nfe = nfe + recompute.astype(jnp.int32)
      greedy = jnp.argmax(final_logits, axis=-1).astype(jnp.int32)
      x_new = jnp.where(still & is_last, greedy, x_new)
      valid_after = valid_after & ~need_removal
      logits = final_logits

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


def _init_state(x_init, config: TauLeapingConfig, vocab_size: int) -> TauLeapingState:
  tokens = jnp.asarray(x_init).astype(jnp.int32)
  b, l = tokens.shape
  if config.cache_outputs:
    return TauLeapingState(tokens, jnp.zeros((), jnp.int32),
                           jnp.zeros((b, l, vocab_size), jnp.float32), jnp.array(False))
  return TauLeapingState(tokens, jnp.zeros((), jnp.int32))


def _sample_impl(rng_key, x_init, *, denoise_fn, config, vocab_size):
  step = build_kernel(denoise_fn, config, vocab_size)
  state = _init_state(x_init, config, vocab_size)
  state, info = jax.lax.scan(lambda st, _: step(rng_key, st), state, None,
                             length=config.num_steps)
  return state.tokens, info


_sample = model_jit(_sample_impl, static_argnames=("config", "vocab_size"))


def tau_leaping(denoise_fn: DenoiseFn, *, mask_id: int, num_steps: int,
                schedule: MaskingSchedule = MaskingSchedule("linear"),
                method: str = "analytic", draw: str = "two_stage",
                temperature: float = 1.0, noise_removal: bool = True, t_min: float = 0.0,
                cache_outputs: bool = False, record_trajectory: bool = False) -> MaskedSampler:
  """Builds a tau-leaping :class:`MaskedSampler` (see the module docstring for the math).

  Args:
    denoise_fn: ``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]``
      over the ``V`` real tokens.
    mask_id: the MASK token id, ``>= V`` (checked against the model on first use).
    num_steps: ``N >= 1`` steps on the grid ``t_i = 1 - (i / N)(1 - t_min)``.
    schedule: the masking schedule ``alpha(t)``.
    method: ``"analytic"`` (exact posterior) or ``"euler"`` (first-order rate).
    draw: ``"two_stage"`` (Bernoulli then categorical over ``V``, exact in float32) or
      ``"float64"`` (one ``V + 1``-way float64 draw; needs ``jax_enable_x64``).
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
  """
  if not callable(denoise_fn):
    raise TypeError(f"denoise_fn must be callable, got {denoise_fn!r}")
  config = TauLeapingConfig(
      mask_id=mask_id, num_steps=num_steps, schedule=schedule, method=method, draw=draw,
      temperature=temperature, noise_removal=noise_removal, t_min=t_min,
      cache_outputs=cache_outputs, record_trajectory=record_trajectory)
  if config.draw == "float64":
    categorical.require_x64("tau_leaping(draw='float64')")

  def check_input(x_init, vocab_size):
    del x_init, vocab_size
    if config.draw == "float64":
      categorical.require_x64("tau_leaping(draw='float64')")

  return assemble_sampler(
      denoise_fn, config.mask_id,
      kernel=lambda v: build_kernel(denoise_fn, config, v),
      init_state=lambda x, v: _init_state(x, config, v),
      sample=lambda key, x, v: _sample(key, x, denoise_fn=denoise_fn, config=config,
                                       vocab_size=v),
      check_input=check_input)
