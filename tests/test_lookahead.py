"""Lookahead decoding (``docs/algorithms.md#lookahead-decoding``): the window is a tree whose
top row gets one Jacobi iteration per forward, the pool (LRU per key, trie of candidates),
greedy output equals AR, losslessness at temperature > 0 (pooled chi-square at ``ALPHA``; the
lossy ``"typical"`` rule fails the same test), one compile per bucket, bad input.
(SmolLM2 greedy equality: ``tests/test_jacobi.py``, which shares one AR reference.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.ar import processors as lp
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import decode, drafters, trees
from partext_jax.ar.speculative.drafters import lookahead
from partext_jax.models import llama
from partext_jax.testing import ngram, stats

TINY = llama.LlamaLM(llama.LlamaConfig.tiny(eos_id=None))
V, K, N_ROWS, ALPHA = 4, 4, 3000, 1e-6
TARGET_TABLE = ngram.random_ngram(0, vocab_size=V, order=3, concentration=1.0)
TARGET = ngram.ngram_lm(TARGET_TABLE)
PROMPT = [1, 2, 3, 1, 2, 0, 1, 2]  # the root 2 starts prompt trigrams: candidates at step 0
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def tiny_params():
  return jax.jit(TINY.init)(jax.random.key(0))


@pytest.mark.parametrize("window,ngram_size,pool", [(5, 4, 5), (1, 2, 1)])
def test_greedy_equals_ar(tiny_params, window, ngram_size, pool):
  prompts = [[5, 9, 13, 4, 5, 9, 13, 4], [7, 3], [1, 2, 3, 4, 5, 6]]
  ref, _ = ar.generate(jax.random.key(0), TINY, tiny_params, prompts, max_new_tokens=24,
                       eos_id=None, min_bucket=8)
  d = drafters.LookaheadDrafter(vocab_size=TINY.config.vocab_size, window=window,
                                ngram=ngram_size, pool_size=pool)
  out, info = decode.generate(jax.random.key(0), TINY, tiny_params, prompts, drafter=d,
                              max_new_tokens=24, eos_id=None, min_bucket=8,
                              compiler_options=FAST_COMPILE)
  np.testing.assert_array_equal(out, ref)
  assert np.asarray(info.lengths).sum() > np.asarray(info.target_calls).sum()


def _context(prompt_tokens, p):
  b = prompt_tokens.shape[0]
  first = jnp.zeros((b,), jnp.int32)
  root_slot = jnp.full((b,), p - 1, jnp.int32)
  history = jnp.zeros((b, 64), jnp.int32).at[:, :p].set(prompt_tokens)
  return drafters.DraftContext(prompt_tokens[:, -1], root_slot, root_slot, first, history,
                               jnp.zeros((b, 1)))


def test_window_is_a_tree_of_jacobi_chains_and_moves_down():
  """Window cell (l, j) has root path (x, row_0[1..j], row_1[j] .. row_l[j]) at depth l + j; after
  one forward the top row is the argmax after each column's chain, and the rows move down."""
  table = ngram.random_ngram(3, vocab_size=6, order=3)
  model = ngram.ngram_lm(table)
  d = drafters.LookaheadDrafter(vocab_size=6, window=3, ngram=4, pool_size=2)
  prompt = jnp.asarray([[4, 1, 5, 0, 3, 2, 2]])
  p = prompt.shape[1]
  ctx = _context(prompt, p)
  state = jax.jit(d.init, static_argnames="cache_len")(None, prompt, ctx.first_slot, cache_len=64)
  state, draft = jax.jit(functools.partial(d.draft, processor=lp.identity()))(
      jax.random.key(0), None, state, ctx)
  tree = draft.tree
  win = np.asarray(state.window[0])
  paths = np.asarray(trees.root_paths(tree.parent[0], max_depth=tree.size))
  toks = np.asarray(tree.tokens[0])
  for l in range(d.ngram - 1):
    for j in range(d.window):
      node = d._window_node(l, j)
      want = [int(prompt[0, -1])] + [int(win[0, c]) for c in range(1, j + 1)]
      want += [int(win[r, j]) for r in range(1, l + 1)]
      path = [int(toks[i]) for i in paths[node] if i >= 0]
      assert path == want, (l, j, path, want)
      assert int(tree.depth[0, node]) == l + j
      assert bool(tree.valid[0, node]) == (node == 0)  # window cells are never verified
  # The forward the decode loop runs, then commit.
  @jax.jit
  def forward_and_commit(state, tree):
    cache = ar.prefill(model, None, prompt, ctx.first_slot, 64,
                       logits_at=jnp.zeros((1, 1), jnp.int32)).cache
    mask = trees.tree_mask(trees.ancestor_mask(tree.parent), root_slot=ctx.root_slot,
                           first_slot=ctx.first_slot)
    logits = model(None, tree.tokens, ctx.root_position[:, None] + tree.depth, mask, cache,
                   ctx.root_slot).logits
    info = drafters.CommitInfo(tree, jnp.zeros((1, d.max_depth + 1), jnp.int32),
                               jnp.zeros((1,), jnp.int32), ctx.root_slot, ctx.first_slot,
                               jnp.ones((1,), bool), logits)
    return d.commit(None, state, info)

  new = forward_and_commit(state, tree)
  top = d.ngram - 2
  for j in range(d.window):
    seq = np.concatenate([np.asarray(prompt[0, :-1]),
                          [int(toks[i]) for i in paths[d._window_node(top, j)] if i >= 0]])
    want = int(np.argmax(np.asarray(table(jnp.asarray(seq)[None]))[0, -1]))
    assert int(new.window[0, top, j]) == want, j
  np.testing.assert_array_equal(new.window[0, :-1], win[1:])


