"""P2 path planning: hand-computed trajectories, frozen tokens at eta = 0, exact mask counts.

Most checks are exact (deterministic oracles): with temperature 0 and constant logits the
proposals and scores are known, so the whole trajectory is computed by hand. The one statistical
check (a single step samples x0 ~ softmax(logits / temperature)) uses ``testing.tv_tolerance``
(false alarm 1e-6). The shared invariant battery runs on P2 in tests/test_sampler_battery.py.
"""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import COMMON_BAD_ARGUMENTS, assert_compiles_once, run_with_x64
from partext_jax import testing
from partext_jax.masked import categorical
from partext_jax.masked.p2 import (KappaSchedule, P2Info, P2State, denoiser_planner,
                                   jitted_sample, lowest_k, num_to_mask, p2)

M = 3          # MASK id for V = 3


def _const(probs):
  """Constant per-position logits from a [L, V] probability table."""
  return testing.constant_denoiser(jnp.log(jnp.asarray(probs, jnp.float32)))


# position 0: token 2 (0.9), 1: token 1 (0.5), 2: token 0 (0.7), 3: token 2 (0.6)
PROBS = [[0.05, 0.05, 0.9], [0.3, 0.5, 0.2], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6]]


def _run(sampler, x, key=0):
  tokens, info = sampler.sample(jax.random.key(key), x)
  traj = np.concatenate([np.asarray(x)[None], np.asarray(info.tokens)])
  return np.asarray(tokens), info, traj


def test_greedy_self_planning_decodes_by_confidence():
  """Temperature 0, eta = 0, N = L = 4, linear kappa: k_i = 3, 2, 1, 0, and each step decodes the
  most confident masked position (scores log 0.9 > log 0.7 > log 0.6 > log 0.5) with its argmax."""
  sampler = p2(_const(PROBS), mask_id=M, num_steps=4, temperature=0.0, eta=0.0,
               record_trajectory=True)
  tokens, info, traj = _run(sampler, jnp.full((2, 4), M, jnp.int32))
  expected = [[2, M, M, M], [2, M, 0, M], [2, M, 0, 2], [2, 1, 0, 2]]
  np.testing.assert_array_equal(traj[1:, 0], expected)
  np.testing.assert_array_equal(traj[1:, 1], expected)
  np.testing.assert_array_equal(info.num_masked[:, 0], [3, 2, 1, 0])
  np.testing.assert_allclose(info.kappa, [0.25, 0.5, 0.75, 1.0])
  assert int(info.num_remasked.sum()) == 0
  assert isinstance(info, P2Info) and isinstance(sampler.init(jnp.full((2, 4), M)), P2State)


def test_planner_remasks_low_scored_decoded_token():
  """eta = 1 with a planner that gives position 0's token 2 probability ~e-20 (and agrees with the
  denoiser elsewhere). Hand trajectory: step 1 decodes position 0 (as above); step 2 (k = 2)
  scores decoded position 0 at -20 -> remasked, plus the lowest masked (position 1, log 0.5),
  positions 2, 3 take x0; step 3 (k = 1): masked position 1 (log 0.5) is lowest (decoded 2, 3
  score log 0.7, log 0.6 under the planner), position 0 takes x0 = 2 again; step 4 (k = 0):
  position 1 takes x0 = 1, decoded position 0 survives (kept, not resampled)."""
  bad = np.log(np.array(PROBS, np.float32))
  bad[0] = [0.0, 0.0, -20.0]
  planner_logits = jnp.asarray(bad)

  def planner(tokens, x0):
    return jnp.broadcast_to(planner_logits, (x0.shape[0],) + planner_logits.shape)

  sampler = p2(_const(PROBS), mask_id=M, num_steps=4, temperature=0.0, eta=1.0, planner=planner,
               record_trajectory=True)
  tokens, info, traj = _run(sampler, jnp.full((1, 4), M, jnp.int32))
  expected = [[2, M, M, M], [M, M, 0, 2], [2, M, 0, 2], [2, 1, 0, 2]]
  np.testing.assert_array_equal(traj[1:, 0], expected)
  np.testing.assert_array_equal(info.num_remasked[:, 0], [0, 1, 0, 0])
  np.testing.assert_array_equal(info.nfe, [1, 2, 2, 2])   # + planner once something is decoded


