"""Tau-leaping: exactness against enumerable toy distributions and the sampler invariants.

Statistical tolerances come from the standard error / concentration bounds, never from a tuned
seed; every bound is stated with its false-alarm probability.

TV tests (``partext_jax.testing.tv_tolerance``): for ``n`` i.i.d. samples of the sampler's law
``q`` over ``K`` outcomes, ``E[TV(q_hat, q)] <= 0.5 sum_k sqrt(q_k (1 - q_k) / n) <=
0.5 sqrt((K - 1) / n)`` (Jensen + Cauchy-Schwarz) and, since one sample moves TV by at most
``1/n``, McDiarmid gives ``P(TV > E[TV] + eps) <= exp(-2 n eps^2)``; we take ``delta = 1e-6``.
The target ``p`` differs from ``q`` by the sampler's own (known) error ``d``, so we assert
``TV(q_hat, p) <= tv_tolerance(n, K) + d``, and that ``TV(p, alternative) > 2 * bound`` so the
test has power against the obvious wrong answer.
"""

import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import COMMON_BAD_ARGUMENTS, assert_compiles_once, run_with_x64
from partext_jax import testing
from partext_jax.masked import categorical, driver
from partext_jax.masked.tau_leaping import (TauLeapingConfig, TauLeapingInfo, TauLeapingState,
                                            jitted_sample, tau_leaping, unmask_probability)
from partext_jax.schedules import MaskingSchedule

V, L = 3, 3
MASK = V


# Fixtures `joint` and `denoiser` (V = L = 3, MASK = 3) come from tests/conftest.py.


def _all_masked(b, l=L):
  return jnp.full((b, l), MASK, jnp.int32)


# ------------------------------------------------------------------ exactness (property 2)

def test_many_steps_matches_joint_and_conditional(joint, denoiser):
  """N = 256 analytic steps with the exact denoiser sample the joint (all-masked rows) and the
  conditional p(x_0, x_2 | x_1 = 2) (rows with position 1 fixed to token 2), in one batch.

  Systematic error: with the linear schedule and t_min = 0 each position unmasks at a step
  index uniform on {0..N-1}, independently across positions; the sampler's transition equals the
  true reverse transition except when two positions unmask in the same step (then they are drawn
  from their marginals instead of jointly). Coupling the position process of both laws,
  TV(q, p) <= P(some collision) <= M(M-1)/(2N) for M free positions: 3/256 (joint), 1/256
  (conditional). Sampling: tv_tolerance(10000, 27) = 0.052, tv_tolerance(5000, 9) = 0.037
  (false alarm 1e-6 each). TV(joint, product of marginals) is 0.25 for this joint.
  """
  n, n_cond, num_steps = 10_000, 5_000, 256
  x = jnp.concatenate([_all_masked(n), _all_masked(n_cond).at[:, 1].set(2)])
  sampler = tau_leaping(denoiser, mask_id=MASK, num_steps=num_steps, cache_outputs=True)
  tokens, info = sampler.sample(jax.random.key(1), x)
  tokens = np.asarray(tokens)
  emp = testing.empirical_distribution(tokens[:n], vocab_size=V)
  bound = testing.tv_tolerance(n, V**L) + L * (L - 1) / (2 * num_steps)
  assert testing.total_variation(joint, testing.product_of_marginals(joint)) > 2 * bound
  assert testing.total_variation(emp, joint) < bound
  assert np.all(tokens[n:, 1] == 2)
  cond = joint[:, 2, :] / joint[:, 2, :].sum()
  emp_cond = testing.empirical_distribution(tokens[n:][:, [0, 2]], vocab_size=V)
  bound_cond = testing.tv_tolerance(n_cond, V * V) + 1 / num_steps
  assert testing.total_variation(emp_cond, cond) < bound_cond
  assert int(info.nfe.sum()) <= num_steps + 1