def test_pool_is_lru_per_key_and_candidates_form_a_trie():
  pool = lookahead.Pool.empty(1, 8, 3, 2)
  key = jnp.array([5])
  insert = jax.jit(lookahead.Pool.insert)
  for gram in [(1, 2), (1, 3), (1, 2), (4, 4), (6, 1)]:
    pool = insert(pool, key, jnp.array([gram]), jnp.array([True]))
  # (1, 2) was harvested again (refreshed), so the 4th distinct n-gram evicts the least recently
  # harvested one, (1, 3) (first in, first out would have evicted (1, 2)).
  grams, stored = pool.candidates(key)
  assert np.asarray(stored).all() and int(pool.clock[0]) == 5
  assert sorted(map(tuple, np.asarray(grams[0]).tolist())) == [(1, 2), (4, 4), (6, 1)]
  pool = insert(pool, key, jnp.array([(7, 7)]), jnp.array([False]))  # ok=False: nothing
  assert sorted(map(tuple, np.asarray(pool.candidates(key)[0][0]).tolist())) == [
      (1, 2), (4, 4), (6, 1)]
  assert not np.asarray(pool.candidates(jnp.array([4]))[1]).any()  # another key: empty

  cand = jnp.array([[[5, 6, 7], [5, 6, 8], [5, 9, 7], [3, 1, 1], [5, 6, 7]]])
  ok = jnp.array([[True, True, True, True, False]])
  tokens, parent, depth, valid = jax.jit(lookahead._candidate_trie)(cand, ok)
  kept = {}
  for i in np.nonzero(np.asarray(valid[0]))[0]:
    node = 1 + i  # tree index (the root is node 0)
    par = int(parent[0, i])
    prefix = (kept[par] if par else ()) + (int(tokens[0, i]),)
    assert len(prefix) == int(depth[0, i])
    kept[node] = prefix
  assert sorted(kept.values()) == sorted([(5,), (5, 6), (5, 6, 7), (5, 6, 8), (5, 9), (5, 9, 7),
                                          (3,), (3, 1), (3, 1, 1)])
  assert np.all(np.asarray(parent[0]) < np.arange(1, 16))


@pytest.mark.parametrize("rule,proc", [
    ("topk", lp.identity()), ("match", lp.identity()),
    ("topk", lp.build(temperature=0.6, top_k=3))])
def test_lossless_at_temperature(rule, proc):
  exact = ngram.exact_continuation_probs(TARGET_TABLE, PROMPT, num_tokens=K,
                                         processor=jax.jit(proc))
  d = drafters.LookaheadDrafter(vocab_size=V, window=2, ngram=3, pool_size=2)

  def chi_square(rule):
    out, info = decode.generate(jax.random.key(2), TARGET, None, [PROMPT] * N_ROWS, drafter=d,
                                max_new_tokens=K, processor=proc, rule=rule, eos_id=None,
                                min_bucket=len(PROMPT), compiler_options=FAST_COMPILE)
    counts = stats.sequence_counts(np.asarray(out), exact.shape)
    return stats.pooled_chi_square(counts, exact, alpha=ALPHA), info

  res, info = chi_square(rule)
  assert res.passed, res
  assert np.asarray(info.accepted).sum() > 0.1 * N_ROWS  # candidates were accepted
  if rule == "topk" and isinstance(proc, lp.Identity):
    lossy, _ = chi_square("typical")  # accepts any likely-enough candidate: biased
    assert not lossy.passed and lossy.statistic > 2 * lossy.threshold, lossy


def test_one_compile_per_bucket():
  d = drafters.LookaheadDrafter(vocab_size=V, window=2, ngram=3, pool_size=2)
  kw = dict(drafter=d, max_new_tokens=6, eos_id=None, min_bucket=8, temperature=1.0)
  jit = decode._generate_jit_with(tuple(FAST_COMPILE.items()))
  decode.generate(jax.random.key(0), TARGET, None, [[1, 2, 3]], **kw,
                  compiler_options=FAST_COMPILE)
  before = jit._cache_size()
  decode.generate(jax.random.key(1), TARGET, None, [[0, 1, 2, 3, 3]], **kw,
                  compiler_options=FAST_COMPILE)
  decode.generate(jax.random.key(2), TARGET, None, [[3]], **kw, compiler_options=FAST_COMPILE)
  assert jit._cache_size() == before
  decode.generate(jax.random.key(0), TARGET, None, [[1, 2] * 5], **kw,
                  compiler_options=FAST_COMPILE)  # bucket 16
  assert jit._cache_size() == before + 1


def test_bad_input(tiny_params):
  vocab = TINY.config.vocab_size
  for kw, name in [(dict(window=0), "window"), (dict(ngram=1), "ngram"),
                   (dict(pool_size=0), "pool_size"), (dict(vocab_size=0), "vocab_size")]:
    with pytest.raises(ValueError, match=name):
      drafters.LookaheadDrafter(**{"vocab_size": vocab, **kw})
  with pytest.raises(TypeError, match="window"):
    drafters.LookaheadDrafter(vocab_size=vocab, window=2.0)
  before = decode._generate_jit._cache_size()
  with pytest.raises(ValueError, match="vocab_size"):
    decode.generate(jax.random.key(0), TINY, tiny_params, [[1, 2]],
                    drafter=drafters.LookaheadDrafter(vocab_size=vocab + 1), max_new_tokens=4)
  with pytest.raises(ValueError, match="tree_size"):  # the window does not fit the context
    decode.generate(jax.random.key(0), TINY, tiny_params, [[1, 2]], max_new_tokens=4,
                    drafter=drafters.LookaheadDrafter(vocab_size=vocab, window=40, ngram=4))
  assert decode._generate_jit._cache_size() == before
