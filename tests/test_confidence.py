"""Confidence-ordered adaptive decoding (LLaDA / Fast-dLLM / Dream): exact reductions and the
exactness of one-token-per-step decoding on enumerable joints.

Statistical tolerance (``partext_jax.testing.tv_tolerance``): for ``n`` i.i.d. samples of the
sampler's law ``q`` over ``K`` outcomes, ``E[TV(q_hat, q)] <= 0.5 sqrt((K - 1) / n)`` (Jensen +
Cauchy-Schwarz) and McDiarmid (one sample moves TV by <= 1/n) adds ``sqrt(log(1/delta) / (2n))``
with false-alarm probability ``delta = 1e-6``. One token per step at ``tau = 1`` with a
state-determined position order is exact (module docstring of ``confidence``: each order path
contributes ``prod_k p(y_{o_k} | y_{o_<k}) = p(y)``), so the sampler's own error ``d`` is only the
float32 rounding of the exact denoiser (relative ~1e-6 per probability, ``d < 1e-4``). We assert
``TV(q_hat, p) < tv_tolerance(n, K) + 1e-4`` and, for power, that the wrong answer (product of
marginals, what decoding everything in one step gives) is ``> 2x`` the bound away.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (COMMON_BAD_ARGUMENTS, assert_compiles_once,
                      assert_decodes_best_position_each_step)
from partext_jax import testing
from partext_jax.masked.adaptive import (DecodeInfo, DecodeState, confidence, confidence_scores,
                                         jitted_sample, llada_num_transfer, select_factor,
                                         select_threshold, select_topk)
from partext_jax.testing import toys

V, L = 3, 3
MASK = V
SYSTEMATIC = 1e-4     # float32 rounding of the exact denoiser (see module docstring)


# Fixtures `joint` and `denoiser` (V = L = 3, MASK = 3) come from tests/conftest.py.


# ------------------------------------------------------------------ pure pieces

def test_llada_count_schedule_sums_to_n():
  """k_j = floor(n/S) + [j < n mod S]: sums to n, the first n mod S steps get one extra."""
  n = np.arange(0, 41)
  for s in range(1, 10):
    k = np.asarray(llada_num_transfer(n, s))
    assert k.shape == (41, s)
    np.testing.assert_array_equal(k.sum(axis=1), n)
    np.testing.assert_array_equal(k, (n // s)[:, None] + (np.arange(s)[None] < (n % s)[:, None]))
  np.testing.assert_array_equal(llada_num_transfer(10, 4), [3, 3, 2, 2])


def test_proxies_hand_values():
  """p = (0.5, 0.3, 0.2) and (0.7, 0.2, 0.1, 0) (a -inf logit: 0 log 0 = 0)."""
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.2, 0.0], [0.7, 0.2, 0.1, 0.0]]))
  logits = logits.at[0, 3].set(-jnp.inf)
  x0 = jnp.array([2, 0])
  got = {p: np.asarray(confidence_scores(logits, x0, p))
         for p in ("max_prob", "margin", "neg_entropy", "sampled_prob")}
  np.testing.assert_allclose(got["max_prob"], [0.5, 0.7], rtol=1e-6)
  np.testing.assert_allclose(got["margin"], [0.2, 0.5], rtol=1e-5)
  h1 = 0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)      # -1.0297
  h2 = 0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1)      # -0.8018
  np.testing.assert_allclose(got["neg_entropy"], [h1, h2], rtol=1e-5)
  np.testing.assert_allclose(got["sampled_prob"], [0.2, 0.7], rtol=1e-5)


def _reference_factor_count(sorted_conf, factor):
  """Fast-dLLM's loop, quirk included (for comparison only)."""
  threshs = [-1.0] + [1 - factor / (n + 1) for n in range(2, len(sorted_conf) + 1)]
  top_i = 0
  for top_i in range(len(threshs)):
    if sorted_conf[top_i] < threshs[top_i]:
      break
  if top_i == 0 or top_i == len(threshs) - 1:
    top_i += 1
  return top_i