def test_eta_zero_freezes_decoded_tokens():
  """eta = 0 with stochastic proposals (temperature 1), a context-dependent non-carry-over model
  and a planner: at every step no decoded token changes or is remasked, the prompt never
  changes, and exactly k_i = floor(N_free (1 - kappa(i / N))) free positions are masked after
  step i (geometric kappa, ratio 0.2: non-integer N_free (1 - kappa))."""
  v, l, n = 5, 8, 6
  kappa = KappaSchedule("geometric", ratio=0.2)
  x = testing.random_prompts(jax.random.key(3), 16, l, v, v)
  model = testing.mixing_model(v, l, seed=42)
  sampler = p2(model, mask_id=v, num_steps=n, temperature=1.0, eta=0.0, kappa=kappa,
               planner=denoiser_planner(model), record_trajectory=True)
  tokens, info, traj = _run(sampler, x, key=4)
  prompt = np.asarray(x) != v
  n_free = (~prompt).sum(1)
  sched = kappa
  for i in range(n):
    a, b = traj[i], traj[i + 1]
    np.testing.assert_array_equal(b[prompt], a[prompt])
    decoded = (a != v) & ~prompt
    np.testing.assert_array_equal(b[decoded], a[decoded])
    k = np.floor(n_free * (1 - sched((i + 1) / n)) + 1e-9).astype(int)
    np.testing.assert_array_equal((b == v).sum(1), k)
  assert int(info.num_remasked.sum()) == 0
  assert not np.any(tokens == v)


def test_eta_zero_with_ties():
  """temperature 0 and identical logits everywhere: every score ties (and equals 0 for a one-hot
  model). Still exactly k_i masks per step, and decoded tokens never change (ties go to positions
  already masked); the reference's strict '<' rule would mask fewer than k here."""
  one_hot = np.full((6, 3), 1e-12)
  one_hot[:, 1] = 1.0
  for probs in (np.full((6, 3), 1 / 3), one_hot):
    sampler = p2(_const(probs), mask_id=M, num_steps=3, temperature=0.0, eta=0.0,
                 record_trajectory=True)
    tokens, info, traj = _run(sampler, jnp.full((2, 6), M, jnp.int32).at[:, 2].set(0))
    np.testing.assert_array_equal(info.num_masked[:, 0], [3, 1, 0])
    for a, b in zip(traj[:-1], traj[1:]):
      np.testing.assert_array_equal(b[a != M], a[a != M])


def test_one_step_samples_tempered_proposal():
  """N = 1: k_1 = 0, so every position takes x0 = argmax(logits / tau + Gumbel) ~
  softmax(logits / tau). Temperature tau = 0.5 on position probabilities (0.5, 0.3, 0.2) ->
  (25, 9, 4)/38.
  n = 20000 draws of K = 3 outcomes: tv_tolerance = 0.029; TV to the untempered law is 0.16."""
  n = 20_000
  sampler = p2(_const([[0.5, 0.3, 0.2]]), mask_id=M, num_steps=1, temperature=0.5)
  tokens, info = sampler.sample(jax.random.key(5), jnp.full((n, 1), M, jnp.int32))
  emp = testing.empirical_distribution(tokens, vocab_size=3)
  target = np.array([25.0, 9.0, 4.0]) / 38.0
  bound = testing.tv_tolerance(n, 3)
  assert testing.total_variation(target, [0.5, 0.3, 0.2]) > 2 * bound
  assert testing.total_variation(emp, target) < bound


# ------------------------------------------------------------------ pieces

def test_kappa_schedules_and_counts():
  t = np.array([0.0, 0.25, 0.5, 1.0])
  np.testing.assert_allclose(KappaSchedule("linear")(t), t)
  np.testing.assert_allclose(KappaSchedule("cosine")(t), 1 - np.cos(np.pi * t / 2), atol=1e-15)
  np.testing.assert_allclose(KappaSchedule("sine")(t), np.sin(np.pi * t / 2), atol=1e-15)
  np.testing.assert_allclose(KappaSchedule("polynomial", exponent=3.0)(t), t**3)
  np.testing.assert_allclose(KappaSchedule("geometric", ratio=4.0)(t), (4.0**t - 1) / 3)
  for kind in ("cosine", "sine"):
    assert KappaSchedule(kind)(1.0) == 1.0 and KappaSchedule(kind)(0.0) == 0.0
  # exact floors for the linear schedule: N_free = N gives one token per step
  for n in (3, 7, 10, 49, 100, 1000):
    fr = (1.0 - np.arange(1, n + 1) / n).astype(np.float32)
    np.testing.assert_array_equal(num_to_mask(jnp.full((n,), n), jnp.asarray(fr)),
                                  np.arange(n - 1, -1, -1))
  np.testing.assert_array_equal(num_to_mask(jnp.array([10, 7, 0]), 0.3), [3, 2, 0])


