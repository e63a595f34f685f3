"""EB-sampler (entropy-bounded unmasking): exact reductions and exactness at gamma = 0.

Tolerances as in ``tests/test_confidence.py``: ``tv_tolerance(n, K)`` (mean bound
``0.5 sqrt((K - 1)/n)`` plus McDiarmid deviation at false-alarm 1e-6) plus ``1e-4`` for the
float32 rounding of the exact denoiser; gamma = 0 decodes one token per step (when no entropy is
exactly 0) at a position chosen from the current state, which is exact at tau = 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_compiles_once, assert_decodes_best_position_each_step
from partext_jax import testing
from partext_jax.masked.adaptive import eb_sampler, jitted_sample
from partext_jax.masked.rules import EntropyBoundRule, select_entropy_bound
from partext_jax.testing import toys

V, L = 3, 3
MASK = V


def test_select_entropy_bound_hand_examples():
  """H = (0.3, 0.1, 0.2): sorted 0.1, 0.2, 0.3 with sum-minus-max of the prefixes 0, 0.1, 0.3."""
  h = jnp.array([0.3, 0.1, 0.2])
  elig = jnp.ones(3, bool)
  np.testing.assert_array_equal(select_entropy_bound(h, elig, 0.0), [0, 1, 0])
  np.testing.assert_array_equal(select_entropy_bound(h, elig, 0.15), [0, 1, 1])
  np.testing.assert_array_equal(select_entropy_bound(h, elig, 0.3), [1, 1, 1])
  # Sorted, not positional, accumulation: H = (0.5, 0.01, 0.02, 0.03), gamma = 0.05 takes the
  # three low-entropy positions (0 + 0.01 + 0.02 = 0.03 <= 0.05); summing in positional order
  # (the public-copy bug) would stop after position 0 (0.5 > 0.05) and decode the worst token.
  h = jnp.array([0.5, 0.01, 0.02, 0.03])
  np.testing.assert_array_equal(select_entropy_bound(h, jnp.ones(4, bool), 0.05), [0, 1, 1, 1])
  # ineligible positions neither count nor get chosen
  np.testing.assert_array_equal(
      select_entropy_bound(h, jnp.array([True, False, True, True]), 0.025), [0, 0, 1, 1])


def test_gamma_zero_decodes_the_lowest_entropy_one_per_step():
  """gamma = 0 (entropies > 0 here): one token per step, at the masked position of lowest
  entropy of p_theta(. | current state), with its argmax (tau = 0); NFE = number of masks."""
  v, l = 6, 7
  den = toys.mixing_denoiser(v, l, seed=2)
  x = jnp.full((3, l), v, jnp.int32).at[1, 4].set(2)
  sampler = eb_sampler(den, mask_id=v, gamma=0.0, record_trajectory=True)
  tokens, info = sampler.sample(jax.random.key(0), x)
  # The lowest entropy is the highest negative entropy sum_v p log p.
  traj = assert_decodes_best_position_each_step(den, x, info, mask_id=v,
                                                score=lambda p: (p * np.log(p)).sum(-1))
  assert traj.shape == (l + 1, 3, l)
  np.testing.assert_array_equal(info.num_decoded.sum(0), [l, l - 1, l])
  assert int(info.nfe.sum()) == l
  assert not np.any(np.asarray(tokens) == v)


def test_large_gamma_and_threshold():
  """gamma >= sum of all entropies decodes everything in one call. With gamma = 0 and a
  threshold of 0.9 on a constant model with max probs (0.95, 0.95, 0.5): the first step takes
  the two confident positions (union), the second the last one."""
  logits = jnp.log(jnp.array([[0.95, 0.05], [0.05, 0.95], [0.5, 0.5]]))
  den = testing.constant_denoiser(logits)
  x = jnp.full((2, 3), 2, jnp.int32)
  tokens, info = eb_sampler(den, mask_id=2, gamma=10.0).sample(jax.random.key(0), x)
  assert int(info.nfe.sum()) == 1
  np.testing.assert_array_equal(info.num_decoded[0], [3, 3])
  tokens, info = eb_sampler(den, mask_id=2, threshold=0.9).sample(jax.random.key(0), x)
  np.testing.assert_array_equal(np.asarray(info.num_decoded)[:3, 0], [2, 1, 0])
  np.testing.assert_array_equal(tokens[:, :2], [[0, 1], [0, 1]])


def test_one_hot_logits_exact_tokens_in_one_step():
  """0 / -inf logits: exact tokens; every entropy is exactly 0, so even at gamma = 0 all
  positions join the first step (no error is possible). (tau = 1 with -inf logits is covered in
  test_confidence.py.)"""
  target = np.array([1, 0, 2, 2])
  logits = jnp.where(jax.nn.one_hot(target, 3) > 0, 0.0, -jnp.inf)
  x = jnp.full((2, 4), 3, jnp.int32).at[0, 1].set(0)
  tokens, info = eb_sampler(testing.constant_denoiser(logits), mask_id=3).sample(
      jax.random.key(1), x)
  np.testing.assert_array_equal(tokens, np.tile(target, (2, 1)))
  assert int(info.nfe.sum()) == 1


def test_gamma_zero_samples_the_joint():
  """tau = 1, gamma = 0, exact denoiser: the joint (n = 10000, K = 27: 0.052 + 1e-4) and the
  conditional given x_1 = 2 (n = 5000, K = 9: 0.037 + 1e-4); the product of marginals is 0.25
  away. Power check included."""
  joint = testing.random_joint(0, vocab_size=V, length=L, concentration=0.5)
  den = testing.exact_denoiser(joint, mask_id=MASK)
  n, n_cond = 10_000, 5_000
  x = jnp.concatenate([jnp.full((n, L), MASK, jnp.int32),
                       jnp.full((n_cond, L), MASK, jnp.int32).at[:, 1].set(2)])
  tokens, info = eb_sampler(den, mask_id=MASK, gamma=0.0,
                            temperature=1.0).sample(jax.random.key(21), x)
  tokens = np.asarray(tokens)
  assert np.all(np.asarray(info.num_decoded) <= 1)
  assert int(info.nfe.sum()) == L
  bound = testing.tv_tolerance(n, V**L) + 1e-4
  assert testing.total_variation(joint, testing.product_of_marginals(joint)) > 2 * bound
  emp = testing.empirical_distribution(tokens[:n], vocab_size=V)
  assert testing.total_variation(emp, joint) < bound
  cond = joint[:, 2, :] / joint[:, 2, :].sum()
  emp_cond = testing.empirical_distribution(tokens[n:][:, [0, 2]], vocab_size=V)
  assert testing.total_variation(emp_cond, cond) < testing.tv_tolerance(n_cond, V * V) + 1e-4


def test_compiles_once_and_bad_arguments():
  base = toys.mixing_denoiser(3, 4)
  x = jnp.full((2, 4), 3, jnp.int32)
  assert_compiles_once(lambda m: eb_sampler(m, mask_id=3, gamma=0.1), base, x,
                       new_prompt=x.at[0, 0].set(2), jitted=jitted_sample.jits[(False,)])
  for kwargs, exc, match in [(dict(gamma=-0.1), ValueError, "gamma"),
                             (dict(gamma=float("inf")), ValueError, "gamma"),
                             (dict(gamma="0"), TypeError, "gamma"),
                             (dict(threshold=float("nan")), ValueError, "threshold"),
                             (dict(temperature=-1.0), ValueError, "temperature"),
                             (dict(mask_id=-1), ValueError, "mask_id"),
                             (dict(block_length=3), ValueError, "block_length")]:
    args = dict(mask_id=3)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
      eb_sampler(base, **args).sample(jax.random.key(0), x)
  with pytest.raises(TypeError):
    eb_sampler(base, mask_id=3, num_steps=4)        # EB runs until done: no step budget
  assert EntropyBoundRule(gamma=1).gamma == 1.0
