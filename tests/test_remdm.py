"""ReMDM: exact reduction to MDLM, the mask marginal, exactness on a toy joint, the strategies.

Statistical tolerances come from standard errors / concentration bounds with a stated false-alarm
probability, never from a tuned seed.

* z-tests: a count that is exactly Binomial(m, q) is compared with ``|count - m q| < 5 sd``
  (two-sided false alarm 5.7e-7 per test).
* TV tests: ``testing.tv_tolerance(n, K)`` (false alarm 1e-6) plus the sampler's own systematic
  error ``d``, derived below for ReMDM.

Systematic error of ReMDM with an exact denoiser (strategies with a state-independent sigma).
Every position's mask indicator is a Markov chain (masked -> unmasked w.p. ``p_i``, unmasked ->
masked w.p. ``sigma_i``), independent across positions and of the token values. The exact reverse
chain of ReMDM's (non-Markovian) forward process -- whose marginals q(z_t | x_0) are the masking
ones, so its posterior p(x_0 | z_t) is what the exact denoiser computes -- has the same event law,
and draws the values of the positions unmasked in a step *jointly* from p(x_0 | z_t), while the
sampler draws them from their marginals. Coupling the two on the same events, they can only
differ after a step in which >= 2 positions unmask, and the exact chain ends (alpha = 1) at the
data distribution. Position l unmasks at step i with probability
``q_i = P(masked at t_i) p_i = (1 - alpha_t) p_i = alpha_s - (1 - sigma) alpha_t`` independently of
the others, so with M free positions
``d = sum_i P(Binomial(M, q_i) >= 2) = sum_i [1 - (1 - q_i)^M - M q_i (1 - q_i)^(M - 1)]``.
"""

import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import COMMON_BAD_ARGUMENTS, assert_compiles_once, run_with_x64
from partext_jax import testing
from partext_jax.masked import categorical
from partext_jax.masked.remdm import (ReMDMConfig, ReMDMInfo, ReMDMState, conf_sigma,
                                      jitted_sample, loop_alpha, nucleus_logits, remasking_sigma,
                                      remdm, unmask_probability)
from partext_jax.masked.tau_leaping import tau_leaping
from partext_jax.schedules import MaskingSchedule

V, L = 3, 3
MASK = V


# Fixtures `joint` and `denoiser` (V = L = 3, MASK = 3) come from tests/conftest.py.


# ------------------------------------------------------------------ sigma = 0 is MDLM (property 4)

def test_sigma_zero_is_mdlm_token_for_token(denoiser):
  """cap with eta = 0 makes the same draws with the same keys as tau_leaping(analytic): identical
  tokens (with prompts, on MDLM's linspace(1, 1e-5, N + 1) grid + noise removal; the float64
  subprocess test below checks the t_min = 0 grid ending at alpha = 1)."""
  grid = dict(t_min=1e-5, noise_removal=True)
  x = testing.random_prompts(jax.random.key(1), 64, L, V, MASK)
  key = jax.random.key(2)
  ours, info = remdm(denoiser, mask_id=MASK, num_steps=12, eta=0.0, **grid).sample(key, x)
  mdlm, mdlm_info = tau_leaping(denoiser, mask_id=MASK, num_steps=12, **grid).sample(key, x)
  np.testing.assert_array_equal(ours, mdlm)
  np.testing.assert_array_equal(info.unmask_probability, mdlm_info.unmask_probability)
  assert int(info.num_remasked.sum()) == 0
  np.testing.assert_array_equal(info.nfe, mdlm_info.nfe)


# ------------------------------------------------------------------ mask marginal (property 4)

def _alpha_np(strategy, t):
  t = np.asarray(t, np.float64)
  if strategy != "loop":
    return 1.0 - t
  return np.where(t > 0.55, 0.9 * (1 - t) / 0.45, np.where(t > 0.05, 0.9, 1 - 0.1 * t / 0.05))


