"""The masked-diffusion drafter (``docs/algorithms.md#diffusion-drafters``): lossless on toys,
a misreported q detected, one compile, bad input, the trainer's loss and data plumbing, and
greedy SmolLM2 with the shipped drafter equal to plain greedy decoding.

Toys: the target is an order-3 n-gram LM over ``V = 4`` tokens; the drafter is the exact
denoiser of a random joint over its window (``P = 2`` context tokens + ``gamma = 3`` MASKs), so
its proposals are informative but not the target's. The first ``K`` generated tokens of ``n``
rows are compared with the target's enumerated joint by the pooled chi-square test at a false
alarm of ``1e-6`` (:func:`partext_jax.testing.stats.pooled_chi_square`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax import testing
from partext_jax.ar import processors as lp
from partext_jax.ar.speculative import decode
from partext_jax.ar.speculative.drafters import DiffusionDrafter
from partext_jax.models import denoiser as denoiser_lib
from partext_jax.testing import ngram
from partext_jax.testing.stats import pooled_chi_square, sequence_counts
from partext_jax.training import diffusion_drafter as training
from test_spec_decode import smollm2  # noqa: F401 - fixture: SmolLM2, 5 prompts, greedy AR

V, K, N_ROWS, P, GAMMA = 4, 3, 3000, 2, 3
MASK = V
PROMPT = [1, 2]
TARGET_TABLE = ngram.random_ngram(0, vocab_size=V, order=3, concentration=1.0)
TARGET = ngram.ngram_lm(TARGET_TABLE)
WINDOW_JOINT = testing.random_joint(3, vocab_size=V, length=P + GAMMA, concentration=0.5)
TOY_DENOISER = testing.exact_denoiser(WINDOW_JOINT, mask_id=MASK)
FAST_COMPILE = {"xla_backend_optimization_level": 0}
PROCS = {"t1": lp.identity(), "t06_topk_topp": lp.build(temperature=0.6, top_k=3, top_p=0.9)}
ALPHA = 1e-6


def toy_window_model(params, window, t):
  del params
  return TOY_DENOISER(window, t)


def toy_drafter(passes=1, cls=DiffusionDrafter):
  return cls(toy_window_model, vocab_size=V, mask_id=MASK, gamma=GAMMA, context_len=P,
             passes=passes)


@functools.lru_cache(maxsize=None)
def exact_probs(proc: str):
  return ngram.exact_continuation_probs(TARGET_TABLE, PROMPT, num_tokens=K,
                                       processor=jax.jit(PROCS[proc]))


def run(drafter, proc, *, rows=N_ROWS, max_new_tokens=K, seed=0, dparams=None):
  out, info = decode.generate(jax.random.key(seed), TARGET, None, [PROMPT] * rows,
                              drafter=drafter, drafter_params=dparams,
                              max_new_tokens=max_new_tokens, processor=PROCS[proc], eos_id=None,
                              min_bucket=len(PROMPT), compiler_options=FAST_COMPILE)
  return np.asarray(out), info


def chi2(samples, probs):
  return pooled_chi_square(sequence_counts(samples, probs.shape), probs, alpha=ALPHA)


@pytest.mark.parametrize("passes,proc", [(1, "t1"), (3, "t1"), (1, "t06_topk_topp")])
def test_lossless_on_toys(passes, proc):
  samples, info = run(toy_drafter(passes), proc)
  res = chi2(samples, exact_probs(proc))
  assert res.zero_hits == 0 and res.passed, res
  assert np.asarray(info.lengths).sum() > np.asarray(info.target_calls).sum()  # drafts accepted


class UniformQDrafter(DiffusionDrafter):
  """A deliberately wrong sampler: draws from the denoiser but reports a uniform q."""

  def draft(self, rng_key, params, state, ctx, *, processor):
    state, draft = super().draft(rng_key, params, state, ctx, processor=processor)
    return state, draft._replace(draft_probs=jnp.full_like(draft.draft_probs, 1.0 / V))


def test_misreported_q_is_detected():
  samples, _ = run(toy_drafter(cls=UniformQDrafter), "t1")
  res = chi2(samples, exact_probs("t1"))
  assert res.statistic > res.threshold, res


def test_first_draft_acceptance_is_sum_of_min_p_q():
  """P(first draft accepted) = sum_x min(p(x), q(x)) with q the drafter's first marginal given
  the prompt window; the observed rate is within 5 binomial standard errors."""
  drafter = DiffusionDrafter(toy_window_model, vocab_size=V, mask_id=MASK, gamma=1,
                             context_len=P, block_len=GAMMA)
  window = jnp.asarray([PROMPT + [MASK] * GAMMA])
  q = np.asarray(jax.nn.softmax(TOY_DENOISER(window, None)[0, P]), np.float64)
  p = exact_probs("t1").sum(axis=(1, 2))
  expected = np.minimum(p, q).sum()
  _, info = run(drafter, "t1", max_new_tokens=2)
  rate = np.asarray(info.accepted).mean()
  se = np.sqrt(expected * (1 - expected) / N_ROWS)
  assert abs(rate - expected) < 5 * se, (rate, expected, se)


def test_one_compile_for_new_weights_and_bad_input():
  cfg = denoiser_lib.DenoiserConfig(vocab_size=V, max_len=P + GAMMA, d_model=16, num_layers=1,
                                    num_heads=2, mlp_dim=32)
  drafter = DiffusionDrafter(denoiser_lib.DenoiserApply(cfg), vocab_size=V, mask_id=cfg.mask_id,
                             gamma=GAMMA, context_len=P)
  fn = decode._generate_jit_with(tuple(sorted(FAST_COMPILE.items())))
  for seed in (0, 1):
    dparams = {"denoiser": denoiser_lib.init_params(jax.random.key(seed), cfg)}
    run(drafter, "t1", rows=2, dparams=dparams, seed=seed)
    if seed == 0:
      before = fn._cache_size()
  assert fn._cache_size() == before
  for kw, match in [(dict(gamma=0), "gamma"), (dict(passes=4), "passes"),
                    (dict(context_len=0), "context_len"), (dict(block_len=2), "block_len")]:
    with pytest.raises(ValueError, match=match):
      DiffusionDrafter(toy_window_model, vocab_size=V, mask_id=MASK,
                       **{"gamma": GAMMA, "context_len": P, **kw})
  with pytest.raises(TypeError, match="denoiser"):
    DiffusionDrafter(None, vocab_size=V, mask_id=MASK)
  with pytest.raises(ValueError, match="vocab_size"):
    decode.generate(jax.random.key(0), TARGET, None, [PROMPT], max_new_tokens=2,
                    drafter=DiffusionDrafter(toy_window_model, vocab_size=V + 1, mask_id=MASK,
                                             gamma=GAMMA, context_len=P))


def test_vocabulary_mapping_and_block_loss():
  """Context ids outside the draft vocabulary enter the window as MASK; q is 0 outside it; the
  block loss is finite, counts only masked in-vocabulary block positions and falls when
  trained."""
  vocab_ids = np.array([0, 2, 3], np.int32)
  ids = training.to_draft_ids(np.array([[0, 1, 2, 3]]), vocab_ids, mask_id=3)
  np.testing.assert_array_equal(ids, [[0, 3, 1, 2]])
  cfg = denoiser_lib.DenoiserConfig(vocab_size=3, max_len=6, d_model=16, num_layers=1,
                                    num_heads=2, mlp_dim=32)
  drafter = DiffusionDrafter(denoiser_lib.DenoiserApply(cfg), vocab_size=V, mask_id=3, gamma=2,
                             context_len=4)
  dparams = {"denoiser": denoiser_lib.init_params(jax.random.key(0), cfg),
             "vocab_ids": jnp.asarray(vocab_ids)}
  from partext_jax.ar.speculative.drafters import DraftContext  # noqa: PLC0415
  hist = jnp.asarray([[0, 1, 2, 3, 0, 0, 0, 0]])
  ctx = DraftContext(jnp.asarray([3]), jnp.asarray([3]), jnp.asarray([3]), jnp.asarray([0]),
                     hist, None)
  np.testing.assert_array_equal(jax.jit(drafter.window)(dparams, ctx), [[0, 3, 1, 2, 3, 3]])
  logits = jax.jit(drafter.marginal_logits)(dparams, ctx)
  assert logits.shape == (1, 2, V) and np.all(np.isneginf(np.asarray(logits)[..., 1]))
  _, draft = jax.jit(functools.partial(drafter.draft, processor=lp.identity()))(
      jax.random.key(0), dparams, (), ctx)
  assert not np.any(np.asarray(draft.tree.tokens)[0, 1:] == 1)
  np.testing.assert_allclose(np.asarray(draft.draft_probs)[0, :2].sum(-1), 1.0, rtol=1e-5)
  batch = jnp.asarray(np.random.default_rng(0).integers(0, 3, (16, 6)), jnp.int32)
  loss_fn = jax.jit(lambda p, k: training.block_loss(p, batch, k, config=cfg, context_len=4))
  params = dparams["denoiser"]
  loss0, aux = loss_fn(params, jax.random.key(0))
  assert np.isfinite(loss0) and 0 < float(aux["masked_tokens"]) <= 2
  grad = jax.jit(jax.grad(lambda p, k: training.block_loss(p, batch, k, config=cfg,
                                                           context_len=4)[0]))
  step = jax.jit(lambda p, k: jax.tree_util.tree_map(lambda a, g: a - 0.5 * g, p, grad(p, k)))
  for i in range(20):
    params = step(params, jax.random.key(i))
  assert float(loss_fn(params, jax.random.key(0))[0]) < float(loss0)


def test_window_starts_keep_blocks_inside_answers():
  starts = training.window_starts([10, 6], [5, 0], context_len=2, block_len=2)
  rows = {tuple(s) for s in starts.tolist()}
  assert rows == {(0, 3), (0, 4), (0, 5), (0, 6), (1, 0), (1, 1), (1, 2)}
  toks = np.arange(20).reshape(2, 10)
  np.testing.assert_array_equal(training.windows(toks, np.array([[1, 2]]), 3), [[12, 13, 14]])


# ------------------------------------------------------------------------- SmolLM2, greedy


def test_committed_asset_is_small_bfloat16_and_loads():
  import os  # noqa: PLC0415
  root = training.asset_directory()
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
  assert size <= 8 * 2**20, size
  meta = training.drafter_metadata()
  assert meta["param_dtype"] == "bfloat16" and "command" in meta and "valid" in meta
  drafter, dparams = training.load_drafter(gamma=6, passes=2)
  assert drafter.vocab_size == 49152 and drafter.block == meta["train_config"]["block_len"]
  assert dparams["vocab_ids"].shape == (meta["train_config"]["draft_vocab_size"],)
  with pytest.raises(ValueError, match="block_len"):
    training.load_drafter(gamma=meta["train_config"]["block_len"] + 1)


def test_smollm2_greedy_with_the_shipped_drafter_equals_plain_greedy(smollm2):
  """5 prompts x 64 tokens, batch 5: token for token plain greedy SmolLM2."""
  bundle, ids, ref = smollm2
  drafter, dparams = training.load_drafter(gamma=4)
  out, info = decode.generate(jax.random.key(0), bundle.model, bundle.params, ids,
                              drafter=drafter, drafter_params=dparams, max_new_tokens=64,
                              eos_id=None)
  np.testing.assert_array_equal(np.asarray(out), ref)
  assert np.asarray(info.lengths).sum() > np.asarray(info.target_calls).sum()