def test_lowest_k_tie_break():
  score = jnp.array([[-1.0, 0.0, 0.0, -2.0, 0.0, jnp.inf]])
  prefer = jnp.array([[False, False, True, False, False, False]])
  np.testing.assert_array_equal(lowest_k(score, jnp.array([3]), prefer),
                                [[True, False, True, True, False, False]])
  np.testing.assert_array_equal(lowest_k(score, jnp.array([4]), prefer),
                                [[True, True, True, True, False, False]])


# ------------------------------------------------------------------ compilation

def _battery_kw(model):
  """RDM-style planning (eta = 1, remasking) with a BERT-style planner: the configuration of the
  battery case "p2_rdm_planner" in tests/test_sampler_battery.py."""
  return dict(mask_id=5, num_steps=5, eta=1.0, kappa="sine", planner=denoiser_planner(model))


def test_sample_compiles_once():
  """New key / new prompt / new sampler with equal hyper-parameters: no retrace; a Partial model
  and its Partial BERT-style planner with new parameters of the same shapes reuse the
  compilation."""
  model = testing.mixing_model(5, 6, seed=42)
  assert isinstance(denoiser_planner(model), jax.tree_util.Partial)
  x = testing.random_prompts(jax.random.key(6), 4, 6, 5, 5)
  assert_compiles_once(lambda m: p2(m, **_battery_kw(m)), model, x,
                       new_prompt=x.at[:, 0].set(5), jitted=jitted_sample.jits[True, True])


@pytest.mark.parametrize("kwargs, exc, match", COMMON_BAD_ARGUMENTS + [
    (dict(num_steps=0), ValueError, "num_steps"),
    (dict(temperature=-0.5), ValueError, "temperature"),
    (dict(eta=float("inf")), ValueError, "eta"),
    (dict(eta="1"), TypeError, "eta"),
    (dict(kappa="exponential"), ValueError, "kappa=.*linear.*cosine.*sine.*polynomial.*geometric"),
    (dict(kappa=lambda t: t), TypeError, "kappa"),
    (dict(precision="bfloat16"), ValueError, "precision=.*float32.*float64"),
    (dict(planner=3), TypeError, "planner"),
    (dict(record_trajectory=None), TypeError, "record_trajectory"),
], ids=lambda v: ",".join(f"{k}={type(x).__name__}" for k, x in v.items())
   if isinstance(v, dict) else None)
def test_bad_hyperparameters(kwargs, exc, match):
  with pytest.raises(exc, match=match):
    p2(_const(PROBS), **{"mask_id": M, "num_steps": 4, **kwargs})


def test_bad_inputs_and_schedules():
  with pytest.raises(ValueError, match="kind=.*linear"):
    KappaSchedule("log")
  with pytest.raises(ValueError, match="ratio"):
    KappaSchedule("geometric", ratio=1.0)
  with pytest.raises(ValueError, match="exponent"):
    KappaSchedule("polynomial", exponent=0.0)
  # (The input checks shared with every sampler are in test_sampler_battery.py.)
  key = jax.random.key(0)
  bad_planner = p2(_const(PROBS), mask_id=M, num_steps=4,
                   planner=lambda tok, x0: jnp.zeros(x0.shape + (5,)))
  with pytest.raises(ValueError, match="planner"):
    bad_planner.sample(key, jnp.full((2, 4), M))
  if not categorical.x64_enabled():
    with pytest.raises(RuntimeError, match="jax_enable_x64"):
      p2(_const(PROBS), mask_id=M, num_steps=4, precision="float64")


def test_float64_precision_under_x64_subprocess():
  """JAX_ENABLE_X64=1: precision='float64' runs, emits no MASK, keeps the exact mask counts,
  and with eta = 0 never changes a decoded token; a float64 model output is accepted."""
  script = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from partext_jax.masked.p2 import p2
      probs = jnp.array([[0.05, 0.05, 0.9], [0.3, 0.5, 0.2], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6]])
      den = lambda tok, t: jnp.broadcast_to(jnp.log(probs), tok.shape + (3,))   # float64
      x = jnp.full((64, 4), 3, jnp.int32).at[:, 1].set(0)
      tok, info = p2(den, mask_id=3, num_steps=3, eta=0.0, precision="float64",
                     record_trajectory=True).sample(jax.random.key(0), x)
      tr = np.concatenate([np.asarray(x)[None], np.asarray(info.tokens)])
      assert all(np.array_equal(b[a != 3], a[a != 3]) for a, b in zip(tr[:-1], tr[1:]))
      assert np.array_equal(np.asarray(info.num_masked)[:, 0], [2, 1, 0])
      assert not np.any(np.asarray(tok) == 3) and np.all(np.asarray(tok)[:, 1] == 0)
      print("ok")
  """)
  run_with_x64(script)
