"""Edit Flows: alignment, the conditional path, tau-leaping, exact marginal rates, the loss.

Oracles: every pair over V = 2, length <= 3 aligns into rows whose blanks removed give the two
sequences, with exactly the Levenshtein distance (brute-force DP) of edit columns; firing one
pending column on x_t is the edit pending_edits names; a tau-leaping step whose probabilities
are 0 or 1 produces the known sequence; with the exact marginal rates of an enumerable toy the
sampler draws the target (TV below the sample-size bound of testing.toys.tv_tolerance, and the
length distribution too), while halved insertion rates are caught by the same bound; the
Bregman loss is lower at the exact rates than at perturbed ones (by more than 3 standard errors);
a few training steps of the Flax rate model lower it.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.edit import alignment, edit_flows, exact
from partext_jax.edit import model as rate_model
from partext_jax.edit.edit_flows import DELETE, INSERT, NONE, SUBSTITUTE, EditRates
from partext_jax.testing import toys

TOY = exact.random_toy(0, vocab_size=2, source_length=2, target_length=3)
CAP = 5


@functools.lru_cache(maxsize=None)
def _exact_rate_fn():
  return exact.exact_rate_fn(TOY, capacity=CAP)


def _levenshtein(a, b):
  d = np.arange(len(b) + 1)
  for i, x in enumerate(a, 1):
    prev, d[0] = d.copy(), i
    for j, y in enumerate(b, 1):
      d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (x != y))
  return int(d[-1])


def test_alignment_of_every_pair():
  seqs = exact.all_sequences(2, 3)
  pairs = list(itertools.product(seqs, seqs))
  a, na = exact.pad_sequences([p[0] for p in pairs], 3, 2)
  b, nb = exact.pad_sequences([p[1] for p in pairs], 3, 2)
  z0, z1, dist = jax.device_get(jax.jit(alignment.align_batch)(a, na, b, nb))
  for (x0, x1), r0, r1, d in zip(pairs, z0, z1, dist):
    assert tuple(r0[r0 != alignment.BLANK]) == x0 and tuple(r1[r1 != alignment.BLANK]) == x1
    assert int(np.sum(r0 != r1)) == int(d) == _levenshtein(x0, x1)
    used = (r0 != alignment.BLANK) | (r1 != alignment.BLANK)
    assert not np.any(used[np.argmin(used):]) or used.all()     # columns packed to the left


def _apply_one(x, kind, pos, token):
  x = list(x)
  if kind == INSERT:
    return tuple(x[:pos] + [token] + x[pos:])
  if kind == DELETE:
    return tuple(x[:pos] + x[pos + 1:])
  return tuple(x[:pos] + [token] + x[pos + 1:])


def test_pending_edit_is_the_column_switch():
  rng = np.random.default_rng(0)
  seqs = exact.all_sequences(3, 3)
  pick = lambda: [seqs[i] for i in rng.integers(len(seqs), size=300)]  # noqa: E731
  (a, na), (b, nb) = exact.pad_sequences(pick(), 3, 3), exact.pad_sequences(pick(), 3, 3)
  z0s, z1s, _ = jax.device_get(jax.jit(alignment.align_batch)(a, na, b, nb))
  z_ts = np.where(rng.random(z0s.shape) < 0.5, z1s, z0s)
  edits = jax.device_get(jax.jit(edit_flows.pending_edits)(z_ts, z1s))
  for z0, z1, z_t, kind, pos, token in zip(z0s, z1s, z_ts, *edits):
    x_t = tuple(z_t[z_t != alignment.BLANK])
    for m in range(len(z0)):
      if z_t[m] == z1[m]:
        assert kind[m] == NONE
        continue
      after = z_t.copy()
      after[m] = z1[m]
      assert kind[m] in (INSERT, DELETE, SUBSTITUTE)
      assert _apply_one(x_t, kind[m], pos[m], token[m]) == tuple(after[after != alignment.BLANK])


def test_leap_with_certain_edits():
  v, n = 3, 6
  tokens = jnp.array([[0, 1, 2, 3, 3, 3]], jnp.int32)       # x = (0, 1, 2), PAD = 3
  lengths = jnp.array([3])
  ins = jnp.zeros((1, n + 1, v)).at[0, 0, 2].set(1.0).at[0, 3, 1].set(1.0)
  dele = jnp.zeros((1, n)).at[0, 1].set(1.0).at[0, 4].set(1.0)   # position 4 does not exist
  sub = jnp.zeros((1, n, v)).at[0, 2, 0].set(1.0).at[0, 0, 0].set(1.0)  # 0 -> 0 is no edit
  leap = jax.jit(edit_flows.leap)
  out, lens, (ni, nd, ns, over) = leap(jax.random.key(0), tokens, lengths,
                                       EditRates(ins, dele, sub), 1.0)
  # gap 0 <- 2, keep 0, delete 1, 2 -> 0, gap 3 <- 1
  np.testing.assert_array_equal(out[0, :4], [2, 0, 0, 1])
  np.testing.assert_array_equal(out[0, 4:], [3, 3])
  assert int(lens[0]) == 4 and (int(ni[0]), int(nd[0]), int(ns[0])) == (2, 1, 1)
  assert not bool(over[0])
  # Capacity: inserting into every gap of a full row overflows and is cut at N.
  full = jnp.zeros((1, n), jnp.int32)
  out, lens, (_, _, _, over) = leap(
      jax.random.key(0), full, jnp.array([n]),
      EditRates(jnp.ones((1, n + 1, v)), jnp.zeros((1, n)), jnp.zeros((1, n, v))), 1.0)
  assert int(lens[0]) == n and bool(over[0])


def _run(rate_fn, n, steps, seed=0):
  x0 = exact.sample_toy(jax.random.key(seed), TOY.p0, TOY, n, capacity=CAP)
  out, info = edit_flows.edit_flows(rate_fn, num_steps=steps).sample(
      jax.random.key(seed + 1), x0)
  return exact.empirical(out, TOY), info


def test_exact_rates_draw_the_target_and_halved_insertions_are_caught():
  n, steps = 8000, 100
  target = np.append(TOY.p1, 0.0)
  # Tolerance: the distribution-free sample-size bound (failure probability 1e-6); the
  # tau-leaping bias is O(1/steps) and measured at ~0.01 here.
  tol = toys.tv_tolerance(n, len(target))
  emp, info = _run(_exact_rate_fn(), n, steps)
  assert not bool(info.overflow.any())
  assert toys.total_variation(emp, target) < tol
  lengths, target_lengths = (exact.length_distribution(p, TOY) for p in (emp, target))
  assert toys.total_variation(lengths, target_lengths) < toys.tv_tolerance(n, len(lengths))
  assert len(np.nonzero(target_lengths)[0]) == 4                 # lengths 0..3 all occur
  assert int(info.insertions.sum()) and int(info.deletions.sum()) and int(
      info.substitutions.sum())
  exact_fn = _exact_rate_fn()

  def halved(tokens, lengths, t):
    rates = exact_fn(tokens, lengths, t)
    return rates._replace(insert=0.5 * rates.insert)

  wrong, _ = _run(halved, n, steps)
  assert toys.total_variation(wrong, target) > tol


def test_bregman_loss_is_lowest_at_the_exact_rates():
  z_t, z1, tokens, lengths, t = rate_model.path_batch(jax.random.key(3), TOY, 20000,
                                                      capacity=CAP)
  t = t * 0.95                    # keeps the 1 / (1 - t) weights' variance moderate
  exact_rates = jax.jit(_exact_rate_fn())(tokens, lengths, t)
  jitted = jax.jit(edit_flows.bregman_loss)
  loss = lambda r: np.asarray(jitted(r, tokens, lengths, z_t, z1, t))  # noqa: E731
  base = loss(exact_rates)
  for factor in (0.5, 2.0):
    for field in ("insert", "delete", "substitute"):
      perturbed = exact_rates._replace(**{field: factor * getattr(exact_rates, field)})
      diff = loss(perturbed) - base
      assert diff.mean() > 3 * diff.std() / np.sqrt(len(diff)), (field, factor)


def test_bad_inputs():
  fn = _exact_rate_fn()
  with pytest.raises(ValueError, match="num_steps"):
    edit_flows.edit_flows(fn, num_steps=0)
  with pytest.raises(TypeError, match="rate_fn"):
    edit_flows.edit_flows(None, num_steps=4)
  sampler = edit_flows.edit_flows(fn, num_steps=4, vocab_size=2)
  tokens = jnp.zeros((2, CAP), jnp.int32)
  with pytest.raises(ValueError, match="lengths"):
    sampler.sample(jax.random.key(0), (tokens, jnp.array([1, CAP + 1])))
  with pytest.raises(TypeError, match="integer"):
    sampler.sample(jax.random.key(0), (tokens.astype(jnp.float32), jnp.array([1, 1])))
  with pytest.raises(ValueError, match="tokens"):
    sampler.sample(jax.random.key(0), (tokens.at[0, 0].set(5), jnp.array([1, 1])))
  with pytest.raises(TypeError, match="rng_key"):
    sampler.sample(0, (tokens, jnp.array([1, 1])))
  with pytest.raises(ValueError, match="capacity"):
    exact.exact_rate_fn(TOY, capacity=2)
  with pytest.raises(ValueError, match="capacity"):
    rate_model.train(jax.random.key(0), TOY, rate_model.RateModelConfig(2, 3), num_steps=1)


def test_model_sampler_compiles_once():
  cfg = rate_model.RateModelConfig(vocab_size=2, capacity=6, d_model=8, num_heads=2,
                                   num_layers=1, mlp_dim=16, time_features=4)
  params = rate_model.init_params(jax.random.key(0), cfg)
  x0 = exact.sample_toy(jax.random.key(1), TOY.p0, TOY, 16, capacity=6)
  jitted = edit_flows.jitted_sample.dynamic
  edit_flows.edit_flows(rate_model.make_rate_fn(cfg, params), num_steps=8).sample(
      jax.random.key(0), x0)
  size = jitted._cache_size()
  new_params = jax.tree.map(lambda a: a + 0.01, params)
  x1 = exact.sample_toy(jax.random.key(2), TOY.p0, TOY, 16, capacity=6)
  out, _ = edit_flows.edit_flows(rate_model.make_rate_fn(cfg, new_params), num_steps=8).sample(
      jax.random.key(1), x1)
  assert jitted._cache_size() == size
  assert out.tokens.shape == (16, 6)


def test_training_lowers_the_loss():
  cfg = rate_model.RateModelConfig(vocab_size=2, capacity=6, d_model=8, num_heads=2,
                                   num_layers=1, mlp_dim=16, time_features=4)
  _, losses = rate_model.train(jax.random.key(0), TOY, cfg, num_steps=60, batch_size=64)
  assert np.all(np.isfinite(losses))
  assert losses[-15:].mean() < losses[:15].mean()
