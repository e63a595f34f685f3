"""Tokenizers, corpus loading/splitting/packing, resumable batches, the synthetic Markov chain."""

import hashlib
import itertools
import os

import jax
import numpy as np
import pytest

from partext_jax.data import corpus
from partext_jax.data import synthetic
from partext_jax.data import tokenizer as tokenizer_lib

TEXTS = [
    "def f(x):\n\treturn x + 1  # comment\n",
    "class A:\n    '''Doc string with ünïcödé.'''\n    pass\n",
    "import os\nprint(os.path.join('a', 'b'))\n" * 3,
]


@pytest.fixture(scope="module")
def stdlib_docs():
  return corpus.load_stdlib(max_bytes=200_000)


# --- tokenizers ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,vocab_size", [("char", 64), ("bpe", 300)])
def test_tokenizer_round_trip(kind, vocab_size, stdlib_docs, tmp_path):
  train = [d.text for d in stdlib_docs[:20]]
  tok = tokenizer_lib.train_tokenizer(train, kind=kind, vocab_size=vocab_size)
  assert tok.kind == kind
  assert tok.vocab_size <= vocab_size
  held_out = stdlib_docs[-1].text[:2000]
  ids = tok.encode(held_out)
  assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < tok.vocab_size
  assert tok.separator_id not in ids
  if kind == "bpe":  # Byte-level: every string round-trips, and merges make it shorter.
    assert tok.decode(ids) == held_out
    assert len(ids) < len(held_out)
    assert tok.decode(tok.encode("€ 𝄞 \x00")) == "€ 𝄞 \x00"
  else:  # One id per character; characters outside the alphabet become U+FFFD.
    assert len(ids) == len(held_out)
    known = set(tok.hf.get_vocab())
    expected = "".join(c if c in known else tokenizer_lib.UNK for c in held_out)
    assert tok.decode(ids) == expected
    assert tok.decode(tok.encode("a\u4e2db")) == "a\ufffdb"
  path = os.path.join(tmp_path, "tok.json")
  tok.save(path)
  loaded = tokenizer_lib.load_tokenizer(path)
  assert loaded.kind == kind and loaded.vocab_size == tok.vocab_size
  np.testing.assert_array_equal(loaded.encode(held_out), ids)


def test_char_tokenizer_keeps_most_frequent_characters():
  tok = tokenizer_lib.train_tokenizer(["aaaabbbccd"], kind="char", vocab_size=5)
  assert tok.vocab_size == 5  # separator, UNK and the 3 most frequent characters.
  assert tok.decode(tok.encode("abcd ")) == "abc\ufffd\ufffd"
  assert tok.decode([tok.separator_id]) == tokenizer_lib.SEPARATOR
  assert tok.decode([0, 99]) == tokenizer_lib.SEPARATOR + "\ufffd"  # Out-of-range id (MASK).


def test_load_tokenizer_error_names_path(tmp_path):
  bad = os.path.join(tmp_path, "broken.json")
  with open(bad, "w") as f:
    f.write("{not json")
  with pytest.raises(ValueError, match="broken.json"):
    tokenizer_lib.load_tokenizer(bad)


# --- corpus ----------------------------------------------------------------------------------


def test_stdlib_corpus_excludes_tests_and_respects_cap(stdlib_docs):
  paths = [d.path for d in stdlib_docs]
  assert paths == sorted(paths) and len(set(paths)) == len(paths)
  for p in paths:
    parts = p.split("/")
    assert p.endswith(".py")
    assert not set(parts[:-1]) & {"test", "tests", "idlelib", "site-packages", "encodings",
                                  "pydoc_data"}, p
  sizes = [len(d.text.encode()) for d in stdlib_docs]
  assert sum(sizes) - max(sizes) < 200_000  # Reading stops once the cap is crossed.
  assert sum(sizes) >= 200_000  # The stdlib is far larger than the cap.


