"""Schedules of masked diffusion: the masking schedule ``alpha(t)`` and P2's ``kappa(t)``.

Masking schedule (``docs/algorithms.md#masking-schedules-and-the-elbo``). ``alpha(t)`` is the
probability that a token of the clean sequence is still unmasked at time ``t in [0, 1]``,
decreasing from ``alpha(0) = 1`` to ``alpha(1) = 0``:

==============  ==========================  =============================
kind            alpha(t)                    alpha'(t)
==============  ==========================  =============================
``linear``      ``1 - t``                   ``-1``
``cosine``      ``1 - cos(pi/2 (1 - t))``   ``-pi/2 sin(pi/2 (1 - t))``
``polynomial``  ``1 - t**k``                ``-k t**(k-1)``
==============  ==========================  =============================

With ``eps > 0`` the schedule is shifted as in MD4 (Shi et al. 2024),
``alpha_eps(t) = (1 - 2 eps) alpha(t) + eps``, which keeps ``alpha`` inside ``[eps, 1 - eps]``
(finite loss weights at both ends). MDLM's (Sahoo et al. 2024) "log-linear" schedule (move
chance ``(1 - eps) t``) is ``linear`` with ``alpha(1) = eps``; it is not offered separately
because the MD4 shift covers the same need.

Unmasking-count schedule (``docs/algorithms.md#p2-path-planning``). :class:`KappaSchedule` is
P2's (Peng et al. 2025) ``kappa(t)``: the fraction of free positions decoded after a fraction
``t`` of the steps.

Example::

    sched = MaskingSchedule("cosine")
    sched.alpha(jnp.array(0.5)), sched.dalpha(jnp.array(0.5))
    KappaSchedule("sine")(np.linspace(0, 1, 5))         # float64 numpy
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from partext_jax.base import checked_choice, checked_float_fields, checked_hashable

SCHEDULE_KINDS = ("linear", "cosine", "polynomial")
KAPPA_KINDS = ("linear", "cosine", "sine", "polynomial", "geometric")


@dataclasses.dataclass(frozen=True)
class MaskingSchedule:
  """A masking schedule ``alpha(t)`` (frozen and hashable: safe as a static jit argument).

  Attributes:
    kind: one of ``SCHEDULE_KINDS``.
    exponent: ``k`` of the polynomial schedule (ignored otherwise); ``k = 1`` is linear.
    eps: MD4-style shift; ``0`` gives the exact schedule with ``alpha(0)=1, alpha(1)=0``.
  """

  kind: str = "linear"
  exponent: float = 2.0
  eps: float = 0.0

  def __post_init__(self):
    checked_choice("MaskingSchedule.kind", self.kind, SCHEDULE_KINDS)
    checked_float_fields(self, {"exponent": dict(lo=0.0, lo_open=True),
                                "eps": dict(lo=0.0, hi=0.5, hi_open=True)},
                         prefix="MaskingSchedule.")

  def _base(self, t):
    """``(alpha, 1 - alpha, alpha')`` of the unshifted schedule; ``1 - alpha`` is computed
    directly (``1 - (1 - t**k)`` cancels to 0 in float32 for small ``t``)."""
    if self.kind == "linear":
      return 1.0 - t, t, -jnp.ones_like(t)
    if self.kind == "cosine":
      phase = 0.5 * math.pi * (1.0 - t)
      # 1 - cos(phase) = 2 sin^2(phase / 2): no cancellation near t = 1 (alpha -> 0).
      return 2.0 * jnp.sin(0.5 * phase) ** 2, jnp.cos(phase), -0.5 * math.pi * jnp.sin(phase)
    k = self.exponent
    return 1.0 - t**k, t**k, -k * t ** (k - 1.0)

  @staticmethod
  def _as_float(t):
    return jnp.asarray(t, jnp.result_type(float, t))

  def alpha(self, t):
    """Probability that a token is unmasked at time ``t``."""
    a, _, _ = self._base(self._as_float(t))
    return (1.0 - 2.0 * self.eps) * a + self.eps

  def mask_probability(self, t):
    """``1 - alpha(t)``, computed without cancellation."""
    _, one_minus_a, _ = self._base(self._as_float(t))
    return (1.0 - 2.0 * self.eps) * one_minus_a + self.eps

  def dalpha(self, t):
    """Time derivative ``alpha'(t)`` (negative)."""
    _, _, da = self._base(self._as_float(t))
    return (1.0 - 2.0 * self.eps) * da

  def loss_weight(self, t):
    """ELBO weight ``alpha'(t) / (1 - alpha(t))`` (negative), used by ``diffusion.mdm_loss``."""
    return self.dalpha(t) / jnp.maximum(self.mask_probability(t), jnp.finfo(jnp.float32).tiny)

  def unmask_probability(self, t, s):
    """Probability that a token masked at ``t`` is unmasked at ``s < t``:
    ``(alpha(s) - alpha(t)) / (1 - alpha(t))`` (survey eq. 9), as
    ``1 - (1 - alpha(s)) / (1 - alpha(t))`` to avoid cancellation."""
    return 1.0 - self.mask_probability(s) / self.mask_probability(t)


def get_schedule(kind: str = "linear", **kwargs) -> MaskingSchedule:
  """Builds a schedule by name ``kind``; ``kwargs`` are the :class:`MaskingSchedule` fields
  (``exponent``, ``eps``); unknown names list the valid ones."""
  return MaskingSchedule(kind, **kwargs)


def checked_schedule(schedule, *, methods: Sequence[str] = ("alpha", "dalpha",
                                                            "mask_probability")):
  """``schedule`` if it has the callable ``methods`` of :class:`MaskingSchedule` and is hashable
  (it is a static jit argument); a ``TypeError`` naming ``schedule`` otherwise."""
  if not all(callable(getattr(schedule, m, None)) for m in methods):
    raise TypeError(f"schedule must be a MaskingSchedule (with {', '.join(methods)}), got "
                    f"{schedule!r}")
  return checked_hashable("schedule", schedule)


@dataclasses.dataclass(frozen=True)
class KappaSchedule:
  """P2's ``kappa(t)``: fraction of free positions decoded after a fraction ``t`` of the steps.

  Non-decreasing with exact ends ``kappa(0) = 0``, ``kappa(1) = 1``: ``linear`` ``t``;
  ``cosine`` ``1 - cos(pi t / 2)`` (few tokens first); ``sine`` ``sin(pi t / 2)`` (many first);
  ``polynomial`` ``t**exponent``; ``geometric`` ``(ratio**t - 1) / (ratio - 1)`` (``ratio > 1``
  few first, ``< 1`` many first). See ``docs/algorithms.md#p2-path-planning``.

  Attributes:
    kind: one of ``KAPPA_KINDS``.
    exponent: of ``polynomial`` (``> 0``).
    ratio: of ``geometric`` (``> 0``, ``!= 1``).

  Raises ``ValueError`` / ``TypeError`` naming the attribute and its valid values.
  """
  kind: str = "linear"
  exponent: float = 2.0
  ratio: float = 10.0

  def __post_init__(self):
    checked_choice("KappaSchedule.kind", self.kind, KAPPA_KINDS)
    positive = dict(lo=0.0, lo_open=True)
    checked_float_fields(self, {"exponent": positive, "ratio": positive}, prefix="KappaSchedule.")
    if self.ratio == 1.0:
      raise ValueError("KappaSchedule.ratio=1.0 must be a finite float > 0 and != 1 (ratio 1 is "
                       "the linear schedule: use kind='linear')")

  def __call__(self, t):
    """``kappa(t)`` in float64 (numpy; evaluated once per grid when a sampler is built)."""
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
