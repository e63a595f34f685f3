r"""P2 path planning for masked diffusion (ALGORITHMS.md section 5, survey eq. 17).

Reference: ``pengzhangzhi/Path-Planning: src/path_planning/p2.py`` (Peng et al., "Path Planning
for Masked Diffusion Model Sampling"). Read to learn; the code here is ours.

Let ``F`` be the set of free positions of a row (MASK in ``x_init``; the others are the prompt),
``N_free = |F|``, and ``kappa`` a non-decreasing schedule with ``kappa(0) = 0``, ``kappa(1) = 1``.
Step ``i = 1..N`` (``N = num_steps``; the code's 0-based ``step`` is ``i - 1``):

1. ``logits = denoise_fn(x, t)`` with ``t = 1 - kappa((i - 1) / N)`` (the masked fraction the
   schedule expects at the start of the step); ``logits' = logits / tau + g``, ``g`` i.i.d.
   Gumbel (``tau = 0``: ``logits' = logits``); ``x0 = argmax logits'`` at every position, so
   ``x0 ~ softmax(logits / tau)`` (argmax for ``tau = 0``).
2. Planner (optional): at positions decoded earlier, ``logits'`` is replaced by
   ``planner(x, x0)`` (BERT-planning: any masked LM scoring the proposal, see
   :func:`denoiser_planner`). Self-planning = no planner.
3. ``score = log_softmax(logits')[x0]``; decoded positions' score is multiplied by ``eta``
   (``eta = 0``: exactly 0, the highest possible score, so decoded tokens are frozen; larger
   ``eta`` remasks more; RDM-style = self-planning with ``eta = 1``); prompt positions ``+inf``.
4. The ``k_i = floor(N_free (1 - kappa(i / N)))`` lowest-score positions are masked (decoded
   ones included: that is the remasking); positions masked before and not chosen take ``x0``;
   decoded positions that survive keep their token (not resampled).
5. After the last step (``kappa(1) = 1`` so ``k_N = 0``) any leftover MASK takes the last
   ``x0`` (done inside the last step, so ``step``-by-step equals ``sample``).

So after step ``i`` exactly ``k_i`` free positions of each row are masked (a deterministic
count), whatever the tokens.

``kappa`` schedules (:class:`KappaSchedule`): ``linear`` ``t``; ``cosine`` ``1 - cos(pi t / 2)``
(few tokens first); ``sine`` ``sin(pi t / 2)`` (many first); ``polynomial`` ``t**exponent``;
``geometric`` ``(ratio**t - 1) / (ratio - 1)`` (``ratio > 1`` few first, ``< 1`` many first).

Reference quirks and our choices:

* Ties. The reference masks the positions whose score is *strictly below* the ``k``-th smallest
  score, so ties at the cut-off mask fewer than ``k`` (and, with ``eta = 0``, a masked position
  whose proposal has probability 1 ties with the frozen decoded positions). We mask exactly ``k``
  positions, breaking ties toward positions that were masked before the step, then toward the
  lower index. This is what makes ``eta = 0`` freeze decoded tokens exactly.
* ``eta * score`` with ``score = -inf`` (a planner giving probability 0) is NaN at ``eta = 0``;
  we use 0 for ``eta = 0``.
* ``k_i`` in float32 (the reference multiplies in float32 too): ``floor(N_free m (1 + 2**-20))``
  with ``m = 1 - kappa`` precomputed in float64; the relative slack absorbs rounding so that
  exact products (``N_free = N``, linear ``kappa``) give the exact integer.
* The reference calls ``planner(x0)``; our planner gets ``(x, x0)`` and may ignore ``x``.
* At decoded positions the score is that of the fresh proposal ``x0`` there (not of the token
  held), as in the reference; for a carry-over (SUBS) denoiser, such as the exact toy denoisers,
  the two coincide and the self-planning score of a decoded position is 0.
* The reference computes in float64 under autocast; we use float32 with JAX's "high"-precision
  Gumbel noise (two 23-bit uniforms), or float64 with ``precision="float64"``
  (needs ``jax_enable_x64``).
* A trained planner head (P2's learned planner) is out of scope: pass it as ``planner``.

Randomness: step ``i``, row ``r`` use ``fold_in(fold_in(rng_key, i), r)``.

Example::

    sampler = p2(denoise_fn, mask_id=V, num_steps=64, tau=1.0, eta=1.0, kappa="linear")
    x = jnp.full((8, 64), V, jnp.int32).at[:, :4].set(prompt)
    tokens, info = sampler.sample(jax.random.key(0), x)
    info.num_remasked.sum()          # decoded tokens sent back to MASK
    bert = p2(denoise_fn, mask_id=V, num_steps=64, planner=denoiser_planner(other_mlm))
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.masked import categorical
from partext_jax.base import DenoiseFn, checked_int, model_jit
from partext_jax.masked.driver import MaskedSampler, assemble_sampler

KAPPA_KINDS = ("linear", "cosine", "sine", "polynomial", "geometric")
PRECISIONS = ("float32", "float64")
Planner = Callable[[jax.Array, jax.Array], jax.Array]

# Relative slack on N_free * (1 - kappa) before the floor (see the module docstring).
_COUNT_SLACK = 2.0**-20


@dataclasses.dataclass(frozen=True)
class KappaSchedule:
  """``kappa(t)``: fraction of free positions unmasked after a fraction ``t`` of the steps.

  Attributes:
    kind: one of ``KAPPA_KINDS``.
    exponent: of ``polynomial`` (``> 0``).
    ratio: of ``geometric`` (``> 0``, ``!= 1``).
  """
  kind: str = "linear"
  exponent: float = 2.0
  ratio: float = 10.0

  def __post_init__(self):
    if self.kind not in KAPPA_KINDS:
      raise ValueError(f"kappa kind={self.kind!r} is not one of {KAPPA_KINDS}")
    if not (isinstance(self.exponent, (int, float)) and math.isfinite(self.exponent)
            and self.exponent > 0):
      raise ValueError(f"kappa exponent={self.exponent!r} must be a finite float > 0")
    if not (isinstance(self.ratio, (int, float)) and math.isfinite(self.ratio)
            and self.ratio > 0 and self.ratio != 1):
      raise ValueError(f"kappa ratio={self.ratio!r} must be a finite float > 0 and != 1")

  def __call__(self, t):
    """``kappa(t)`` in float64 (numpy; evaluated once per grid at build time)."""
    t = np.asarray(t, np.float64)
    if self.kind == "linear":
      k = t
    elif self.kind == "cosine":
      k = 1.0 - np.cos(0.5 * np.pi * t)
    elif self.kind == "sine":
      k = np.sin(0.5 * np.pi * t)
    elif self.kind == "polynomial":
      k = t**self.exponent
    else:
      k = np.expm1(t * np.log(self.ratio)) / np.expm1(np.log(self.ratio))
    # exact ends (cos(pi/2) is 6e-17, not 0)
    return np.where(t <= 0, 0.0, np.where(t >= 1, 1.0, np.clip(k, 0.0, 1.0)))


class P2State(NamedTuple):
  """Carried state.

  Attributes:
    tokens: ``int32[B, L]`` current sequence.
    fixed: ``bool[B, L]`` prompt positions (not MASK in ``x_init``): never change.
    step: ``int32[]`` 0-based index of the next step.
  """
  tokens: jax.Array
  fixed: jax.Array
  step: jax.Array


class P2Info(NamedTuple):
  """Per-step diagnostics (stacked over steps by ``sample``).

  Attributes:
    nfe: ``int32[]`` model calls (denoiser + planner) of this step.
    num_unmasked: ``int32[B]`` positions that were masked and now hold a token.
    num_remasked: ``int32[B]`` decoded positions sent back to MASK.
    num_masked: ``int32[B]`` positions masked after the step (``k_i``).
    kappa: ``float32[]`` ``kappa(i / N)`` of this step.
    tokens: ``int32[B, L]`` after the step if ``record_trajectory``, else ``None``.
  """
  nfe: jax.Array
  num_unmasked: jax.Array
  num_remasked: jax.Array
  num_masked: jax.Array
  kappa: jax.Array
  tokens: Any = None


@dataclasses.dataclass(frozen=True)
class P2Config:
  """Validated, hashable hyper-parameters (a static jit argument)."""
  mask_id: int
  num_steps: int
  tau: float = 1.0
  eta: float = 1.0
  kappa: Any = KappaSchedule("linear")
  precision: str = "float32"
  record_trajectory: bool = False

  def __post_init__(self):
    object.__setattr__(self, "mask_id", checked_int(
        "mask_id", self.mask_id, minimum=0, hint=" (usually V, the vocabulary size)"))
    object.__setattr__(self, "num_steps", checked_int("num_steps", self.num_steps, minimum=1))
    for name in ("tau", "eta"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{name} must be a float >= 0, got {value!r}")
      if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}={value} must be a finite float >= 0")
      object.__setattr__(self, name, float(value))
    if isinstance(self.kappa, str):
      if self.kappa not in KAPPA_KINDS:
        raise ValueError(f"kappa={self.kappa!r} is not one of {KAPPA_KINDS} "
                         "(or pass a KappaSchedule)")
      object.__setattr__(self, "kappa", KappaSchedule(self.kappa))
    if not isinstance(self.kappa, KappaSchedule):
      raise TypeError(f"kappa must be one of {KAPPA_KINDS} or a KappaSchedule, got "
                      f"{self.kappa!r}")
    if self.precision not in PRECISIONS:
      raise ValueError(f"precision={self.precision!r} is not one of {PRECISIONS}")
    if not isinstance(self.record_trajectory, bool):
      raise TypeError(f"record_trajectory must be True or False, got "
                      f"{self.record_trajectory!r}")

  def mask_fractions(self) -> np.ndarray:
    """``float64[N + 1]``: ``1 - kappa(j / N)`` for ``j = 0..N``."""
    return 1.0 - self.kappa(np.arange(self.num_steps + 1) / self.num_steps)


def num_to_mask(num_free, mask_fraction):
  """``floor(num_free * mask_fraction)`` in float32 with relative slack ``2**-20``, in
  ``[0, num_free]``."""
  num_free = jnp.asarray(num_free, jnp.int32)
  k = jnp.floor(num_free.astype(jnp.float32) * jnp.asarray(mask_fraction, jnp.float32)
                * np.float32(1.0 + _COUNT_SLACK))
  return jnp.clip(k.astype(jnp.int32), 0, num_free)


def lowest_k(score, k, prefer):
  """``bool[..., L]``: the ``k`` (per row) lowest-``score`` positions; ties go to ``prefer``
  positions first, then to the lower index."""
  length = score.shape[-1]
  index = jnp.broadcast_to(jnp.arange(length), score.shape)
  # lexsort: the last key is the primary one.
  order = jnp.lexsort((index, (~prefer).astype(jnp.int32), score), axis=-1)
  rank = jnp.argsort(order, axis=-1)
  return rank < jnp.asarray(k)[..., None]


def denoiser_planner(denoise_fn: DenoiseFn, *, t: float = 0.0) -> Planner:
  """BERT-style planner from any masked LM: ``planner(x, x0) = denoise_fn(x0, t)``, i.e. the
  model scores the fully filled proposal (the reference's ``planner(x0)``)."""

  def planner(tokens, x0):
    del tokens
    return denoise_fn(x0, jnp.full((x0.shape[0],), t, jnp.float32))

  return planner


def build_kernel(denoise_fn: DenoiseFn, config: P2Config, vocab_size: int,
                 planner: Planner | None = None):
  """The pure ``step(rng_key, state) -> (state, info)``."""
  n = config.num_steps
  mask_id = config.mask_id
  dtype = jnp.float64 if config.precision == "float64" else jnp.float32
  fractions = config.mask_fractions()
  start_masked = jnp.asarray(fractions[:-1], jnp.float32)   # model time of step i
  end_masked = jnp.asarray(fractions[1:], jnp.float32)      # 1 - kappa_i after step i
  kappas = jnp.asarray(1.0 - fractions[1:], jnp.float32)

  def step(rng_key, state: P2State):
    x, fixed = state.tokens, state.fixed
    b, l = x.shape
    i = state.step
    i_grid = jnp.minimum(i, n - 1)
    is_last = i >= n - 1
    masked = x == mask_id
    decoded = ~masked & ~fixed
    active = jnp.any(masked) | ((config.eta > 0) & jnp.any(decoded) & ~is_last)

    if config.precision == "float64":
      categorical.require_x64("p2(precision='float64')")
    # Only the model calls sit inside lax.cond (skipped when the step has nothing to do); the
    # cheap arithmetic stays outside, which also keeps eager `step` calls fast.
    t = jnp.full((b,), start_masked[i_grid], jnp.float32)
    logits = jax.lax.cond(active, lambda: denoise_fn(x, t).astype(dtype),
                          lambda: jnp.zeros((b, l, vocab_size), dtype))
    step_key = jax.random.fold_in(rng_key, i)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(step_key, r))(jnp.arange(b))
    if config.tau > 0:
      gumbel = jax.vmap(lambda k: jax.random.gumbel(k, (l, vocab_size), dtype,
                                                    mode="high"))(row_keys)
      perturbed = logits / jnp.asarray(config.tau, dtype) + gumbel
    else:
      perturbed = logits
    x0 = jnp.where(active, jnp.argmax(perturbed, axis=-1).astype(jnp.int32), x)
    nfe = active.astype(jnp.int32)
    if planner is not None:
      use_planner = active & jnp.any(decoded)
      planner_logits = jax.lax.cond(use_planner, lambda: planner(x, x0).astype(dtype),
                                    lambda: jnp.zeros((b, l, vocab_size), dtype))
      perturbed = jnp.where(decoded[..., None], planner_logits, perturbed)
      nfe = nfe + use_planner.astype(jnp.int32)
    logp = jax.nn.log_softmax(perturbed, axis=-1)
    score = jnp.take_along_axis(logp, x0[..., None], axis=-1)[..., 0]
    if config.eta == 0:
      score = jnp.where(decoded, jnp.zeros((), dtype), score)
    else:
      score = jnp.where(decoded, score * config.eta, score)
    score = jnp.where(fixed, jnp.asarray(jnp.inf, dtype), score)
    k = num_to_mask(jnp.sum(~fixed, axis=1), end_masked[i_grid])
    to_mask = lowest_k(score, k, prefer=masked) & ~fixed
    x_new = jnp.where(to_mask, mask_id, jnp.where(masked, x0, x))
    # Leftover masks take the last proposal (only when kappa(1) < 1; never for KAPPA_KINDS).
    x_new = jnp.where(is_last & (x_new == mask_id), x0, x_new)

    info = P2Info(
        nfe=nfe,
        num_unmasked=jnp.sum(masked & (x_new != mask_id), axis=1).astype(jnp.int32),
        num_remasked=jnp.sum(decoded & (x_new == mask_id), axis=1).astype(jnp.int32),
        num_masked=jnp.sum(x_new == mask_id, axis=1).astype(jnp.int32),
        kappa=kappas[i_grid],
        tokens=x_new if config.record_trajectory else None)
    return P2State(x_new, fixed, i + 1), info

  return step


