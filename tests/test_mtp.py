"""Multi-token prediction: exact plumbing, Markov-chain optima, acceptance, losslessness, SmolLM2
(``docs/algorithms.md#multi-token-prediction``, ``#statistical-tests``)."""

import dataclasses
import json
import os
import pathlib
import runpy
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from partext_jax.ar import processors as lp
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import decode
from partext_jax.ar.speculative.drafters import mtp as mtp_drafter
from partext_jax.data.synthetic import MarkovChain
from partext_jax.models import llama
from partext_jax.models import mtp
from partext_jax.models.attention import causal_cache_mask
from partext_jax.models.medusa import lm_head_logits
from partext_jax.testing import ngram
from partext_jax.training import checkpoint as checkpoint_lib
from partext_jax.training import mtp as mt

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = llama.LlamaConfig.tiny(eos_id=None)
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # toys: compile time dominates

try:  # The project's helper (issue 13a); until it is merged, a local one with its behaviour.
  from partext_jax.testing.stats import pooled_chi_square  # pylint: disable=g-import-not-at-top
except ImportError:

  class _ChiSquare(NamedTuple):
    passed: bool
    statistic: float
    df: int
    threshold: float
    zero_hits: int

  def pooled_chi_square(counts, probs, *, alpha=1e-6, min_expected=5.0):
    """Pearson's X^2 with the cells of expected count < ``min_expected`` pooled, threshold the
    chi-square ``1 - alpha`` quantile (``docs/algorithms.md#statistical-tests``)."""
    counts, probs = np.asarray(counts, float).ravel(), np.asarray(probs, float).ravel()
    n = counts.sum()
    pos = probs > 0
    zero_hits = int(counts[~pos].sum())
    obs, exp = counts[pos], n * probs[pos]
    order = np.argsort(exp, kind="stable")
    obs, exp = obs[order], exp[order]
    small = int(np.searchsorted(exp, min_expected))
    if small and exp[:small].sum() < min_expected:
      small = min(int(np.searchsorted(np.cumsum(exp), min_expected)) + 1, exp.size)
    if small:
      obs = np.concatenate([[obs[:small].sum()], obs[small:]])
      exp = np.concatenate([[exp[:small].sum()], exp[small:]])
    stat = float(np.sum((obs - exp) ** 2 / exp))
    threshold = float(stats.chi2.isf(alpha, exp.size - 1))
    return _ChiSquare(zero_hits == 0 and stat < threshold, stat, exp.size - 1, threshold,
                      zero_hits)


def _scaled(params, scale):
  """Predictors far from their initialisation (so that untrained drafts vary)."""
  return jax.tree.map(lambda x: x * scale if x.ndim > 1 else x, params)


def _sequence_counts(samples, shape):
  idx = np.ravel_multi_index(tuple(np.asarray(samples).T), shape)
  return np.bincount(idx, minlength=int(np.prod(shape))).reshape(shape)


# ------------------------------------------------------------------- exact plumbing (tiny)


@pytest.fixture(scope="module")
def tiny_trunk():
  model = llama.LlamaLM(TINY)
  return model, jax.jit(model.init)(jax.random.key(0))


def _cached_hidden(model, params, seq, prefill: int, s_len: int = 16):
  """Logits and hidden of ``model`` over ``seq [1, T]``: a prefill, then one token per call."""
  fwd = jax.jit(lambda *a: model(params, *a, return_hidden=True))
  cache = model.init_cache(1, s_len)
  logits, hidden = [], []
  for lo, hi in [(0, prefill)] + [(i, i + 1) for i in range(prefill, seq.shape[1])]:
    pos = jnp.arange(lo, hi)[None]
    out = fwd(seq[:, lo:hi], pos, causal_cache_mask(pos, 0, s_len), cache, jnp.array([lo]))
    cache = out.cache
    logits.append(out.logits[0])
    hidden.append(out.hidden[0])
  return jnp.concatenate(logits), jnp.concatenate(hidden)