@pytest.mark.parametrize("strategy, eta, num_steps", [("cap", 0.1, 16), ("loop", None, 20)])
def test_mask_marginal_is_one_minus_alpha_s(strategy, eta, num_steps):
  """All-masked start, constant denoiser: after every step the number of masked positions among
  the n = B L independent ones is Binomial(n, 1 - alpha_s) exactly (module docstring), with
  alpha_s from an independent float64 formula. z-test |z| < 5 per step (false alarm < 2e-5 over
  all steps). Remasking must actually happen. Power: a kernel ignoring sigma in p_unmask would
  leave alpha_t * sigma more masks (e.g. cap, t = 0.5: +0.05 = 15 sd). (rescale runs the same
  kernel; only its sigma formula differs, checked in test_strategy_sigma_formulas.)"""
  b, l = 2_000, 16
  n = b * l
  sampler = remdm(testing.constant_denoiser(jnp.array([0.0, 1.0, -1.0, 0.5])), mask_id=4,
                  num_steps=num_steps, strategy=strategy, eta=eta, noise_removal=False)
  tokens, info = sampler.sample(jax.random.key(3), jnp.full((b, l), 4, jnp.int32))
  masked = np.asarray(info.num_masked).sum(axis=1)
  t = 1.0 - np.arange(num_steps + 1) / num_steps
  a_s = _alpha_np(strategy, t[1:])
  a_s[-1] = 1.0
  np.testing.assert_allclose(info.alpha_s, a_s, atol=1e-6)
  for i in range(num_steps - 1):
    q = 1.0 - a_s[i]
    z = (masked[i] - n * q) / math.sqrt(n * q * (1 - q))
    assert abs(z) < 5, (i, masked[i], n * q, z)
  assert masked[-1] == 0 and not np.any(np.asarray(tokens) == 4)
  assert int(info.num_remasked.sum()) > 1_000


# ------------------------------------------------------------------ one kernel step, per position

def test_one_step_conf_event_probabilities():
  """conf, one kernel step from a crafted state at step i = 2 of N = 4 (t = 0.5, s = 0.25,
  linear: sigma_max = 0.25 / 0.5 = 0.5): rows hold a prompt token (position 0), three decoded
  tokens with confidences (1, 2, 3) and two masked positions. Over B = 20000 identical rows each
  position's remask / unmask count is Binomial(B, q) with q = sigma_l = softmax(-c)_l *
  min(1, 0.5) for decoded positions and the MDLM p_unmask = (0.75 - 0.5) / 0.5 = 0.5 for masked
  ones (the reference's conf leaves masked positions at sigma = 0). z-test |z| < 5 per position
  (false alarm < 3e-6 in all). The prompt never changes, kept tokens are unchanged, and newly
  decoded positions record p_theta of their token as confidence. (cap / rescale / loop are
  checked in aggregate by the mask-marginal test.)"""
  b = 20_000
  logits = jnp.log(jnp.array([0.5, 0.3, 0.2]))
  sampler = remdm(testing.constant_denoiser(logits), mask_id=3, num_steps=4, strategy="conf")
  row = jnp.array([1, 3, 3, 3, 3, 3], jnp.int32)
  state = sampler.init(jnp.broadcast_to(row, (b, 6)))
  tokens = jnp.broadcast_to(jnp.array([1, 0, 2, 1, 3, 3], jnp.int32), (b, 6))
  c = jnp.broadcast_to(jnp.array([0.0, 1.0, 2.0, 3.0, 0.0, 0.0], jnp.float32), (b, 6))
  state = state._replace(tokens=tokens, step=jnp.int32(2), confidence=c)
  new_state, info = jax.jit(sampler.step)(jax.random.key(4), state)
  new = np.asarray(new_state.tokens)
  assert np.all(new[:, 0] == 1)
  w = np.exp(-np.array([1.0, 2.0, 3.0]))
  sigma, p = 0.5 * w / w.sum(), 0.5
  np.testing.assert_allclose(info.sigma, 0.5, rtol=1e-6)
  np.testing.assert_allclose(info.unmask_probability, p, atol=1e-6)
  remasked = (new[:, 1:4] == 3).sum(axis=0)
  unmasked = (new[:, 4:] != 3).sum(axis=0)
  for count, q in list(zip(remasked, sigma)) + [(u, p) for u in unmasked]:
    z = (count - b * q) / math.sqrt(b * q * (1 - q))
    assert abs(z) < 5, (count, b * q, z)
  kept = new[:, 1:4] != 3
  np.testing.assert_array_equal(new[:, 1:4][kept], np.asarray(tokens)[:, 1:4][kept])
  fresh = new[:, 4:] != 3
  np.testing.assert_allclose(np.asarray(new_state.confidence)[:, 4:][fresh],
                             np.array([0.5, 0.3, 0.2])[new[:, 4:][fresh]], rtol=1e-5)


# ------------------------------------------------------------------ exactness (cap, rescale, loop)

