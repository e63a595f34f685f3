"""Losslessness of speculative decoding on enumerable toy n-gram models
(``docs/algorithms.md#speculative-decoding``, ``#correctness-properties``).

The first ``K`` generated tokens of ``n`` independent rows are compared with the target's exact
joint (enumerated) by Pearson's chi-square with the cells of expected count < 5 pooled
(:func:`partext_jax.testing.stats.pooled_chi_square`, ``docs/algorithms.md#statistical-tests``),
rejecting at a false-alarm probability ``ALPHA = 1e-6``; cells with ``p = 0`` must stay empty.
The same test flags a deliberately mismatched rule (i.i.d. rule on without-replacement siblings)
and a deliberately wrong sampler (speculative decoding of the draft model instead of the target).
"""

import functools

import jax
import numpy as np
import pytest

from partext_jax.ar import processors as lp
from partext_jax.ar.speculative import decode, drafters, verify
from partext_jax.testing import ngram
from partext_jax.testing.stats import pooled_chi_square, sequence_counts

V, K, N_ROWS = 4, 3, 3000
PROMPT = [1, 2]
TARGET_TABLE = ngram.random_ngram(0, vocab_size=V, order=3, concentration=1.0)
TARGET = ngram.ngram_lm(TARGET_TABLE)
# A drafter that puts zero mass on token 0 (which the target likes) and differs elsewhere.
DRAFT = ngram.ngram_lm(ngram.random_ngram(5, vocab_size=V, order=2, concentration=0.7,
                                        zero_tokens=(0,)))
TREE = ((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0))

# The toys run in milliseconds: compile for compile time (same program, LLVM -O0).
FAST_COMPILE = {"xla_backend_optimization_level": 0}
PROCS = {"t1": lp.identity(), "t06_topk_topp": lp.build(temperature=0.6, top_k=3, top_p=0.9)}


@functools.lru_cache(maxsize=None)
def exact_probs(proc: str, num_tokens: int = K):
  """The target's exact joint of the first ``num_tokens`` tokens (cached: shared by the cases)."""
  return ngram.exact_continuation_probs(TARGET_TABLE, PROMPT, num_tokens=num_tokens,
                                       processor=jax.jit(PROCS[proc]))


ALPHA = 1e-6  # False-alarm probability of each goodness-of-fit test.


def chi2(samples, probs):
  """Pooled chi-square of the rows of ``samples`` against the exact joint ``probs``."""
  return pooled_chi_square(sequence_counts(samples, probs.shape), probs, alpha=ALPHA)


def run(drafter, proc, rule=None, seed=0):
  out, info = decode.generate(jax.random.key(seed), TARGET, None, [PROMPT] * N_ROWS,
                              drafter=drafter, max_new_tokens=K, processor=proc, rule=rule,
                              eos_id=None, min_bucket=len(PROMPT), compiler_options=FAST_COMPILE)
  return np.asarray(out), info


CASES = [
    ("chain_iid", lambda: drafters.LMDrafter(DRAFT, mode="chain", gamma=3), "t1"),
    ("chain_iid", lambda: drafters.LMDrafter(DRAFT, mode="chain", gamma=3), "t06_topk_topp"),
    ("tree_iid", lambda: drafters.LMDrafter(DRAFT, mode="tree_iid", choices=TREE), "t1"),
    ("tree_wor", lambda: drafters.LMDrafter(DRAFT, mode="tree_wor", choices=TREE),
     "t06_topk_topp"),
    ("tree_topk", lambda: drafters.LMDrafter(DRAFT, mode="tree_topk", choices=TREE),
     "t06_topk_topp"),
    ("eagle", lambda: drafters.LMDrafter(DRAFT, mode="eagle", gamma=2, top_k=2, num_nodes=5),
     "t1"),
    ("prompt_lookup", lambda: drafters.PromptLookupDrafter(gamma=3, max_ngram=2), "t1"),
]


