"""partext_jax.ops: the vectorised argmax, Gumbel-max draws and the sort-free nucleus set equal
their obvious formulations (docs/algorithms.md#vocabulary-ops).

The nucleus set is compared with the sorted implementations it replaced (kept here as the
reference). Both sum float32 probabilities, in different orders, so they may disagree on a token
only where its cumulative mass lies within the float32 summation error of ``top_p``; the test
requires every disagreement to be such a token (bound: ``2 V 2**-24``, the worst-case error of a
float32 sum of ``V`` terms of total <= 1, on each side) and counts them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax import ops
from partext_jax.testing import stats


def random_logits(rng, shape, kind):
  """float32 logits of one of the test families: continuous, quantised (ties), with -inf."""
  if kind == "normal":
    z = rng.normal(size=shape) * rng.uniform(0.1, 5.0)
  elif kind == "ties":
    z = rng.integers(0, 4, size=shape).astype(np.float64)
  else:                                   # ties, -inf entries, some rows entirely -inf
    z = np.round(rng.normal(size=shape) * 2) / 2
    z[rng.random(shape) < 0.3] = -np.inf
    z[rng.random(shape[:-1]) < 0.05] = -np.inf
  return np.asarray(z, np.float32)


KINDS = ("normal", "ties", "neg_inf")


# ------------------------------------------------------------------ argmax

def test_argmax_equals_jnp_argmax():
  """Ties (first index), -inf, all -inf rows, +inf, NaN (first NaN), ints, bools, any axis."""
  rng = np.random.default_rng(0)
  cases = []
  for kind in KINDS:
    cases.append(random_logits(rng, (64, 7, 33), kind))
  nan = random_logits(rng, (64, 33), "normal")
  nan[rng.random(nan.shape) < 0.05] = np.nan
  nan[:4] = np.nan
  inf = random_logits(rng, (64, 33), "ties")
  inf[rng.random(inf.shape) < 0.1] = np.inf
  cases += [nan, inf, rng.integers(-3, 3, size=(64, 33)).astype(np.int32),
            rng.random((64, 33)) < 0.2, np.full((5, 1), -np.inf, np.float32)]
  for x in cases:
    for axis in range(-1, x.ndim):
      got = ops.argmax(jnp.asarray(x), axis=axis)
      assert got.dtype == jnp.int32
      np.testing.assert_array_equal(got, jnp.argmax(jnp.asarray(x), axis=axis))
  # Power: the inputs hold ties at the maximum, so "last index on ties" would fail.
  ties = cases[1]
  last = ties.shape[-1] - 1 - np.argmax(ties[..., ::-1], axis=-1)
  assert np.any(last != np.asarray(ops.argmax(jnp.asarray(ties))))


def test_argmax_under_jit_and_empty_axis():
  x = jnp.asarray(random_logits(np.random.default_rng(1), (16, 40), "ties"))
  np.testing.assert_array_equal(jax.jit(ops.argmax)(x), jnp.argmax(x, axis=-1))
  with pytest.raises(ValueError, match="empty axis"):
    ops.argmax(jnp.zeros((3, 0)))


def test_categorical_equals_jax_random_categorical():
  """Same key, same logits: the same draws bit for bit (low and high noise, any axis)."""
  logits = jnp.asarray(random_logits(np.random.default_rng(2), (32, 5, 50), "neg_inf"))
  logits = logits.at[..., 0].set(0.0)      # every row has a finite logit
  for mode in (None, "high"):
    for axis in (-1, 1):
      key = jax.random.key(3)
      np.testing.assert_array_equal(
          ops.categorical(key, logits, axis, mode=mode),
          jax.random.categorical(key, logits, axis, mode=mode))


# ------------------------------------------------------------------ nucleus

def sorted_inclusive(logits, top_p):
  """The sort-based rule ReMDM used (remdm.nucleus_logits before ops.nucleus_mask)."""
  probs = jax.nn.softmax(logits, axis=-1)
  order = jnp.argsort(-logits, axis=-1)
  sorted_probs = jnp.take_along_axis(probs, order, axis=-1)
  keep_sorted = jnp.cumsum(sorted_probs, axis=-1) <= top_p
  keep_sorted = keep_sorted.at[..., 0].set(True)
  return jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)


def sorted_exclusive(logits, top_p):
  """The sort-based rule processors.TopP used (mass strictly before the token < top_p)."""
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < top_p
  keep_sorted = keep_sorted.at[..., 0].set(True)
  return jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)


REFERENCES = {"inclusive": jax.jit(sorted_inclusive), "exclusive": jax.jit(sorted_exclusive)}
nucleus_mask = jax.jit(ops.nucleus_mask, static_argnames="rule")   # top_p traced: one compile


def cut_mass(logits, rule):
  """float64 mass the rule compares with top_p at every token (in vocabulary order): the mass up
  to and including it (inclusive) or strictly before it (exclusive), in stable sorted order."""
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1), np.float64)
  order = np.argsort(-logits, axis=-1, kind="stable")
  cum = np.cumsum(np.take_along_axis(probs, order, axis=-1), axis=-1)
  if rule == "exclusive":
    cum = cum - np.take_along_axis(probs, order, axis=-1)
  out = np.empty_like(cum)
  np.put_along_axis(out, order, cum, axis=-1)
  return out


def compare_with_reference(logits, top_p, rule, *, wrong=None):
  """``(disagreeing rows, rows)`` between nucleus_mask (or ``wrong``) and the sorted reference;
  asserts every disagreement on a finite logit lies within the float32 summation error."""
  got = np.asarray((wrong or nucleus_mask)(jnp.asarray(logits), top_p, rule=rule))
  want = np.asarray(REFERENCES[rule](jnp.asarray(logits), top_p))
  differ = (got != want) & np.isfinite(logits)
  tolerance = 2 * logits.shape[-1] * 2.0**-24
  if wrong is None:
    assert np.all(np.abs(cut_mass(logits, rule)[differ] - top_p) <= tolerance)
  return int(differ.any(axis=-1).sum()), logits.shape[0]


@pytest.mark.parametrize("rule", ["inclusive", "exclusive"])
def test_nucleus_equals_sorted_reference(rule):
  """Randomised rows (continuous, ties, -inf, all -inf), V in {1, 2, 5, 50, 1024}, top_p from
  the edges and uniform draws; every disagreement is a rounding tie (asserted), and they are
  rare: at most 0.1% of rows (a deliberately wrong tie order fails far more, see below)."""
  rng = np.random.default_rng(4)
  disagree = total = 0
  for v in (1, 2, 5, 50, 1024):
    for kind in KINDS:
      logits = random_logits(rng, (200, v), kind)
      for top_p in [1e-3, 0.3, 0.5, 0.9, 0.999] + list(rng.uniform(size=3)):
        d, n = compare_with_reference(logits, float(top_p), rule)
        disagree, total = disagree + d, total + n
  assert disagree <= 0.001 * total, (disagree, total)


def test_nucleus_tie_order_matters_in_these_inputs():
  """Power of the comparison: resolving a tie group at the cut by *last* index first (a wrong
  but plausible rule) disagrees with the reference on many quantised rows."""
  def last_first(logits, top_p, rule):
    flipped = nucleus_mask(logits[..., ::-1], top_p, rule=rule)
    return flipped[..., ::-1]

  logits = random_logits(np.random.default_rng(5), (200, 50), "ties")
  for rule in ("inclusive", "exclusive"):
    disagree, n = compare_with_reference(logits, 0.5, rule, wrong=last_first)
    assert disagree > 0.2 * n


def test_nucleus_edges_and_small_cases():
  """top_p = 0 keeps exactly the first maximum (inclusive); top_p = 1 keeps everything; hand
  examples with ties at the cut."""
  logits = random_logits(np.random.default_rng(6), (100, 30), "ties")
  keep = np.asarray(nucleus_mask(jnp.asarray(logits), 0.0, rule="inclusive"))
  np.testing.assert_array_equal(keep.sum(-1), 1)
  np.testing.assert_array_equal(keep.argmax(-1), np.argmax(logits, -1))
  np.testing.assert_array_equal(keep, np.asarray(sorted_inclusive(jnp.asarray(logits), 0.0)))
  for rule in ("inclusive", "exclusive"):
    assert bool(nucleus_mask(jnp.asarray(logits), 1.0, rule=rule).all())
  four = jnp.zeros((1, 4))                                 # masses 0.25, 0.5, 0.75, 1
  assert nucleus_mask(four, 0.5, rule="inclusive").tolist() == [[True, True, False, False]]
  assert nucleus_mask(four, 0.5, rule="exclusive").tolist() == [[True, True, False, False]]
  assert nucleus_mask(four, 0.6, rule="exclusive").tolist() == [[True, True, True, False]]
  interleaved = jnp.log(jnp.array([[0.1, 0.3, 0.1, 0.3, 0.2]]))
  # Order 1, 3, 4, 0, 2 with masses 0.3, 0.6, 0.8, 0.9, 1.0.
  assert nucleus_mask(interleaved, 0.35, rule="inclusive").tolist() == [
      [False, True, False, False, False]]
  assert nucleus_mask(interleaved, 0.85, rule="exclusive").tolist() == [
      [True, True, False, True, True]]
  with pytest.raises(ValueError, match="rule='top' is not one of"):
    nucleus_mask(four, 0.5, rule="top")


def test_nucleus_traced_top_p_and_leading_axes():
  """top_p may be traced (one compilation for all values); any leading axes."""
  logits = jnp.asarray(random_logits(np.random.default_rng(7), (3, 4, 60), "normal"))
  fn = jax.jit(lambda z, p: ops.nucleus_mask(z, p, rule="inclusive"))
  for top_p in (0.2, 0.7):
    np.testing.assert_array_equal(fn(logits, top_p),
                                  ops.nucleus_mask(logits.reshape(12, 60), top_p,
                                                   rule="inclusive").reshape(3, 4, 60))
  assert fn._cache_size() == 1


# ------------------------------------------------------------------ Gumbel noise, grouped draw

def test_gumbel_from_uniforms_is_jax_high_mode_transform():
  """Fed the two uniforms JAX draws for its "high" mode, the transform gives its values bit for
  bit; and near u = 1 it resolves steps of 2**-46 (the "low" mode stops at g ~ 15.9)."""
  key = jax.random.key(3)
  high, low = jax.random.uniform(key, (2, 4096), jnp.float32)
  np.testing.assert_array_equal(ops.gumbel_from_uniforms(high, low),
                                jax.random.gumbel(key, (4096,), jnp.float32, mode="high"))
  lows = jnp.arange(1, 5, dtype=jnp.float32) * 2.0**-23        # high = 0: x = k 2**-46
  tops = np.asarray(ops.gumbel_from_uniforms(jnp.zeros(4), lows))
  np.testing.assert_allclose(tops, -np.log(np.arange(1, 5) * 2.0**-46), rtol=1e-6)
  assert tops[0] > 31.8 and np.all(np.diff(tops) < 0)


def _gumbel_ks(samples):
  """Kolmogorov-Smirnov distance of ``samples`` from the standard Gumbel CDF exp(-exp(-g))."""
  g = np.sort(np.asarray(samples, np.float64).ravel())
  cdf = np.exp(-np.exp(-g))
  n = g.size
  return max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))


def test_gumbel_noise_law_tail_and_independence():
  """2e6 values: KS distance below the alpha = 1e-6 critical value sqrt(ln(2 / alpha) / 2n);
  P(g > 8) = 1 - exp(-e**-8) within 5 SE; lag-1 correlation and the correlation between two
  keys' draws within 5 / sqrt(n). Each check fires on a deliberately wrong generator: values
  scaled by 1.01 (KS), neighbouring pairs repeated (correlation)."""
  n = 2_000_000
  draw = jax.jit(ops.gumbel_noise, static_argnums=1)
  g = np.asarray(draw(jax.random.key(0), (1000, 2000)), np.float64).ravel()
  other = np.asarray(draw(jax.random.key(1), (1000, 2000)), np.float64).ravel()
  critical = np.sqrt(np.log(2 / 1e-6) / (2 * n))
  assert _gumbel_ks(g) < critical
  assert _gumbel_ks(1.01 * g) > critical                                  # fires
  p_tail = 1 - np.exp(-np.exp(-8.0))
  assert abs(np.sum(g > 8) - n * p_tail) < 5 * np.sqrt(n * p_tail * (1 - p_tail))
  bound = 5 / np.sqrt(n)
  assert abs(np.corrcoef(g[:-1], g[1:])[0, 1]) < bound
  assert abs(np.corrcoef(g, other)[0, 1]) < bound
  repeated = np.repeat(g[::2], 2)                                         # wrong: pairs equal
  assert abs(np.corrcoef(repeated[:-1], repeated[1:])[0, 1]) > bound      # fires


def test_gumbel_noise_keys_dtypes_and_fallbacks():
  """Typed and raw threefry keys give the same noise; per-row keys under vmap give each row its
  own call's noise; rbg keys and float64 fall back to jax.random.gumbel's "high" mode."""
  key = jax.random.key(5)
  np.testing.assert_array_equal(ops.gumbel_noise(key, (7,)),
                                ops.gumbel_noise(jax.random.key_data(key), (7,)))
  keys = jax.random.split(key, 3)
  rows = jax.jit(jax.vmap(lambda k: ops.gumbel_noise(k, (2, 5))))(keys)
  for r in range(3):
    np.testing.assert_array_equal(rows[r], ops.gumbel_noise(keys[r], (2, 5)))
  assert not np.array_equal(rows[0], rows[1])
  rbg = jax.random.key(5, impl="rbg")
  np.testing.assert_array_equal(ops.gumbel_noise(rbg, (6,)),
                                jax.random.gumbel(rbg, (6,), mode="high"))
  with pytest.raises(ValueError, match="2\\*\\*31"):
    ops.gumbel_noise(key, (2**16, 2**16))


def _grouped_counts(key, logits, n, group_size):
  draw = jax.jit(jax.vmap(lambda k: ops.grouped_categorical(k, logits, group_size=group_size)))
  tokens = np.asarray(draw(jax.random.split(key, n)))
  return np.bincount(tokens, minlength=logits.shape[-1])


@pytest.mark.parametrize("group_size", [1, 4, 8, 37, 64])
def test_grouped_categorical_law(group_size):
  """V = 37 (a padded last group for G = 4, 8), probabilities spanning 1e-4 .. 0.3 with three
  -inf tokens: 2e5 draws pass the pooled chi-square against softmax (alpha 1e-6), -inf tokens
  never drawn."""
  rng = np.random.default_rng(0)
  z = rng.normal(size=37) * 2.5
  z[[3, 20, 36]] = -np.inf
  logits = jnp.asarray(z, jnp.float32)
  counts = _grouped_counts(jax.random.key(group_size), logits, 200_000, group_size)
  result = stats.pooled_chi_square(counts, np.asarray(jax.nn.softmax(logits), np.float64))
  assert result.passed, result
  assert counts[[3, 20, 36]].sum() == 0


def test_grouped_categorical_test_fires_on_wrong_group_mass():
  """The same chi-square rejects a two-stage draw that weighs groups by their largest logit
  instead of their log-mass (a plausible bug)."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=37) * 2.5, jnp.float32)

  def wrong(key, z, g=8):
    padded = jnp.pad(z, (0, 40 - 37), constant_values=-jnp.inf).reshape(5, g)
    k1, k2 = jax.random.split(key)
    group = ops.categorical(k1, jnp.max(padded, axis=-1))
    return group * g + ops.categorical(k2, padded[group])

  tokens = np.asarray(jax.jit(jax.vmap(lambda k: wrong(k, logits)))(
      jax.random.split(jax.random.key(0), 200_000)))
  result = stats.pooled_chi_square(np.bincount(tokens, minlength=37),
                                           np.asarray(jax.nn.softmax(logits), np.float64))
  assert not result.passed


def test_grouped_categorical_edges_and_shapes():
  """All -inf rows give 0 (as categorical); one finite token is always drawn; leading axes; the
  default group size; bad group sizes and empty axes raise; traced logits compile once."""
  key = jax.random.key(0)
  z = jnp.full((2, 3, 10), -jnp.inf).at[0, 1, 7].set(0.0)
  tokens = ops.grouped_categorical(key, z, group_size=4)
  assert tokens.shape == (2, 3) and tokens.dtype == jnp.int32
  assert int(tokens[0, 1]) == 7 and int(tokens[1, 2]) == 0
  assert ops.default_group_size(1024) == 32 and ops.default_group_size(49152) == 256
  assert ops.default_group_size(1) == 1
  with pytest.raises(ValueError, match="group_size"):
    ops.grouped_categorical(key, z, group_size=0)
  with pytest.raises(ValueError, match="empty"):
    ops.grouped_categorical(key, jnp.zeros((3, 0)))
  draw = jax.jit(ops.grouped_categorical)
  for i in range(3):
    draw(jax.random.key(i), jax.random.normal(jax.random.key(i), (4, 100)))
  assert draw._cache_size() == 1
