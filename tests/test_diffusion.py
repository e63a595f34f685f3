"""Schedules, forward masking, SUBS and the continuous-time MDM loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax import diffusion
from partext_jax.schedules import SCHEDULE_KINDS, MaskingSchedule

SCHEDULES = [MaskingSchedule("linear"), MaskingSchedule("cosine"),
             MaskingSchedule("polynomial", exponent=3.0), MaskingSchedule("cosine", eps=1e-3)]


@pytest.mark.parametrize("sched", SCHEDULES, ids=str)
def test_schedule_endpoints_and_derivative(sched):
  eps = sched.eps
  np.testing.assert_allclose(sched.alpha(0.0), 1.0 - eps, atol=1e-6)
  np.testing.assert_allclose(sched.alpha(1.0), eps, atol=1e-6)
  ts = jnp.linspace(0.05, 0.95, 19)
  autodiff = jax.vmap(jax.grad(lambda t: sched.alpha(t)))(ts)
  np.testing.assert_allclose(sched.dalpha(ts), autodiff, rtol=1e-5, atol=1e-6)
  assert bool(jnp.all(jnp.diff(sched.alpha(ts)) < 0)), "alpha must decrease"


def test_unmask_probability_linear_is_dt_over_t():
  s = MaskingSchedule("linear")
  np.testing.assert_allclose(s.unmask_probability(0.8, 0.6), (0.8 - 0.6) / 0.8, rtol=1e-6)


def test_bad_schedule_lists_choices():
  with pytest.raises(ValueError, match="linear"):
    MaskingSchedule("sigmoid")
  with pytest.raises(ValueError, match="eps"):
    MaskingSchedule("linear", eps=0.7)


def test_antithetic_times_are_stratified():
  t = np.sort(np.asarray(diffusion.sample_times(jax.random.key(3), 8)))
  assert np.all((t > 0) & (t <= 1))
  np.testing.assert_allclose(np.diff(t), 1 / 8, atol=1e-6)


def test_forward_masking_rate_matches_alpha():
  sched = MaskingSchedule("cosine")
  n = 200_000
  t = jnp.full((n // 100,), 0.3)
  x0 = jnp.zeros((n // 100, 100), jnp.int32)
  xt = diffusion.mask_tokens(jax.random.key(0), x0, t, schedule=sched, mask_id=5)
  p = 1.0 - float(sched.alpha(0.3))
  se = math.sqrt(p * (1 - p) / n)
  assert abs(float(jnp.mean(xt == 5)) - p) < 5 * se
  assert set(np.unique(np.asarray(xt))) <= {0, 5}


def test_subs_carry_over_and_no_mask_mass():
  logits = jax.random.normal(jax.random.key(1), (1, 3, 4))
  xt = jnp.array([[4, 2, 4]])  # mask_id = V = 4
  lp = diffusion.subs_log_probs(logits, xt, mask_id=4)
  np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, rtol=1e-6)
  assert float(jnp.exp(lp[0, 1, 2])) == 1.0
  np.testing.assert_allclose(lp[0, 0], jax.nn.log_softmax(logits[0, 0]), rtol=1e-6)


def test_with_carry_over_wraps_any_model():
  """SUBS on a model's output: log-probabilities at masked positions, a 0 / -inf one-hot on the
  held token elsewhere; a Partial model stays a Partial whose parameters are leaves (traced under
  jit), a closure gives a plain callable; both give the same values and run in a sampler."""
  from partext_jax import testing  # pylint: disable=import-outside-toplevel
  from partext_jax.masked.p2 import p2  # pylint: disable=import-outside-toplevel
  xt = jnp.array([[5, 2, 5, 0, 5, 1]])
  partial = diffusion.with_carry_over(testing.mixing_model(5, 6, seed=1), mask_id=5)
  closure = diffusion.with_carry_over(testing.mixing_denoiser(5, 6, seed=1), mask_id=5)
  assert isinstance(partial, jax.tree_util.Partial)
  assert not isinstance(closure, jax.tree_util.Partial)
  assert len(jax.tree.leaves(partial)) == 3        # w, bias, mask_id
  t = jnp.zeros((1,))
  out = np.asarray(partial(xt, t))
  np.testing.assert_allclose(out, closure(xt, t), rtol=1e-6)
  raw = testing.mixing_denoiser(5, 6, seed=1)(xt, t)
  np.testing.assert_allclose(out[0, 0], jax.nn.log_softmax(raw[0, 0]), rtol=1e-5, atol=1e-6)
  assert out[0, 1, 2] == 0.0 and np.all(np.isneginf(np.delete(out[0, 1], 2)))
  for model in (partial, closure):
    tokens, _ = p2(model, mask_id=5, num_steps=3).sample(jax.random.key(0), xt)
    np.testing.assert_array_equal(np.asarray(tokens)[0, [1, 3, 5]], [2, 0, 1])
    assert not np.any(np.asarray(tokens) == 5)


def test_loss_matches_hand_computed_value():
  """V=2, L=2, x0=[0,1], x_t=[MASK,1], t=0.5, linear: weight -alpha'/(1-alpha) = 1/0.5 = 2.

  The denoiser puts p=(0.75, 0.25) everywhere, so the masked position costs -log 0.75 and the
  loss is 2 * log(4/3) = 0.575364...
  """
  probs = jnp.log(jnp.array([0.75, 0.25]))
  denoise = lambda x, t: jnp.broadcast_to(probs, x.shape + (2,))
  got = diffusion.nelbo_given_mask(denoise, jnp.array([[0, 1]]), jnp.array([[2, 1]]),
                                   jnp.array([0.5]), schedule=MaskingSchedule("linear"),
                                   mask_id=2)
  np.testing.assert_allclose(got, [2 * math.log(4 / 3)], rtol=1e-6)


@pytest.mark.parametrize("sched", SCHEDULES[:3], ids=str)
def test_loss_of_true_marginal_on_iid_data_is_entropy(sched):
  """For i.i.d. tokens with marginal p and a denoiser that outputs p, the NELBO per token is
  int_0^1 -alpha'(t)/(1-alpha(t)) (1-alpha(t)) H dt = H(p) for every schedule (eps = 0): a check of
  the weight and of the time sampling. Tolerance: 5 standard errors of the Monte-Carlo mean."""
  p = jnp.array([0.5, 0.3, 0.15, 0.05])
  entropy = float(-(p * jnp.log(p)).sum())
  denoise = lambda x, t: jnp.broadcast_to(jnp.log(p), x.shape + (4,))
  x0 = jax.random.categorical(jax.random.key(0), jnp.log(p), shape=(256, 32))

  @jax.jit
  def one(key):
    return diffusion.mdm_loss(key, denoise, x0, schedule=sched, mask_id=4)[0]

  draws = np.asarray(jax.vmap(one)(jax.random.split(jax.random.key(1), 400)))
  # The sample's own empirical entropy is the target: draw-to-draw variation of x0 is fixed.
  emp = np.bincount(np.asarray(x0).ravel(), minlength=4) / x0.size
  target = float(-(emp * np.log(np.asarray(p))).sum())
  se = draws.std(ddof=1) / math.sqrt(len(draws))
  assert abs(draws.mean() - target) < 5 * se, (draws.mean(), target, entropy, se)


def test_evaluate_bound_reports_bits_and_perplexity():
  p = jnp.array([0.5, 0.5])
  denoise = lambda x, t: jnp.broadcast_to(jnp.log(p), x.shape + (2,))
  batches = [np.zeros((4, 16), np.int32), np.ones((4, 16), np.int32)]
  out = diffusion.evaluate_bound(jax.random.key(0), denoise, batches,
                                 schedule=MaskingSchedule("linear"), mask_id=2,
                                 num_time_samples=64, chars_per_token=2.0)
  # Every token costs exactly log 2 nats when masked, so the estimate is 1 bit within its SE.
  assert abs(out["bits_per_token"] - 1.0) < 5 * out["stderr_bits_per_token"] + 1e-6
  np.testing.assert_allclose(out["perplexity_bound"], math.exp(out["nats_per_token"]))
  np.testing.assert_allclose(out["bits_per_char"], out["bits_per_token"] / 2)
  assert out["num_tokens"] == 128
  with pytest.raises(ValueError, match="num_time_samples"):
    diffusion.evaluate_bound(jax.random.key(0), denoise, batches,
                             schedule=MaskingSchedule("linear"), mask_id=2, num_time_samples=0)


def test_schedule_kinds_constant():
  assert SCHEDULE_KINDS == ("linear", "cosine", "polynomial")
