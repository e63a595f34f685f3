"""Categorical draws: the two-stage draw is exact, float64 needs x64, float32 Gumbel is biased.

Tolerances: z-tests with |z| < 5 (two-sided false alarm 5.7e-7 per test, normal approximation
of a binomial count with expected counts >= 100).
"""

import functools
import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_with_x64
from partext_jax import testing
from partext_jax.masked import categorical, p2, remdm, tau_leaping

# Jitted once per shape: eager dispatch of the random primitives is slower than compiling.
two_stage_draw = jax.jit(categorical.two_stage_draw)


def _z(count, n, p):
  return (count - n * p) / math.sqrt(n * p * (1 - p))


def test_two_stage_unmask_rate_small_probability():
  """p_unmask = 1e-3 over 2e6 positions: expected 2000 unmasks, SE 45."""
  shape, p = (2000, 1000), 1e-3
  unmask, tokens = two_stage_draw(jax.random.key(0), jnp.zeros(shape + (2,)), p)
  assert unmask.shape == shape and unmask.dtype == jnp.bool_
  assert tokens.shape == shape and tokens.dtype == jnp.int32
  assert abs(_z(int(unmask.sum()), math.prod(shape), p)) < 5


def test_bernoulli_fine():
  """Edges exact; P = p for p on and off the 2**-23 grid (z-tests, n = 1e6 each)."""
  draw = jax.jit(categorical.bernoulli_fine, static_argnums=2)
  n = 1_000_000
  assert not bool(draw(jax.random.key(0), 0.0, (n,)).any())
  assert bool(draw(jax.random.key(0), 1.0, (n,)).all())
  for i, p in enumerate([0.3, 2.5e-3, 0.5 + 2.0**-24]):
    assert abs(_z(int(draw(jax.random.key(i), p, (n,)).sum()), n, p)) < 5


def test_two_stage_zipf_tail_mass():
  """The scaled-down example of docs/algorithms.md#exact-categorical-draws: Zipf over V = 2000
  tokens, the tail (rank >= 1128) has mass 0.070. Given "unmask", the two-stage draw samples the
  real tokens only, so 8000 draws estimate the tail mass with SE 0.0029 (the naive float32 V+1
  draw gives ~0.034 there, see test_naive_float32_gumbel_undersamples_rare_events)."""
  v, n = 2000, 8000
  zipf = 1.0 / np.arange(1, v + 1)
  zipf /= zipf.sum()
  tail_start = 1128
  tail = zipf[tail_start:].sum()
  assert abs(tail - 0.070) < 1e-3
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(zipf, jnp.float32)), (n, v))
  unmask, tokens = two_stage_draw(jax.random.key(1), logits, 1.0)
  assert bool(unmask.all())
  tokens = np.asarray(tokens)
  assert abs(_z(np.sum(tokens >= tail_start), n, tail)) < 5
  assert abs(_z(np.sum(tokens == 0), n, zipf[0])) < 5


def test_two_stage_temperature():
  """p_theta = softmax(logits / T): per-category z-tests, n = 20000."""
  logits = jnp.array([0.0, 1.0, -1.0, 0.5])
  temperature, n = 0.5, 20_000
  expected = np.asarray(jax.nn.softmax(logits / temperature), np.float64)
  _, tokens = two_stage_draw(jax.random.key(2), jnp.broadcast_to(logits, (n, 4)),
                                         0.5, temperature=temperature)
  counts = np.bincount(np.asarray(tokens), minlength=4)
  for c, p in zip(counts, expected):
    assert abs(_z(c, n, p)) < 5


def test_two_stage_probability_edges():
  logits = jax.random.normal(jax.random.key(3), (64, 8, 5))
  never, _ = two_stage_draw(jax.random.key(4), logits, jnp.zeros((64, 8)))
  always, tokens = two_stage_draw(jax.random.key(4), logits, jnp.ones((64, 8)))
  assert not bool(never.any()) and bool(always.all())
  assert bool(((tokens >= 0) & (tokens < 5)).all())
  # Deterministic for a fixed key.
  again = two_stage_draw(jax.random.key(4), logits, jnp.ones((64, 8)))[1]
  np.testing.assert_array_equal(tokens, again)


def test_float64_requires_x64_and_bad_precision_name():
  if categorical.x64_enabled():
    pytest.skip("x64 is on in this process; the subprocess test covers the x64 path")
  with pytest.raises(RuntimeError, match="jax_enable_x64"):
    categorical.float64_draw(jax.random.key(0), jnp.zeros((2, 3)), 0.5)
  with pytest.raises(RuntimeError, match="jax_enable_x64"):
    categorical.categorical_float64(jax.random.key(0), jnp.zeros((2, 3)))
  row_keys = jax.random.split(jax.random.key(0), 2)
  with pytest.raises(RuntimeError, match="jax_enable_x64"):
    categorical.unmask_draw(row_keys, jnp.zeros((2, 3, 4)), 0.5, precision="float64")
  with pytest.raises(ValueError, match="precision=.*float32.*float64"):
    categorical.unmask_draw(row_keys, jnp.zeros((2, 3, 4)), 0.5, precision="gumbel32")


