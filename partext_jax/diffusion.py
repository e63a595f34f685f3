"""Masked (absorbing-state) diffusion: forward process, SUBS, the continuous-time loss, the bound.

The math is in ``docs/algorithms.md#masking-schedules-and-the-elbo`` (MDLM, Sahoo et al. 2024;
MD4, Shi et al. 2024).

Forward process. Each token of the clean sequence ``x_0`` is independently replaced by MASK with
probability ``1 - alpha(t)``::

    q(x_t^i | x_0^i) = alpha(t) [x_t^i = x_0^i] + (1 - alpha(t)) [x_t^i = MASK]

Loss (survey eq. 8; MDLM eq. 10, MD4 eq. 5). The negative ELBO of a sequence is::

    NELBO(x_0) = E_{t ~ U(0,1)} E_{x_t ~ q(.|x_0)} [
        alpha'(t) / (1 - alpha(t)) * sum_{i: x_t^i = MASK} log p_theta(x_0^i | x_t) ]

``alpha' < 0``, so the weight is negative and the loss positive; it upper-bounds ``-log p(x_0)``
for a schedule with ``alpha(0) = 1`` and ``alpha(1) = 0`` (``eps = 0``). With the MD4 ``eps``
shift the reconstruction and prior terms at the ends (``O(eps L)``) are not added, so the figure
is then a close estimate rather than a strict bound. Antithetic time sampling draws one ``u_0``
and uses ``t_b = 1 - ((u_0 + b / B) mod 1)`` for the ``B`` rows, which lowers the variance.

SUBS parameterisation (MDLM). ``p_theta`` puts zero mass on MASK, and at unmasked positions it
is the one-hot of the current token (carry-over). :func:`subs_log_probs` applies both to raw
denoiser logits over the ``V`` real tokens.
"""

from __future__ import annotations

import math
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.base import DenoiseFn, checked_int, model_partial
from partext_jax.schedules import MaskingSchedule


def sample_times(rng, batch_size: int, *, antithetic: bool = True):
  """Times in ``(0, 1]``: stratified ``1 - ((u_0 + b/B) mod 1)`` or i.i.d. uniform."""
  if antithetic:
    u = jnp.mod(jax.random.uniform(rng, ()) + jnp.arange(batch_size) / batch_size, 1.0)
  else:
    u = jax.random.uniform(rng, (batch_size,))
  return 1.0 - u


def mask_tokens(rng, x0, t, *, schedule: MaskingSchedule, mask_id: int):
  """Draws ``x_t ~ q(x_t | x_0)``: each token becomes ``mask_id`` w.p. ``1 - alpha(t_b)``."""
  masked = jax.random.uniform(rng, x0.shape) < schedule.mask_probability(t)[:, None]
  return jnp.where(masked, mask_id, x0).astype(x0.dtype)


def subs_log_probs(logits, x_t, *, mask_id: int):
  """SUBS: log-softmax over the V real tokens at masked positions, one-hot carry-over elsewhere."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  v = logits.shape[-1]
  carry = jnp.where(jax.nn.one_hot(jnp.where(x_t == mask_id, 0, x_t), v) > 0, 0.0, -jnp.inf)
  return jnp.where((x_t == mask_id)[..., None], log_p, carry)


def _subs_call(denoise_fn, mask_id, tokens, t):
  return subs_log_probs(denoise_fn(tokens, t), tokens, mask_id=mask_id)


def with_carry_over(denoise_fn: DenoiseFn, *, mask_id: int) -> DenoiseFn:
  """``denoise_fn`` with SUBS applied to its output: log-probabilities at masked positions, a
  one-hot (``0`` / ``-inf``) on the held token elsewhere.

  A model trained with the MDM loss never sees a loss at unmasked positions, so its raw logits
  there are untrained; MDLM applies this parameterisation inside the model. Samplers that read
  the model at unmasked positions (P2 self-planning scores decoded tokens there) then see
  ``log p = 0`` for every held token. A ``jax.tree_util.Partial`` model gives a ``Partial``, so
  parameters stay traced (:func:`partext_jax.base.model_partial`).
  """
  return model_partial(_subs_call, denoise_fn, mask_id)


def nelbo_given_mask(denoise_fn: DenoiseFn, x0, x_t, t, *, schedule: MaskingSchedule,
                     mask_id: int):
  """The loss integrand for given ``(t, x_t)``: ``-alpha'/(1-alpha) * sum_masked -log p``, per row.

  Returns ``float32[B]`` in nats (a one-sample Monte-Carlo estimate of each row's NELBO).
  """
  logits = denoise_fn(x_t, t)
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_p, x0[..., None].astype(jnp.int32), axis=-1)[..., 0]
  masked = (x_t == mask_id).astype(jnp.float32)
  return -schedule.loss_weight(t) * jnp.sum(masked * nll, axis=-1)


def mdm_loss(rng, denoise_fn: DenoiseFn, x0, *, schedule: MaskingSchedule, mask_id: int,
             antithetic: bool = True):
  """Mean NELBO in nats per token over the batch ``x0`` (int[B, L]), and diagnostics.

  Differentiable in whatever ``denoise_fn`` closes over. Returns ``(loss, aux)`` with
  ``aux = {"masked_fraction", "mean_t"}``.
  """
  t_rng, m_rng = jax.random.split(rng)
  t = sample_times(t_rng, x0.shape[0], antithetic=antithetic)
  x_t = mask_tokens(m_rng, x0, t, schedule=schedule, mask_id=mask_id)
  per_row = nelbo_given_mask(denoise_fn, x0, x_t, t, schedule=schedule, mask_id=mask_id)
  loss = jnp.mean(per_row) / x0.shape[1]
  aux = {"masked_fraction": jnp.mean(x_t == mask_id), "mean_t": jnp.mean(t)}
  return loss, aux


def evaluate_bound(rng, denoise_fn: DenoiseFn, batches: Iterable, *, schedule: MaskingSchedule,
                   mask_id: int, num_time_samples: int = 4, chars_per_token: float | None = None):
  """Monte-Carlo NELBO of held-out data: bits per token and a perplexity upper bound.

  Each batch is scored ``num_time_samples`` times with fresh antithetic times and masks.

  Returns a dict with ``nats_per_token``, ``bits_per_token``, ``perplexity_bound``,
  ``stderr_bits_per_token`` (standard error over the Monte-Carlo draws), ``num_tokens`` and,
  when ``chars_per_token`` is given, ``bits_per_char``.
  """
  checked_int("num_time_samples", num_time_samples, minimum=1)

  @jax.jit
  def score(key, x0):
    keys = jax.random.split(key, num_time_samples)
    per = jax.vmap(lambda k: mdm_loss(k, denoise_fn, x0, schedule=schedule, mask_id=mask_id)[0])(
        keys)
    return per

  values = []
  num_tokens = 0
  for i, x0 in enumerate(batches):
    x0 = jnp.asarray(x0, jnp.int32)
    values.append(np.asarray(score(jax.random.fold_in(rng, i), x0)))
    num_tokens += x0.size
  if not values:
    raise ValueError("evaluate_bound got no batches")
  values = np.concatenate(values)
  nats = float(values.mean())
  stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
  out = {
      "nats_per_token": nats,
      "bits_per_token": nats / math.log(2),
      "perplexity_bound": math.exp(nats),
      "stderr_bits_per_token": stderr / math.log(2),
      "num_tokens": num_tokens,
  }
  if chars_per_token:
    out["bits_per_char"] = out["bits_per_token"] / chars_per_token
  return out
