r"""Enumerable Edit Flows toys and their exact marginal rates (Havasi et al. 2025).

``docs/algorithms.md#edit-flows``. A toy is a source ``p0`` and a target ``p1``, each a
probability vector over an explicit list of variable-length sequences (:class:`EditToy`). With
the independent coupling ``p0 x p1``, the alignment of :mod:`partext_jax.edit.alignment` and
``kappa_t = t``, the marginal rate of an edit ``e`` at ``(x, t)`` is the conditional-path formula::

    u_t(e | x) = sum_{x0, x1, S} p0(x0) p1(x1) t^|S| (1 - t)^(a - |S|) 1[x_t = x]
                 * sum_{m in A \ S, m stands for e} 1 / (1 - t)  /  p_t(x),
    p_t(x)     = sum_{x0, x1, S} p0(x0) p1(x1) t^|S| (1 - t)^(a - |S|) 1[x_t = x],

over the pair's ``a`` active (edit) columns ``A`` and the subsets ``S`` of them already switched
(``x_t`` = the columns ``z1`` on ``S``, ``z0`` elsewhere, blanks removed). Both are sums of
monomials ``t^i (1 - t)^j`` with non-negative coefficients, tabulated once per reachable ``x``
by enumeration (:func:`exact_tables`, rewritten in the basis ``t^k (1 - t)^(D - k)`` with
non-negative coefficients) and evaluated at any ``t`` without cancellation
(:func:`exact_rate_fn`).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.base import checked_int
from partext_jax.edit import alignment
from partext_jax.edit.edit_flows import (NONE, EditRates, flat_edit_index, num_edits,
                                         pending_edits)


class EditToy(NamedTuple):
  """An enumerable source/target pair.

  Attributes:
    vocab_size: ``V``.
    sequences: the outcomes, a tuple of token tuples (lengths ``0 .. max_length``).
    p0: ``float64[K]`` the source distribution over ``sequences``.
    p1: ``float64[K]`` the target distribution over ``sequences``.
  """
  vocab_size: int
  sequences: tuple
  p0: np.ndarray
  p1: np.ndarray

  @property
  def max_length(self) -> int:
    """The longest sequence of ``sequences``."""
    return max(len(s) for s in self.sequences)


def all_sequences(vocab_size: int, max_length: int) -> tuple:
  """Every sequence over ``V`` tokens of length ``0 .. max_length``, shortest first."""
  return tuple(s for n in range(max_length + 1)
               for s in itertools.product(range(vocab_size), repeat=n))


def random_toy(seed: int, *, vocab_size: int = 2, source_length: int = 2,
               target_length: int = 3, concentration: float = 0.5) -> EditToy:
  """A toy with ``p0`` uniform over the sequences of length ``<= source_length`` and ``p1 ~
  Dirichlet(concentration)`` over those of length ``<= target_length`` (deterministic in
  ``seed``): every edit kind is needed and the target has several lengths."""
  checked_int("vocab_size", vocab_size, minimum=1)
  checked_int("source_length", source_length, minimum=0)
  checked_int("target_length", target_length, minimum=0)
  seqs = all_sequences(vocab_size, max(source_length, target_length))
  short = np.array([len(s) <= source_length for s in seqs], np.float64)
  rng = np.random.default_rng(seed)
  p1 = rng.dirichlet(np.full(len(seqs), concentration)) * np.array(
      [len(s) <= target_length for s in seqs])
  return EditToy(vocab_size, seqs, short / short.sum(), p1 / p1.sum())


def sample_toy(rng_key, probs, toy: EditToy, batch: int, *, capacity: int):
  """``(tokens int32[batch, capacity], lengths int32[batch])``: draws of ``probs`` (``p0`` or
  ``p1``) over ``toy.sequences``, padded with ``V``."""
  table, lengths = pad_sequences(toy.sequences, capacity, toy.vocab_size)
  idx = jax.random.categorical(rng_key, jnp.log(jnp.asarray(probs, jnp.float32)), shape=(batch,))
  return jnp.asarray(table)[idx], jnp.asarray(lengths)[idx]


def pad_sequences(sequences, capacity: int, pad_id: int):
  """``(int32[K, capacity], int32[K])``: ``sequences`` right-padded with ``pad_id``."""
  out = np.full((len(sequences), capacity), pad_id, np.int32)
  for i, s in enumerate(sequences):
    out[i, :len(s)] = s
  return out, np.array([len(s) for s in sequences], np.int32)


def empirical(output, toy: EditToy) -> np.ndarray:
  """``float64[K + 1]``: frequencies of ``output = (tokens, lengths)`` over ``toy.sequences``,
  the last entry counting sequences outside the list."""
  tokens, lengths = (np.asarray(a) for a in output)
  index = {s: i for i, s in enumerate(toy.sequences)}
  counts = np.zeros(len(toy.sequences) + 1)
  for row, n in zip(tokens, lengths):
    counts[index.get(tuple(int(v) for v in row[:n]), len(toy.sequences))] += 1
  return counts / max(len(tokens), 1)


def length_distribution(probs, toy: EditToy) -> np.ndarray:
  """``float64[max_length + 2]``: the length marginal of ``probs`` (``[K]`` or ``[K + 1]``, the
  extra "outside" mass in the last entry)."""
  probs = np.asarray(probs, np.float64)
  out = np.zeros(toy.max_length + 2)
  np.add.at(out, [len(s) for s in toy.sequences], probs[:len(toy.sequences)])
  out[-1] += probs[len(toy.sequences):].sum()
  return out


def _encode(tokens, lengths, vocab_size: int):
  """A unique integer per variable-length sequence: ``sum_{i < n} (x_i + 1) (V + 1)^i``."""
  n = tokens.shape[-1]
  weights = (vocab_size + 1) ** np.arange(n, dtype=np.int64)
  digits = np.where(np.arange(n) < np.asarray(lengths)[..., None], np.asarray(tokens) + 1, 0)
  return (digits.astype(np.int64) * weights).sum(-1)


@functools.partial(jax.jit, static_argnames=("capacity", "vocab_size"))
def _edit_indices(z_t, z1, *, capacity: int, vocab_size: int):
  kind, pos, token = pending_edits(z_t, z1)
  return (flat_edit_index(kind, pos, token, capacity=capacity, vocab_size=vocab_size),
          kind != NONE)


def exact_tables(toy: EditToy, *, capacity: int):
  """The monomial tables of the marginal rates (module docstring).

  Returns ``(codes int64[S], num float64[S, E, D + 1], den float64[S, D + 1])``: the reachable
  states ``x`` (by :func:`_encode`, sorted), the coefficients of ``t^k (1 - t)^(D - k)`` in
  ``p_t(x) u_t(e | x)`` and in ``p_t(x)`` (``D`` the alignment width; non-negative: every
  ``t^i (1 - t)^j`` with ``i + j <= D`` is such a combination). ``ValueError`` if some
  reachable ``x`` is longer than ``capacity``.
  """
  v, width = toy.vocab_size, toy.max_length
  seqs, lens = pad_sequences(toy.sequences, width, v)
  i0, i1 = np.nonzero(np.outer(toy.p0, toy.p1) > 0)
  z0, z1, _ = jax.device_get(jax.jit(alignment.align_batch)(seqs[i0], lens[i0], seqs[i1],
                                                             lens[i1]))
  weights = toy.p0[i0] * toy.p1[i1]
  rows = []                                   # (weight, switched count, active count, z_t, z1)
  for w, a0, a1 in zip(weights, z0, z1):
    active = np.nonzero(a0 != a1)[0]
    for switched in itertools.product((False, True), repeat=len(active)):
      z_t = a0.copy()
      on = active[list(switched)]
      z_t[on] = a1[on]
      rows.append((w, len(on), len(active), z_t, a1))
  z_t, z_1 = np.stack([r[3] for r in rows]), np.stack([r[4] for r in rows])
  edit, pending = jax.device_get(_edit_indices(z_t, z_1, capacity=capacity, vocab_size=v))
  p = z0.shape[1] + 1
  num, den = {}, {}
  for (w, k, a, zt, _), e, todo in zip(rows, edit, pending):
    x = tuple(int(c) for c in zt if c != alignment.BLANK)
    if len(x) > capacity:
      raise ValueError(f"the path reaches a sequence of length {len(x)} > capacity={capacity}")
    den.setdefault(x, np.zeros((p, p)))[k, a - k] += w
    np.add.at(num.setdefault(x, np.zeros((num_edits(capacity, v), p, p))),
              (e[todo], k, a - k - 1), w)
  num = {x: n.reshape(n.shape[0], -1) for x, n in num.items()}
  den = {x: d.reshape(-1) for x, d in den.items()}
  states = sorted(den, key=lambda x: _encode(*pad_sequences([x], capacity, v), v)[0])
  toks, lengths = pad_sequences(states, capacity, v)
  to_basis = _bernstein_change(p - 1)
  return (_encode(toks, lengths, v), np.stack([num[x] for x in states]) @ to_basis,
          np.stack([den[x] for x in states]) @ to_basis)


def _bernstein_change(degree: int) -> np.ndarray:
  """``float64[(D + 1)^2, D + 1]``: ``t^i (1 - t)^j`` (``i + j <= D``, flattened ``[i, j]``) as
  non-negative combinations of ``t^k (1 - t)^(D - k)``, through ``(t + 1 - t)^(D - i - j)``."""
  d = degree
  out = np.zeros((d + 1, d + 1, d + 1))
  for i in range(d + 1):
    for j in range(d + 1 - i):
      r = d - i - j
      for c in range(r + 1):
        out[i, j, i + c] += math.comb(r, c)
  return out.reshape((d + 1) ** 2, d + 1)


def exact_rate_fn(toy: EditToy, *, capacity: int):
  """The exact marginal :data:`~partext_jax.edit.edit_flows.RateFn` of ``toy`` (module
  docstring): ``rate_fn(tokens int32[B, capacity], lengths int32[B], t float32[B]) ->
  EditRates``; states the conditional path never reaches get rate 0. Jit-able (float32)."""
  codes, num, den = exact_tables(toy, capacity=capacity)
  v, d = toy.vocab_size, den.shape[-1] - 1
  if (v + 1) ** capacity >= 2 ** 31:
    raise ValueError(f"(vocab_size + 1)**capacity = {(v + 1) ** capacity} exceeds int32 codes")
  codes_j = jnp.asarray(codes, jnp.int32)
  num_j = jnp.asarray(num, jnp.float32)
  den_j = jnp.asarray(den, jnp.float32)
  powers = jnp.arange(d + 1, dtype=jnp.float32)
  weights = jnp.asarray((v + 1) ** np.arange(capacity), jnp.int32)

  def rate_fn(tokens, lengths, t):
    real = jnp.arange(capacity)[None, :] < lengths[:, None]
    code = jnp.sum(jnp.where(real, tokens + 1, 0) * weights, axis=1, dtype=jnp.int32)
    s = jnp.clip(jnp.searchsorted(codes_j, code), 0, codes_j.shape[0] - 1)
    found = codes_j[s] == code
    t = t[:, None]
    mono = t ** powers * (1.0 - t) ** (d - powers)                      # [B, D + 1]
    numer = jnp.einsum("bem,bm->be", num_j[s], mono)
    denom = jnp.einsum("bm,bm->b", den_j[s], mono)[:, None]
    flat = jnp.where(found[:, None] & (denom > 0), numer / jnp.where(denom > 0, denom, 1.0), 0.)
    return EditRates.from_flat(flat, capacity, v)

  return rate_fn