def test_factor_rule_hand_examples_and_quirk():
  """(0.99, 0.98, 0.5), f = 1: n = 2 passes (3 * 0.02 = 0.06 < 1), n = 3 fails (4 * 0.5 = 2):
  we take 2; the reference's last-index quirk takes 3. (0.9, 0.6, 0.59, 0.58): n = 2 fails
  (3 * 0.4 = 1.2), take 1, as does the reference. (0.1, 0.2): nothing passes, take the top-1."""
  elig = jnp.ones(3, bool)
  np.testing.assert_array_equal(select_factor(jnp.array([0.5, 0.99, 0.98]), elig, 1.0),
                                [False, True, True])
  assert _reference_factor_count([0.99, 0.98, 0.5], 1.0) == 3          # the quirk
  np.testing.assert_array_equal(
      select_factor(jnp.array([0.58, 0.9, 0.59, 0.6]), jnp.ones(4, bool), 1.0),
      [False, True, False, False])
  assert _reference_factor_count([0.9, 0.6, 0.59, 0.58], 1.0) == 1
  np.testing.assert_array_equal(select_factor(jnp.array([0.1, 0.2]), jnp.ones(2, bool), 1.0),
                                [False, True])
  # An ineligible position never counts, however confident.
  np.testing.assert_array_equal(
      select_factor(jnp.array([1.0, 0.99, 0.5]), jnp.array([False, True, True]), 1.0),
      [False, True, False])
  # Random cases: ours == "largest n with (n+1)(1-c_(n)) < f", which equals the reference's
  # count except exactly when its first failure is at the last sorted index.
  rng = np.random.default_rng(0)
  quirks = 0
  select = jax.jit(select_factor)          # one compile: rows padded to 6, m eligible
  for _ in range(200):
    m = int(rng.integers(1, 7))
    conf = (1 - rng.uniform(0, 0.6, 6) ** 2).astype(np.float32)
    f = float(rng.uniform(0.1, 2.0))
    s = np.sort(conf[:m])[::-1].astype(np.float64)
    passes = [(n + 1) * (1 - s[n - 1]) < f for n in range(1, m + 1)]
    if any(abs((n + 1) * (1 - s[n - 1]) - f) < 1e-5 for n in range(1, m + 1)):
      continue                             # too close to call in float32
    want = max([n for n in range(1, m + 1) if passes[n - 1]] + [1])
    got = int(np.sum(select(jnp.asarray(conf), jnp.arange(6) < m, f)))
    assert got == want, (conf, f)
    quirk = m > 1 and not passes[-1] and all(passes[1:-1])
    quirks += quirk
    assert _reference_factor_count(list(s), f) == (m if quirk else want)
  assert quirks > 0


def test_threshold_and_topk_select():
  conf = jnp.array([0.95, 0.5, 0.92, 0.3, 0.99])
  elig = jnp.array([True, True, True, True, False])
  np.testing.assert_array_equal(select_threshold(conf, elig, 0.9), [1, 0, 1, 0, 0])
  np.testing.assert_array_equal(select_threshold(conf, elig, 0.99), [1, 0, 0, 0, 0])  # top-1
  np.testing.assert_array_equal(select_topk(conf, elig, 2), [1, 0, 1, 0, 0])
  np.testing.assert_array_equal(select_topk(conf, elig, 0), [0, 0, 0, 0, 0])
  # ties: lower index first
  np.testing.assert_array_equal(select_topk(jnp.zeros(4), jnp.ones(4, bool), 3), [1, 1, 1, 0])


# ------------------------------------------------------------------ exact reductions

@pytest.mark.parametrize("kwargs", [
    dict(rule="topk", num_steps=2, proxy="margin", alg_temp=2.0, temperature=1.0),
    dict(rule="factor", proxy="neg_entropy", temperature=0.0),
], ids=lambda k: k["rule"])
def test_one_hot_logits_give_exact_tokens(kwargs):
  """0 at the target token and -inf elsewhere: writes exactly the target at masked positions
  and keeps the prompt (tau = 1 with stochastic positions; the factor rule takes every position
  at once: (n + 1)(1 - 1) = 0 < f)."""
  v, l = 4, 5
  target = np.array([3, 1, 0, 2, 1])
  logits = jnp.where(jax.nn.one_hot(target, v) > 0, 0.0, -jnp.inf)
  x = jnp.full((3, l), v, jnp.int32).at[1, 2].set(3)
  sampler = confidence(testing.constant_denoiser(logits), mask_id=v, **kwargs)
  tokens, info = sampler.sample(jax.random.key(0), x)
  expected = np.tile(target, (3, 1))
  expected[1, 2] = 3
  np.testing.assert_array_equal(tokens, expected)
  assert isinstance(info, DecodeInfo)
  np.testing.assert_array_equal(info.num_decoded.sum(0), [5, 4, 5])