def test_markov_chain_joint_is_exact():
  init, trans = testing.random_markov_chain(3, vocab_size=2)
  joint = testing.markov_chain_joint(init, trans, length=4)
  assert joint.shape == (2, 2, 2, 2)
  np.testing.assert_allclose(joint[1, 0, 0, 1], init[1] * trans[1, 0] * trans[0, 0] * trans[0, 1])
  np.testing.assert_allclose(joint.sum(), 1.0)


def test_one_step_matches_product_of_marginals(joint, denoiser):
  """ONE step unmasks everything at once from the marginals: exactly the product of marginals
  (d = 0). n = 20000, K = 27: tv_tolerance = 0.037; TV(product, joint) = 0.25."""
  n = 20_000
  sampler = tau_leaping(denoiser, mask_id=MASK, num_steps=1)
  tokens, info = sampler.sample(jax.random.key(3), _all_masked(n))
  product = testing.product_of_marginals(joint)
  bound = testing.tv_tolerance(n, V**L)
  assert testing.total_variation(joint, product) > 2 * bound
  assert testing.total_variation(testing.empirical_distribution(tokens, vocab_size=V),
                                 product) < bound
  assert int(info.nfe.sum()) == 1


# ------------------------------------------------------------------ unmask rate (property 3)

@pytest.mark.parametrize("schedule", [MaskingSchedule("linear"),
                                      MaskingSchedule("cosine", eps=1e-3)], ids=str)
def test_unmask_rate_matches_schedule(schedule):
  """Per step, the number of unmasked positions among the m_i still masked is
  Binomial(m_i, p_i) with p_i = (alpha_s - alpha_t)/(1 - alpha_t) (float64 reference). z-test
  per step, |z| < 5: two-sided 5.7e-7 per step, < 1e-5 over the 15 stochastic steps. The last
  step (noise_removal=False) must unmask everything."""
  b, l, num_steps = 5_000, 8, 16
  sampler = tau_leaping(testing.constant_denoiser(jnp.zeros(4)), mask_id=4,
                        num_steps=num_steps, schedule=schedule, noise_removal=False)
  tokens, info = sampler.sample(jax.random.key(5), jnp.full((b, l), 4, jnp.int32))
  counts = np.asarray(info.num_unmasked).sum(axis=1)
  masked_before = b * l - np.concatenate([[0], np.cumsum(counts)[:-1]])
  t = 1.0 - np.arange(num_steps + 1) / num_steps

  def alpha(t):
    base = {"linear": 1.0 - t, "cosine": 1.0 - np.cos(0.5 * np.pi * (1.0 - t))}[schedule.kind]
    return (1 - 2 * schedule.eps) * base + schedule.eps

  p = (alpha(t[1:]) - alpha(t[:-1])) / (1.0 - alpha(t[:-1]))
  np.testing.assert_allclose(np.asarray(info.unmask_probability)[:-1], p[:-1], atol=1e-5)
  for i in range(num_steps - 1):
    z = (counts[i] - masked_before[i] * p[i]) / math.sqrt(masked_before[i] * p[i] * (1 - p[i]))
    assert abs(z) < 5, (i, counts[i], masked_before[i], p[i], z)
  assert counts[-1] == masked_before[-1]
  assert not np.any(np.asarray(tokens) == 4)


def test_euler_equals_analytic_for_linear(denoiser):
  """Same key: identical tokens (the probabilities agree to float rounding, ~1e-7, so a draw
  could only differ if a uniform fell within 1e-7 of p: probability < 1e-7 * 300 draws)."""
  x = testing.random_prompts(jax.random.key(16), 12, L, V, MASK)  # as in batch invariance
  out = {}
  for method in ("analytic", "euler"):
    sampler = tau_leaping(denoiser, mask_id=MASK, num_steps=9, method=method)
    out[method] = sampler.sample(jax.random.key(6), x)
  np.testing.assert_allclose(out["analytic"][1].unmask_probability,
                             out["euler"][1].unmask_probability, atol=1e-6)
  np.testing.assert_array_equal(out["analytic"][0], out["euler"][0])