def _hand_alpha(strategy, t, t_on=0.55, t_off=0.05, alpha_on=0.9):
  """alpha(t): linear 1 - t, or the loop strategy's piecewise-linear alpha (written out here
  independently of the module)."""
  if strategy != "loop":
    return 1.0 - t
  return np.where(t > t_on, alpha_on * (1 - t) / (1 - t_on),
                  np.where(t > t_off, alpha_on, 1 - (1 - alpha_on) * t / t_off))


def _hand_sigma(strategy, eta, a_t, a_s, t, t_on=0.55, t_off=0.05):
  smax = np.where(a_t > 0, (1 - a_s) / np.where(a_t > 0, a_t, 1), np.inf)
  if strategy == "cap":
    return np.minimum(eta, smax)
  if strategy == "rescale":
    return eta * np.minimum(1.0, smax)
  in_loop = (t > t_off) & (t <= t_on)  # the phase is chosen by the step's start time
  return np.where(in_loop, np.minimum(eta, smax), 0.0)


@pytest.mark.parametrize("strategy,eta,num_steps", [("cap", 0.004, 128), ("rescale", 0.004, 128),
                                                    ("loop", 0.005, 256)])
def test_time_only_strategies_match_joint(joint, denoiser, strategy, eta, num_steps):
  """Exact denoiser, t_min = 0, noise_removal=False: the output law is within d (module
  docstring; computed here from hand-written alpha / sigma schedules, d < 0.05) of the joint.
  n = 20000 samples, K = 27: tv_tolerance = 0.037. Power: TV(joint, product of marginals) =
  0.25 > 2 bound, and remasking does happen."""
  n = 20_000
  sampler = remdm(denoiser, mask_id=MASK, num_steps=num_steps, strategy=strategy, eta=eta,
                  noise_removal=False)
  tokens, info = sampler.sample(jax.random.key(6), jnp.full((n, L), MASK, jnp.int32))
  assert int(info.num_remasked.sum()) > 0
  grid = 1.0 - np.arange(num_steps + 1) / num_steps
  t, s = grid[:-1], grid[1:]
  a_t, a_s = _hand_alpha(strategy, t), _hand_alpha(strategy, s)
  sigma = _hand_sigma(strategy, eta, a_t, a_s, t)
  sigma = np.where(a_t > 0, sigma, np.where(strategy == "loop", 0.0, eta))
  sigma[-1] = 0.0
  np.testing.assert_allclose(np.asarray(info.sigma), sigma, rtol=1e-5, atol=1e-7)
  q = a_s - (1 - sigma) * a_t  # per-position unmask probability of the step
  d = float(np.sum(1 - (1 - q) ** L - L * q * (1 - q) ** (L - 1)))
  bound = testing.tv_tolerance(n, V**L) + d
  assert d < 0.05
  assert testing.total_variation(joint, testing.product_of_marginals(joint)) > 2 * bound
  emp = testing.empirical_distribution(tokens, vocab_size=V)
  assert testing.total_variation(emp, joint) < bound


# ------------------------------------------------------------------ strategy formulas

