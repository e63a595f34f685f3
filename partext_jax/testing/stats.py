"""Goodness-of-fit tests for samplers checked against an exactly known law.

``docs/algorithms.md#statistical-tests``: Pearson's chi-square over the cells of positive
probability, with the cells whose expected count is below ``min_expected`` (5 by convention)
pooled into one cell, and the threshold the chi-square quantile of the resulting degrees of freedom
at a stated false-alarm probability ``alpha``. A sample in a cell of probability 0 fails outright.

Usage::

    counts = sequence_counts(samples, exact.shape)          # samples int[n, K], exact (V,) * K
    res = pooled_chi_square(counts, exact, alpha=1e-6)
    assert res.passed, res
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats


class ChiSquareResult(NamedTuple):
  """What :func:`pooled_chi_square` returns.

  Attributes:
    statistic: Pearson's ``X^2 = sum (O - E)^2 / E`` over the pooled cells.
    df: degrees of freedom, pooled cells - 1.
    threshold: the ``1 - alpha`` quantile of the chi-square law with ``df`` degrees of freedom.
    p_value: ``P(chi2_df >= statistic)``.
    zero_hits: samples that fell in cells of probability 0 (any fails the test).
    num_pooled: cells merged into the pool (0 when every expected count is large enough).
    alpha: the false-alarm probability the threshold was set at.
  """

  statistic: float
  df: int
  threshold: float
  p_value: float
  zero_hits: int
  num_pooled: int
  alpha: float

  @property
  def passed(self) -> bool:
    """No sample of probability 0 and ``statistic < threshold``."""
    return self.zero_hits == 0 and self.statistic < self.threshold


def sequence_counts(samples, shape) -> np.ndarray:
  """Counts of the rows of ``samples`` (``int[n, K]``) as an array of ``shape`` (``(V,) * K``).

  Raises ``ValueError`` when ``samples`` is not 2-d with ``K = len(shape)`` columns or holds an
  id outside ``[0, shape[k])``.
  """
  samples = np.asarray(samples)
  shape = tuple(int(s) for s in shape)
  if samples.ndim != 2 or samples.shape[1] != len(shape):
    raise ValueError(f"samples must be int[n, {len(shape)}], got shape {samples.shape}")
  if np.any(samples < 0) or np.any(samples >= np.asarray(shape)):
    raise ValueError(f"sample ids must lie in [0, {shape}) per column")
  idx = np.ravel_multi_index(tuple(samples.T), shape)
  return np.bincount(idx, minlength=int(np.prod(shape))).reshape(shape)


def pooled_chi_square(counts, probs, *, alpha: float = 1e-6,
                      min_expected: float = 5.0) -> ChiSquareResult:
  """Pearson's chi-square test of observed ``counts`` against the exact law ``probs``.

  Cells with ``probs > 0`` and expected count ``n probs < min_expected`` are pooled into one cell;
  if that pool still expects fewer than ``min_expected`` samples, the smallest remaining cells join
  it until it does. Cells with ``probs == 0`` are left out of the statistic and any sample there is
  counted in ``zero_hits`` (which fails the test).

  Args:
    counts: non-negative integer counts, any shape.
    probs: the exact probabilities, the same shape, summing to 1 (within ``1e-6``).
    alpha: false-alarm probability of the test, in ``(0, 1)``.
    min_expected: smallest expected count of a cell after pooling (> 0).
  Returns:
    :class:`ChiSquareResult` (``.passed`` is the verdict).
  Raises:
    ValueError: mismatched shapes, negative counts, probabilities that are negative or do not sum
      to 1, a bad ``alpha`` / ``min_expected``, or fewer than 2 cells left after pooling (too few
      samples for the test).
  """
  counts = np.asarray(counts, np.float64)
  probs = np.asarray(probs, np.float64)
  if counts.shape != probs.shape:
    raise ValueError(f"counts {counts.shape} and probs {probs.shape} must have the same shape")
  if np.any(counts < 0):
    raise ValueError("counts must be >= 0")
  if np.any(probs < 0) or abs(probs.sum() - 1.0) > 1e-6:
    raise ValueError(f"probs must be >= 0 and sum to 1, got sum {probs.sum()}")
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha={alpha} must lie in (0, 1)")
  if not min_expected > 0:
    raise ValueError(f"min_expected={min_expected} must be > 0")
  counts, probs = counts.ravel(), probs.ravel()
  n = counts.sum()
  positive = probs > 0
  zero_hits = int(counts[~positive].sum())
  observed, expected = counts[positive], n * probs[positive]
  order = np.argsort(expected, kind="stable")
  observed, expected = observed[order], expected[order]
  # Pool the smallest cells: every cell below min_expected, then more until the pool reaches it.
  small = int(np.searchsorted(expected, min_expected, side="left"))
  pooled = np.cumsum(expected)
  if small > 0 and pooled[small - 1] < min_expected:
    small = min(int(np.searchsorted(pooled, min_expected, side="left")) + 1, expected.size)
  if small > 0:
    observed = np.concatenate([[observed[:small].sum()], observed[small:]])
    expected = np.concatenate([[expected[:small].sum()], expected[small:]])
  df = expected.size - 1
  if df < 1:
    raise ValueError(f"only {expected.size} cell(s) left after pooling cells with expected count "
                     f"< {min_expected}: draw more samples (n={int(n)})")
  statistic = float(np.sum((observed - expected) ** 2 / expected))
  return ChiSquareResult(statistic=statistic, df=int(df),
                         threshold=float(stats.chi2.isf(alpha, df)),
                         p_value=float(stats.chi2.sf(statistic, df)), zero_hits=zero_hits,
                         num_pooled=small, alpha=float(alpha))