def test_unmask_probability_formulas():
  """Euler's first-order rate at t = 1 is alpha'(1) = 0 for the cosine schedule; analytic is the
  exact (alpha_s - alpha_t)/(1 - alpha_t); both are (t - s)/t for the linear schedule."""
  cos = MaskingSchedule("cosine")
  euler = TauLeapingConfig(mask_id=4, num_steps=8, schedule=cos, method="euler")
  analytic = TauLeapingConfig(mask_id=4, num_steps=8, schedule=cos)
  np.testing.assert_allclose(unmask_probability(euler, 1.0, 0.875), 0.0, atol=1e-7)
  np.testing.assert_allclose(unmask_probability(analytic, 1.0, 0.875), 1 - math.cos(math.pi / 16),
                             atol=1e-6)
  for method in ("euler", "analytic"):
    lin = TauLeapingConfig(mask_id=4, num_steps=8, method=method)
    np.testing.assert_allclose(unmask_probability(lin, 0.4, 0.3), 0.25, atol=1e-6)


def test_time_grid_ends_at_t_min():
  np.testing.assert_allclose(driver.time_grid(4, 1e-5, jnp.arange(5)),
                             1e-5 + (1 - 1e-5) * np.array([1, 0.75, 0.5, 0.25, 0]), rtol=1e-6)
  assert float(driver.time_grid(4, 1e-5, 4)) == np.float32(1e-5)
  assert float(driver.time_grid(4, 1e-5, 0)) == 1.0
  t, s, is_last = driver.step_times(4, 1e-5, jnp.int32(3))
  assert (float(t), float(s), bool(is_last)) == (float(driver.time_grid(4, 1e-5, 3)),
                                                 float(np.float32(1e-5)), True)
  # Steps past the grid reuse the last step's times (they are no-ops: nothing is masked).
  t_past, s_past, last_past = driver.step_times(4, 1e-5, jnp.int32(5))
  assert (float(t_past), float(s_past), bool(last_past)) == (float(t), float(s), False)


# ------------------------------------------------------------------ carry-over (property 1)

@pytest.mark.parametrize("kwargs", [
    dict(noise_removal=False, t_min=0.1, schedule=MaskingSchedule("cosine", eps=0.01)),
    dict(noise_removal=True, t_min=0.1, schedule=MaskingSchedule("polynomial", exponent=3.0),
         method="euler", temperature=0.5),
], ids=str)
def test_trajectory_carry_over_and_no_mask(kwargs):
  """In the jitted loop too: the recorded trajectory never changes a set token, never emits
  MASK at the end, and keeps the prompt; whatever the end-of-grid option."""
  v, l, mask_id = 5, 6, 5  # mask_id = V (an id beyond V is rejected: test_faults.py)
  logits = jax.random.normal(jax.random.key(9), (l, v))
  x = testing.random_prompts(jax.random.key(10), 32, l, v, mask_id)
  sampler = tau_leaping(testing.constant_denoiser(logits), mask_id=mask_id, num_steps=6,
                        record_trajectory=True, **kwargs)
  tokens, info = sampler.sample(jax.random.key(11), x)
  traj = np.concatenate([np.asarray(x)[None], np.asarray(info.tokens)])
  assert traj.shape == (7, 32, l)
  for a, b in zip(traj[:-1], traj[1:]):
    np.testing.assert_array_equal(b[a != mask_id], a[a != mask_id])
  np.testing.assert_array_equal(traj[-1], np.asarray(tokens))
  assert np.all((np.asarray(tokens) >= 0) & (np.asarray(tokens) < v))