def test_topk_one_step_is_greedy_one_shot():
  """k = (number of masks) at one step, tau = 0: the argmax of p_theta(. | x_init) everywhere."""
  v, l = 6, 7
  den = toys.mixing_denoiser(v, l)
  x = jax.random.randint(jax.random.key(1), (5, l), 0, v)
  x = jnp.where(jax.random.uniform(jax.random.key(2), (5, l)) < 0.3, x, v).astype(jnp.int32)
  sampler = confidence(den, mask_id=v, num_steps=1)
  tokens, info = sampler.sample(jax.random.key(3), x)
  greedy = jnp.argmax(den(x, None), axis=-1)
  np.testing.assert_array_equal(tokens, jnp.where(x == v, greedy, x))
  assert int(info.nfe.sum()) == 1


def test_threshold_one_decodes_the_most_confident_one_per_step():
  """threshold = 1.0 (max probs < 1 here): exactly one token per step, at the position of highest
  max-prob among the masked ones given the current state, with its argmax (tau = 0)."""
  v, l = 6, 7
  den = toys.mixing_denoiser(v, l, seed=1)
  x = jnp.full((4, l), v, jnp.int32).at[2, 3].set(0)
  sampler = confidence(den, mask_id=v, rule="threshold", threshold=1.0,
                       record_trajectory=True)
  tokens, info = sampler.sample(jax.random.key(0), x)
  traj = assert_decodes_best_position_each_step(den, x, info, mask_id=v,
                                                score=lambda p: p.max(-1))
  assert traj.shape == (l + 1, 4, l)
  np.testing.assert_array_equal(info.num_decoded.sum(0), [l, l, l - 1, l])
  assert np.all(np.asarray(info.num_decoded) <= 1)


