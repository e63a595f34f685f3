"""Eager reference loops: samplers written the way the PyTorch reference repositories run them.

A Python ``for`` loop over steps, one model call per step, and the update rule as a handful of
array ops dispatched one by one (no ``jit`` around the loop). They exist for two reasons:

* **faithfulness**: written straight from the papers' pseudo-code, independently of the compiled
  samplers, so a test can check the two agree token for token where the rule is deterministic
  (greedy LLaDA top-k, ``docs/algorithms.md#confidence-based-adaptive-decoding``) or in law
  (MDLM ancestral sampling, ``docs/algorithms.md#tau-leaping``), and
* **benchmarks**: ``experiments/bench_eager.py`` times them against the compiled samplers at the
  same NFE on the same model.

``jit_model=True`` compiles the model call alone (the loop and the rule stay eager), the
favourable case for the eager style.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _model(denoise_fn, jit_model: bool):
  return jax.jit(denoise_fn) if jit_model else denoise_fn


def llada_topk_eager(denoise_fn, x_init, *, mask_id: int, num_steps: int,
                     jit_model: bool = False):
  """LLaDA's (Nie et al. 2025) low-confidence remasking loop (greedy tokens, max-probability
  confidence) on ``x_init int32[B, L]``.

  Row ``b`` has ``n_b`` masked positions at the start; step ``j`` commits the
  ``k_bj = n_b // S + [j < n_b mod S]`` masked positions whose argmax probability is highest.
  Returns ``(tokens int32[B, L], nfe int)``.
  """
  model = _model(denoise_fn, jit_model)
  x = jnp.asarray(x_init)
  n = np.asarray(jnp.sum(x == mask_id, axis=1))
  nfe = 0
  for j in range(num_steps):
    k = n // num_steps + (j < n % num_steps)
    masked = x == mask_id
    t = jnp.mean(masked.astype(jnp.float32), axis=1)
    logits = model(x, t)
    nfe += 1
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    x0 = jnp.argmax(p, axis=-1).astype(x.dtype)
    conf = jnp.where(masked, jnp.max(p, axis=-1), -jnp.inf)
    order = jnp.argsort(-conf, axis=1, stable=True)  # ties: lower index first
    rank = jnp.argsort(order, axis=1)
    chosen = masked & (rank < jnp.asarray(k)[:, None])
    x = jnp.where(chosen, x0, x)
  return x, nfe


def mdlm_ancestral_eager(rng_key, denoise_fn, x_init, *, mask_id: int, num_steps: int,
                         jit_model: bool = False):
  """MDLM's (Sahoo et al. 2024) ancestral (``ddpm_update``) loop with the linear schedule
  ``alpha = 1 - t``, on ``x_init int32[B, L]``.

  Step ``t -> s = t - 1/N``: each masked position is unmasked with probability ``(t - s) / t``
  and then takes a value drawn from ``p_theta``; unmasked positions are carried over. Returns
  ``(tokens int32[B, L], nfe int)``.
  """
  model = _model(denoise_fn, jit_model)
  x = jnp.asarray(x_init)
  b = x.shape[0]
  nfe = 0
  for i in range(num_steps):
    t, s = 1.0 - i / num_steps, 1.0 - (i + 1) / num_steps
    k_unmask, k_value = jax.random.split(jax.random.fold_in(rng_key, i))
    logits = model(x, jnp.full((b,), t, jnp.float32))
    nfe += 1
    values = jax.random.categorical(k_value, logits.astype(jnp.float32)).astype(x.dtype)
    unmask = jax.random.uniform(k_unmask, x.shape) < (t - s) / t
    x = jnp.where((x == mask_id) & unmask, values, x)
  return x, nfe