@pytest.mark.parametrize("kind,depth", [("gloeckle", 2), ("deepseek", 3)])
def test_cached_model_equals_teacher_forced_forward(tiny_trunk, kind, depth):
  """MTPModel's logits are the trunk's; its cached predictors equal the whole-sequence forward;
  every DeepSeek chain it runs for a candidate root ``c`` equals the teacher-forced modules on
  ``prefix + [c, d_1, ..]`` (``d_k`` the chain's own argmax drafts)."""
  trunk, tp = tiny_trunk
  cfg = mtp.MTPConfig.for_trunk(TINY, kind=kind, depth=depth)
  mp = _scaled(mtp.init_params(jax.random.key(1), cfg), 5.0)
  model = mtp.MTPModel(trunk, cfg, num_roots=2)
  params = {"trunk": tp, "mtp": mp}
  seq = jnp.array([[5, 9, 13, 4, 7, 22, 31, 8, 11]])
  logits, hidden = _cached_hidden(model, params, seq, prefill=5)
  full = trunk(tp, seq, jnp.arange(seq.shape[1])[None], None, None, None, return_hidden=True)
  np.testing.assert_allclose(logits, full.logits[0], atol=1e-5, rtol=1e-5)
  e = TINY.hidden_size
  teacher = jax.jit(lambda s: mtp.sequence_forward(
      mp, trunk(tp, s, jnp.arange(s.shape[1])[None], None, None, None,
                return_hidden=True).hidden, s, tp, config=cfg)[:, 0])
  if kind == "gloeckle":
    want = jnp.moveaxis(teacher(seq), 0, 1).reshape(seq.shape[1], -1)
    np.testing.assert_allclose(hidden, want, atol=1e-5, rtol=1e-5)
    return
  np.testing.assert_allclose(hidden[:, :e], full.hidden[0], atol=1e-5, rtol=1e-5)
  for t in range(1, seq.shape[1]):
    chains = hidden[t, e:].reshape(2, depth, e)
    for ci, c in enumerate(np.asarray(jax.lax.top_k(logits[t], 2)[1])):
      toks = [int(x) for x in seq[0, :t + 1]] + [int(c)]
      for k in range(1, depth + 1):
        want = teacher(jnp.array([toks + [0] * (seq.shape[1] + depth + 1 - len(toks))]))
        np.testing.assert_allclose(chains[ci, k - 1], want[k - 1, t + k], atol=1e-5, rtol=1e-5)
        toks.append(int(jnp.argmax(lm_head_logits(chains[ci, k - 1], tp, base_config=TINY))))


@pytest.mark.parametrize("kind", ["gloeckle", "deepseek"])
def test_greedy_equals_ar_and_one_compile_per_bucket(tiny_trunk, kind):
  trunk, tp = tiny_trunk
  cfg = mtp.MTPConfig.for_trunk(TINY, kind=kind, depth=2, mlp_dim=32)
  model = mtp.MTPModel(trunk, cfg)
  params = {"trunk": tp, "mtp": _scaled(mtp.init_params(jax.random.key(2), cfg), 3.0)}
  drafter = mtp_drafter.MTPDrafter(cfg, TINY)
  dparams = mtp_drafter.drafter_params(tp, base_config=TINY)
  prompts = [[1, 5, 9, 4], [1, 7], [1, 3, 3, 3, 8, 11]]
  kw = dict(drafter=drafter, drafter_params=dparams, max_new_tokens=16, eos_id=None,
            min_bucket=8)
  want, _ = ar.generate(jax.random.key(0), trunk, tp, prompts, max_new_tokens=16, eos_id=None)
  got, info = decode.generate(jax.random.key(0), model, params, prompts, **kw)
  np.testing.assert_array_equal(got, want)
  assert int(np.asarray(info.lengths).min()) == 16
  before = decode._generate_jit._cache_size()  # pylint: disable=protected-access
  decode.generate(jax.random.key(1), model, params, [[2, 4, 6], [8], [1, 1]], **kw)
  assert decode._generate_jit._cache_size() == before  # pylint: disable=protected-access


