"""Block verification (Sun et al. 2025): lossless, never fewer accepted drafts than token-wise
(``docs/algorithms.md#block-verification``, ``#statistical-tests``).

Losslessness: the first ``K`` tokens of ``n`` independent rows against the enumerated joint of
the target, with :func:`partext_jax.testing.stats.pooled_chi_square` (cells expecting < 5 samples
pooled, threshold the chi-square quantile at ``ALPHA = 1e-6``). The same test rejects a naive
misreading of the rule. Acceptance: exact expectations per draft (:func:`verify.expected_accepted`)
averaged over every draft, the paper's two-token example, and a Monte-Carlo check of the sampled
accepted lengths against them (5 standard errors).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.ar import processors as lp
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import decode, drafters, trees, verify
from partext_jax.testing import ngram, stats

V, GAMMA, K, N_ROWS = 4, 3, 4, 3000
ALPHA = 1e-6
PROMPT = [1, 2]
TARGET_TABLE = ngram.random_ngram(10, vocab_size=V, order=2, concentration=0.7)
DRAFT_TABLE = ngram.random_ngram(11, vocab_size=V, order=2, concentration=0.7)
TARGET = ngram.ngram_lm(TARGET_TABLE)
DRAFT = ngram.ngram_lm(DRAFT_TABLE)
FAST_COMPILE = {"xla_backend_optimization_level": 0}
PROCS = {"t1": lp.identity(), "t06_topk": lp.build(temperature=0.6, top_k=3)}


@functools.lru_cache(maxsize=None)
def exact_probs(proc: str):
  return ngram.exact_continuation_probs(TARGET_TABLE, PROMPT, num_tokens=K,
                                       processor=jax.jit(PROCS[proc]))


def _tables(proc):
  """Processed next-token laws ``p[prev], q[prev]`` (``float32[V, V]``) of the bigram toys."""
  p = jax.nn.softmax(proc(jnp.asarray(TARGET_TABLE.logits)), axis=-1)
  q = jax.nn.softmax(proc(jnp.asarray(DRAFT_TABLE.logits)), axis=-1)
  return p, q


def _naive_block(key, tree, p, q):
  """A misreading of the rule: stop weight ``P_i`` at every ``i`` and the token-wise residual
  ``norm(max(p - q, 0))`` (no ``h_i``, no ``P_tau`` scaling)."""
  n, t = tree.tokens.shape
  x = tree.tokens[:, 1:, None]
  ratio = (jnp.take_along_axis(p[:, :-1], x, axis=2) / jnp.take_along_axis(q[:, :-1], x, axis=2))
  acc, big = jnp.ones((n,)), []
  for i in range(t - 1):
    acc = jnp.minimum(acc * ratio[:, i, 0], 1.0)
    big.append(acc)
  k_u, k_y = jax.random.split(key)
  u = jax.random.uniform(k_u, (n, t - 1))
  tau = jnp.max(jnp.where(u < jnp.stack(big, 1), jnp.arange(1, t), 0), axis=1)
  rows = jnp.arange(n)
  resid = jnp.maximum(p[rows, tau] - q[rows, tau], 0.0)
  final = jnp.where((tau == t - 1)[:, None], p[rows, tau], resid / resid.sum(-1, keepdims=True))
  return tau, jax.random.categorical(k_y, jnp.log(final)).astype(jnp.int32)


def _library_block(key, tree, p, q):
  res = verify.verify(key, tree, p, q, rule="block")
  return res.num_accepted, res.next_token


@functools.partial(jax.jit, static_argnames=("rule", "proc"))
def one_step_samples(key, *, rule, proc):
  """``N_ROWS`` draws of the first ``K`` tokens: one drafted chain of ``GAMMA`` tokens from ``q``
  verified by ``rule``, then plain ancestral sampling from ``p`` (the target's law exactly iff the
  rule is lossless)."""
  p_tab, q_tab = _tables(proc)
  k_draft, k_ver, k_cont = jax.random.split(key, 3)
  chain = [jnp.full((N_ROWS,), PROMPT[-1], jnp.int32)]
  for i in range(GAMMA):
    chain.append(jax.random.categorical(jax.random.fold_in(k_draft, i),
                                        jnp.log(q_tab[chain[-1]])).astype(jnp.int32))
  chain = jnp.stack(chain, 1)
  tree = trees.TreeSpec.chain(GAMMA).tree(chain)
  tau, y = (_library_block if rule == "block" else _naive_block)(k_ver, tree, p_tab[chain],
                                                                  q_tab[chain])
  out, prev = [], chain[:, 0]
  for j in range(K):
    cont = jax.random.categorical(jax.random.fold_in(k_cont, j), jnp.log(p_tab[prev]))
    tok = jnp.where(j < tau, chain[:, min(j + 1, GAMMA)], jnp.where(j == tau, y, cont))
    out.append(tok.astype(jnp.int32))
    prev = out[-1]
  return jnp.stack(out, 1), tau


def chi_square(samples, proc):
  exact = exact_probs(proc)
  return stats.pooled_chi_square(stats.sequence_counts(np.asarray(samples), exact.shape), exact,
                                 alpha=ALPHA)


@pytest.mark.parametrize("proc", sorted(PROCS))
def test_block_rule_one_step_is_lossless_and_naive_rule_is_not(proc):
  samples, tau = one_step_samples(jax.random.key(0), rule="block", proc=PROCS[proc])
  res = chi_square(samples, proc)
  assert res.passed, res
  assert np.mean(np.asarray(tau)) > 0.1  # drafts were accepted
  wrong, _ = one_step_samples(jax.random.key(0), rule="naive", proc=PROCS[proc])
  bad = chi_square(wrong, proc)
  assert not bad.passed and bad.statistic > 2 * bad.threshold, bad


CASES = [
    ("lm_chain", lambda: drafters.LMDrafter(DRAFT, mode="chain", gamma=GAMMA), "t1"),
    ("lm_chain", lambda: drafters.LMDrafter(DRAFT, mode="chain", gamma=GAMMA), "t06_topk"),
    ("prompt_lookup", lambda: drafters.PromptLookupDrafter(gamma=GAMMA, max_ngram=1), "t1"),
]


@pytest.mark.parametrize("name,make,proc", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_block_rule_in_decode_loop_is_lossless(name, make, proc):
  """``decode.generate(..., rule="block")`` with a stochastic (``q``) and a deterministic
  (one-hot ``q``) chain drafter; the prompt repeats so prompt lookup drafts."""
  prompt = [2, 1, 2, 3, 1, 2]
  exact = ngram.exact_continuation_probs(TARGET_TABLE, prompt, num_tokens=K,
                                         processor=jax.jit(PROCS[proc]))
  out, info = decode.generate(jax.random.key(1), TARGET, None, [prompt] * N_ROWS,
                              drafter=make(), max_new_tokens=K, processor=PROCS[proc],
                              rule="block", eos_id=None, min_bucket=len(prompt),
                              compiler_options=FAST_COMPILE)
  res = stats.pooled_chi_square(stats.sequence_counts(np.asarray(out), exact.shape), exact,
                                alpha=ALPHA)
  assert res.passed, (name, res)
  assert np.asarray(info.accepted).sum() > 0.1 * N_ROWS, name


def _all_chains(proc):
  """Every chain of ``GAMMA`` drafts after ``PROMPT[-1]`` with its probability under ``q``."""
  p_tab, q_tab = _tables(proc)
  chains = np.array([[PROMPT[-1], *x] for x in itertools.product(range(V), repeat=GAMMA)],
                    np.int32)
  weight = np.prod(np.asarray(q_tab)[chains[:, :-1], chains[:, 1:]], axis=1)
  return trees.TreeSpec.chain(GAMMA).tree(chains), p_tab[chains], q_tab[chains], weight


_expected = jax.jit(verify.expected_accepted, static_argnames=("rule",))


@pytest.mark.parametrize("proc", sorted(PROCS))
def test_block_accepts_at_least_tokenwise_on_the_same_drafts(proc):
  """Exact expectation over every draft, then a Monte-Carlo check on sampled drafts: each rule's
  mean accepted length within 5 SE of its exact value, and block - token-wise (paired on the same
  drafts) not below -3 SE."""
  tree, p, q, weight = _all_chains(PROCS[proc])
  e_block = float(np.sum(weight * np.asarray(_expected(tree, p, q, rule="block"))))
  e_token = float(np.sum(weight * np.asarray(_expected(tree, p, q, rule="iid"))))
  assert e_block >= e_token - 1e-6, (e_block, e_token)

  n = 20000
  p_tab, q_tab = _tables(PROCS[proc])
  rows = np.random.default_rng(0).choice(len(weight), size=n, p=weight / weight.sum())
  toks = tree.tokens[rows]
  sampled = trees.TreeSpec.chain(GAMMA).tree(toks)
  ver = jax.jit(verify.verify, static_argnames=("rule",))
  acc = {rule: np.asarray(ver(jax.random.key(7), sampled, p_tab[toks], q_tab[toks],
                              rule=rule).num_accepted, np.float64)
         for rule in ("block", "iid")}
  for rule, exact in (("block", e_block), ("iid", e_token)):
    se = acc[rule].std(ddof=1) / np.sqrt(n)
    assert abs(acc[rule].mean() - exact) < 5 * se, (rule, acc[rule].mean(), exact, se)
  diff = acc["block"] - acc["iid"]
  assert diff.mean() > -3 * diff.std(ddof=1) / np.sqrt(n), (diff.mean(), e_block, e_token)


def test_papers_two_token_example():
  """Sun et al.'s example: context-free p = (1/3, 2/3), q = (2/3, 1/3), two drafts: token-wise
  accepts 10/9 tokens in expectation, block verification 11/9."""
  p1, q1 = np.array([1 / 3, 2 / 3], np.float32), np.array([2 / 3, 1 / 3], np.float32)
  chains = np.array([[0, *x] for x in itertools.product(range(2), repeat=2)], np.int32)
  weight = np.prod(q1[chains[:, 1:]], axis=1)
  tree = trees.TreeSpec.chain(2).tree(chains)
  p = np.broadcast_to(p1, (4, 3, 2))
  q = np.broadcast_to(q1, (4, 3, 2))
  token = np.sum(weight * np.asarray(_expected(tree, p, q, rule="iid")))
  block = np.sum(weight * np.asarray(_expected(tree, p, q, rule="block")))
  np.testing.assert_allclose([token, block], [10 / 9, 11 / 9], rtol=1e-5)


def test_block_greedy_equals_ar():
  """Under a greedy processor the block rule accepts exactly the argmax-matching prefix."""
  prompts = [[1, 2, 3], [3, 0]]
  d = drafters.LMDrafter(DRAFT, mode="chain", gamma=GAMMA)
  out, info = decode.generate(jax.random.key(0), TARGET, None, prompts, drafter=d,
                              max_new_tokens=12, rule="block", eos_id=None, min_bucket=4,
                              compiler_options=FAST_COMPILE)
  ref, _ = ar.generate(jax.random.key(0), TARGET, None, prompts, max_new_tokens=12, eos_id=None,
                       min_bucket=4)
  np.testing.assert_array_equal(out, ref)


def test_block_rule_one_compile_per_bucket():
  d = drafters.PromptLookupDrafter(gamma=GAMMA, max_ngram=1)
  kw = dict(drafter=d, max_new_tokens=6, eos_id=None, min_bucket=8, temperature=1.0,
            rule="block", compiler_options=FAST_COMPILE)
  jit = decode._generate_jit_with(tuple(sorted(FAST_COMPILE.items())))
  decode.generate(jax.random.key(0), TARGET, None, [[1, 2, 3]], **kw)
  before = jit._cache_size()
  decode.generate(jax.random.key(1), TARGET, None, [[0, 1, 2, 3, 3]], **kw)
  decode.generate(jax.random.key(2), TARGET, None, [[3]], **kw)
  assert jit._cache_size() == before
  decode.generate(jax.random.key(0), TARGET, None, [[1, 2] * 5], **kw)  # bucket 16
  assert jit._cache_size() == before + 1


def test_block_rule_takes_chains_only():
  tree_drafter = drafters.LMDrafter(DRAFT, mode="tree_topk", choices=((0,), (1,), (0, 0)))
  with pytest.raises(ValueError, match="chains"):
    decode.generate(jax.random.key(0), TARGET, None, [PROMPT], drafter=tree_drafter,
                    max_new_tokens=4, rule="block", temperature=1.0)
  tree = trees.TreeSpec.from_choices(((0,), (1,))).tree(np.array([[0, 1, 2]]))
  p = np.full((1, 3, V), 1 / V, np.float32)
  with pytest.raises(ValueError, match="chains"):
    verify.verify(jax.random.key(0), tree, p, p, rule="block")
  with pytest.raises(ValueError, match="rule"):
    verify.expected_accepted(tree, p, p, rule="typical")


def test_pooled_chi_square_by_hand():
  """Expected counts (25, 15, 5, 3, 2): the cells expecting 3 and 2 are pooled into one cell
  expecting 5, leaving 4 cells (df = 3); X^2 = 1/5 + 1/5 + 9/15 + 25/25 = 2."""
  probs = np.array([0.5, 0.3, 0.1, 0.06, 0.04, 0.0])
  res = stats.pooled_chi_square(np.array([20, 18, 6, 4, 2, 0]), probs, alpha=0.01)
  assert (res.df, res.num_pooled, res.zero_hits) == (3, 2, 0)
  np.testing.assert_allclose(res.statistic, 2.0)
  np.testing.assert_allclose(res.threshold, 11.3449, atol=1e-3)  # chi2(3) 0.99 quantile
  assert res.passed
  assert not stats.pooled_chi_square(np.array([20, 18, 6, 4, 1, 1]), probs).passed  # p = 0 hit
  with pytest.raises(ValueError, match="draw more samples"):
    stats.pooled_chi_square(np.array([1, 1, 0, 0, 0, 0]), probs)
