"""Enumerable toy distributions with exact denoisers, for testing samplers.

A joint distribution over sequences of length ``L`` with ``V`` real tokens is stored as a float64
numpy array ``probs`` of shape ``(V,) * L`` (``probs[x_0, ..., x_{L-1}] = p(x)``), small enough to
enumerate (``V**L <= 2**16``).

For the absorbing (masking) process the forward masking is independent of the token values, so
the exact posterior of the clean sequence given a partially masked ``x_t`` is the joint
conditioned on the unmasked positions, whatever ``t`` is:

    p(x_0 | x_t) = p(x_0) * 1[x_0 agrees with x_t where x_t != MASK] / Z(x_t)

and the exact denoiser outputs, at every position ``i``, the log of the posterior marginal
``p(x_0[i] = v | unmasked positions of x_t)`` (a one-hot at unmasked positions: carry-over).
:func:`exact_denoiser` computes it by enumerating the ``V**L`` sequences; it is time-independent,
so the MDLM output cache is exact with it.

Example::

    joint = random_joint(0, vocab_size=3, length=3)
    denoise_fn = exact_denoiser(joint, mask_id=3)
    logits = denoise_fn(jnp.full((1, 3), 3), jnp.ones((1,)))   # log marginals of the joint
    tv = total_variation(empirical_distribution(samples, vocab_size=3, length=3), joint)
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

MAX_OUTCOMES = 1 << 16


def _check_joint(probs) -> np.ndarray:
  probs = np.asarray(probs, np.float64)
  if probs.ndim < 1 or len(set(probs.shape)) != 1:
    raise ValueError(f"probs must have shape (V,) * L, got shape={probs.shape}")
  if probs.size > MAX_OUTCOMES:
    raise ValueError(f"probs has {probs.size} outcomes; enumeration is limited to {MAX_OUTCOMES}")
  if np.any(probs < 0) or not math.isclose(probs.sum(), 1.0, rel_tol=0, abs_tol=1e-9):
    raise ValueError(f"probs must be non-negative and sum to 1, got sum={probs.sum()}")
  return probs


def random_joint(seed: int, *, vocab_size: int = 3, length: int = 3,
                 concentration: float = 0.5) -> np.ndarray:
  """A random joint ``p ~ Dirichlet(concentration * 1)`` over the ``V**L`` sequences
  (``V = vocab_size``, ``L = length``; ``float64[(V,) * L]``, deterministic in ``seed``).

  A small ``concentration`` gives strongly correlated positions (far from the product of its
  marginals), which makes the joint-vs-product tests powerful. Raises ``ValueError`` when
  ``V**L`` exceeds ``MAX_OUTCOMES``.
  """
  if vocab_size ** length > MAX_OUTCOMES:
    raise ValueError(f"vocab_size**length={vocab_size ** length} exceeds {MAX_OUTCOMES}")
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.full(vocab_size ** length, concentration))
  # Dirichlet draws can underflow to exactly 0; keep every sequence possible (the posterior is
  # then defined for every partially masked input).
  probs = np.maximum(probs, 1e-12)
  return (probs / probs.sum()).reshape((vocab_size,) * length)


def random_markov_chain(seed: int, *, vocab_size: int = 3, concentration: float = 0.5):
  """``(initial float64[V], transition float64[V, V])`` over ``V = vocab_size`` states, rows
  ``~ Dirichlet(concentration * 1)``, deterministic in ``seed``."""
  rng = np.random.default_rng(seed)
  initial = rng.dirichlet(np.full(vocab_size, concentration))
  transition = rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size)
  return initial, transition


def markov_chain_joint(initial, transition, *, length: int) -> np.ndarray:
  """Exact joint ``p(x) = initial[x_0] prod_i transition[x_i, x_{i+1}]``, shape ``(V,) * L``
  with ``L = length``; a ``ValueError`` if ``transition`` is not ``[V, V]``."""
  initial = np.asarray(initial, np.float64)
  transition = np.asarray(transition, np.float64)
  v = initial.shape[0]
  if transition.shape != (v, v):
    raise ValueError(f"transition must have shape ({v}, {v}), got {transition.shape}")
  probs = initial
  for _ in range(length - 1):
    probs = probs[..., None] * transition.reshape((1,) * (probs.ndim - 1) + (v, v))
  return _check_joint(probs)


def marginals(probs) -> np.ndarray:
  """``float64[L, V]``: the one-position marginals of the joint ``probs`` (``[(V,) * L]``)."""
  probs = _check_joint(probs)
  length = probs.ndim
  return np.stack([probs.sum(axis=tuple(j for j in range(length) if j != i))
                   for i in range(length)])


def product_of_marginals(probs) -> np.ndarray:
  """The joint with the marginals of ``probs`` and independent positions (what ONE step
  samples)."""
  out = np.ones(())
  for m in marginals(probs):
    out = out[..., None] * m
  return out


def all_sequences(vocab_size: int, length: int) -> np.ndarray:
  """``int32[V**L, L]``: every sequence of ``length`` tokens over ``vocab_size`` ids, in the
  row-major order of ``probs.reshape(-1)``."""
  return np.array(list(itertools.product(range(vocab_size), repeat=length)), np.int32)


def exact_denoiser(probs, *, mask_id: int):
  """``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]``: exact posterior.

  Logits are ``log p(x_0[i] = v | unmasked positions of tokens)`` (``-inf`` for impossible
  values) under the joint ``probs`` (``float[(V,) * L]``); ``mask_id`` (``>= V``) marks masked
  positions. ``t`` is ignored (time-independent). Jit-able; ``O(B * V**L * L)`` work.

  Raises:
    ValueError: ``mask_id < V``; at call time, ``tokens`` not of shape ``[B, L]``.
  """
  probs = _check_joint(probs)
  vocab_size, length = probs.shape[0], probs.ndim
  if mask_id < vocab_size:
    raise ValueError(f"mask_id={mask_id} must be >= V={vocab_size}")
  seqs = jnp.asarray(all_sequences(vocab_size, length))              # [K, L]
  weights = jnp.asarray(probs.reshape(-1), jnp.float32)              # [K]
  onehot = jax.nn.one_hot(seqs, vocab_size, dtype=jnp.float32)       # [K, L, V]

  def denoise_fn(tokens, t):
    del t
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2 or tokens.shape[1] != length:
      raise ValueError(f"tokens must have shape [B, {length}], got {tokens.shape}")
    masked = tokens == mask_id                                       # [B, L]
    agree = masked[:, None, :] | (seqs[None, :, :] == tokens[:, None, :])   # [B, K, L]
    w = weights[None, :] * jnp.all(agree, axis=-1)                   # [B, K]
    posterior = jnp.einsum("bk,klv->blv", w, onehot)
    posterior = posterior / jnp.sum(w, axis=-1)[:, None, None]
    return jnp.log(posterior)

  return denoise_fn


def _mixing_params(vocab_size: int, length: int, seed: int):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"w": 1.5 * jax.random.normal(k1, (length, length, vocab_size + 1, vocab_size)),
          "bias": jax.random.normal(k2, (length, vocab_size))}


def _mixing_apply(params, tokens, t):
  del t
  one_hot = jax.nn.one_hot(tokens, params["w"].shape[2])
  return params["bias"][None] + jnp.einsum("bjw,ijwv->biv", one_hot, params["w"])


def mixing_denoiser(vocab_size: int, length: int, seed: int = 0):
  """A context-dependent, time-independent toy model over ``V = vocab_size`` tokens, ``L = length``
  positions and ``MASK = V``.

  ``denoise_fn(tokens int32[B, L], t) -> logits float32[B, L, V]`` with
  ``logits[b, i] = bias[i] + sum_j W[i, j, tokens[b, j]]``, ``W ~ 1.5 N(0, 1)`` of shape
  ``[L, L, V + 1, V]`` and ``bias ~ N(0, 1)``: every position sees every other (including MASKs),
  so samplers' position choices and carry-over are exercised on a model that is not an exact
  denoiser. Deterministic in ``seed``. A closure over its arrays (a static jit argument); see
  :func:`mixing_model` for the same model with traced parameters.
  """
  params = _mixing_params(vocab_size, length, seed)
  return lambda tokens, t: _mixing_apply(params, tokens, t)


def mixing_model(vocab_size: int, length: int, seed: int = 0) -> jax.tree_util.Partial:
  """:func:`mixing_denoiser` (``vocab_size``, ``length``, ``seed``) as
  ``jax.tree_util.Partial(apply, params)``, the way real models are passed: samplers trace its
  parameters, so new parameters of the same shapes (e.g. ``Partial(model.func, new_params)``)
  reuse the compiled sampler. ``model.args[0]`` is the
  parameter dict ``{"w", "bias"}``."""
  return jax.tree_util.Partial(_mixing_apply, _mixing_params(vocab_size, length, seed))


def random_prompts(rng_key, batch: int, length: int, vocab_size: int, mask_id: int, *,
                   keep: float = 0.3, prefix: int = 0):
  """``int32[batch, length]`` initial sequences drawn from ``rng_key``: each position
  independently holds a uniform token of ``[0, vocab_size)`` with probability ``keep`` (a
  prompt / infilling constraint), else ``mask_id``; the first ``prefix`` positions always hold
  a token (a left prompt)."""
  k_tokens, k_keep = jax.random.split(rng_key)
  tokens = jax.random.randint(k_tokens, (batch, length), 0, vocab_size)
  kept = (jax.random.uniform(k_keep, (batch, length)) < keep) | (jnp.arange(length) < prefix)
  return jnp.where(kept, tokens, mask_id).astype(jnp.int32)


def constant_denoiser(logits):
  """A denoiser returning the same ``logits float[V]`` (or ``[L, V]``) for every input."""
  logits = jnp.asarray(logits, jnp.float32)

  def denoise_fn(tokens, t):
    del t
    b, l = tokens.shape
    return jnp.broadcast_to(logits, (b, l, logits.shape[-1]))

  return denoise_fn


def empirical_distribution(samples, *, vocab_size: int) -> np.ndarray:
  """Empirical joint ``float64[(V,) * L]`` of ``samples int[n, L]`` (``V = vocab_size``).

  Raises a ``ValueError`` if ``samples`` is not ``[n, L]`` or holds a value outside ``[0, V)``
  (e.g. a leftover MASK), instead of silently dropping it.
  """
  samples = np.asarray(samples)
  if samples.ndim != 2:
    raise ValueError(f"samples must have shape [n, L], got {samples.shape}")
  n, length = samples.shape
  if samples.size and (samples.min() < 0 or samples.max() >= vocab_size):
    raise ValueError(f"samples hold values outside [0, {vocab_size}): "
                     f"min={samples.min()}, max={samples.max()}")
  flat = np.ravel_multi_index(tuple(samples.T), (vocab_size,) * length)
  counts = np.bincount(flat, minlength=vocab_size ** length)
  return (counts / max(n, 1)).reshape((vocab_size,) * length)


def total_variation(p, q) -> float:
  """``TV(p, q) = 1/2 sum |p - q|`` over all outcomes; a ``ValueError`` if the shapes differ."""
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  if p.shape != q.shape:
    raise ValueError(f"shapes differ: {p.shape} vs {q.shape}")
  return 0.5 * float(np.abs(p - q).sum())


def tv_tolerance(num_samples: int, num_outcomes: int, *,
                 failure_probability: float = 1e-6) -> float:
  """Distribution-free bound ``b`` with ``P(TV(empirical_n, q) > b) <= failure_probability``.

  For ``n = num_samples`` i.i.d. samples of any ``q`` over ``K = num_outcomes`` outcomes:

  * mean: ``E|q_hat_k - q_k| <= sd = sqrt(q_k (1 - q_k) / n)`` (Jensen), and by Cauchy-Schwarz
    ``sum_k sqrt(q_k (1 - q_k)) <= sqrt(K (1 - sum q_k^2)) <= sqrt(K - 1)``, so
    ``E[TV] <= 0.5 sqrt((K - 1) / n)``;
  * deviation: changing one sample moves ``TV`` by at most ``1/n``, so McDiarmid gives
    ``P(TV - E[TV] >= eps) <= exp(-2 n eps^2)``, i.e. ``eps = sqrt(log(1/delta) / (2 n))``.

  ``b = 0.5 sqrt((K - 1) / n) + sqrt(log(1 / delta) / (2 n))``. A systematic error of the
  sampler of size ``d`` (``TV(q, p) <= d``) is added by the caller (triangle inequality).
  """
  n, k = num_samples, num_outcomes
  return 0.5 * math.sqrt((k - 1) / n) + math.sqrt(math.log(1.0 / failure_probability) / (2 * n))