def test_bad_input(tiny_trunk):
  trunk, _ = tiny_trunk
  with pytest.raises(ValueError, match="kind"):
    mtp.MTPConfig.for_trunk(TINY, kind="medusa", depth=2)
  with pytest.raises(ValueError, match="depth"):
    mtp.MTPConfig.for_trunk(TINY, kind="gloeckle", depth=0)
  cfg = mtp.MTPConfig.for_trunk(TINY, kind="deepseek", depth=2)
  with pytest.raises(ValueError, match="hidden_size"):
    mtp.MTPModel(trunk, dataclasses.replace(cfg, hidden_size=16))
  with pytest.raises(ValueError, match="num_roots"):
    mtp.MTPModel(trunk, cfg, num_roots=0)
  with pytest.raises(ValueError, match="causal chain"):
    mtp_drafter.MTPDrafter(cfg, TINY, choices=((0,), (1,)))
  gl = dataclasses.replace(cfg, kind="gloeckle")
  with pytest.raises(ValueError, match="depth=2"):
    mtp_drafter.MTPDrafter(gl, TINY, choices=((0,), (0, 0), (0, 0, 0)))
  # The drafter needs the MTPModel's hidden output: a plain trunk target fails while tracing.
  with pytest.raises(ValueError, match="MTPModel"):
    decode.generate(jax.random.key(0), trunk, trunk.init(jax.random.key(0)), [[1, 2]],
                    drafter=mtp_drafter.MTPDrafter(gl, TINY),
                    drafter_params=mtp_drafter.drafter_params(trunk.init(jax.random.key(0)),
                                                              base_config=TINY),
                    max_new_tokens=4)
  with pytest.raises(mt.ConfigError, match="did you mean 'depth'"):
    mt.parse_config({"dept": 2})
  with pytest.raises(mt.ConfigError, match="kind"):
    mt.parse_config({"kind": "eagle"})


def test_configs_parse_and_checkpoint_round_trip(tmp_path):
  for name, arg in (("mtp.py", "deepseek"), ("mtp.py", "gloeckle"), ("mtp_markov.py", None)):
    get = runpy.run_path(str(ROOT / "configs" / name))["get_config"]
    cfg = get(arg) if arg else get()
    assert mt.parse_config(cfg) == mt.MTPTrainConfig(**cfg.to_dict())
  cfg = mtp.MTPConfig.for_trunk(TINY, kind="deepseek", depth=2, mlp_dim=16)
  params = _scaled(mtp.init_params(jax.random.key(0), cfg), 2.0)
  mt.save_params(str(tmp_path / "a"), params, cfg, metadata={"note": "x"})
  cfg2, params2, meta = mt.load_params(str(tmp_path / "a"))
  assert cfg2 == cfg and meta["note"] == "x"
  jax.tree.map(np.testing.assert_array_equal, params, params2)
  with pytest.raises(checkpoint_lib.CheckpointError, match="no MTP checkpoint"):
    mt.load_params(str(tmp_path / "missing"))
  with pytest.raises(mt.ConfigError, match="param_dtype"):
    mt.save_params(str(tmp_path / "b"), params, cfg, param_dtype="int8")


def test_bfloat16_export_of_the_first_predictors(tmp_path):
  """``export_params`` keeps the first ``depth`` predictors in bfloat16 (loaded back as float32,
  equal to the rounded originals) with their metrics; a depth outside ``1 .. D`` fails."""
  cfg = mtp.MTPConfig.for_trunk(TINY, kind="deepseek", depth=3, mlp_dim=16)
  params = _scaled(mtp.init_params(jax.random.key(0), cfg), 2.0)
  mt.save_params(str(tmp_path / "run"), params, cfg)
  valid = {"pred1_top1": 0.5, "pred2_top1": 0.25, "pred3_top1": 0.125, "chain_accept_len": 1.7}
  report = {"checkpoint": str(tmp_path / "run" / "0"), "valid": valid}
  mt.export_params(report, str(tmp_path / "asset"), command="cmd", depth=2)
  cfg2, params2, meta = mt.load_params(str(tmp_path / "asset"))
  assert cfg2 == dataclasses.replace(cfg, depth=2) and set(params2) == {"layers_0", "layers_1"}
  assert meta["param_dtype"] == "bfloat16" and meta["command"] == "cmd"
  assert meta["valid"] == {"pred1_top1": 0.5, "pred2_top1": 0.25} and meta["trained_depth"] == 3
  got = jax.tree.leaves((params2["layers_0"], params2["layers_1"]))
  orig = jax.tree.leaves((params["layers_0"], params["layers_1"]))
  for a, b in zip(got, orig):
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, np.asarray(jnp.asarray(b, jnp.bfloat16), np.float32))
  assert not all(np.array_equal(a, b) for a, b in zip(got, orig))  # stored rounded
  mt.export_params(report, str(tmp_path / "all"), command="cmd")
  assert mt.load_params(str(tmp_path / "all"))[2]["valid"] == valid
  for bad in (0, 4):
    with pytest.raises(mt.ConfigError, match="depth"):
      mt.export_params(report, str(tmp_path / "x"), command="cmd", depth=bad)