def test_topk_count_schedule_and_nfe():
  """n = 3 masks (2 in the row with a prompt), S = 5: k = (1, 1, 1, 0, 0) (and (1, 1, 0, ..));
  steps decoding nothing in every row do not call the denoiser; state/info types."""
  v, l = 4, 3
  x = jnp.full((2, l), v, jnp.int32).at[1, 0].set(2)
  sampler = confidence(toys.mixing_denoiser(v, l), mask_id=v, num_steps=5)
  tokens, info = sampler.sample(jax.random.key(0), x)
  np.testing.assert_array_equal(np.asarray(info.num_decoded).T, [[1, 1, 1, 0, 0],
                                                                 [1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(info.nfe, [1, 1, 1, 0, 0])
  state = sampler.init(x)
  assert isinstance(state, DecodeState)


def test_factor_and_threshold_decode_several_per_step():
  """A peaked constant model (max prob 0.97 at every position) is decoded in ONE step by the
  threshold rule (0.97 >= 0.9) and by the factor rule with f = 1 only up to n with
  (n + 1) * 0.03 < 1, i.e. n = 32 of 40 per step (33 * 0.03 = 0.99, 34 * 0.03 = 1.02), then 8."""
  v, l = 2, 40
  logits = jnp.log(jnp.array([0.97, 0.03]))
  den = testing.constant_denoiser(logits)
  x = jnp.full((1, l), v, jnp.int32)
  _, info = confidence(den, mask_id=v, rule="threshold").sample(jax.random.key(0), x)
  assert int(info.nfe.sum()) == 1 and int(info.num_decoded[0, 0]) == l
  _, info = confidence(den, mask_id=v, rule="factor").sample(jax.random.key(0), x)
  np.testing.assert_array_equal(info.num_decoded[:3, 0], [32, 8, 0])


# ------------------------------------------------------------------ exactness on a joint

@pytest.mark.parametrize("kwargs", [
    dict(rule="topk", num_steps=L, proxy="max_prob"),
    dict(rule="topk", num_steps=L, proxy="margin", alg_temp=0.3),
], ids=["topk_max_prob", "topk_margin_alg_temp"])
def test_one_token_per_step_samples_the_joint(joint, denoiser, kwargs):
  """tau = 1, one token per step, position chosen from the current state: the joint exactly
  (n = 10000, K = 27: bound 0.052 + 1e-4), and the conditional p(x_0, x_2 | x_1 = 2) for rows
  with a prompt (n = 5000, K = 9: 0.037 + 1e-4). TV(joint, product) = 0.25 > 2 * bound (the
  product of marginals is what decoding all positions in one step samples). Also the law of the
  first decoded position (deterministic argmax, or Dream's softmax(conf / alg_temp))."""
  n, n_cond = 10_000, 5_000
  x = jnp.concatenate([jnp.full((n, L), MASK, jnp.int32),
                       jnp.full((n_cond, L), MASK, jnp.int32).at[:, 1].set(2)])
  sampler = confidence(denoiser, mask_id=MASK, temperature=1.0, record_trajectory=True,
                       **kwargs)
  tokens, info = sampler.sample(jax.random.key(11), x)
  tokens = np.asarray(tokens)
  # The first position decoded from the all-masked state: the argmax of the confidence, or with
  # alg_temp a draw from softmax(conf / alg_temp) (Dream). conf from the joint's marginals;
  # per-position z-test |z| < 5 (two-sided 5.7e-7 each).
  first = np.argmax(np.asarray(info.tokens[0, :n]) != MASK, axis=1)
  logits = jnp.log(jnp.asarray(testing.marginals(joint), jnp.float32))
  conf = np.asarray(confidence_scores(logits, None, kwargs["proxy"]), np.float64)
  counts = np.bincount(first, minlength=L)
  if kwargs.get("alg_temp") is None:
    np.testing.assert_array_equal(counts, n * np.eye(L)[np.argmax(conf)])
  else:
    want = np.exp(conf / kwargs["alg_temp"]) / np.exp(conf / kwargs["alg_temp"]).sum()
    z = (counts - n * want) / np.sqrt(n * want * (1 - want))
    assert np.all(np.abs(z) < 5), (counts, n * want)
    assert want.max() < 0.9            # the law is not degenerate: the test has power
  assert np.all(np.asarray(info.num_decoded) <= 1)
  bound = testing.tv_tolerance(n, V**L) + SYSTEMATIC
  assert testing.total_variation(joint, testing.product_of_marginals(joint)) > 2 * bound
  emp = testing.empirical_distribution(tokens[:n], vocab_size=V)
  assert testing.total_variation(emp, joint) < bound
  assert np.all(tokens[n:, 1] == 2)
  cond = joint[:, 2, :] / joint[:, 2, :].sum()
  emp_cond = testing.empirical_distribution(tokens[n:][:, [0, 2]], vocab_size=V)
  assert testing.total_variation(emp_cond, cond) < testing.tv_tolerance(n_cond, V * V) + SYSTEMATIC


# ------------------------------------------------------------------ compilation, errors

def test_sample_compiles_once():
  """A new key or a new prompt of the same shape, or a new sampler with the same model and
  hyper-parameters, does not retrace."""
  x = jnp.full((2, 4), 3, jnp.int32)
  assert_compiles_once(lambda m: confidence(m, mask_id=3, rule="factor", factor=2.0),
                       toys.mixing_denoiser(3, 4), x, new_prompt=x.at[:, 0].set(1),
                       jitted=jitted_sample.jits[(False,)])


@pytest.mark.parametrize("kwargs, exc, match", COMMON_BAD_ARGUMENTS + [
    (dict(rule="greedy"), ValueError, "rule=.*topk.*threshold.*factor"),
    (dict(proxy="entropy"), ValueError, "proxy=.*max_prob.*margin.*neg_entropy"),
    (dict(num_steps=None), TypeError, "num_steps"),
    (dict(num_steps=0), ValueError, "num_steps"),
    (dict(rule="threshold"), ValueError, "num_steps"),
    (dict(threshold=0.9), ValueError, "threshold"),
    (dict(rule="factor", num_steps=None, factor=0.0), ValueError, "factor"),
    (dict(factor=1.0), ValueError, "factor"),
    (dict(alg_temp=0.0), ValueError, "alg_temp"),
    (dict(rule="threshold", num_steps=None, alg_temp=1.0), ValueError, "alg_temp"),
    (dict(block_length=0), ValueError, "block_length"),
], ids=str)
def test_bad_hyperparameters(denoiser, kwargs, exc, match):
  """(The input checks shared with every sampler are in test_sampler_battery.py.)"""
  with pytest.raises(exc, match=match):
    confidence(denoiser, **{"mask_id": MASK, "num_steps": 3, **kwargs})