def test_strategy_sigma_formulas():
  """Hand-computed sigma_t (linear alpha = 1 - t) at t = 0.5 -> s = 0.25 (sigma_max = 0.25 / 0.5
  = 0.5) and
  t = 0.02 -> s = 0.01 (sigma_max = 0.01 / 0.98); loop at the three phases."""
  cfg = lambda **kw: ReMDMConfig(mask_id=3, num_steps=8, **kw)
  cap, rescale = cfg(strategy="cap", eta=0.3), cfg(strategy="rescale", eta=0.5)
  np.testing.assert_allclose(remasking_sigma(cap, 0.5, 0.25), 0.3, rtol=1e-6)
  np.testing.assert_allclose(remasking_sigma(cap, 0.02, 0.01), 0.01 / 0.98, rtol=1e-5)
  np.testing.assert_allclose(remasking_sigma(rescale, 0.5, 0.25), 0.25, rtol=1e-6)
  np.testing.assert_allclose(remasking_sigma(rescale, 0.02, 0.01), 0.5 * 0.01 / 0.98, rtol=1e-5)
  np.testing.assert_allclose(remasking_sigma(cfg(strategy="cap"), 1.0, 0.9), 0.008, rtol=1e-6)
  np.testing.assert_allclose(remasking_sigma(cfg(strategy="conf"), 0.5, 0.25), 0.5)
  np.testing.assert_allclose(remasking_sigma(cfg(strategy="conf"), 0.9, 0.8), 1.0)   # min(1, 2)
  assert cfg(strategy="rescale").eta == 0.015
  loop = cfg(strategy="loop")
  assert (loop.eta, loop.t_on, loop.t_off, loop.alpha_on) == (0.02, 0.55, 0.05, 0.9)
  np.testing.assert_allclose(loop_alpha(loop, jnp.array([1.0, 0.775, 0.55, 0.3, 0.05, 0.025, 0.0])),
                             [0.0, 0.45, 0.9, 0.9, 0.9, 0.95, 1.0], atol=1e-6)
  np.testing.assert_allclose(remasking_sigma(loop, 0.8, 0.7), 0.0)      # phase 1: MDLM
  np.testing.assert_allclose(remasking_sigma(loop, 0.3, 0.2), 0.02, rtol=1e-6)
  np.testing.assert_allclose(remasking_sigma(loop, 0.04, 0.03), 0.0)    # phase 3: MDLM
  # loop phase 2: alpha_s = alpha_t = 0.9, p_unmask = sigma alpha / (1 - alpha) = 0.18
  np.testing.assert_allclose(unmask_probability(0.9, 0.9, 0.02), 0.18, rtol=1e-5)
  # the kernel: mask marginal (1 - a_t)(1 - p) + a_t sigma == 1 - a_s for any valid sigma
  for a_t, a_s, sig in ((0.3, 0.5, 0.2), (0.5, 0.75, 0.5), (0.0, 0.1, 0.7)):
    p = float(unmask_probability(a_t, a_s, sig))
    np.testing.assert_allclose((1 - a_t) * (1 - p) + a_t * sig, 1 - a_s, atol=1e-6)


def test_conf_softmax_weights():
  """sigma_l = softmax(-c)_l * total over eligible positions; 0 elsewhere and for empty rows."""
  c = jnp.array([[0.9, 0.1, 0.5, 0.2], [0.3, 0.3, 0.3, 0.3]])
  eligible = jnp.array([[True, True, False, True], [False] * 4])
  got = np.asarray(conf_sigma(c, eligible, jnp.float32(0.6)))
  w = np.exp(-np.array([0.9, 0.1, 0.2]))
  np.testing.assert_allclose(got[0, [0, 1, 3]], 0.6 * w / w.sum(), rtol=1e-6)
  assert got[0, 2] == 0 and np.all(got[1] == 0)


def test_nucleus_reference_rule():
  """Keep tokens whose inclusive cumulative mass <= p (the crossing token is dropped); the top
  token always survives; ties keep the first in sort order."""
  logits = jnp.log(jnp.array([[0.1, 0.5, 0.3, 0.1], [0.05, 0.05, 0.9, 0.0 + 1e-9]]))
  out = np.asarray(nucleus_logits(logits, 0.85))
  assert np.isfinite(out[0]).tolist() == [False, True, True, False]
  assert np.isfinite(out[1]).tolist() == [False, False, True, False]
  out = np.asarray(nucleus_logits(logits, 0.4))
  assert np.isfinite(out[0]).tolist() == [False, True, False, False]   # top token only


# ------------------------------------------------------------------ trajectory

# The configuration of the battery case "remdm_conf" in tests/test_sampler_battery.py.
BATTERY_KW = dict(mask_id=5, num_steps=6, strategy="conf", top_p=0.9, t_min=1e-5,
                  record_trajectory=True)


def test_trajectory_keeps_prompt_and_counts_remasks():
  """The state-dependent strategy (conf, with top-p and MDLM's grid) with a Partial model whose
  output depends on every token (the shared battery runs on it in test_sampler_battery.py). From
  the recorded jitted trajectory: prompt fixed at every step, and num_remasked counts exactly the
  decoded positions that became MASK (remasking does happen)."""
  x = testing.random_prompts(jax.random.key(8), 4, 6, 5, 5)
  sampler = remdm(testing.mixing_model(5, 6, seed=42), **BATTERY_KW)
  tokens, info = sampler.sample(jax.random.key(0), x)
  assert isinstance(info, ReMDMInfo) and info.num_remasked.shape == (6, 4)
  state = sampler.init(x)
  assert isinstance(state, ReMDMState) and state.confidence.shape == (4, 6)
  traj = np.concatenate([np.asarray(x)[None], np.asarray(info.tokens)])
  prompt = np.asarray(x) != 5
  for i, (a, b) in enumerate(zip(traj[:-1], traj[1:])):
    np.testing.assert_array_equal(b[prompt], a[prompt])
    np.testing.assert_array_equal(info.num_remasked[i], ((a != 5) & (b == 5)).sum(1))
  np.testing.assert_array_equal(traj[-1], np.asarray(tokens))
  assert not np.any(np.asarray(tokens) == 5)
  assert int(info.num_remasked.sum()) > 0