def test_noise_removal_takes_argmax():
  """With t_min = 0.5 and one step, the analytic unmask probability is 0.5; every position still
  masked must then hold the argmax of p_theta."""
  logits = jnp.array([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
  sampler = tau_leaping(testing.constant_denoiser(logits), mask_id=3, num_steps=1, t_min=0.5,
                        record_trajectory=False)
  tokens, info = sampler.sample(jax.random.key(0), jnp.full((200, 2), 3))
  np.testing.assert_allclose(info.unmask_probability[0], 0.5, atol=1e-6)
  assert int(info.nfe[0]) == 2
  # argmax is (1, 0): the other tokens can only come from the stochastic half.
  assert np.mean(np.asarray(tokens) == np.array([1, 0])) > 0.5


# ------------------------------------------------------------------ invariants (properties 9-10)

def test_step_by_step_equals_jit_sample_and_carries_over(denoiser):
  """`step` in a Python loop (first step eager, then jitted) reproduces `sample` token for token
  and NFE for NFE; at every step set tokens (prompt or decoded) never change and the step's
  num_unmasked is the number of positions it filled."""
  x = testing.random_prompts(jax.random.key(14), 16, L, V, MASK)
  sampler = tau_leaping(denoiser, mask_id=MASK, num_steps=7, cache_outputs=True,
                        record_trajectory=True)
  tokens, info = sampler.sample(jax.random.key(15), x)
  assert isinstance(info, TauLeapingInfo)
  assert info.nfe.shape == (7,) and info.num_unmasked.shape == (7, 16)
  assert info.tokens.shape == (7, 16, L)
  state = sampler.init(x)
  assert isinstance(state, TauLeapingState) and state.logits.shape == (16, L, V)
  nfe, prev = 0, np.asarray(x)
  for i in range(7):
    step = sampler.step if i == 0 else jax.jit(sampler.step)
    state, step_info = step(jax.random.key(15), state)
    cur = np.asarray(state.tokens)
    np.testing.assert_array_equal(cur[prev != MASK], prev[prev != MASK])
    np.testing.assert_array_equal(step_info.num_unmasked, (cur != prev).sum(axis=1))
    np.testing.assert_array_equal(step_info.num_unmasked, info.num_unmasked[i])
    np.testing.assert_array_equal(step_info.tokens, info.tokens[i])
    nfe += int(step_info.nfe)
    prev = cur
  np.testing.assert_array_equal(state.tokens, tokens)
  assert not np.any(prev == MASK)
  assert nfe == int(info.nfe.sum())


def test_batch_invariance_and_determinism(denoiser):
  """A row's sample depends on (key, row index, row contents) only, even with the batch-level
  cache decision; a fixed key reproduces, another key differs."""
  x = testing.random_prompts(jax.random.key(16), 12, L, V, MASK)
  sampler = tau_leaping(denoiser, mask_id=MASK, num_steps=9, cache_outputs=True)
  key = jax.random.key(17)
  full, _ = sampler.sample(key, x)
  np.testing.assert_array_equal(sampler.sample(key, x)[0], full)
  assert np.any(np.asarray(sampler.sample(jax.random.key(18), x)[0]) != np.asarray(full))
  alone, _ = sampler.sample(key, x[:1])
  np.testing.assert_array_equal(alone, full[:1])
  other = x.at[1:].set(testing.random_prompts(jax.random.key(18), 11, L, V, MASK))
  np.testing.assert_array_equal(sampler.sample(key, other)[0][0], full[0])
  # Nothing masked: tokens unchanged and no denoiser call.
  done = jnp.asarray(testing.all_sequences(V, L)[:12])
  tokens, info = sampler.sample(key, done)
  np.testing.assert_array_equal(tokens, done)
  assert int(info.nfe.sum()) == 0


def test_output_cache_same_tokens_fewer_nfe(denoiser):
  """Exact (time-independent) denoiser; only row 0 has masked positions (3), so at least 6 of
  the 9 steps change nothing: the cache skips the calls after them and the tokens are
  bit-identical to the uncached sampler's."""
  x = jnp.asarray(testing.all_sequences(V, L)[:12]).at[0].set(MASK)
  key = jax.random.key(20)
  plain = tau_leaping(denoiser, mask_id=MASK, num_steps=9)
  cached = tau_leaping(denoiser, mask_id=MASK, num_steps=9, cache_outputs=True)
  tok_plain, info_plain = plain.sample(key, x)
  tok_cached, info_cached = cached.sample(key, x)
  np.testing.assert_array_equal(tok_plain, tok_cached)
  nfe_plain, nfe_cached = int(info_plain.nfe.sum()), int(info_cached.nfe.sum())
  # Exact counts from the record of which steps changed a token: uncached, one call per step
  # up to the last change; cached, the first call plus one per step that follows a change (and
  # still has masks). Fewer calls unless every step up to the last change changed a token.
  changed = np.flatnonzero(np.asarray(info_cached.num_unmasked).sum(axis=1) > 0)
  assert nfe_plain == changed[-1] + 1
  assert nfe_cached == len(changed)
  assert nfe_cached < nfe_plain or np.array_equal(changed, np.arange(len(changed)))
  np.testing.assert_array_equal(info_plain.num_unmasked, info_cached.num_unmasked)


# ------------------------------------------------------------------ compilation

def test_sample_compiles_once():
  """A second call with a new key or a new prompt of the same shape does not retrace; neither
  does a new sampler with the same denoise_fn and hyper-parameters; a new shape does."""
  exact = testing.exact_denoiser(testing.random_joint(1, vocab_size=V, length=L), mask_id=MASK)
  x = _all_masked(8)
  assert_compiles_once(
      lambda m: tau_leaping(m, mask_id=MASK, num_steps=4, cache_outputs=True), exact, x,
      new_prompt=x.at[:, 0].set(1), jitted=jitted_sample.jits[(False,)],
      new_shape=_all_masked(9))


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs, exc, match", COMMON_BAD_ARGUMENTS + [
    (dict(num_steps=0), ValueError, "num_steps"),
    (dict(num_steps=2.5), TypeError, "num_steps"),
    (dict(method="midpoint"), ValueError, "method=.*analytic.*euler"),
    (dict(precision="bfloat16"), ValueError, "precision=.*float32.*float64"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(t_min=1.0), ValueError, "t_min"),
    (dict(t_min=-0.1), ValueError, "t_min"),
    (dict(schedule="linear"), TypeError, "schedule"),
    (dict(cache_outputs="yes"), TypeError, "cache_outputs"),
], ids=str)
def test_bad_hyperparameters(denoiser, kwargs, exc, match):
  with pytest.raises(exc, match=match):
    tau_leaping(denoiser, **{"mask_id": MASK, "num_steps": 4, **kwargs})