def test_samplers_share_the_precision_argument():
  """tau_leaping, remdm and p2 take the same `precision` choices (categorical.PRECISIONS), and
  "float32" in tau_leaping is the exact two-stage draw: one step with p_unmask = 1 draws the
  same tokens as two_stage_draw with the row's key (fold_in(fold_in(key, 0), row))."""
  assert categorical.PRECISIONS == ("float32", "float64")
  den = testing.constant_denoiser(jnp.array([0.0, 1.0, -1.0]))
  for make in (tau_leaping.tau_leaping, remdm.remdm, p2.p2):
    assert make(den, mask_id=3, num_steps=2, precision="float32") is not None
    with pytest.raises(ValueError, match=r"precision='double' is not one of \('float32', "
                                         r"'float64'\)"):
      make(den, mask_id=3, num_steps=2, precision="double")
  key = jax.random.key(9)
  x = jnp.full((4, 5), 3, jnp.int32)
  tokens, _ = tau_leaping.tau_leaping(den, mask_id=3, num_steps=1, noise_removal=False).sample(
      key, x)
  logits = jnp.broadcast_to(jnp.array([0.0, 1.0, -1.0]), (5, 3))
  for row in range(4):
    unmask, want = two_stage_draw(jax.random.fold_in(jax.random.fold_in(key, 0), row), logits,
                                  1.0)
    assert bool(unmask.all())
    np.testing.assert_array_equal(tokens[row], want)


def test_draws_only_where_needed_equal_the_full_draw():
  """unmask_draw computes the categorical only where the event fired and the token is used,
  gathering a bucket of positions (categorical.bucket_sizes); the events and those tokens are
  exactly two_stage_draw's, row by row, whichever bucket runs (counts 0, 1, 3, 9, all)."""
  b, length, v = 3, 20, 7
  logits = jax.random.normal(jax.random.key(10), (b, length, v)) * 2
  row_keys = jax.random.split(jax.random.PRNGKey(11), b)     # raw keys here, typed elsewhere
  assert categorical.bucket_sizes(length) == (0, 4, 8, 16, 20)
  full = [two_stage_draw(row_keys[r], logits[r], 0.5, temperature=0.7) for r in range(b)]
  full_event = np.stack([np.asarray(e) for e, _ in full])
  full_tokens = np.stack([np.asarray(t) for _, t in full])
  draw = jax.jit(functools.partial(categorical.unmask_draw, temperature=0.7))
  rng = np.random.default_rng(0)
  for count in (0, 1, 3, 9, length):
    where = np.zeros((b, length), bool)
    for r in range(b):
      where[r, rng.choice(length, size=min(length, count + r), replace=False)] = True
    event, tokens = draw(row_keys, logits, jnp.full((b, length), 0.5), where=jnp.asarray(where))
    np.testing.assert_array_equal(event, full_event)
    used = full_event & where
    np.testing.assert_array_equal(np.asarray(tokens)[used], full_tokens[used])
    assert np.all(np.asarray(tokens)[~used] == 0)
  assert draw._cache_size() == 1


def test_naive_float32_gumbel_undersamples_rare_events():
  """Exact (no Monte Carlo) computation of the float32 Gumbel-max bias documented in
  categorical.py. JAX's float32 "low" Gumbel is g = -log(-log(u)) with u on the grid
  k * 2**-23 (we check that empirically: no draw exceeds the grid's largest value). For a
  two-way draw [r, 1 - r] the win probability of the rare side is E_{g_M}[P(g_A > g_M + c)],
  c = log((1 - r)/r), with the discrete tail of g_A and the (continuous) density of g_M."""
  n = 1 << 23
  u = np.maximum((np.arange(n, dtype=np.float64) * 2.0**-23).astype(np.float32),
                 np.finfo(np.float32).tiny)
  grid = np.sort(-np.log(-np.log(u)))
  sample = jax.random.gumbel(jax.random.key(5), (1 << 20,), jnp.float32, mode="low")
  assert float(sample.max()) <= grid[-1] < 16.0
  xs = np.linspace(grid[0], 25.0, 6001)     # g_M >= grid[0] = -log(-log(tiny)) = -4.47
  w = np.exp(-(xs + np.exp(-xs)))
  w /= w.sum()

  def naive_ratio(r):
    c = math.log((1 - r) / r)
    tail = (n - np.searchsorted(grid, xs + c, side="right")) / n
    return float(np.sum(w * tail)) / r

  assert abs(naive_ratio(1e-3) - 1) < 0.01       # fine for common events
  assert naive_ratio(1e-7) < 0.7                 # ~0.52: rare events under-sampled
  assert naive_ratio(1e-9) == 0.0                # and below ~1.4e-9 never drawn


def test_float64_draw_under_x64_subprocess():
  """With JAX_ENABLE_X64=1, float64_draw has the right unmask rate and token law (z-tests,
  n = 20000) and returns int32 tokens."""
  script = textwrap.dedent("""
      import math, jax, jax.numpy as jnp, numpy as np
      from partext_jax.masked import categorical
      n, p = 20_000, 0.3
      logits = jnp.array([0.0, 1.0, -1.0, 0.5])
      unmask, tokens = categorical.float64_draw(jax.random.key(0),
                                                jnp.broadcast_to(logits, (n, 4)), p)
      assert tokens.dtype == jnp.int32 and unmask.dtype == jnp.bool_
      z = lambda c, m, q: (c - m * q) / math.sqrt(m * q * (1 - q))
      k = int(unmask.sum())
      assert abs(z(k, n, p)) < 5, k
      counts = np.bincount(np.asarray(tokens)[np.asarray(unmask)], minlength=4)
      for c, q in zip(counts, np.asarray(jax.nn.softmax(logits.astype(jnp.float64)))):
        assert abs(z(c, k, q)) < 5, (counts, q)
      never, _ = categorical.float64_draw(jax.random.key(1), jnp.zeros((50, 3)), 0.0)
      always, _ = categorical.float64_draw(jax.random.key(1), jnp.zeros((50, 3)), 1.0)
      assert not bool(never.any()) and bool(always.all())
      print("ok")
  """)
  run_with_x64(script)
