"""Autoregressive sampler and logits processors."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.models import llama
from partext_jax.ar import sampling as ar
from partext_jax.base import LMOutput
from partext_jax.ar import processors as lp

# ----------------------------------------------------------------------------- processors


def _sample(proc, logits, n_keys=64):
  keys = jax.random.split(jax.random.key(0), n_keys)
  return jax.vmap(lambda k: jax.random.categorical(k, proc(logits), axis=-1))(keys)


def test_top_k_1_equals_greedy():
  logits = jax.random.normal(jax.random.key(1), (4, 50))
  samples = _sample(lp.top_k(1), logits)
  np.testing.assert_array_equal(samples, np.broadcast_to(np.argmax(logits, -1), samples.shape))
  greedy = _sample(lp.build(temperature=0.0), logits)
  np.testing.assert_array_equal(samples, greedy)


def test_top_k_keeps_k():
  logits = jax.random.normal(jax.random.key(2), (3, 20))
  kept = np.isfinite(np.asarray(lp.top_k(5)(logits)))
  assert kept.sum(-1).tolist() == [5, 5, 5]
  top5 = np.argsort(-np.asarray(logits), -1)[:, :5]
  assert all(kept[i, top5[i]].all() for i in range(3))


def test_top_p_keeps_top_token_and_minimal_set():
  logits = jnp.log(jnp.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]]))
  keep = lambda p: np.isfinite(np.asarray(lp.top_p(p)(logits)))
  assert keep(1e-6).tolist() == [[False, True, False], [True, False, False]]
  # Mass before the 2nd token is 0.5: kept iff 0.5 < p.
  assert keep(0.5).tolist() == [[False, True, False], [True, False, False]]
  assert keep(0.6).tolist() == [[False, True, True], [True, False, False]]
  assert keep(0.95).tolist() == [[True, True, True], [True, True, False]]
  assert keep(0.99).all()
  assert keep(1.0).all()


def test_one_hot_logits_give_exact_tokens():
  target = jnp.array([3, 0, 7])
  logits = jnp.where(jax.nn.one_hot(target, 10) > 0, 0.0, -jnp.inf)
  for proc in (lp.identity(), lp.temperature(2.0), lp.build(temperature=0.7, top_k=3, top_p=0.9)):
    np.testing.assert_array_equal(_sample(proc, logits), np.broadcast_to(target, (64, 3)))


def test_temperature_sampling_frequencies():
  """Empirical frequencies of softmax(z / T) within 5 standard errors."""
  z = jnp.array([[1.0, 0.0, -1.0, 0.5]])
  t = 0.5
  n = 20000
  samples = np.asarray(_sample(lp.temperature(t), z, n_keys=n))[:, 0]
  p = np.asarray(jax.nn.softmax(z[0] / t))
  freq = np.bincount(samples, minlength=4) / n
  se = np.sqrt(p * (1 - p) / n)
  assert np.all(np.abs(freq - p) < 5 * se + 1e-9), (freq, p)


def test_processor_validation_and_chain():
  with pytest.raises(ValueError, match="temperature"):
    lp.temperature(0.0)
  with pytest.raises(ValueError, match="top_k"):
    lp.top_k(0)
  with pytest.raises(ValueError, match="top_p"):
    lp.top_p(1.5)
  with pytest.raises(ValueError, match="temperature"):
    lp.build(temperature=-1.0)
  c = lp.chain(lp.temperature(2.0), lp.chain(lp.top_k(2)))
  assert c == lp.chain(lp.temperature(2.0), lp.top_k(2)) and hash(c) == hash(lp.chain(
      lp.temperature(2.0), lp.top_k(2)))
  logits = jnp.array([[4.0, 2.0, 0.0]])
  np.testing.assert_allclose(c(logits), [[2.0, 1.0, -np.inf]])


# ----------------------------------------------------------------------------- sampler


@dataclasses.dataclass(frozen=True)
class CountingLM:
  """A test double: the next token is ``(last token + 1) % V`` with certainty."""

  vocab_size: int = 16
  context_length: int = 64
  eos_id: int | None = None
  pad_id: int | None = 0

  def init_cache(self, batch, max_len):
    return jnp.zeros((batch, max_len), jnp.int32)

  def __call__(self, params, tokens, positions, attn_mask, cache, write_slots, *,
               logits_at=None):
    if logits_at is not None:
      tokens = jnp.take_along_axis(tokens, logits_at, axis=1)
    nxt = (tokens + 1) % self.vocab_size
    return LMOutput(jnp.where(jax.nn.one_hot(nxt, self.vocab_size) > 0, 0.0, -1e9), cache)


def test_bucket_length_is_a_power_of_two_or_min_bucket():
  assert [ar.bucket_length(n) for n in (1, 16, 17, 33)] == [16, 16, 32, 64]
  assert ar.bucket_length(3, min_bucket=10) == 10 and ar.bucket_length(11, min_bucket=10) == 16
  tokens, lengths = ar.pad_prompts([[1, 2, 3], [4]], min_bucket=10, pad_id=9)
  assert tokens.shape == (2, 10) and lengths.tolist() == [3, 1]
  assert tokens[1].tolist() == [9] * 9 + [4]  # left padding


def test_counting_model_sampling_and_eos():
  model = CountingLM(eos_id=7)
  proc = lp.build(temperature=1.3, top_p=0.9)
  tokens, info = ar.generate(jax.random.key(0), model, None, [[1, 3], [5, 6, 9, 2]],
                             max_new_tokens=8, processor=proc, pad_id=0)
  assert np.asarray(tokens).tolist() == [[4, 5, 6, 7, 0, 0, 0, 0], [3, 4, 5, 6, 7, 0, 0, 0]]
  assert info.lengths.tolist() == [4, 5] and info.finished.tolist() == [True, True]
  assert int(info.num_steps) == 5  # stopped early: every row finished
  assert ar.trim(tokens, info) == [[4, 5, 6, 7], [3, 4, 5, 6, 7]]


def test_max_length_stopping_without_eos():
  tokens, info = ar.generate(jax.random.key(0), CountingLM(), None, [[14]], max_new_tokens=4,
                             eos_id=None)
  assert np.asarray(tokens).tolist() == [[15, 0, 1, 2]]
  assert int(info.num_steps) == 4 and info.lengths.tolist() == [4]
  assert not info.finished.any()


def test_stream_callback_sees_every_step():
  seen = []
  cb = lambda step, tok, done: seen.append((int(step), np.asarray(tok).tolist()))
  tokens, _ = ar.generate(jax.random.key(0), CountingLM(eos_id=9), None, [[5], [2]],
                          max_new_tokens=6, stream_callback=cb)
  jax.effects_barrier()
  assert [s for s, _ in seen] == list(range(len(seen)))
  assert np.stack([t for _, t in seen], 1).tolist() == np.asarray(tokens)[:, :len(seen)].tolist()


def test_argument_errors():
  model = CountingLM(context_length=40)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="max_new_tokens"):
    ar.generate(key, model, None, [[1, 2]], max_new_tokens=0)
  with pytest.raises(ValueError, match="context_length=40"):
    ar.generate(key, model, None, [[1] * 41], max_new_tokens=1)
  with pytest.raises(ValueError, match="lower max_new_tokens to <= 10"):
    ar.generate(key, model, None, [[1] * 30], max_new_tokens=11)
  with pytest.raises(ValueError, match=r"padding='middle'.*'left', 'right'"):
    ar.generate(key, model, None, [[1, 2]], max_new_tokens=2, padding="middle")
  with pytest.raises(ValueError, match="empty"):
    ar.generate(key, model, None, [[1], []], max_new_tokens=2)
  with pytest.raises(TypeError, match="list of prompts"):
    ar.generate(key, model, None, [1, 2], max_new_tokens=2)
  with pytest.raises(ValueError, match=r"\[0, 16\)"):
    ar.generate(key, model, None, [[1, 16]], max_new_tokens=2)
  with pytest.raises(ValueError, match="eos_id"):
    ar.generate(key, model, None, [[1]], max_new_tokens=2, eos_id="eos")


@pytest.fixture(scope="module")
def tiny_lm():
  config = llama.LlamaConfig.tiny()
  params = jax.jit(llama.init_params, static_argnames="config")(jax.random.key(0), config=config)
  # Sharper distributions: make greedy continuations non-trivial and far from ties.
  params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 20.0
  return llama.LlamaLM(config), params


PROMPTS = [[5, 9, 3], [11, 4, 60, 7, 8, 20, 33], [2 + i for i in range(12)]]


def test_batch_invariance_left_and_right_padding(tiny_lm):
  model, params = tiny_lm
  key = jax.random.key(0)
  alone = [np.asarray(ar.generate(key, model, params, [p], max_new_tokens=10, eos_id=None)[0][0])
           for p in PROMPTS]
  for padding in ("left", "right"):
    batch, info = ar.generate(key, model, params, PROMPTS, max_new_tokens=10, eos_id=None,
                              padding=padding)
    assert info.prompt_lengths.tolist() == [3, 7, 12]
    for i in range(len(PROMPTS)):
      np.testing.assert_array_equal(np.asarray(batch[i]), alone[i], err_msg=f"{padding} row {i}")
  # Not trivially constant output.
  assert len(set(np.concatenate(alone).tolist())) > 3


def test_same_bucket_does_not_retrace(tiny_lm, monkeypatch):
  model, params = tiny_lm
  counted = chex.assert_max_traces(ar.generate_impl, n=1)
  static = ar.STATIC_ARGNAMES
  monkeypatch.setattr(ar, "_generate_jit", jax.jit(counted, static_argnames=static))
  key = jax.random.key(0)
  a, _ = ar.generate(key, model, params, [[5, 9, 3], [1, 2]], max_new_tokens=6)
  b, _ = ar.generate(jax.random.key(1), model, params, [[7] * 16, [3, 4, 5, 6, 7]],
                     max_new_tokens=6)  # same bucket (16), different prompts, new key
  assert a.shape == b.shape == (2, 6)
  with pytest.raises(AssertionError):  # a new bucket (32) must retrace: the counter works
    ar.generate(key, model, params, [[7] * 17, [1]], max_new_tokens=6)
  chex.clear_trace_counter()


def test_sampling_is_reproducible_and_key_dependent(tiny_lm):
  model, params = tiny_lm
  proc = lp.build(temperature=1.0)
  run = lambda seed: np.asarray(ar.generate(jax.random.key(seed), model, params, [[1, 2, 3]] * 4,
                                            max_new_tokens=12, processor=proc, eos_id=None)[0])
  a, b, c = run(0), run(0), run(1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


# ----------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def bundle():
  from partext_jax import pretrained
  return pretrained.load_bundle()


@pytest.mark.slow
def test_generate_text_real_model_batched_equals_alone(bundle):
  prompts = ["What is the capital of France?", "Name a primary colour."]
  batched = ar.generate_text(bundle, prompts, max_new_tokens=24)
  alone = ar.generate_text(bundle, prompts[:1], max_new_tokens=24)
  assert "Paris" in batched.texts[0]
  assert batched.token_ids[0] == alone.token_ids[0]
  # EOS (<|im_end|>) stops the row and is counted in its length.
  for ids, n, fin in zip(batched.token_ids, batched.info.lengths, batched.info.finished):
    assert len(ids) == int(n) and (ids[-1] == bundle.tokenizer.eos_id) == bool(fin)
  with pytest.raises(ValueError, match="rng_key"):
    ar.generate_text(bundle, prompts, temperature=0.7)