@pytest.mark.parametrize("kind", mtp.MTP_KINDS)
def test_committed_assets_are_small_and_load(kind):
  """Each committed SmolLM2 asset is under 5 MB, stored in bfloat16, records the command that
  made it and loads as float32 predictors of SmolLM2's width."""
  asset = pathlib.Path(mt.asset_directory(kind))
  assert asset.is_dir(), f"no committed {kind} asset at {asset}"
  size = sum(f.stat().st_size for f in asset.rglob("*") if f.is_file())
  assert size < 5 * 2**20, size
  cfg, params, meta = mt.load_params(str(asset))
  assert cfg.kind == kind and cfg.hidden_size == 576 and cfg.vocab_size == 49152
  assert meta["param_dtype"] == "bfloat16"
  assert meta["command"].startswith("python experiments/train_mtp.py") and kind in meta["command"]
  assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float32)}
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params


def test_train_launcher_on_a_shrunk_markov_config(tmp_path):
  """experiments/train_mtp.py end to end (subprocess): trains, reports, checkpoints."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, str(ROOT / "experiments" / "train_mtp.py"),
       "--config=configs/mtp_markov.py", f"--workdir={tmp_path}", "--config.num_sequences=64",
       "--config.seq_len=12", "--config.batch_size=28", "--config.num_epochs=2",
       "--config.progress_bar=False"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Greedy chain mean accepted length" in proc.stdout and "largest KL" in proc.stdout
  with open(tmp_path / "mtp_report.json") as f:
    report = json.load(f)
  assert report["train_sequences"] == 56 and len(report["epochs"]) == 2
  cfg, _, meta = mt.load_params(str(tmp_path / "checkpoints"))
  assert cfg.kind == "deepseek" and meta["train_config"]["num_epochs"] == 2


# ----------------------------------------------------------------------- the Markov chain

V = 6
_CYCLE = np.roll(np.eye(V), 1, axis=1)
# A slowly mixing chain (mostly x -> x + 1, mod V): P, P^2, P^3 differ clearly, so the
# off-by-one answers lie far outside the tolerance (the tests' power).
CHAIN = MarkovChain(initial=np.full(V, 1.0 / V), transition=0.6 * _CYCLE + 0.4 *
                    np.random.default_rng(0).dirichlet(np.ones(V), size=V))
DELTA = 1e-6  # false-alarm probability of each test (Bonferroni over its checks)


def _kl(p, q):
  return np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300) / np.maximum(q, 1e-300)), 0), -1)


@pytest.fixture(scope="module")
def markov_runs(tmp_path_factory):
  """Both kinds trained (depth 2, 600 steps of 256 sequences) on 2048 sequences of 16 states of
  :data:`CHAIN`."""
  trunk, tp = mt.markov_trunk(CHAIN)
  seqs = CHAIN.sample_numpy(np.random.default_rng(1), num_sequences=2048, length=16)
  hidden = mt.trunk_hidden(trunk, tp, seqs, batch_size=512)
  data = {"train_tokens": seqs, "train_hidden": hidden,
          "train_loss_mask": np.ones(seqs.shape, bool)}
  runs = {}
  for kind in ("gloeckle", "deepseek"):
    cfg = mt.MTPTrainConfig(kind=kind, depth=2, mlp_dim=0, data="markov", batch_size=256,
                            num_epochs=75, learning_rate=3e-2, warmup_steps=10,
                            end_learning_rate_ratio=0.01, grad_clip_norm=0.0,
                            progress_bar=False)
    mcfg, params, _ = mt.train_predictors(data, tp, trunk.config, cfg)
    runs[kind] = (mcfg, params)
  return trunk, tp, data, runs


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gloeckle", "deepseek"])
def test_markov_predictors_converge_to_analytic_conditionals(markov_runs, kind):
  """Head ``k + 1`` learns row ``x_t`` of ``P^{k+1}`` (Gloeckle); every module learns ``P[x_t]``.

  Tolerance from the sample size: the best any learner can do from ``n_x`` samples of a
  categorical over ``V`` values is their empirical law, whose ``2 n_x KL(p || p_hat)`` is
  asymptotically chi-square with ``V - 1`` degrees of freedom. The learned law (averaged over
  the positions with ``x_t = x``, which at the optimum is that empirical law whatever else the
  block attends to) must satisfy ``KL(analytic || q) < chi2_{V-1}(1 - delta / (V D)) / (2 n_x)``
  for every state and predictor (Bonferroni: false alarm < delta). Power: the off-by-one law
  (``P^k`` for head ``k + 1``; ``P^2`` for a module reading its token one step late) lies
  beyond twice the tolerance.
  """
  trunk, tp, data, runs = markov_runs
  mcfg, params = runs[kind]
  res = mt.markov_kl(params, data, CHAIN, tp, config=mcfg, trunk_config=trunk.config)
  tol = stats.chi2.isf(DELTA / (V * mcfg.depth), V - 1) / (2 * res["count"])
  assert res["count"].min() > 2000
  np.testing.assert_array_less(res["kl"], tol)
  for k in range(mcfg.depth):
    power = k + 1 if kind == "gloeckle" else 2
    wrong = np.linalg.matrix_power(CHAIN.transition, power)
    assert (_kl(res["analytic"][k], wrong) > 2 * tol[k]).all()


def _first_step_acceptance(model, params, dparams, drafter, prompts, *, rows_each: int):
  """How many rows accept the depth-1 draft of their first step (one draft, 2 new tokens:
  the first target forward commits both iff the draft is accepted)."""
  out, info = decode.generate(jax.random.key(7), model, params,
                              [p for p in prompts for _ in range(rows_each)], drafter=drafter,
                              drafter_params=dparams, max_new_tokens=2, temperature=1.0,
                              eos_id=None, min_bucket=8, compiler_options=FAST_COMPILE)
  calls = np.asarray(info.target_calls).reshape(len(prompts), rows_each)
  return (calls == 1).sum(axis=1), np.asarray(out)


@pytest.mark.slow
def test_deepseek_acceptance_matches_analytic_value(markov_runs):
  """Speculative sampling accepts a draft ``d ~ q`` w.p. ``sum_y min(p(y), q(y))``: with the
  trained module's own ``q`` (its teacher-forced law after each prompt) and ``p = P[root]``,
  the count of accepted first drafts is a sum of Bernoullis; it must lie within 5 standard
  deviations of its mean. Power: the sample-and-match value ``sum_y p(y) q(y)`` lies beyond 10
  standard deviations."""
  trunk, tp, _, runs = markov_runs
  cfg2, params2 = runs["deepseek"]
  cfg = dataclasses.replace(cfg2, depth=1)
  mparams = {"layers_0": params2["layers_0"]}
  model = mtp.MTPModel(trunk, cfg, num_roots=V)  # every root has its chain
  params = {"trunk": tp, "mtp": mparams}
  prompts = [[0, 1, 2], [3, 4], [5, 0, 0, 1], [2, 2]]
  accepted, _ = _first_step_acceptance(model, params,
                                       mtp_drafter.drafter_params(tp, base_config=trunk.config),
                                       mtp_drafter.MTPDrafter(cfg, trunk.config), prompts,
                                       rows_each=1500)
  alpha, naive = [], []
  for pr in prompts:
    s = jnp.array([pr])
    h = trunk(tp, s, None, None, None, None, return_hidden=True).hidden
    out = mtp.sequence_forward(mparams, h, s, tp, config=cfg)[0, 0, -1]
    q = np.asarray(jax.nn.softmax(lm_head_logits(out, tp, base_config=trunk.config)), np.float64)
    p = CHAIN.transition[pr[-1]]
    alpha.append(np.minimum(p, q).sum())
    naive.append((p * q).sum())
  alpha, naive = np.array(alpha), np.array(naive)
  n = 1500
  sd = np.sqrt(np.sum(n * alpha * (1 - alpha)))
  assert abs(accepted.sum() - n * alpha.sum()) < 5 * sd, (accepted, n * alpha)
  assert abs(n * naive.sum() - n * alpha.sum()) > 10 * sd


# ----------------------------------------------------------------- losslessness (n-gram toys)

K_TOKENS, N_ROWS, VT = 3, 3000, 4
TABLE = ngram.random_ngram(0, vocab_size=VT, order=2, concentration=1.0)
PROMPT = [1, 2]


def _toy_target():
  probs = np.asarray(jax.nn.softmax(TABLE.logits, axis=-1), np.float64)
  return mt.markov_trunk(MarkovChain(initial=np.full(VT, 1.0 / VT),
                                     transition=probs / probs.sum(-1, keepdims=True)))


class _MisreportsQ(mtp_drafter.MTPDrafter):
  """A wrong drafter: draws from its ``q`` but reports the uniform law."""

  def draft(self, rng_key, params, state, ctx, *, processor):
    state, d = super().draft(rng_key, params, state, ctx, processor=processor)
    return state, d._replace(draft_probs=jnp.full_like(d.draft_probs,
                                                       1.0 / d.draft_probs.shape[-1]))


CASES = [("gloeckle", None, mtp_drafter.MTPDrafter), ("gloeckle", ((0,), (1,), (0, 0)),
                                                      mtp_drafter.MTPDrafter),
         ("deepseek", None, mtp_drafter.MTPDrafter), ("deepseek", None, _MisreportsQ)]


@pytest.mark.parametrize("kind,choices,cls", CASES,
                         ids=["gloeckle-chain", "gloeckle-tree", "deepseek", "wrong-q"])
def test_lossless_at_temperature_one(kind, choices, cls):
  """The first ``K`` tokens follow the target's exact joint (pooled chi-square at 1e-6); the
  drafter that misreports its ``q`` is rejected by the same test."""
  trunk, tp = _toy_target()
  cfg = mtp.MTPConfig.for_trunk(trunk.config, kind=kind, depth=2)
  model = mtp.MTPModel(trunk, cfg, num_roots=VT)
  params = {"trunk": tp, "mtp": _scaled(mtp.init_params(jax.random.key(3), cfg), 8.0)}
  drafter = cls(cfg, trunk.config, choices=choices)
  out, info = decode.generate(jax.random.key(11), model, params, [PROMPT] * N_ROWS,
                              drafter=drafter,
                              drafter_params=mtp_drafter.drafter_params(tp,
                                                                        base_config=trunk.config),
                              max_new_tokens=K_TOKENS, temperature=1.0, eos_id=None,
                              min_bucket=len(PROMPT), compiler_options=FAST_COMPILE)
  exact = ngram.exact_continuation_probs(TABLE, PROMPT, num_tokens=K_TOKENS,
                                         processor=lp.identity())
  res = pooled_chi_square(_sequence_counts(out, exact.shape), exact, alpha=1e-6)
  assert np.asarray(info.accepted).sum() > 0.05 * N_ROWS  # drafts were accepted
  if cls is _MisreportsQ:
    assert not res.passed, res
  else:
    assert res.passed, res


# ------------------------------------------------------------------------ SmolLM2, greedy

QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.",
             "Explain recursion in one paragraph.", "List three uses of copper.",
             "How do I reverse a list in Python?"]


@pytest.fixture(scope="module")
def smollm2():
  from partext_jax import pretrained  # pylint: disable=import-outside-toplevel
  bundle = pretrained.load_bundle()
  tok = bundle.tokenizer
  ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]))
         for q in QUESTIONS]
  want, _ = ar.generate(jax.random.key(0), bundle.model, bundle.params, ids, max_new_tokens=64,
                        eos_id=None)
  return bundle, ids, np.asarray(want)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gloeckle", "deepseek"])
def test_greedy_smollm2_equals_plain_greedy(smollm2, kind):
  """5 chat prompts x 64 tokens, batch 5: the committed predictors (random ones if absent)."""
  bundle, ids, want = smollm2
  base = bundle.model.config
  asset = mt.asset_directory(kind)
  if os.path.isdir(asset):
    cfg, mparams, _ = mt.load_params(asset)
  else:
    cfg = mtp.MTPConfig.for_trunk(base, kind=kind, depth=2, mlp_dim=384)
    mparams = mtp.init_params(jax.random.key(0), cfg)
  model = mtp.MTPModel(bundle.model, cfg)
  got, info = decode.generate(jax.random.key(0), model, {"trunk": bundle.params, "mtp": mparams},
                              ids, drafter=mtp_drafter.MTPDrafter(cfg, base),
                              drafter_params=mtp_drafter.drafter_params(bundle.params,
                                                                        base_config=base),
                              max_new_tokens=64, eos_id=None)
  np.testing.assert_array_equal(np.asarray(got), want)
  if os.path.isdir(asset):
    # Trained predictors get drafts accepted: the committed ones (depth 1, at most 2 tokens per
    # forward) reach 0.33-0.37 teacher-forced top-1 on held-out answers, untrained ones <= 0.03
    # (the training reports), i.e. about 1.03 tokens per forward.
    assert np.asarray(info.lengths).sum() > 1.1 * np.asarray(info.target_calls).sum(), info