@pytest.mark.parametrize("name,make,proc", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_lossless(name, make, proc):
  exact = exact_probs(proc)
  samples, info = run(make(), PROCS[proc])
  res = chi2(samples, exact)
  assert res.zero_hits == 0, f"{name}: {res.zero_hits} samples of probability-0 sequences"
  assert res.passed, (name, res)
  # Speculation happened (more than one token per target forward on average).
  assert np.asarray(info.lengths).sum() > np.asarray(info.target_calls).sum()


def test_sample_and_match_oracle_on_wor_tree():
  exact = exact_probs("t1")
  samples, _ = run(drafters.LMDrafter(DRAFT, mode="tree_wor", choices=TREE), PROCS["t1"],
                   rule="match")
  res = chi2(samples, exact)
  assert res.zero_hits == 0 and res.passed, res


def test_wrong_sampler_is_detected():
  """The lossless test rejects speculative decoding of the wrong model (the draft's law)."""
  out, _ = decode.generate(jax.random.key(0), DRAFT, None, [PROMPT] * N_ROWS,
                           drafter=drafters.LMDrafter(DRAFT, mode="chain", gamma=3),
                           max_new_tokens=K, processor=lp.identity(), eos_id=None,
                           min_bucket=len(PROMPT), compiler_options=FAST_COMPILE)
  res = chi2(np.asarray(out), exact_probs("t1"))
  assert res.zero_hits == 0 and res.statistic > res.threshold, res


def test_mismatched_rule_is_detected():
  """The i.i.d. rule on without-replacement siblings is biased; the same test rejects it."""
  t = ngram.random_ngram(3, vocab_size=V, order=2, concentration=0.5)
  q = ngram.ngram_lm(ngram.random_ngram(4, vocab_size=V, order=2, concentration=5.0))
  exact = ngram.exact_continuation_probs(t, PROMPT, num_tokens=1, processor=lp.identity())
  wide = ((0,), (1,), (2,), (3,))
  # X^2 grows like n times the bias's chi2-divergence: with 4 N_ROWS samples two seeds gave
  # 64 and 89 against the df + 6 sqrt(2 df) = 17.7 bound used before pooling (the matching
  # rule: 0.9 and 3.6, df = 3); the alpha = 1e-6 quantile at df = 3 is 30.7.
  out, _ = decode.generate(jax.random.key(1), ngram.ngram_lm(t), None, [PROMPT] * (4 * N_ROWS),
                           drafter=drafters.LMDrafter(q, mode="tree_wor", choices=wide),
                           max_new_tokens=1, processor=lp.identity(), rule="iid", eos_id=None,
                           min_bucket=len(PROMPT), compiler_options=FAST_COMPILE)
  res = chi2(np.asarray(out), exact)
  assert res.statistic > res.threshold, res


_verify = jax.jit(verify.verify, static_argnames=("rule", "greedy"))  # eager: op-by-op compiles


def test_verify_greedy_exact_match_and_bad_rule():
  from partext_jax.ar.speculative import trees
  spec = trees.TreeSpec.from_choices(((0,), (1,), (0, 0)))
  tree = spec.tree(np.array([[9, 3, 2, 5]]))
  p = np.zeros((1, 4, 10), np.float32)
  p[0, 0, 2] = 1  # after root: 2 (node 2)
  p[0, 2, 7] = 1  # after node 2: 7 (no child matches -> emit 7)
  res = _verify(jax.random.key(0), tree, p, rule="match", greedy=True)
  assert res.path.tolist() == [[0, 2, -1, -1]] and res.num_accepted.tolist() == [1]
  assert res.next_token.tolist() == [7]
  with pytest.raises(ValueError, match="rule"):
    _verify(jax.random.key(0), tree, p, rule="nope")
  with pytest.raises(ValueError, match="q_probs"):
    _verify(jax.random.key(0), tree, p, rule="iid")


def test_typical_acceptance_is_explicit_and_lossy_by_design():
  """``rule="typical"`` accepts a likely-enough child without residual correction."""
  from partext_jax.ar.speculative import trees
  tree = trees.TreeSpec.chain(1).tree(np.array([[0, 1]]))
  p = np.array([[[0.0, 0.6, 0.4], [1.0, 0.0, 0.0]]], np.float32)
  res = _verify(jax.random.key(0), tree, p, rule="typical")
  assert res.num_accepted.tolist() == [1] and res.next_token.tolist() == [0]
  p_low = np.array([[[0.0, 0.05, 0.95], [1.0, 0.0, 0.0]]], np.float32)
  res = _verify(jax.random.key(0), tree, p_low, rule="typical")
  assert res.num_accepted.tolist() == [0]
  assert "typical" not in verify.LOSSLESS_RULES


def test_typical_acceptance_uses_medusas_threshold_and_alpha():
  """``p(x) > min(0.09, 0.3 exp(-H(p)))`` (Medusa's ``evaluate_posterior`` defaults), by hand.

  Case A, p = (0.92, 0.08): H = -(0.92 ln 0.92 + 0.08 ln 0.08) = 0.2788, 0.3 exp(-H) = 0.2271,
  so the threshold is the hard 0.09 and the child 1 (p = 0.08) is rejected. (The swapped
  defaults, min(0.3, 0.09 exp(-H)) = 0.0681, would accept it.)
  Case B, p uniform over 20 tokens: H = ln 20, 0.3 exp(-H) = 0.015 < 0.09, so the entropy term
  decides: a child with p = 0.05 is accepted; the same child under a peaked row (p = 0.05 next to
  0.95: threshold 0.09) is rejected.
  """
  from partext_jax.ar.speculative import trees
  tree = trees.TreeSpec.chain(1).tree(np.array([[0, 1]] * 3))
  p = np.zeros((3, 2, 20), np.float32)
  p[:, 1, 0] = 1.0                                   # after the child: token 0
  p[0, 0, :2] = [0.92, 0.08]                         # case A
  p[1, 0, :] = 1 / 20                                # case B, uniform
  p[2, 0, :2] = [0.95, 0.05]                         # case B, peaked
  h = [-(0.92 * np.log(0.92) + 0.08 * np.log(0.08)), np.log(20.0),
       -(0.95 * np.log(0.95) + 0.05 * np.log(0.05))]
  thresholds = np.minimum(0.09, 0.3 * np.exp(-np.asarray(h)))
  np.testing.assert_allclose(thresholds, [0.09, 0.015, 0.09], atol=1e-12)
  res = _verify(jax.random.key(0), tree, p, rule="typical")
  assert res.num_accepted.tolist() == [0, 1, 0]
  # Explicit parameters move the threshold: alpha = 0.09, threshold = 0.3 (swapped) accepts A.
  swapped = jax.jit(functools.partial(verify.verify, rule="typical", posterior_threshold=0.3,
                                      posterior_alpha=0.09))(jax.random.key(0), tree, p)
  assert swapped.num_accepted.tolist() == [1, 1, 0]