def test_split_is_a_stable_function_of_the_path(stdlib_docs):
  train, valid = corpus.split_documents(stdlib_docs, validation_fraction=0.2)
  assert len(train) + len(valid) == len(stdlib_docs) and valid and train
  for d in valid:  # Recompute the rule from scratch: SHA-256 of "split:" + relative path.
    h = int.from_bytes(hashlib.sha256(("split:" + d.path).encode()).digest()[:8], "big")
    assert h / 2.0**64 < 0.2
  # Independent of which other files are present.
  sub_train, sub_valid = corpus.split_documents(stdlib_docs[::2], validation_fraction=0.2)
  assert {d.path for d in sub_valid} == {d.path for d in valid} & {d.path for d in stdlib_docs[::2]}
  # Binomial check of the fraction over many synthetic paths (5 standard errors).
  n = 4000
  frac = np.mean([corpus.is_validation(f"pkg/mod_{i}.py", validation_fraction=0.2)
                  for i in range(n)])
  assert abs(frac - 0.2) < 5 * np.sqrt(0.2 * 0.8 / n)


def test_text_files_glob_and_errors(tmp_path):
  root = tmp_path / "texts"
  (root / "sub").mkdir(parents=True)
  (root / "a.txt").write_text("alpha")
  (root / "sub" / "b.txt").write_text("beta")
  (root / "c.md").write_text("gamma")
  (root / "empty.txt").write_text("  \n")
  docs = corpus.load_text_files(str(root), glob="**/*.txt", max_bytes=0)
  assert [d.path for d in docs] == ["a.txt", "sub/b.txt"]
  assert [d.text for d in docs] == ["alpha", "beta"]
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="nope"):
    corpus.load_text_files(missing, glob="*.txt", max_bytes=0)
  with pytest.raises(ValueError, match="no matching files"):
    corpus.load_text_files(str(root), glob="*.rst", max_bytes=0)
  only_empty = tmp_path / "only_empty"
  only_empty.mkdir()
  (only_empty / "e.txt").write_text("")
  with pytest.raises(ValueError, match="only_empty.*empty"):
    corpus.load_text_files(str(only_empty), glob="*.txt", max_bytes=0)
  with pytest.raises(FileNotFoundError, match="does_not_exist"):
    corpus.load_stdlib(max_bytes=10, root=str(tmp_path / "does_not_exist"))


def test_pack_concatenates_with_separators_and_drops_the_rest():
  docs = [np.array([1, 2, 3]), np.array([4, 5]), np.array([6])]
  out = corpus.pack(docs, seq_len=3, separator_id=0)
  assert out.dtype == np.int32 and out.shape == (3, 3)
  np.testing.assert_array_equal(out, [[1, 2, 3], [0, 4, 5], [0, 6, 0]])
  out2 = corpus.pack(docs, seq_len=4, separator_id=9)
  np.testing.assert_array_equal(out2, [[1, 2, 3, 9], [4, 5, 9, 6]])


def test_tokenize_split_counts(stdlib_docs):
  docs = stdlib_docs[:5]
  tok = tokenizer_lib.train_tokenizer([d.text for d in docs], kind="char", vocab_size=200)
  split = corpus.tokenize_split(docs, tok, seq_len=64)
  total_chars = sum(len(d.text) for d in docs)
  assert split.num_tokens == total_chars + len(docs)  # Char-level: one token per char + SEP.
  assert split.examples.shape == (split.num_tokens // 64, 64)
  assert split.token_counts[tok.separator_id] == len(docs)
  stream = np.concatenate([np.append(tok.encode(d.text), tok.separator_id) for d in docs])
  np.testing.assert_array_equal(split.examples.reshape(-1), stream[:split.examples.size])
  p = np.array([0.5, 0.25, 0.25])
  assert corpus.unigram_entropy_bits(np.array([2, 1, 1, 0])) == pytest.approx(
      -(p * np.log2(p)).sum())


def test_batches_are_a_pure_function_of_seed_and_step():
  examples = np.arange(10 * 3, dtype=np.int32).reshape(10, 3)
  straight = list(itertools.islice(corpus.iterate_batches(examples, batch_size=4, seed=7), 12))
  resumed = list(itertools.islice(
      corpus.iterate_batches(examples, batch_size=4, seed=7, start_step=5), 7))
  for a, b in zip(straight[5:], resumed):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(corpus.batch_at(examples, step=3, batch_size=4, seed=7),
                                straight[3])
  # Each epoch (10 consecutive stream positions) visits every example exactly once.
  stream = np.concatenate(straight)[:, 0] // 3
  for e in range(4):
    assert sorted(stream[10 * e:10 * (e + 1)]) == list(range(10))
  assert not np.array_equal(stream[:10], stream[10:20])  # A fresh permutation per epoch.
  other = corpus.batch_at(examples, step=0, batch_size=10, seed=8)
  assert not np.array_equal(other, np.concatenate(straight)[:10])


def test_eval_batches_are_a_fixed_spread_subset():
  ex = np.arange(6, dtype=np.int32).reshape(3, 2)
  (only,) = corpus.eval_batches(ex, batch_size=4, max_batches=5)
  assert only.shape == (4, 2)  # Tiled up to one batch.
  ex = np.arange(100, dtype=np.int32)[:, None]
  batches = corpus.eval_batches(ex, batch_size=8, max_batches=3)
  again = corpus.eval_batches(ex, batch_size=8, max_batches=3)
  assert len(batches) == 3 and all(b.shape == (8, 1) for b in batches)
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a, b)
  picked = np.concatenate(batches)[:, 0]
  assert len(set(picked)) == 24  # Without replacement ...
  assert picked.max() > 50  # ... and not just the first 24 examples.
  assert len(corpus.eval_batches(ex, batch_size=8, max_batches=50)) == 12


