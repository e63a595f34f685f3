"""The Levenshtein Transformer: oracle edit script, canvas operations, iterative decoding.

``docs/algorithms.md#levenshtein-transformer``. The oracle is checked on every pair of strings
over V = 3 of length <= 4 against an independent dynamic program; the decoder against the oracle
policy (which must finish in one iteration) and on a trained toy model.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.nat import edits, levenshtein
from partext_jax.nat.protocols import EditLogits, Source

V, MAX_LEN = 3, 4
IDS = edits.CanvasIds(V)
SIZE = MAX_LEN + 2


def indel_distance(x, y):
  """Textbook DP (no substitution), written independently of the package."""

  @functools.lru_cache(maxsize=None)
  def d(i, j):
    if i == 0 or j == 0:
      return i + j
    best = min(d(i - 1, j), d(i, j - 1)) + 1
    return min(best, d(i - 1, j - 1)) if x[i - 1] == y[j - 1] else best

  return d(len(x), len(y))


def lcs_length(x, y):
  best = 0
  for r in range(len(x) + 1):
    for sub in itertools.combinations(x, r):
      it = iter(y)
      if all(tok in it for tok in sub):
        best = max(best, r)
  return best


def strings():
  return [s for n in range(MAX_LEN + 1) for s in itertools.product(range(V), repeat=n)]


def canvases(rows):
  tokens = np.full((len(rows), MAX_LEN), V, np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  return edits.frame(tokens, np.array([len(r) for r in rows], np.int32), ids=IDS, size=SIZE)


@pytest.fixture(scope="module")
def all_pairs():
  every = strings()
  xs, ys = zip(*itertools.product(every, every))
  x, x_len = canvases(xs)
  y, y_len = canvases(ys)
  return xs, ys, x, x_len, y, y_len


def test_oracle_script_turns_every_x_into_y_in_the_dp_distance(all_pairs):
  """All 121^2 pairs: delete, insert placeholders, fill from y gives y; the placeholders sit
  exactly at the inserted positions; deletions + insertions = the DP distance."""
  xs, ys, x, x_len, y, y_len = all_pairs
  script = jax.jit(edits.oracle_batch)(x, x_len, y, y_len)
  deleted, d_len = edits.apply_deletions(x, x_len, script.delete, ids=IDS)
  inserted, i_len = edits.apply_insertions(deleted, d_len, script.insert[:, 1:SIZE], ids=IDS)
  np.testing.assert_array_equal(i_len, y_len)
  np.testing.assert_array_equal(inserted, jnp.where(script.placeholder, IDS.plh, y))
  np.testing.assert_array_equal(edits.fill_placeholders(inserted, y, ids=IDS), y)
  n_edits = np.asarray(script.delete.sum(1) + script.insert.sum(1))
  np.testing.assert_array_equal(n_edits, script.distance)
  np.testing.assert_array_equal(script.placeholder.sum(1), script.insert.sum(1))
  want = np.array([indel_distance(a, b) for a, b in zip(xs, ys)])
  np.testing.assert_array_equal(script.distance, want)
  assert len(xs) == 121**2 and want.max() == 2 * MAX_LEN
  # BOS and EOS are never deleted, nothing is inserted outside BOS .. EOS.
  assert not np.any(script.delete[:, 0]) and not np.any(script.insert[:, 0])
  last = np.asarray(x_len) - 1
  assert not np.any(np.asarray(script.delete)[np.arange(len(xs)), last])
  assert not np.any(np.asarray(script.insert)[np.arange(len(xs)), np.asarray(d_len)])


def test_distance_is_n_plus_m_minus_twice_the_lcs():
  """Longer random pairs (length <= 7) against the LCS identity."""
  rng = np.random.default_rng(0)
  pairs = [tuple(tuple(rng.integers(0, V, rng.integers(0, 8))) for _ in "xy") for _ in range(60)]
  frames = []
  for side in (0, 1):
    rows = [p[side] for p in pairs]
    tokens = np.zeros((len(rows), 7), np.int32)
    for i, r in enumerate(rows):
      tokens[i, :len(r)] = r
    frames += list(edits.frame(tokens, np.array([len(r) for r in rows]), ids=IDS, size=9))
  got = np.asarray(jax.jit(edits.oracle_batch)(*frames).distance)
  want = [len(a) + len(b) - 2 * lcs_length(a, b) for a, b in pairs]
  np.testing.assert_array_equal(got, want)


def test_canvas_operations():
  canvas, lengths = canvases([(0, 1, 2), (2,)])
  out, n = edits.apply_deletions(canvas, lengths, jnp.array([[1, 0, 1, 0, 1, 1]] * 2, bool),
                                 ids=IDS)
  assert n.tolist() == [4, 3]  # BOS/EOS protected; PAD positions ignored
  assert out[0].tolist() == [IDS.bos, 0, 2, IDS.eos, IDS.pad, IDS.pad]
  assert out[1, :3].tolist() == [IDS.bos, 2, IDS.eos] and np.all(out[1, 3:] == IDS.pad)
  # Room for 2 in [BOS, 0, 1, EOS, PAD, PAD]: one after BOS and one before EOS.
  two, tl = canvases([(0, 1)])
  out, n = edits.apply_insertions(two, tl, jnp.array([[1, 0, 1, 5, 5]]), ids=IDS)
  assert n.tolist() == [6] and out[0].tolist() == [IDS.bos, IDS.plh, 0, 1, IDS.plh, IDS.eos]
  # Overflow is cut from the left: 2 of the 3 after BOS fit, nothing later.
  out, n = edits.apply_insertions(two, tl, jnp.array([[3, 3, 1, 0, 0]]), ids=IDS)
  assert n.tolist() == [6] and out[0].tolist() == [IDS.bos, IDS.plh, IDS.plh, 0, 1, IDS.eos]


def test_frame_unframe_round_trip_and_errors():
  tokens = np.array([[2, 1, 0, 3], [1, 3, 3, 3]], np.int32)
  canvas, lengths = edits.frame(tokens, np.array([3, 1]), ids=IDS, size=SIZE)
  assert canvas[1].tolist() == [IDS.bos, 1, IDS.eos, IDS.pad, IDS.pad, IDS.pad]
  body, n = edits.unframe(canvas, lengths, pad_id=V)
  assert n.tolist() == [3, 1] and body[0, :3].tolist() == [2, 1, 0] and body[1, 1] == V
  with pytest.raises(ValueError, match="needs 7 canvas positions"):
    edits.frame(np.zeros((1, 5), np.int32), np.array([5]), ids=IDS, size=SIZE)


def test_random_deletion_keeps_an_ordered_random_subset():
  rows = [(0, 1, 2, 0)] * 2000
  canvas, lengths = canvases(rows)
  out, n = edits.random_deletion(jax.random.key(0), canvas, lengths, ids=IDS)
  kept = np.asarray(n) - 2
  # floor(4 u): 0..3 real tokens kept, each with probability 1/4 (Binomial, 5 sigma).
  counts = np.bincount(kept, minlength=5)
  assert counts[4] == 0
  for c in counts[:4]:
    assert abs(c - 500) < 5 * np.sqrt(2000 * 0.25 * 0.75)
  out = np.asarray(out)
  for row, k in zip(out[:200], kept[:200]):
    assert row[0] == IDS.bos and row[k + 1] == IDS.eos
    body = list(row[1:k + 1])
    it = iter([0, 1, 2, 0])
    assert all(tok in it for tok in body)  # an ordered subsequence


# ------------------------------------------------------------------------------- decoding


def _oracle_models(max_insertions=MAX_LEN):
  """encode: frame the source (the copy task's target); edit: the oracle policy's logits."""

  def encode_fn(src, src_len):
    return edits.frame(src, src_len, ids=IDS, size=SIZE)

  def edit_fn(memory, canvas):
    target, target_len = memory
    return edits.oracle_logits(target, target_len, canvas, ids=IDS,
                               max_insertions=max_insertions)

  return encode_fn, edit_fn


def test_oracle_policy_decodes_every_target_in_one_iteration():
  rows = strings()[1:]
  tokens = np.full((len(rows), MAX_LEN), V, np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  lengths = np.array([len(r) for r in rows], np.int32)
  encode_fn, edit_fn = _oracle_models()
  decoder = levenshtein.levenshtein(encode_fn, edit_fn, vocab_size=V, canvas_size=SIZE,
                                    max_iterations=5)
  out, info = decoder.sample(jax.random.key(0), Source(tokens, lengths))
  np.testing.assert_array_equal(out.lengths, lengths)
  np.testing.assert_array_equal(jnp.where(jnp.arange(MAX_LEN) < lengths[:, None], out.tokens, V),
                                tokens)
  # One iteration writes the target, a second one finds nothing to change.
  assert np.all(info.iterations == 2) and np.all(info.converged)
  assert np.all(info.forwards == 2 * levenshtein.PASSES_PER_ITERATION)


def test_oracle_policy_repairs_any_initial_canvas():
  """From a wrong canvas: one iteration deletes, inserts and fills its way to the target."""
  encode_fn, edit_fn = _oracle_models()
  decoder = levenshtein.levenshtein(encode_fn, edit_fn, vocab_size=V, canvas_size=SIZE,
                                    max_iterations=5)
  target = np.array([[0, 1, 2, 2], [2, 2, 3, 3]], np.int32)
  t_len = np.array([4, 2], np.int32)
  start = canvases([(2, 2, 1, 0), (0, 1, 0)])
  state = decoder.init(Source(target, t_len), canvas=start)
  state, info = jax.jit(decoder.step)(jax.random.key(0), state)
  assert info.changed.tolist() == [True, True]
  assert info.deleted.tolist() == [2, 3] and info.inserted.tolist() == [2, 2]  # LCS 2 and 0
  out = levenshtein.output_of(state, vocab_size=V)
  assert out.tokens[0].tolist() == [0, 1, 2, 2] and out.tokens[1, :2].tolist() == [2, 2]
  state, info = jax.jit(decoder.step)(jax.random.key(0), state)
  assert not np.any(info.changed) and np.all(state.done)


def test_step_cap_stops_a_policy_that_never_converges():
  """A policy that cycles [0] -> [0, 0] -> [0] -> ... (insert one token after BOS into a canvas
  of at most one token, delete everything from a canvas of two) never reaches a fixed point:
  the cap stops it and converged is False."""

  def encode_fn(src, src_len):
    return src_len

  def edit_fn(memory, canvas):
    b, l = canvas.shape
    n = jnp.sum(canvas != IDS.pad, axis=1)[:, None, None]
    delete = jnp.where(n == 4, jnp.array([0.0, 1.0]), jnp.array([1.0, 0.0]))
    first_slot = (jnp.arange(l - 1) == 0)[None, :, None]
    insert = jnp.where((n <= 3) & first_slot, jax.nn.one_hot(1, MAX_LEN + 1),
                       jax.nn.one_hot(0, MAX_LEN + 1))
    return EditLogits(jnp.broadcast_to(delete, (b, l, 2)), insert,
                      jnp.broadcast_to(jax.nn.one_hot(0, V), (b, l, V)))

  decoder = levenshtein.levenshtein(encode_fn, edit_fn, vocab_size=V, canvas_size=SIZE,
                                    max_iterations=7)
  out, info = decoder.sample(jax.random.key(0), Source(np.zeros((2, 3), np.int32),
                                                       np.array([3, 1], np.int32)))
  assert info.iterations.tolist() == [7, 7] and not np.any(info.converged)
  assert out.lengths.tolist() == [1, 1]  # odd iterations end on [0]


def test_bad_decoder_arguments():
  encode_fn, edit_fn = _oracle_models()
  with pytest.raises(ValueError, match="max_iterations=0 must be >= 1"):
    levenshtein.levenshtein(encode_fn, edit_fn, vocab_size=V, canvas_size=SIZE, max_iterations=0)
  with pytest.raises(TypeError, match="edit_fn must be callable"):
    levenshtein.levenshtein(encode_fn, None, vocab_size=V, canvas_size=SIZE)
  decoder = levenshtein.levenshtein(encode_fn, edit_fn, vocab_size=V, canvas_size=SIZE)
  with pytest.raises(TypeError, match="source tokens must be an integer array"):
    decoder.sample(jax.random.key(0), Source(np.zeros((1, 3)), np.array([1])))
  with pytest.raises(ValueError, match=r"source lengths must lie in \[1, 3\]"):
    decoder.sample(jax.random.key(0), Source(np.zeros((1, 3), np.int32), np.array([4])))
