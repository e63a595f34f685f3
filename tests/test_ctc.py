"""CTC likelihood, alignment and collapse against brute force; the glancing sampler's counts.

``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing``. Every alignment of ``T <= 6``
positions over ``V <= 3`` symbols (blank included) is enumerated.
"""

import fractions
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.nat import ctc, glancing

T_MAX = 6


def collapse_reference(alignment, blank):
  """Plain Python: merge runs, drop blanks."""
  return tuple(s for s, _ in itertools.groupby(alignment) if s != blank)


def all_alignments(length, num_symbols):
  return np.array(list(itertools.product(range(num_symbols), repeat=length)), np.int32)


def paths_of(y, length, blank):
  """Every alignment of ``y`` built forwards: walks through ``b y_1 b .. y_U b`` that start in
  state 0 or 1, move by 0, 1 or 2 (2 only onto a label unlike the one two back) and end in one
  of the last two states. An independent generator of ``collapse^{-1}(y)``."""
  z = [blank]
  for tok in y:
    z += [tok, blank]
  out = set()

  def walk(t, s, path):
    if t == length:
      if s >= len(z) - 2:
        out.add(tuple(path))
      return
    for step in (0, 1, 2):
      nxt = s + step
      if nxt >= len(z) or (step == 2 and (z[nxt] == blank or z[nxt] == z[nxt - 2])):
        continue
      walk(t + 1, nxt, path + [z[nxt]])

  for s0 in (0, 1):
    if s0 < len(z):
      walk(1, s0, [z[s0]])
  return out


@pytest.fixture(scope="module", params=[(1, 6), (2, 6), (3, 5)], ids=lambda p: f"V{p[0]}T{p[1]}")
def enumeration(request):
  """Random logits for every length ``1..T`` (padded to ``T_MAX`` with garbage) and, per length,
  the exact log-probability of every target (log-sum-exp over its alignments) and its best
  alignment's log-probability."""
  vocab, t_top = request.param
  blank = vocab
  rng = np.random.default_rng(vocab)
  logits = rng.normal(size=(t_top, T_MAX, vocab + 1)).astype(np.float32) * 2.0
  exact = {}
  for length in range(1, t_top + 1):
    x = logits[length - 1, :length].astype(np.float64)
    logp = x - np.logaddexp.reduce(x, axis=-1, keepdims=True)
    every = all_alignments(length, vocab + 1)
    scores = logp[np.arange(length)[None], every].sum(1)
    groups = {}
    for a, score in zip(every, scores):
      groups.setdefault(collapse_reference(a, blank), []).append(score)
    exact[length] = {y: (float(np.logaddexp.reduce(s)), max(s)) for y, s in groups.items()}
  return vocab, logits, exact


def _batch(vocab, logits, exact):
  """All (length, target) pairs as one padded batch, plus one unreachable target per length."""
  rows, labels = [], []
  for length, table in exact.items():
    for y in table:
      rows.append(length)
      labels.append(y)
    rows.append(length)
    labels.append((0,) * (length + 1) if vocab == 1 else (0, 0) * length)  # needs > length
  u = max(len(y) for y in labels)
  lab = np.full((len(labels), u), vocab, np.int32)
  for i, y in enumerate(labels):
    lab[i, :len(y)] = y
  lens = np.array([len(y) for y in labels], np.int32)
  batch_logits = logits[np.array(rows) - 1]
  return batch_logits, np.array(rows, np.int32), lab, lens, labels


def test_log_likelihood_equals_the_sum_over_alignments(enumeration):
  vocab, logits, exact = enumeration
  x, x_len, lab, lab_len, labels = _batch(vocab, logits, exact)
  got = np.asarray(ctc.log_likelihood(x, x_len, lab, lab_len, blank_id=vocab))
  for i, (length, y) in enumerate(zip(x_len, labels)):
    want = exact[int(length)].get(y)
    if want is None:  # unreachable: optax's floor instead of -inf
      assert got[i] < -1e4, (length, y, got[i])
    else:
      np.testing.assert_allclose(got[i], want[0], atol=2e-4, err_msg=f"T={length} y={y}")
  assert sum(len(t) for t in exact.values()) >= 15  # many targets compared


def test_best_alignment_is_the_most_likely_alignment(enumeration):
  vocab, logits, exact = enumeration
  x, x_len, lab, lab_len, labels = _batch(vocab, logits, exact)
  align, score = map(np.asarray, ctc.best_alignment(x, x_len, lab, lab_len, blank_id=vocab))
  logp = np.asarray(jax.nn.log_softmax(x, axis=-1))
  for i, (length, y) in enumerate(zip(x_len, labels)):
    want = exact[int(length)].get(y)
    if want is None:
      assert score[i] == -np.inf
      continue
    length = int(length)
    np.testing.assert_allclose(score[i], want[1], atol=1e-4)
    assert collapse_reference(align[i, :length], vocab) == y
    np.testing.assert_allclose(logp[i, np.arange(length), align[i, :length]].sum(), score[i],
                               atol=1e-4)
    assert np.all(align[i, length:] == vocab)  # padding is blank


