"""Jacobi decoding (``docs/algorithms.md#jacobi-decoding``): greedy AR token for token, at most
``n`` iterations per block and exactly the analytic count on a deterministic bigram toy, the AR
KV cache, EOS / length stops, one compile per bucket, bad input. The SmolLM2 check also covers
Lookahead decoding (one shared greedy AR reference)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.ar import jacobi
from partext_jax.ar import sampling as ar
from partext_jax.models import llama
from partext_jax.testing import ngram

TINY = llama.LlamaLM(llama.LlamaConfig.tiny(eos_id=None))
PROMPTS = [[5, 9, 13, 4], [7, 3], [1, 2, 3, 4, 5, 6]]


@pytest.fixture(scope="module")
def tiny_params():
  return jax.jit(TINY.init)(jax.random.key(0))


@pytest.mark.parametrize("block_size", [1, 4, 7])
def test_equals_greedy_ar_and_iterations_at_most_n(tiny_params, block_size):
  n_new = 20
  ref, _ = ar.generate(jax.random.key(0), TINY, tiny_params, PROMPTS, max_new_tokens=n_new,
                       eos_id=None, min_bucket=8)
  out, info = jacobi.generate(TINY, tiny_params, PROMPTS, block_size=block_size,
                              max_new_tokens=n_new, eos_id=None, min_bucket=8)
  np.testing.assert_array_equal(out, ref)
  iters, blocks = np.asarray(info.block_iterations), np.asarray(info.num_blocks)
  np.testing.assert_array_equal(blocks, -(-n_new // block_size))  # no EOS: full blocks
  for b in range(len(PROMPTS)):
    assert np.all((iters[b, :blocks[b]] >= 1) & (iters[b, :blocks[b]] <= block_size))
    assert iters[b, :blocks[b]].sum() == info.target_calls[b]  # one forward per iteration
  np.testing.assert_array_equal(info.lengths, n_new)


# A deterministic bigram toy: greedy next token f(x). Pad (= 0, the guess) leads to the fixed
# point 2; 3 <-> 6 is a cycle that never meets it; 5 -> 4 -> 1 -> 0 -> 2.
F = (2, 0, 2, 6, 1, 4, 3)
BIGRAM = ngram.ngram_lm(ngram.NGramTable(10.0 * np.eye(len(F))[list(F)]))


def analytic_blocks(root: int, *, n: int, num_blocks: int, pad: int = 0):
  """Iterations and tokens of each block, from ``F`` alone.

  With ``y^0 = (pad,) * n`` and ``y^{k+1}_i = F(y^k_{i-1})`` (``y_0`` = the root),
  ``y^k_i = F^i(root)`` for ``i <= k`` and ``F^k(pad)`` for ``i > k``. Iteration ``k`` is the fixed
  point of the inputs ``y_1 .. y_{n-1}`` iff position ``k`` (if ``k < n``) has
  ``F^k(root) = F^{k-1}(pad)`` and positions ``> k`` (if ``k < n - 1``) have
  ``F^k(pad) = F^{k-1}(pad)``; ``k = n`` always is.
  """
  def power(x, k):
    for _ in range(k):
      x = F[x]
    return x

  def converged(k, r):
    return ((k > n - 1 or power(r, k) == power(pad, k - 1))
            and (k >= n - 1 or power(pad, k) == power(pad, k - 1)))

  iters, tokens = [], []
  for _ in range(num_blocks):
    iters.append(next(k for k in range(1, n + 1) if converged(k, root)))
    tokens += [power(root, i) for i in range(1, n + 1)]
    root = tokens[-1]
  return iters, tokens


def test_iterations_equal_the_analytic_count_on_a_bigram_toy():
  n, num_blocks = 5, 4
  prompts = [[3], [5, 1], [0, 6, 4], [2]]
  out, info = jacobi.generate(BIGRAM, None, prompts, block_size=n, max_new_tokens=n * num_blocks,
                              eos_id=None, min_bucket=4)
  seen = set()
  for b, prompt in enumerate(prompts):
    iters, tokens = analytic_blocks(prompt[-1], n=n, num_blocks=num_blocks)
    np.testing.assert_array_equal(out[b], tokens)
    np.testing.assert_array_equal(info.block_iterations[b], iters)
    seen.update(iters)
  assert len(seen) >= 3, seen  # early and late convergence both exercised


def test_cache_equals_ar_cache(tiny_params):
  n_new, p = 11, 8
  out, info = jacobi.generate(TINY, tiny_params, PROMPTS[:2], block_size=4, max_new_tokens=n_new,
                              eos_id=None, min_bucket=p, return_cache=True)
  for b, pr in enumerate(PROMPTS[:2]):
    full = jnp.asarray([pr + np.asarray(out[b]).tolist()])
    m = full.shape[1] - 1  # the last token is the root: not in the cache
    ref = jax.jit(lambda x, m=m: TINY(tiny_params, x, jnp.arange(m)[None], None,
                                      TINY.init_cache(1, m), jnp.zeros(1, int))[1])(full[:, :m])
    first = p - len(pr)
    # KVCache [L, B, G, S, D]: the slots of row b's sequence.
    np.testing.assert_allclose(info.cache.k[:, b, :, first:first + m], ref.k[:, 0], atol=1e-5)
    np.testing.assert_allclose(info.cache.v[:, b, :, first:first + m], ref.v[:, 0], atol=1e-5)


def test_eos_and_length_stops_match_ar():
  """Row 1 reaches EOS (2) inside a block; the others stop at the length limit mid-block."""
  model = ngram.ngram_lm(BIGRAM.logits_fn, eos_id=2)
  prompts = [[3], [4], [6, 3]]
  ref, ref_info = ar.generate(jax.random.key(0), model, None, prompts, max_new_tokens=9,
                              min_bucket=4)
  out, info = jacobi.generate(model, None, prompts, block_size=4, max_new_tokens=9, min_bucket=4)
  np.testing.assert_array_equal(out, ref)
  np.testing.assert_array_equal(info.lengths, ref_info.lengths)
  np.testing.assert_array_equal(info.finished, ref_info.finished)
  assert np.asarray(info.finished).tolist() == [False, True, False]


def test_one_compile_per_bucket(tiny_params):
  kw = dict(block_size=3, max_new_tokens=6, eos_id=None, min_bucket=8)
  jacobi.generate(TINY, tiny_params, [[1, 2, 3]], **kw)
  before = jacobi._generate_jit._cache_size()
  jacobi.generate(TINY, tiny_params, [[4, 5, 6, 7, 8]], **kw)
  jacobi.generate(TINY, tiny_params, [[9]], **kw)
  assert jacobi._generate_jit._cache_size() == before
  jacobi.generate(TINY, tiny_params, [list(range(1, 12))], **kw)  # bucket 16
  assert jacobi._generate_jit._cache_size() == before + 1


def test_bad_input_fails_before_compiling(tiny_params):
  before = jacobi._generate_jit._cache_size()
  with pytest.raises(ValueError, match="block_size"):
    jacobi.generate(TINY, tiny_params, [[1, 2]], block_size=0, max_new_tokens=4)
  with pytest.raises(TypeError, match="block_size"):
    jacobi.generate(TINY, tiny_params, [[1, 2]], block_size=2.5, max_new_tokens=4)
  ctx = TINY.config.context_length
  with pytest.raises(ValueError, match="block_size=.* does not fit"):
    jacobi.generate(TINY, tiny_params, [[1, 2]], block_size=ctx, max_new_tokens=4)
  with pytest.raises(ValueError, match="max_new_tokens"):
    jacobi.generate(TINY, tiny_params, [[1, 2]], block_size=2, max_new_tokens=0)
  assert jacobi._generate_jit._cache_size() == before


# ------------------------------------------------------- SmolLM2, greedy: Jacobi and Lookahead

# One definition of SmolLM2 + 5 chat prompts + their greedy AR continuations (64 tokens, no EOS
# stop): the fixture of the speculative-decoding tests (module-scoped: built once per module).
from test_spec_decode import smollm2  # noqa: E402,F401  pylint: disable=wrong-import-position


def test_smollm2_jacobi_equals_greedy_ar(smollm2):
  bundle, ids, ref = smollm2
  n = 4
  out, info = jacobi.generate(bundle.model, bundle.params, ids, block_size=n, max_new_tokens=64,
                              eos_id=None)
  np.testing.assert_array_equal(np.asarray(out), ref)
  iters = np.asarray(info.block_iterations)
  assert np.all((iters >= 1) & (iters <= n)) and np.all(np.asarray(info.num_blocks) == 64 // n)


def test_smollm2_lookahead_equals_greedy_ar(smollm2):
  from partext_jax.ar.speculative import decode, drafters  # pylint: disable=import-outside-toplevel
  bundle, ids, ref = smollm2
  d = drafters.LookaheadDrafter(vocab_size=bundle.model.config.vocab_size, window=3, ngram=3,
                                pool_size=3)
  out, info = decode.generate(jax.random.key(0), bundle.model, bundle.params, ids, drafter=d,
                              max_new_tokens=64, eos_id=None)
  np.testing.assert_array_equal(np.asarray(out), ref)
  assert np.asarray(info.lengths).sum() > np.asarray(info.target_calls).sum()
