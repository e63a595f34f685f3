"""Sample-quality metrics: generative perplexity and unigram entropy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax import evaluation
from partext_jax.models import llama


class _ByteTokenizer:
  """Test double: one token per byte (ids 3..), enough for a 97-token tiny model."""

  def encode(self, text, *, add_bos=False):
    del add_bos
    return [3 + (b % 90) for b in text.encode()]


@pytest.fixture(scope="module")
def tiny_judge():
  config = llama.LlamaConfig.tiny()
  params = llama.init_params(jax.random.key(0), config)
  return evaluation.Judge(llama.LlamaLM(config), params, _ByteTokenizer(), boundary_id=0)


def _direct_nll(judge, ids):
  """Sum of -log p over one framed sequence, scored alone with no padding."""
  tokens = jnp.asarray([ids], jnp.int32)
  positions = jnp.arange(len(ids))[None]
  logits, _, _ = judge.model(judge.params, tokens, positions, None, None, None)
  logp = jax.nn.log_softmax(logits[0, :-1], axis=-1)
  return -float(jnp.sum(logp[jnp.arange(len(ids) - 1), tokens[0, 1:]]))


def test_perplexity_matches_direct_scoring(tiny_judge):
  texts = ["hello world", "ab", "a longer sample of text!"]
  stats = evaluation.generative_perplexity(texts, judge=tiny_judge, batch_size=2,
                                           length_quantum=16)
  total, count = 0.0, 0
  for i, text in enumerate(texts):
    ids = [0] + tiny_judge.tokenizer.encode(text) + [0]
    nll = _direct_nll(tiny_judge, ids)
    np.testing.assert_allclose(stats.per_sample_nll[i], nll / (len(ids) - 1), rtol=1e-5)
    total, count = total + nll, count + len(ids) - 1
  assert stats.num_tokens == count  # text tokens plus one closing boundary each
  np.testing.assert_allclose(stats.nll_per_token, total / count, rtol=1e-5)
  np.testing.assert_allclose(stats.ppl, math.exp(total / count), rtol=1e-5)


def test_perplexity_independent_of_batching_and_padding(tiny_judge):
  texts = ["x = 1", "import os", "def f(a, b):\n  return a"]
  one = evaluation.generative_perplexity(texts, judge=tiny_judge, batch_size=1,
                                         length_quantum=8)
  many = evaluation.generative_perplexity(texts, judge=tiny_judge, batch_size=4,
                                          length_quantum=64)
  np.testing.assert_allclose(one.per_sample_nll, many.per_sample_nll, rtol=1e-5)


def test_long_texts_are_chunked_each_with_its_own_boundary(tiny_judge):
  text = "abcdefghij" * 3  # 30 tokens + closing boundary -> chunks of <= 9 scored tokens
  stats = evaluation.generative_perplexity([text], judge=tiny_judge, max_length=10)
  body = tiny_judge.tokenizer.encode(text) + [0]
  expect = sum(_direct_nll(tiny_judge, [0] + body[i:i + 9]) for i in range(0, len(body), 9))
  assert stats.num_tokens == len(body)
  np.testing.assert_allclose(stats.nll_per_token, expect / len(body), rtol=1e-5)


def test_bad_perplexity_input(tiny_judge):
  with pytest.raises(TypeError, match="sequence of strings"):
    evaluation.generative_perplexity("one string", judge=tiny_judge)
  with pytest.raises(ValueError, match="empty"):
    evaluation.generative_perplexity([], judge=tiny_judge)
  with pytest.raises(ValueError, match="max_length"):
    evaluation.generative_perplexity(["a"], judge=tiny_judge, max_length=1)


def test_smollm2_prefers_real_text_to_shuffled_words():
  """The real judge: an English sentence beats the same words in a random order."""
  judge = evaluation.Judge.load()
  sentence = ("The quick brown fox jumps over the lazy dog, and then it runs back into the "
              "forest to find its family before the sun goes down.")
  words = sentence.split()
  shuffled = " ".join(np.random.default_rng(0).permutation(words))
  stats = evaluation.generative_perplexity([sentence, shuffled], judge=judge, batch_size=2)
  assert stats.per_sample_nll[0] + 1.0 < stats.per_sample_nll[1]
  assert stats.ppl < 1000


def test_unigram_entropy():
  assert evaluation.unigram_entropy([[7, 7, 7, 7]]) == 0.0
  np.testing.assert_allclose(evaluation.unigram_entropy([[1, 2, 3, 4]]), math.log(4))
  np.testing.assert_allclose(evaluation.unigram_entropy(np.array([[1, 1, 2, 2], [5, 5, 5, 5]])),
                             math.log(2) / 2)
  # Ragged rows, and ignored ids (padding / MASK) are dropped before counting.
  np.testing.assert_allclose(
      evaluation.per_sample_entropy([[1, 2, 9, 9, 9], [4]], ignore_ids=[9]), [math.log(2), 0.0])
  with pytest.raises(ValueError, match="no tokens left"):
    evaluation.unigram_entropy([[9, 9]], ignore_ids=[9])
  with pytest.raises(ValueError, match="empty"):
    evaluation.unigram_entropy([])