# ------------------------------------------------------------------ compilation

def test_sample_compiles_once():
  """A new key, a new prompt of the same shape, a new sampler with equal hyper-parameters, and a
  Partial model with new parameters of the same shapes all reuse one compilation."""
  x = testing.random_prompts(jax.random.key(8), 4, 6, 5, 5)
  assert_compiles_once(lambda m: remdm(m, **BATTERY_KW), testing.mixing_model(5, 6, seed=42), x,
                       new_prompt=x.at[:, 0].set(5), jitted=jitted_sample.dynamic)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs, exc, match", COMMON_BAD_ARGUMENTS + [
    (dict(strategy="greedy"), ValueError, "strategy=.*cap.*rescale.*conf.*loop"),
    (dict(eta=-0.1), ValueError, "eta"),
    (dict(eta=1.5), ValueError, "eta"),
    (dict(eta="0.1"), TypeError, "eta"),
    (dict(strategy="conf", eta=0.1), ValueError, "conf.*eta.*cap"),
    (dict(strategy="cap", t_on=0.5), ValueError, "t_on.*loop"),
    (dict(strategy="loop", t_on=0.1, t_off=0.2), ValueError, "t_off < t_on"),
    (dict(strategy="loop", alpha_on=1.0), ValueError, "alpha_on"),
    (dict(strategy="loop", eta=0.5), ValueError, "eta.*alpha_on"),
    (dict(strategy="loop", schedule=MaskingSchedule("cosine")), ValueError, "loop.*schedule"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(precision="two_stage"), ValueError, "precision=.*float32.*float64"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(t_min=1.0), ValueError, "t_min"),
    (dict(num_steps=0), ValueError, "num_steps"),
    (dict(mask_id=2.0), TypeError, "mask_id"),
    (dict(schedule="linear"), TypeError, "schedule"),
    (dict(noise_removal=1), TypeError, "noise_removal"),
], ids=str)
def test_bad_hyperparameters(denoiser, kwargs, exc, match):
  with pytest.raises(exc, match=match):
    remdm(denoiser, **{"mask_id": MASK, "num_steps": 4, **kwargs})


def test_float64_requires_x64(denoiser):
  """Without jax_enable_x64, precision='float64' is refused at construction (JAX would silently
  draw in float32); the input checks shared with every sampler are in test_sampler_battery.py."""
  if categorical.x64_enabled():
    pytest.skip("x64 is on in this process; the subprocess test covers the x64 path")
  with pytest.raises(RuntimeError, match="jax_enable_x64"):
    remdm(denoiser, mask_id=MASK, num_steps=4, precision="float64")


def test_float64_draw_equals_mdlm_under_x64_subprocess():
  """JAX_ENABLE_X64=1: precision='float64' with eta = 0 equals tau_leaping(precision='float64')
  token for token (on the t_min = 0 grid ending at alpha = 1, no noise removal), and with
  remasking (cap, top_p) emits no MASK and keeps the prompt."""
  script = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from partext_jax import testing
      from partext_jax.masked.remdm import remdm
      from partext_jax.masked.tau_leaping import tau_leaping
      den = testing.exact_denoiser(testing.random_joint(0, vocab_size=3, length=3), mask_id=3)
      x = jnp.full((256, 3), 3, jnp.int32).at[:50, 1].set(2)
      key = jax.random.key(0)
      kw = dict(mask_id=3, num_steps=16, precision="float64", noise_removal=False)
      a, _ = remdm(den, eta=0.0, **kw).sample(key, x)
      b, _ = tau_leaping(den, **kw).sample(key, x)
      assert np.array_equal(a, b)
      c, info = remdm(den, mask_id=3, num_steps=16, eta=0.2, top_p=0.9,
                      precision="float64").sample(key, x)
      assert not np.any(np.asarray(c) == 3) and int(info.num_remasked.sum()) > 0
      assert np.all(np.asarray(c)[:50, 1] == 2)
      print("ok")
  """)
  run_with_x64(script)
