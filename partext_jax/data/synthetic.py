"""Synthetic sequences with an exactly known distribution: a random first-order Markov chain.

``P[i, j] = p(x_{n+1} = j | x_n = i)``; rows are drawn from ``Dirichlet(concentration)`` with a
seeded numpy generator, so a small concentration gives peaked, low-entropy rows. The initial
distribution is either the chain's stationary distribution ``mu`` (``mu P = mu``; then every
position has marginal ``mu``) or a Dirichlet draw.

Exact quantities (natural logs):

* ``log p(x_1..x_L) = log pi0[x_1] + sum_n log P[x_n, x_{n+1}]``  (:meth:`MarkovChain.log_prob`)
* entropy of a length-L sequence ``H_L = H(pi0) + sum_{n=1}^{L-1} sum_i p_n(i) H(P[i])`` with
  ``p_n = pi0 P^(n-1)``; per token ``H_L / L`` (:meth:`MarkovChain.sequence_entropy`). A model's
  NELBO on these sequences can never be below ``H_L / L`` in expectation.
* entropy rate ``sum_i mu_i H(P[i])`` (:meth:`MarkovChain.entropy_rate`), the ``L -> inf`` limit.

Example::

    chain = MarkovChain.random(seed=0, num_states=8, concentration=0.3)
    x = chain.sample_numpy(np.random.default_rng(1), num_sequences=4, length=16)
    chain.log_prob(x), chain.sequence_entropy(16) / 16
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

SYMBOLS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
  p = np.asarray(p, np.float64)
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)


def stationary_distribution(transition: np.ndarray) -> np.ndarray:
  """``mu`` with ``mu P = mu`` (left eigenvector of eigenvalue 1, normalised)."""
  vals, vecs = np.linalg.eig(np.asarray(transition, np.float64).T)
  mu = np.real(vecs[:, np.argmin(np.abs(vals - 1.0))])
  mu = np.abs(mu)
  return mu / mu.sum()


@dataclasses.dataclass(frozen=True, eq=False)
class MarkovChain:
  """A first-order Markov chain over ``num_states`` symbols (float64 numpy arrays)."""

  initial: np.ndarray  # float64[K], sums to 1.
  transition: np.ndarray  # float64[K, K], rows sum to 1.

  def __post_init__(self):
    k = self.initial.shape[0]
    if self.transition.shape != (k, k):
      raise ValueError(f"transition shape {self.transition.shape} does not match K={k}")
    if not np.allclose(self.transition.sum(-1), 1.0) or not np.isclose(self.initial.sum(), 1.0):
      raise ValueError("initial and transition rows must each sum to 1")

  @classmethod
  def random(cls, *, seed: int, num_states: int, concentration: float,
             stationary_start: bool = True) -> "MarkovChain":
    """Seeded random chain: Dirichlet(concentration) rows (floored at 1e-6, renormalised)."""
    if num_states < 2:
      raise ValueError(f"num_states={num_states} must be >= 2")
    if concentration <= 0:
      raise ValueError(f"concentration={concentration} must be > 0")
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.full(num_states, concentration), size=num_states)
    trans = np.maximum(trans, 1e-6)  # Irreducible, and no log(0) for any sequence.
    trans /= trans.sum(-1, keepdims=True)
    if stationary_start:
      init = stationary_distribution(trans)
    else:
      init = rng.dirichlet(np.full(num_states, concentration))
      init = np.maximum(init, 1e-6)
      init /= init.sum()
    return cls(initial=init, transition=trans)

  @property
  def num_states(self) -> int:
    return self.initial.shape[0]

  def marginals(self, length: int) -> np.ndarray:
    """``float64[length, K]``: the distribution of each position."""
    out = [self.initial]
    for _ in range(length - 1):
      out.append(out[-1] @ self.transition)
    return np.stack(out)

  def log_prob(self, sequences) -> np.ndarray:
    """Exact ``log p(x)`` in nats of int sequences ``[..., L]`` (float64 ``[...]``)."""
    x = np.asarray(sequences)
    lp = np.log(self.initial)[x[..., 0]]
    lp = lp + np.log(self.transition)[x[..., :-1], x[..., 1:]].sum(-1)
    return lp

  def sequence_entropy(self, length: int) -> float:
    """Exact entropy ``H(X_1..X_L)`` in nats (divide by ``length`` for nats per token)."""
    row_entropy = _entropy(self.transition)
    marg = self.marginals(length)
    return float(_entropy(self.initial) + (marg[:-1] @ row_entropy).sum())

  def entropy_rate(self) -> float:
    """Entropy rate in nats per token: ``sum_i mu_i H(P[i])`` with ``mu`` stationary."""
    return float(stationary_distribution(self.transition) @ _entropy(self.transition))

  def sample_numpy(self, rng: np.random.Generator, *, num_sequences: int, length: int
                   ) -> np.ndarray:
    """``int32[num_sequences, length]`` sampled by inverse CDF with a numpy generator."""
    cdf_init = np.cumsum(self.initial)
    cdf = np.cumsum(self.transition, axis=-1)
    u = rng.random((num_sequences, length))
    x = np.empty((num_sequences, length), np.int32)
    x[:, 0] = np.minimum(np.searchsorted(cdf_init, u[:, 0], side="right"), self.num_states - 1)
    for n in range(1, length):
      rows = cdf[x[:, n - 1]]
      x[:, n] = np.minimum((rows <= u[:, n, None]).sum(-1), self.num_states - 1)
    return x

  def sample_jax(self, rng_key: jax.Array, *, num_sequences: int, length: int) -> jax.Array:
    """``int32[num_sequences, length]`` sampled with ``jax.random`` (jit-compatible)."""
    log_init = jnp.asarray(np.log(self.initial), jnp.float32)
    log_trans = jnp.asarray(np.log(self.transition), jnp.float32)
    init_key, scan_key = jax.random.split(rng_key)
    x0 = jax.random.categorical(init_key, log_init, shape=(num_sequences,))

    def step(prev, key):
      nxt = jax.random.categorical(key, log_trans[prev])
      return nxt, nxt

    _, rest = jax.lax.scan(step, x0, jax.random.split(scan_key, length - 1))
    return jnp.concatenate([x0[:, None], rest.T], axis=1).astype(jnp.int32)

  def decode(self, ids) -> str:
    """Shows a sequence of states as letters (ids outside the chain, e.g. MASK, as ``?``)."""
    k = min(self.num_states, len(SYMBOLS))
    return "".join(SYMBOLS[i] if 0 <= i < k else "?"
                   for i in np.asarray(ids).reshape(-1).tolist())