@pytest.mark.parametrize("vocab", [1, 2])
def test_collapse_inverts_every_alignment(vocab):
  """collapse(a) == y for every alignment a of every y (T <= 6), and the alignments built
  forwards from y are exactly the preimage of y."""
  blank = vocab
  every = [a for length in range(1, T_MAX + 1) for a in all_alignments(length, vocab + 1)]
  padded = np.full((len(every), T_MAX), 7, np.int32)  # garbage past the length
  for i, a in enumerate(every):
    padded[i, :len(a)] = a
  lengths = np.array([len(a) for a in every])
  tokens, out_len = map(np.asarray, ctc.collapse(padded, lengths, blank_id=blank, pad_id=-1))
  preimage = {}
  for a, tok, n in zip(every, tokens, out_len):
    y = collapse_reference(a, blank)
    assert tuple(tok[:n]) == y and np.all(tok[n:] == -1)
    preimage.setdefault((len(a), y), set()).add(tuple(a))
  for (length, y), alignments in preimage.items():
    assert paths_of(y, length, blank) == alignments, (length, y)
  assert len(preimage) > 2 * T_MAX


def test_greedy_decode_collapses_the_argmax():
  logits = jnp.log(jnp.array([[[.1, .8, .1], [.1, .8, .1], [.1, .1, .8], [.7, .2, .1],
                               [.2, .7, .1], [.9, .05, .05]]]))
  tokens, n = ctc.greedy_decode(logits, jnp.array([5]), blank_id=2)
  assert int(n[0]) == 3 and tokens[0, :3].tolist() == [1, 0, 1]  # the 6th position is padding


def test_check_lengths_names_the_row_and_the_fix():
  ctc.check_lengths([3, 2], [[1, 2, 3, 4, 0, 0], [1, 1, 0, 0, 0, 0]], [4, 2], upsampling=2)
  with pytest.raises(ValueError, match=r"target 1 .*longer than the upsampled input.*upsampling"
                                       r"=1 x source length 2"):
    ctc.check_lengths([3, 2], [[1, 2, 3], [1, 2, 3]], [3, 3], upsampling=1)
  with pytest.raises(ValueError, match="adjacent repeats"):  # 3 tokens, 4 positions needed
    ctc.check_lengths([3], [[5, 5, 6]], [3], upsampling=1)


# ------------------------------------------------------------------------------- glancing


@pytest.mark.parametrize("ratio", ["0", "0.1", "0.3", "0.25", "0.5", "0.7", "0.33", "0.99",
                                   "1"])
def test_num_revealed_is_the_exact_ceiling(ratio):
  d = np.arange(4097, dtype=np.int32)
  got = np.asarray(glancing.num_revealed(jnp.asarray(d), float(ratio)))
  want = [math.ceil(fractions.Fraction(ratio) * int(k)) for k in d]
  np.testing.assert_array_equal(got, want)


def test_glancing_mask_reveals_exactly_ceil_f_d_positions():
  rng = np.random.default_rng(0)
  b, size = 512, 40
  lengths = rng.integers(0, size + 1, b).astype(np.int32)
  distance = (rng.random(b) * (lengths + 1)).astype(np.int32)  # 0 <= d <= length
  for i, ratio in enumerate((0.0, 0.3, 0.5, 1.0)):
    mask = np.asarray(glancing.glancing_mask(jax.random.key(i), jnp.asarray(distance),
                                             jnp.asarray(lengths), ratio=ratio, size=size))
    want = np.array([math.ceil(fractions.Fraction(str(ratio)) * int(k)) for k in distance])
    np.testing.assert_array_equal(mask.sum(1), want)
    assert not np.any(mask & (np.arange(size)[None] >= lengths[:, None]))  # only valid slots


def _uniformity_z(mask, k, n):
  """Largest |z| of the per-position counts against Binomial(rows, k / n)."""
  counts = mask.sum(0)[:n]
  p = k / n
  rows = mask.shape[0]
  return np.max(np.abs(counts - rows * p) / np.sqrt(rows * p * (1 - p)))


def test_glancing_positions_are_uniform_and_the_test_has_power():
  """Each of the n valid positions is revealed with probability k / n: every count within 5
  standard errors (40 tests: false alarm < 40 x 5.7e-7). Revealing the first k positions (a
  plausible bug) fails the same test."""
  rows, n, k = 4000, 40, 12
  d = jnp.full((rows,), 40, jnp.int32)
  mask = np.asarray(glancing.glancing_mask(jax.random.key(3), d, jnp.full((rows,), n),
                                           ratio=0.3, size=48))
  assert np.all(mask.sum(1) == k)
  assert _uniformity_z(mask, k, n) < 5
  biased = np.zeros_like(mask)
  biased[:, :k] = True
  assert _uniformity_z(biased, k, n) > 5


def test_glancing_rows_depend_only_on_their_index():
  d, lengths = jnp.array([5, 7, 3]), jnp.array([9, 9, 4])
  both = glancing.glancing_mask(jax.random.key(1), d, lengths, ratio=0.5, size=10)
  alone = glancing.glancing_mask(jax.random.key(1), d[:1], lengths[:1], ratio=0.5, size=10)
  np.testing.assert_array_equal(both[:1], alone)


def test_hamming_and_ratio_schedule():
  a = jnp.array([[1, 2, 3, 4], [1, 1, 1, 1]])
  r = jnp.array([[1, 0, 3, 0], [2, 2, 2, 2]])
  assert glancing.hamming(a, r, jnp.array([3, 2])).tolist() == [1, 2]
  assert float(glancing.ratio_at(0, start=0.5, end=0.3, num_steps=10)) == pytest.approx(0.5)
  assert float(glancing.ratio_at(5, start=0.5, end=0.3, num_steps=10)) == pytest.approx(0.4)
  assert float(glancing.ratio_at(99, start=0.5, end=0.3, num_steps=10)) == pytest.approx(0.3)
  with pytest.raises(ValueError, match="glancing start ratio"):
    glancing.ratio_at(0, start=1.5, end=0.3, num_steps=10)