def test_float64_draw_requires_x64(denoiser):
  if categorical.x64_enabled():
    pytest.skip("x64 is on in this process; the subprocess test covers the x64 path")
  with pytest.raises(RuntimeError, match="jax_enable_x64"):
    tau_leaping(denoiser, mask_id=MASK, num_steps=4, precision="float64")


def test_float64_draw_under_x64_subprocess():
  """With JAX_ENABLE_X64=1, precision='float64' with many steps samples the joint (same bound as
  above: tv_tolerance(5000, 27) = 0.073 plus 3/128 for N = 128, well below TV(joint, product)
  = 0.25). The float64 draw's law itself is tested in test_categorical.py."""
  script = textwrap.dedent("""
      import jax, jax.numpy as jnp
      from partext_jax import testing
      from partext_jax.masked.tau_leaping import tau_leaping
      joint = testing.random_joint(0, vocab_size=3, length=3, concentration=0.5)
      den = testing.exact_denoiser(joint, mask_id=3)
      n = 5_000
      x = jnp.full((n, 3), 3, jnp.int32)
      tol = testing.tv_tolerance(n, 27)
      for steps, target, d in ((128, joint, 3 / 128),):
        s = tau_leaping(den, mask_id=3, num_steps=steps, precision="float64",
                        cache_outputs=True)
        tok, _ = s.sample(jax.random.key(steps), x)
        assert tok.dtype == jnp.int32, tok.dtype
        tv = testing.total_variation(testing.empirical_distribution(tok, vocab_size=3), target)
        assert tv < tol + d, (steps, tv, tol + d)
      print("ok")
  """)
  run_with_x64(script)
