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
