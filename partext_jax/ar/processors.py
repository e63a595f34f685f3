"""Composable logits processors: pure functions ``logits float32[B, V] -> logits float32[B, V]``.

A processor returns logits whose ``softmax`` is the distribution to sample from; removed tokens get
``-inf``. They compose like ``optax.chain``: ``chain(temperature(0.7), top_k(50), top_p(0.9))``
applies left to right. Each processor is a frozen dataclass, hence hashable: it can be a
``static_argnames`` value of a jitted sampler (equal processors share one compilation)
(``docs/algorithms.md#autoregressive-sampling-and-logits-processors``; top-p after Holtzman et
al. 2020, top-k after Fan et al. 2018).

Math, for logits ``z`` of one row:

* ``temperature(t)``: ``z / t`` (``t > 0``).
* ``top_k(k)``: keep ``z_i >= z_(k)`` (the ``k``-th largest value; ties at the threshold kept).
* ``top_p(p)``: in descending order of ``z`` (ties by lower index), ``P_j = sum_{i<j}
  softmax(z)_(i)`` (mass strictly *before* token ``j``); keep ``j`` iff ``P_j < p``. The top token
  has ``P = 0`` and is always kept. Computed without a sort (:func:`partext_jax.ops.nucleus_mask`,
  ``docs/algorithms.md#vocabulary-ops``).
* ``greedy()``: keep only the argmax (first one on ties), so sampling is deterministic.

Usage::

    proc = chain(temperature(0.8), top_k(40), top_p(0.95))
    token = jax.random.categorical(key, proc(logits))
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from partext_jax import ops

LogitsProcessor = Callable[[jax.Array], jax.Array]

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Temperature:
  """``z / temperature`` (finite ``temperature > 0``; ``ValueError`` otherwise)."""

  temperature: float

  def __post_init__(self):
    if not 0 < self.temperature < float("inf"):  # NaN included
      raise ValueError(f"temperature={self.temperature!r} must be finite and > 0 (use greedy() "
                       f"for 0)")

  def __call__(self, logits):
    return logits / jnp.asarray(self.temperature, logits.dtype)


@dataclasses.dataclass(frozen=True)
class TopK:
  """Keeps ``z_i >= z_(k)``, the ``k``-th largest logit (ties kept); ``k >= 1``."""

  k: int

  def __post_init__(self):
    if not isinstance(self.k, int) or self.k < 1:
      raise ValueError(f"top_k={self.k!r} must be an int >= 1")

  def __call__(self, logits):
    k = min(self.k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, NEG_INF)


@dataclasses.dataclass(frozen=True)
class TopP:
  """Nucleus filter (Holtzman et al. 2020): keeps token ``j`` iff the mass before it is ``< p``."""

  p: float

  def __post_init__(self):
    if not 0.0 < self.p <= 1.0:  # NaN included
      raise ValueError(f"top_p={self.p!r} must lie in (0, 1]")

  def __call__(self, logits):
    if self.p >= 1.0:
      return logits
    # No sort over V: the threshold search of ops.nucleus_mask, same set as a stable sort.
    return jnp.where(ops.nucleus_mask(logits, self.p, rule="exclusive"), logits, NEG_INF)


@dataclasses.dataclass(frozen=True)
class Greedy:
  """Keeps only the argmax (first on ties): sampling becomes deterministic."""

  def __call__(self, logits):
    best = ops.argmax(logits)
    return jnp.where(jnp.arange(logits.shape[-1])[None, :] == best[:, None], 0.0, NEG_INF).astype(
        logits.dtype)


@dataclasses.dataclass(frozen=True)
class Chain:
  """Applies ``processors`` left to right (build with :func:`chain`)."""

  processors: tuple

  def __call__(self, logits):
    for proc in self.processors:
      logits = proc(logits)
    return logits


@dataclasses.dataclass(frozen=True)
class Identity:
  """Leaves the logits unchanged."""

  def __call__(self, logits):
    return logits


def is_greedy(processor) -> bool:
  """Whether ``processor`` ends in :class:`Greedy` (sampling from it is deterministic)."""
  if isinstance(processor, Greedy):
    return True
  return isinstance(processor, Chain) and any(isinstance(p, Greedy) for p in processor.processors)


def temperature(t: float) -> Temperature:
  """``Temperature(t)``: divides the logits by ``t`` (a float > 0; unitless).

  Raises:
    ValueError: if ``t <= 0`` (use :func:`greedy` for deterministic decoding).
  """
  return Temperature(float(t))


def top_k(k: int) -> TopK:
  """``TopK(k)``: keeps the ``k`` largest logits of each row (ties at the threshold kept), after Fan
  et al. 2018.

  Raises:
    ValueError: if ``k`` is not an int >= 1.
  """
  return TopK(k)


def top_p(p: float) -> TopP:
  """``TopP(p)``: the nucleus filter of Holtzman et al. 2020 (keeps the tokens whose preceding mass
  is ``< p``; ``p`` a probability in (0, 1], 1 keeps everything).

  Raises:
    ValueError: if ``p`` is outside (0, 1].
  """
  return TopP(float(p))


def greedy() -> Greedy:
  """``Greedy()``: keeps only each row's argmax (first on ties): deterministic decoding."""
  return Greedy()


def identity() -> Identity:
  """``Identity()``: leaves the logits unchanged (plain sampling from ``softmax(logits)``)."""
  return Identity()


def chain(*processors) -> Chain:
  """Applies ``processors`` left to right (flattening nested chains)."""
  flat = []
  for p in processors:
    if isinstance(p, Chain):
      flat.extend(p.processors)
    elif callable(p):
      flat.append(p)
    else:
      raise TypeError(f"chain() takes logits processors (callables), got {p!r}")
  return Chain(tuple(flat))


def build(*, temperature: float = 1.0, top_k: int | None = None,
          top_p: float | None = None) -> Chain:
  """The usual sampling knobs as one processor; ``temperature == 0`` means greedy.

  ``top_k=None`` / ``0`` and ``top_p=None`` / ``1.0`` disable those filters. Raises
  ``ValueError`` for a temperature that is negative or not finite, ``top_k < 0`` (or not an
  int), or ``top_p`` outside ``(0, 1]``, whether or not the filter would be applied.
  """
  if temperature is None or not 0 <= temperature < float("inf"):  # NaN included
    raise ValueError(f"temperature={temperature!r} must be finite and >= 0 (0 = greedy)")
  if top_k is not None and top_k != 0:
    TopK(top_k)  # Checks k >= 1 (an int).
  if top_p is not None and not 0.0 < top_p <= 1.0:  # NaN included
    raise ValueError(f"top_p={top_p!r} must lie in (0, 1] (1.0 = off)")
  if temperature == 0:
    return chain(Greedy())
  procs = [] if temperature == 1.0 else [Temperature(float(temperature))]
  if top_k not in (None, 0):
    procs.append(TopK(int(top_k)))
  if top_p is not None and top_p < 1.0:
    procs.append(TopP(float(top_p)))
  return chain(*procs)