# --- Markov chain ----------------------------------------------------------------------------


@pytest.mark.parametrize("stationary_start", [True, False])
def test_markov_log_prob_and_entropy_match_enumeration(stationary_start):
  chain = synthetic.MarkovChain.random(seed=3, num_states=3, concentration=0.5,
                                       stationary_start=stationary_start)
  length = 5
  xs = np.array(list(itertools.product(range(3), repeat=length)))
  lp = chain.log_prob(xs)
  # Brute force from the definition, one sequence at a time.
  brute = [np.log(chain.initial[x[0]]) + sum(np.log(chain.transition[a, b])
                                             for a, b in zip(x[:-1], x[1:])) for x in xs]
  np.testing.assert_allclose(lp, brute, rtol=1e-12)
  np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=1e-12)
  np.testing.assert_allclose(chain.sequence_entropy(length), -(np.exp(lp) * lp).sum(),
                             rtol=1e-10)
  if stationary_start:  # Then H_L = H(mu) + (L - 1) * rate.
    mu = chain.initial
    np.testing.assert_allclose(
        chain.sequence_entropy(length), -(mu * np.log(mu)).sum() + (length - 1) *
        chain.entropy_rate(), rtol=1e-10)
    np.testing.assert_allclose(mu @ chain.transition, mu, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_markov_samples_match_exact_marginals_and_pairs(backend):
  chain = synthetic.MarkovChain.random(seed=1, num_states=4, concentration=1.0,
                                       stationary_start=False)
  n, length = 20000, 4
  if backend == "numpy":
    x = chain.sample_numpy(np.random.default_rng(0), num_sequences=n, length=length)
  else:
    x = np.asarray(chain.sample_jax(jax.random.PRNGKey(0), num_sequences=n, length=length))
  assert x.shape == (n, length) and x.dtype == np.int32
  marg = chain.marginals(length)
  for pos in range(length):
    freq = np.bincount(x[:, pos], minlength=4) / n
    se = np.sqrt(marg[pos] * (1 - marg[pos]) / n)
    assert np.all(np.abs(freq - marg[pos]) < 5 * se + 1e-9), (pos, freq, marg[pos])
  pair = np.zeros((4, 4))
  np.add.at(pair, (x[:, 0], x[:, 1]), 1.0 / n)
  expected = chain.initial[:, None] * chain.transition
  assert np.all(np.abs(pair - expected) < 5 * np.sqrt(expected * (1 - expected) / n) + 1e-9)
  # Mean log-prob of samples estimates -H_L (5 standard errors).
  lp = chain.log_prob(x)
  assert abs(-lp.mean() - chain.sequence_entropy(length)) < 5 * lp.std() / np.sqrt(n)


def test_markov_chain_is_seeded_and_decodes():
  a = synthetic.MarkovChain.random(seed=5, num_states=6, concentration=0.3)
  b = synthetic.MarkovChain.random(seed=5, num_states=6, concentration=0.3)
  np.testing.assert_array_equal(a.transition, b.transition)
  assert a.decode([0, 1, 5, 6]) == "abf?"
  with pytest.raises(ValueError):
    synthetic.MarkovChain.random(seed=0, num_states=1, concentration=1.0)
