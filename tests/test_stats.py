"""The pooled chi-square helper keeps its stated false-alarm rate; the unpooled sum does not.

``docs/algorithms.md#statistical-tests``. A known multinomial with many tiny cells (expected
counts down to ~0.03, as in the speculative-decoding tests before pooling) is sampled under the
null ``TRIALS`` times; the number of rejections at ``alpha = 0.01`` is ``Binomial(TRIALS, a)``
with ``a`` the true false-alarm rate, so it must lie between the ``1e-6`` and ``1 - 1e-6``
quantiles of ``Binomial(TRIALS, 0.01)`` when ``a = 0.01``.
"""

import numpy as np
import pytest
from scipy import stats

from partext_jax.testing.stats import pooled_chi_square, sequence_counts

TRIALS, N, ALPHA = 4000, 300, 0.01
# 40 cells: 10 of mass 0.7 and 30 tiny ones (expected counts 0.03 .. 1.9 at N = 300).
TINY = np.geomspace(1e-4, 6.3e-3, 30)
PROBS = np.concatenate([np.full(10, (1 - TINY.sum()) / 10), TINY])
LOW, HIGH = stats.binom.ppf(1e-6, TRIALS, ALPHA), stats.binom.isf(1e-6, TRIALS, ALPHA)


def _null_counts():
  return np.random.default_rng(0).multinomial(N, PROBS, size=TRIALS)


def test_pooled_false_alarm_rate_within_binomial_bound():
  rejections = sum(not pooled_chi_square(c, PROBS, alpha=ALPHA).passed for c in _null_counts())
  assert LOW <= rejections <= HIGH, (rejections, LOW, HIGH)


def test_unpooled_sum_exceeds_the_bound():
  """The fault the helper fixes: summing over cells of tiny expected count alarms too often."""
  counts = _null_counts()
  expected = N * PROBS
  statistic = ((counts - expected) ** 2 / expected).sum(axis=1)
  rejections = int((statistic > stats.chi2.isf(ALPHA, PROBS.size - 1)).sum())
  assert rejections > HIGH, (rejections, HIGH)


def test_pooled_test_fires_on_a_wrong_law():
  """A sampler that moves half of one big cell's mass to another is rejected.

  Non-centrality ``n sum (q - p)^2 / p = 6000 * 2 * 0.035^2 / 0.07 = 210``: the statistic's mean
  is ~235 (sd ~30) against the threshold ~74 (``alpha = 1e-6``, df = 25).
  """
  wrong = PROBS.copy()
  wrong[0] *= 1.5
  wrong[1] -= PROBS[0] * 0.5
  counts = np.random.default_rng(1).multinomial(20 * N, wrong)
  res = pooled_chi_square(counts, PROBS, alpha=1e-6)
  assert not res.passed and res.num_pooled > 0, res


def test_sequence_counts_and_zero_cells():
  counts = sequence_counts(np.array([[0, 1], [0, 1], [1, 0]]), (2, 2))
  np.testing.assert_array_equal(counts, [[0, 2], [1, 0]])
  probs = np.array([[0.0, 0.5], [0.5, 0.0]])
  assert pooled_chi_square(counts * 10, probs).zero_hits == 0
  res = pooled_chi_square(counts * 10 + 1, probs)
  assert res.zero_hits == 2 and not res.passed
  with pytest.raises(ValueError, match="draw more samples"):
    pooled_chi_square(np.array([1, 0]), np.array([0.5, 0.5]))