def _init_state(x_init, config: P2Config) -> P2State:
  tokens = jnp.asarray(x_init).astype(jnp.int32)
  return P2State(tokens, tokens != config.mask_id, jnp.zeros((), jnp.int32))


def _sample_impl(rng_key, x_init, *, denoise_fn, planner, config, vocab_size):
  step = build_kernel(denoise_fn, config, vocab_size, planner)
  state = _init_state(x_init, config)
  state, info = jax.lax.scan(lambda st, _: step(rng_key, st), state, None,
                             length=config.num_steps)
  return state.tokens, info


_sample = model_jit(_sample_impl, static_argnames=("config", "vocab_size"),
                    model_argnames=("denoise_fn", "planner"))


def p2(denoise_fn: DenoiseFn, *, mask_id: int, num_steps: int, tau: float = 1.0,
       eta: float = 1.0, kappa: str | KappaSchedule = "linear",
       planner: Planner | None = None, precision: str = "float32",
       record_trajectory: bool = False) -> MaskedSampler:
  """Builds a P2 :class:`MaskedSampler` (the algorithm is in the module docstring).

  Args:
    denoise_fn: ``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]``.
    mask_id: the MASK id, ``>= V``.
    num_steps: ``N >= 1``.
    tau: proposal temperature, ``>= 0`` (0: argmax proposals, no Gumbel noise).
    eta: multiplier of decoded positions' scores, ``>= 0`` (0 freezes decoded tokens; 1 is
      RDM-style self-planning).
    kappa: one of ``KAPPA_KINDS`` or a :class:`KappaSchedule`.
    planner: optional ``planner(tokens int32[B, L], x0 int32[B, L]) -> logits float[B, L, V]``
      scoring decoded positions (e.g. :func:`denoiser_planner`).
    precision: ``"float32"`` or ``"float64"`` (needs ``jax_enable_x64``) for logits, Gumbel
      noise and scores.
    record_trajectory: return the tokens after every step in ``info.tokens``.

  Returns:
    ``MaskedSampler(init, step, sample)``.
  """
  if not callable(denoise_fn):
    raise TypeError(f"denoise_fn must be callable, got {denoise_fn!r}")
  if planner is not None and not callable(planner):
    raise TypeError(f"planner must be None or callable planner(tokens, x0) -> logits, got "
                    f"{planner!r}")
  config = P2Config(mask_id=mask_id, num_steps=num_steps, tau=tau, eta=eta, kappa=kappa,
                    precision=precision, record_trajectory=record_trajectory)
  if config.precision == "float64":
    categorical.require_x64("p2(precision='float64')")

  def check_shape(b, l, vocab_size):
    if planner is not None:
      spec = jax.ShapeDtypeStruct((b, l), jnp.int32)
      out = jax.eval_shape(planner, spec, spec)
      if out.shape != (b, l, vocab_size):
        raise ValueError(f"planner must map (tokens[{b}, {l}], x0[{b}, {l}]) to logits"
                         f"[{b}, {l}, {vocab_size}]; it returned {out.shape}")

  def check_input(x_init, vocab_size):
    del x_init, vocab_size
    if config.precision == "float64":
      categorical.require_x64("p2(precision='float64')")

  return assemble_sampler(
      denoise_fn, config.mask_id,
      kernel=lambda v: build_kernel(denoise_fn, config, v, planner),
      init_state=lambda x, v: _init_state(x, config),
      sample=lambda key, x, v: _sample(key, x, denoise_fn=denoise_fn, planner=planner,
                                       config=config, vocab_size=v),
      check_shape=check_shape, check_input=check_input)
