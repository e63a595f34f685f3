"""Categorical draws for masked diffusion that do not under-sample rare tokens.

The math and the choices are in ``docs/algorithms.md#exact-categorical-draws``. A
masked-diffusion step (``docs/algorithms.md#tau-leaping``) draws, at every masked position, from the
``V + 1``-way categorical

    P(token v) = p_unmask * p_theta(v),   v in [0, V)
    P(MASK)    = 1 - p_unmask

where ``p_unmask = (alpha_s - alpha_t) / (1 - alpha_t)`` is small (``1/T`` for the linear
schedule with ``T`` steps) and ``p_theta`` is a long-tailed softmax over the real tokens.

Why float32 Gumbel-max over ``[V tokens + MASK]`` is biased
------------------------------------------------------------
Gumbel-max draws ``argmax_v (log P(v) + g_v)`` with ``g = -log(-log(u))``, ``u ~ U(0, 1)``.
In float32, JAX's default ("low" mode) uniform takes values on the grid ``k * 2**-23``, so
``-log(u) >= 2**-23`` and ``g <= 15.94``; the upper tail of ``g`` is also coarsely quantised
just below that cap.  A category wins against the MASK only through that upper tail: with
``P(MASK) ~ 1`` a category of probability ``r`` needs ``g_v - g_MASK > log(1/r)``, which is
truncated once ``r`` is below ~1e-6.  Exact computation over the float32 grid (JAX 0.10,
two-way draw, relative frequency of a category of probability ``r`` w.r.t. the truth):

    r:        1e-4    1e-5    1e-6    3e-7    1e-7    3e-8    < 1.4e-9
    ratio:    0.999   0.994   0.94    0.81    0.52    0.08    0 (never drawn)

For one step at ``T = 1000`` (so ``p_unmask = 1e-3``) with a Zipf ``p_theta`` over
``V = 2000`` tokens, the per-token probabilities of the tail are ~1e-7, and the same computation
gives 0.90x the expected number of unmasks and a tail mass (tokens of rank >= 1128, true mass
0.070) of 0.034 among the unmasked tokens (a 24-bit uniform, as in PyTorch, gives about 0.935x
and 0.046). The effect compounds over steps: the sampler both unmasks too slowly and loses
diversity (lower unigram entropy, a falsely "better" generative perplexity).

Two cures are offered, chosen by name with ``precision`` (:data:`PRECISIONS`), the argument
every sampler with a float64 mode takes:

* ``precision="float32"`` -- :func:`two_stage_draw` (the default): first a Bernoulli
  ``unmask ~ B(p_unmask)``,
  then a categorical over the ``V`` real tokens only. The two stages factorise the same
  ``V + 1``-way distribution exactly. The Bernoulli is resolved to ``2**-46`` (two 23-bit
  uniforms; :func:`bernoulli_fine`): a single float32 uniform would round ``p_unmask`` up to
  the ``2**-23`` grid, e.g. 1% off for the cosine schedule's first step at ``N = 1024``
  (``p = 1.2e-6``) and 60% off at ``N = 4096`` (``p = 7.4e-8``). The categorical uses JAX's
  "high" Gumbel mode (two 23-bit uniforms, ``g`` up to ~32): only tokens whose probability
  *among the real tokens* is below ~1e-14 are affected.
* ``precision="float64"`` -- :func:`float64_draw`: the one-stage ``V + 1``-way Gumbel-max in
  float64 (what MDLM / ReMDM do, with ``g`` up to ~36). Needs ``jax_enable_x64``; without it JAX
  would silently compute in float32, so :func:`require_x64` raises instead.

Example::

    unmask, tokens = two_stage_draw(key, logits, p_unmask)          # bool[B, L], int32[B, L]
    x = jnp.where(is_masked & unmask, tokens, x)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.base import checked_choice

PRECISIONS = ("float32", "float64")


def x64_enabled() -> bool:
  """Whether float64 arrays are available (respects ``jax.enable_x64`` contexts)."""
  return jax.dtypes.canonicalize_dtype(np.float64) == np.float64


def require_x64(what: str = "precision='float64'") -> None:
  """Raises ``RuntimeError`` when ``jax_enable_x64`` is off (JAX would silently use float32)."""
  if not x64_enabled():
    raise RuntimeError(
        f"{what} needs 64-bit floats, but jax_enable_x64 is off, so JAX would silently compute "
        "in float32 (which under-samples rare tokens). Enable it before creating arrays, e.g. "
        "`jax.config.update('jax_enable_x64', True)` at program start or the environment variable "
        "JAX_ENABLE_X64=1, or use precision='float32' (the exact two-stage draw).")


def require_precision(precision: str, what: str) -> None:
  """Checks ``precision`` against :data:`PRECISIONS` and, for ``"float64"``, that
  ``jax_enable_x64`` is on (``ValueError`` / ``RuntimeError``; ``what`` names the caller)."""
  checked_choice("precision", precision, PRECISIONS)
  if precision == "float64":
    require_x64(f"{what}(precision='float64')")


def bernoulli_fine(rng_key, p, shape):
  """``bool[shape]``, ``P(True) = p`` up to ``2**-46`` absolute (``p`` in ``[0, 1]``, float32).

  With ``j`` and ``u`` independent, ``j`` uniform on ``{0, .., 2**23 - 1}`` and ``u ~ U[0, 1)``,
  and ``p 2**23 = k + f`` (``k`` integer, ``0 <= f < 1``; exact in float32), the event
  ``j < k or (j == k and u < f)`` has probability ``(k + P(u < f)) / 2**23 = p`` up to the
  ``2**-23`` grid of ``u`` scaled by ``2**-23``.
  """
  p = jnp.broadcast_to(jnp.asarray(p, jnp.float32), shape)
  scaled = p * np.float32(2.0**23)           # exact: multiplication by a power of two
  k = jnp.floor(scaled)
  f = scaled - k                             # exact (Sterbenz)
  key_hi, key_lo = jax.random.split(rng_key)
  j = jnp.floor(jax.random.uniform(key_hi, shape, jnp.float32) * np.float32(2.0**23))
  u = jax.random.uniform(key_lo, shape, jnp.float32)
  return (j < k) | ((j == k) & (u < f))


def two_stage_draw(rng_key, logits, unmask_prob, *, temperature: float = 1.0):
  """Bernoulli "unmask?" then a categorical over the ``V`` real tokens.

  Args:
    rng_key: a PRNG key.
    logits: ``float[..., V]`` denoiser logits over the real tokens (never the MASK).
    unmask_prob: probability of unmasking, broadcastable to ``logits.shape[:-1]``.
    temperature: ``p_theta = softmax(logits / temperature)``; must be > 0.

  Returns:
    ``(unmask bool[...], tokens int32[...])``; ``tokens`` ~ ``p_theta`` independently of
    ``unmask`` and is meaningful only where ``unmask`` is True.
  """
  batch_shape = logits.shape[:-1]
  p = jnp.broadcast_to(jnp.asarray(unmask_prob), batch_shape).astype(jnp.float32)
  key_unmask, key_token = jax.random.split(rng_key)
  # p = 1 always unmasks and p = 0 never does.
  unmask = bernoulli_fine(key_unmask, p, batch_shape)
  scaled = logits.astype(jnp.float32) / temperature
  tokens = jax.random.categorical(key_token, scaled, axis=-1, mode="high")
  return unmask, tokens.astype(jnp.int32)


def categorical_float64(rng_key, logits, *, axis: int = -1):
  """Gumbel-max categorical draw computed in float64 (requires ``jax_enable_x64``)."""
  require_x64("categorical_float64")
  logits = jnp.asarray(logits, jnp.float64)
  gumbel = jax.random.gumbel(rng_key, logits.shape, jnp.float64)
  return jnp.argmax(logits + gumbel, axis=axis).astype(jnp.int32)


def float64_draw(rng_key, logits, unmask_prob, *, temperature: float = 1.0):
  """One-stage ``V + 1``-way draw over ``[p_unmask * p_theta, 1 - p_unmask]`` in float64.

  Same signature and outputs as :func:`two_stage_draw`. Raises ``RuntimeError`` when
  ``jax_enable_x64`` is off.
  """
  require_x64("float64_draw")
  batch_shape = logits.shape[:-1]
  p = jnp.broadcast_to(jnp.asarray(unmask_prob), batch_shape).astype(jnp.float64)
  log_p_theta = jax.nn.log_softmax(logits.astype(jnp.float64) / temperature, axis=-1)
  # log(0) = -inf is fine: p = 0 never unmasks, p = 1 always does.
  log_tokens = log_p_theta + jnp.log(p)[..., None]
  log_mask = jnp.log1p(-p)[..., None]
  index = categorical_float64(rng_key, jnp.concatenate([log_tokens, log_mask], axis=-1))
  vocab_size = logits.shape[-1]
  unmask = index < vocab_size
  return unmask, jnp.where(unmask, index, 0).astype(jnp.int32)


def unmask_draw(rng_key, logits, unmask_prob, *, precision: str = "float32",
                temperature: float = 1.0):
  """``(unmask bool[...], tokens int32[...])`` by :func:`two_stage_draw` (``"float32"``) or
  :func:`float64_draw` (``"float64"``); a ``ValueError`` listing :data:`PRECISIONS` otherwise."""
  draw = {"float32": two_stage_draw, "float64": float64_draw}[
      checked_choice("precision", precision, PRECISIONS)]
  return draw(rng_key, logits, unmask_prob, temperature=temperature)
