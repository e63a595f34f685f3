r"""P2 path planning for masked diffusion (``docs/algorithms.md#p2-path-planning``).

Reference: ``pengzhangzhi/Path-Planning: src/path_planning/p2.py`` (Peng et al. 2025, "Path
Planning for Masked Diffusion Model Sampling"). Read to learn; the code here is ours.

Let ``F`` be the set of free positions of a row (MASK in ``x_init``; the others are the prompt),
``N_free = |F|``, and ``kappa`` a non-decreasing schedule with ``kappa(0) = 0``, ``kappa(1) = 1``.
Step ``i = 1..N`` (``N = num_steps``; the code's 0-based ``step`` is ``i - 1``):

1. ``logits = denoise_fn(x, t)`` with ``t = 1 - kappa((i - 1) / N)`` (the masked fraction the
   schedule expects at the start of the step); ``logits' = logits / tau + g`` with ``tau`` the
   ``temperature`` and ``g`` i.i.d. Gumbel (``tau = 0``: ``logits' = logits``);
   ``x0 = argmax logits'`` at every position, so ``x0 ~ softmax(logits / tau)`` (argmax for
   ``tau = 0``).
2. Planner (optional): at positions decoded earlier, ``logits'`` is replaced by
   ``planner(x, x0)``: BERT-planning (any masked LM scoring the proposal, see
   :func:`denoiser_planner`) or a trained planner head
   (:func:`partext_jax.models.planner.trained_planner`, trained by
   :mod:`partext_jax.training.planner`). Self-planning = no planner.
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

``kappa`` schedules (:class:`partext_jax.schedules.KappaSchedule`, re-exported here):
``linear`` ``t``; ``cosine`` ``1 - cos(pi t / 2)`` (few tokens first); ``sine`` ``sin(pi t / 2)``
(many first); ``polynomial`` ``t**exponent``; ``geometric`` ``(ratio**t - 1) / (ratio - 1)``
(``ratio > 1`` few first, ``< 1`` many first).

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
* The reference computes in float64 under autocast; we use float32 with "high"-precision Gumbel
  noise (two 23-bit uniforms per logit, :func:`partext_jax.ops.gumbel_noise`), or float64 with
  ``precision="float64"`` (needs ``jax_enable_x64``). The score needs the whole perturbed row
  ``log_softmax(z / tau + g)`` (not only its argmax), so P2 draws ``V`` Gumbels per position and
  cannot use the two-stage draw of the confidence samplers.
* A trained planner is a small head on the frozen denoiser's hidden states
  (:func:`partext_jax.models.planner.trained_planner`, trained by
  :mod:`partext_jax.training.planner`); like any planner it is passed as ``planner``.

Randomness: step ``i``, row ``r`` use ``fold_in(fold_in(rng_key, i), r)``
(:func:`partext_jax.masked.driver.row_keys`).

Example::

    sampler = p2(denoise_fn, mask_id=V, num_steps=64, temperature=1.0, eta=1.0, kappa="linear")
    x = jnp.full((8, 64), V, jnp.int32).at[:, :4].set(prompt)
    tokens, info = sampler.sample(jax.random.key(0), x)
    info.num_remasked.sum()          # decoded tokens sent back to MASK
    bert = p2(denoise_fn, mask_id=V, num_steps=64, planner=denoiser_planner(other_mlm))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax import ops
from partext_jax.base import (DenoiseFn, checked_callable, checked_choice, checked_float_fields,
                              model_jit, model_partial)
from partext_jax.masked import categorical, driver
from partext_jax.masked.driver import MaskedSampler
from partext_jax.schedules import KAPPA_KINDS, KappaSchedule

PRECISIONS = categorical.PRECISIONS
Planner = Callable[[jax.Array, jax.Array], jax.Array]

# Relative slack on N_free * (1 - kappa) before the floor (see the module docstring).
COUNT_SLACK = 2.0**-20


@dataclasses.dataclass(frozen=True)
class P2Config(driver.StepConfig):
  """Validated, hashable hyper-parameters (a static jit argument); see :func:`p2`.

  Raises ``TypeError`` / ``ValueError`` naming the argument and its valid values.
  """
  temperature: float = 1.0
  eta: float = 1.0
  kappa: Any = KappaSchedule("linear")

  def check(self):
    checked_float_fields(self, {"temperature": dict(lo=0.0), "eta": dict(lo=0.0)})
    if isinstance(self.kappa, str):
      self._set("kappa", KappaSchedule(checked_choice("kappa", self.kappa, KAPPA_KINDS,
                                                      hint=" (or pass a KappaSchedule)")))
    if not isinstance(self.kappa, KappaSchedule):
      raise TypeError(f"kappa must be one of {KAPPA_KINDS} or a KappaSchedule, got "
                      f"{self.kappa!r}")

  def mask_fractions(self) -> np.ndarray:
    """``float64[N + 1]``: ``1 - kappa(j / N)`` for ``j = 0..N``."""
    return 1.0 - self.kappa(np.arange(self.num_steps + 1) / self.num_steps)


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


def num_to_mask(num_free, mask_fraction):
  """``floor(num_free * mask_fraction)`` in float32 with relative slack ``2**-20``, in
  ``[0, num_free]``."""
  num_free = jnp.asarray(num_free, jnp.int32)
  k = jnp.floor(num_free.astype(jnp.float32) * jnp.asarray(mask_fraction, jnp.float32)
                * np.float32(1.0 + COUNT_SLACK))
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


def _score_proposal(denoise_fn, t, tokens, x0):
  del tokens
  return denoise_fn(x0, jnp.full((x0.shape[0],), t, jnp.float32))


def denoiser_planner(denoise_fn: DenoiseFn, *, t: float = 0.0) -> Planner:
  """BERT-style planner from any masked LM: ``planner(x, x0) = denoise_fn(x0, t)``, i.e. the
  model scores the fully filled proposal ``x0 int32[B, L]`` (the reference's ``planner(x0)``)
  and returns its logits ``[B, L, V]``. A ``jax.tree_util.Partial`` model gives a ``Partial``
  planner, whose parameters stay traced (new parameters reuse the compiled sampler)."""
  return model_partial(_score_proposal, denoise_fn, t)


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

    # Only the model calls sit inside lax.cond (skipped when the step has nothing to do); the
    # cheap arithmetic stays outside, which also keeps eager `step` calls fast.
    t = jnp.full((b,), start_masked[i_grid], jnp.float32)
    logits = jax.lax.cond(active, lambda: denoise_fn(x, t).astype(dtype),
                          lambda: jnp.zeros((b, l, vocab_size), dtype))
    if config.temperature > 0:
      gumbel = jax.vmap(lambda k: ops.gumbel_noise(k, (l, vocab_size), dtype))(
          driver.row_keys(rng_key, i, b))
      perturbed = logits / jnp.asarray(config.temperature, dtype) + gumbel
    else:
      perturbed = logits
    x0 = jnp.where(active, ops.argmax(perturbed), x)
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


def init_state(x_init, config: P2Config, vocab_size: int) -> P2State:
  """The state before step 0 (``x_init int[B, L]``; its non-MASK positions are the prompt)."""
  del vocab_size
  tokens = jnp.asarray(x_init).astype(jnp.int32)
  return P2State(tokens, tokens != config.mask_id, jnp.zeros((), jnp.int32))


jitted_sample = model_jit(driver.scan_sample(build_kernel, init_state),
                          static_argnames=("config", "vocab_size"),
                          model_argnames=("denoise_fn", "planner"))
"""The whole trajectory, compiled once per (shapes, config, models) for every sampler built here."""


def p2(denoise_fn: DenoiseFn, *, mask_id: int, num_steps: int, temperature: float = 1.0,
       eta: float = 1.0, kappa: str | KappaSchedule = "linear",
       planner: Planner | None = None, precision: str = "float32",
       record_trajectory: bool = False) -> MaskedSampler:
  """Builds a P2 :class:`MaskedSampler` (Peng et al. 2025; the algorithm is in the module
  docstring).

  Args:
    denoise_fn: ``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]``.
    mask_id: the MASK id: ``>= V``, or inside ``[0, V)`` (never emitted, see base.py).
    num_steps: ``N >= 1``.
    temperature: proposal temperature ``tau >= 0`` (0: argmax proposals, no Gumbel noise).
    eta: multiplier of decoded positions' scores, ``>= 0`` (0 freezes decoded tokens; 1 is
      RDM-style self-planning).
    kappa: one of ``KAPPA_KINDS`` or a :class:`partext_jax.schedules.KappaSchedule`.
    planner: optional ``planner(tokens int32[B, L], x0 int32[B, L]) -> logits float[B, L, V]``
      scoring decoded positions (e.g. :func:`denoiser_planner`,
      :func:`partext_jax.models.planner.trained_planner`); a ``jax.tree_util.Partial`` keeps
      its parameters traced.
    precision: ``"float32"`` or ``"float64"`` (needs ``jax_enable_x64``) for logits, Gumbel
      noise and scores.
    record_trajectory: return the tokens after every step in ``info.tokens``.

  Returns:
    ``MaskedSampler(init, step, sample)``; ``sample(rng_key, x_init int32[B, L]) -> (tokens
    int32[B, L], info)`` with ``info`` a :class:`P2Info` stacked over steps.

  Raises:
    TypeError / ValueError: a bad hyper-parameter or planner (named, with its valid values),
      before any compilation; ``sample`` / ``init`` likewise for a bad ``x_init``, key, or a
      planner whose output shape does not match the model's.
    RuntimeError: ``precision="float64"`` while ``jax_enable_x64`` is off.
  """
  if planner is not None:
    checked_callable("planner", planner)
  config = P2Config(mask_id=mask_id, num_steps=num_steps, temperature=temperature, eta=eta,
                    kappa=kappa, precision=precision, record_trajectory=record_trajectory)

  def check_shape(b, l, vocab_size):
    if planner is not None:
      spec = jax.ShapeDtypeStruct((b, l), jnp.int32)
      out = jax.eval_shape(planner, spec, spec)
      if out.shape != (b, l, vocab_size):
        raise ValueError(f"planner must map (tokens[{b}, {l}], x0[{b}, {l}]) to logits"
                         f"[{b}, {l}, {vocab_size}]; it returned {out.shape}")

  return driver.scan_sampler("p2", denoise_fn, config, build_kernel=build_kernel,
                             init_state=init_state, sample=jitted_sample,
                             models={"planner": planner}, check_shape=check_shape)
