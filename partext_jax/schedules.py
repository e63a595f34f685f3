"""Masking schedules for absorbing-state (masked) diffusion.

A schedule is the function ``alpha(t)``: the probability that a token of the clean sequence is
still unmasked at time ``t in [0, 1]``, decreasing from ``alpha(0) = 1`` to ``alpha(1) = 0``.

=============  ==========================  =============================
kind           alpha(t)                    alpha'(t)
=============  ==========================  =============================
``linear``     ``1 - t``                   ``-1``
``cosine``     ``1 - cos(pi/2 (1 - t))``   ``-pi/2 sin(pi/2 (1 - t))``
``polynomial`` ``1 - t**k``                ``-k t**(k-1)``
=============  ==========================  =============================

With ``eps > 0`` the schedule is shifted as in MD4, ``alpha_eps(t) = (1 - 2 eps) alpha(t) + eps``,
which keeps ``alpha`` inside ``[eps, 1 - eps]`` (finite loss weights at both ends). MDLM's
"log-linear" schedule (move chance ``(1 - eps) t``) is ``linear`` with ``alpha(1) = eps``; it is not
offered separately because the MD4 shift covers the same need.

Example::

    sched = MaskingSchedule("cosine")
    sched.alpha(jnp.array(0.5)), sched.dalpha(jnp.array(0.5))
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

SCHEDULE_KINDS = ("linear", "cosine", "polynomial")


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
    if self.kind not in SCHEDULE_KINDS:
      raise ValueError(f"schedule kind={self.kind!r} is not one of {SCHEDULE_KINDS}")
    if not self.exponent > 0:
      raise ValueError(f"schedule exponent={self.exponent} must be > 0")
    if not 0.0 <= self.eps < 0.5:
      raise ValueError(f"schedule eps={self.eps} must be in [0, 0.5)")

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
  """Builds a schedule by name; unknown names list the valid ones."""
  return MaskingSchedule(kind, **kwargs)
