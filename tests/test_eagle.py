"""EAGLE feature drafter (``docs/algorithms.md#eagle-feature-drafter``): the head's bookkeeping
against a cache-free reference, losslessness (greedy: token for token; temperature 1: Pearson
X^2 against the exact joint of an enumerable tiny Llama, shown to fire on a mismatched rule),
training and the checkpoint format."""

import functools
import itertools
import os
import pathlib
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.ar import processors as lp
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import decode
from partext_jax.ar.speculative.drafters import CommitInfo, DraftContext
from partext_jax.ar.speculative.drafters import eagle as eagle_drafter
from partext_jax.models import eagle as eagle_lib
from partext_jax.models import llama
from partext_jax.training import checkpoint as checkpoint_lib
from partext_jax.training import eagle as te
from partext_jax.training.config import ConfigError

FAST_COMPILE = {"xla_backend_optimization_level": 0}
CFG = llama.LlamaConfig.tiny()
MODEL = llama.LlamaLM(CFG)


@pytest.fixture(scope="module")
def base():
  return MODEL.init(jax.random.key(0))


def _head(seed, ecfg, scale=1.0):
  p = eagle_lib.init_params(jax.random.key(seed), ecfg)
  return jax.tree_util.tree_map(lambda x: x * scale, p)


def test_config_params_and_bad_input(base):
  ecfg = eagle_lib.EagleConfig.from_base(CFG)
  head = eagle_lib.init_params(jax.random.key(0), ecfg)
  assert sum(x.size for x in jax.tree_util.tree_leaves(head)) == ecfg.num_params
  with pytest.raises(ValueError, match="num_kv_heads"):
    eagle_lib.EagleConfig.from_base(CFG, num_kv_heads=3)
  with pytest.raises(ValueError, match="vocab_ids"):
    eagle_lib.draft_params(head, base, [0, CFG.vocab_size], base_config=CFG)
  with pytest.raises(ValueError, match="size"):
    eagle_lib.select_draft_vocab(np.ones(5), 6)
  np.testing.assert_array_equal(eagle_lib.select_draft_vocab([3, 9, 1, 9, 0], 3), [0, 1, 3])
  with pytest.raises(ValueError, match="mode"):
    eagle_drafter.EagleDrafter(ecfg, MODEL, mode="tree")
  with pytest.raises(ValueError, match="num_nodes"):
    eagle_drafter.EagleDrafter(ecfg, MODEL, gamma=1, top_k=2, num_nodes=3)
  with pytest.raises(ValueError, match="hidden_size"):
    eagle_drafter.EagleDrafter(eagle_lib.EagleConfig.from_base(CFG, hidden_size=16), MODEL)
  with pytest.raises(ValueError, match="LlamaLM"):
    eagle_drafter.EagleDrafter(ecfg, object())


def _reference_chain(dparams, ecfg, prev, toks, gamma):
  """Greedy chain of the head applied without a cache to the pairs ``(prev, toks)``."""
  prev, toks, out, feats = list(prev), list(toks), [], []
  for _ in range(gamma):
    n = len(toks)
    f, _ = eagle_lib.apply_head(dparams, jnp.stack(prev)[None], jnp.asarray(toks)[None],
                                jnp.arange(n)[None], jnp.tril(jnp.ones((n, n), bool))[None],
                                config=ecfg)
    lg = eagle_lib.draft_logits(dparams, f[0, -1])
    c = int(dparams["vocab_ids"][int(jnp.argmax(lg))])
    out.append(c)
    feats.append(f[0, -1])
    prev.append(f[0, -1])
    toks.append(c)
  return out, feats


def test_cached_drafting_and_commit_equal_a_cache_free_reference(base):
  """Chain drafts (greedy processor) through the head's cache, the commit of two accepted drafts
  and the next draft equal the head run from scratch on the same (feature, token) pairs."""
  ecfg = eagle_lib.EagleConfig.from_base(CFG)
  gamma = 3
  drafter = eagle_drafter.EagleDrafter(ecfg, MODEL, mode="chain", gamma=gamma)
  dparams = eagle_drafter.drafter_params(_head(1, ecfg, 3.0), base, np.arange(0, 97, 3),
                                         base_config=CFG)
  prompt = [1, 5, 9, 4, 7]
  pad = 2  # left padding: real tokens from slot `pad`
  n = len(prompt)
  p_len = n + pad
  cache_len = p_len + 16
  toks = jnp.asarray([[0] * pad + prompt])
  first = jnp.asarray([pad], jnp.int32)

  def target_feats(seq):
    m = len(seq)
    return MODEL(base, jnp.asarray([seq]), jnp.arange(m)[None], None, None, None,
                 return_hidden=True).hidden[0]

  f_true = target_feats(prompt)
  state = drafter.init(dparams, toks, first, cache_len=cache_len)
  history = jnp.zeros((1, cache_len + 8), jnp.int32).at[:, :p_len].set(toks)
  ctx = DraftContext(toks[:, -1], jnp.asarray([p_len - 1]), jnp.asarray([n - 1]), first,
                     history, f_true[n - 2][None])
  state, draft = jax.jit(functools.partial(drafter.draft, processor=lp.greedy()))(
      jax.random.key(0), dparams, state, ctx)
  prev0 = [jnp.zeros(CFG.hidden_size)] + [f_true[i] for i in range(n - 1)]
  want, want_feats = _reference_chain(dparams, ecfg, prev0, prompt, gamma)
  np.testing.assert_array_equal(np.asarray(draft.tree.tokens[0, 1:]), want)

  # Accept the first two drafts, then a bonus token b; the target's true feature of the last
  # accepted draft (what the decode loop hands over) comes from a plain forward.
  c1, c2, b = want[0], want[1], (want[2] + 1) % CFG.vocab_size
  path = jnp.asarray([[0, 1, 2, -1]], jnp.int32)
  info = CommitInfo(draft.tree, path, jnp.asarray([2]), jnp.asarray([p_len - 1]), first,
                    jnp.asarray([True]))
  state = drafter.commit(dparams, state, info)
  history = history.at[0, p_len:p_len + 3].set(jnp.asarray([c1, c2, b]))
  f_c2 = target_feats(prompt + [c1, c2])[n + 1]
  ctx = DraftContext(jnp.asarray([b]), jnp.asarray([p_len + 2]), jnp.asarray([n + 2]), first,
                     history, f_c2[None])
  _, draft2 = jax.jit(functools.partial(drafter.draft, processor=lp.greedy()))(
      jax.random.key(1), dparams, state, ctx)
  prev1 = prev0 + [want_feats[0], want_feats[1], f_c2]
  want2, _ = _reference_chain(dparams, ecfg, prev1, prompt + [c1, c2, b], gamma)
  np.testing.assert_array_equal(np.asarray(draft2.tree.tokens[0, 1:]), want2)


@pytest.mark.parametrize("mode,kw", [("chain", dict(gamma=3)),
                                     ("eagle", dict(gamma=3, top_k=3, num_nodes=7))])
def test_greedy_decoding_is_lossless_on_tiny_model(base, mode, kw):
  ecfg = eagle_lib.EagleConfig.from_base(CFG)
  drafter = eagle_drafter.EagleDrafter(ecfg, MODEL, mode=mode, **kw)
  prompts = [[1, 5, 9, 4], [1, 7], [1, 3, 3, 3, 8, 11]]
  want, _ = ar.generate(jax.random.key(0), MODEL, base, prompts, max_new_tokens=20, eos_id=None)
  dparams = eagle_drafter.drafter_params(_head(2, ecfg), base, np.arange(0, 97, 2),
                                         base_config=CFG)
  got, info = decode.generate(jax.random.key(0), MODEL, base, prompts, drafter=drafter,
                              drafter_params=dparams, max_new_tokens=20, eos_id=None,
                              compiler_options=FAST_COMPILE)
  np.testing.assert_array_equal(got, want)
  assert int(np.asarray(info.lengths).min()) == 20


# ------------------------------------------------------------------ temperature-1 losslessness

V, K, N_ROWS = 4, 3, 3000
PROMPT = [1, 2, 3]
TOY = llama.LlamaConfig.tiny(vocab_size=V, bos_id=None, eos_id=None, pad_id=0)
TOY_MODEL = llama.LlamaLM(TOY)


@functools.lru_cache(maxsize=None)
def _toy():
  """A tiny Llama over 4 tokens with peaked (scaled) weights, its exact joint of the first K
  tokens after PROMPT (enumerated), and a random EAGLE head."""
  params = jax.tree_util.tree_map(lambda x: x * 4.0, TOY_MODEL.init(jax.random.key(3)))
  probs = np.zeros((V,) * K)
  for seq in itertools.product(range(V), repeat=K):
    toks = jnp.asarray([PROMPT + list(seq)])
    lp_ = jax.nn.log_softmax(TOY_MODEL(params, toks, jnp.arange(toks.shape[1])[None], None,
                                       None, None).logits[0], axis=-1)
    probs[seq] = np.exp(sum(float(lp_[len(PROMPT) - 1 + i, s]) for i, s in enumerate(seq)))
  ecfg = eagle_lib.EagleConfig.from_base(TOY)
  dparams = eagle_drafter.drafter_params(_head(4, ecfg, 4.0), params, np.arange(V),
                                         base_config=TOY)
  return params, probs, ecfg, dparams


def pooled_chi2(samples, probs):
  """Pearson X^2 over the sequences, cells with expected count < 5 pooled into one cell.

  Returns ``(X^2, degrees of freedom, samples that hit probability-0 sequences)``.
  """
  n = len(samples)
  idx = np.ravel_multi_index(tuple(samples.T), probs.shape)
  counts = np.bincount(idx, minlength=probs.size).astype(float)
  expected = n * probs.ravel()
  small = (expected < 5) & (expected > 0)
  obs = np.concatenate([counts[expected >= 5], [counts[small].sum()]])
  exp = np.concatenate([expected[expected >= 5], [expected[small].sum()]])
  keep = exp > 0
  stat = float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep]))
  return stat, int(keep.sum()) - 1, int(counts[expected == 0].sum())


def _toy_samples(drafter, rule=None):
  params, probs, _, dparams = _toy()
  out, info = decode.generate(jax.random.key(7), TOY_MODEL, params, [PROMPT] * N_ROWS,
                              drafter=drafter, drafter_params=dparams, max_new_tokens=K,
                              processor=lp.identity(), rule=rule, eos_id=None,
                              min_bucket=len(PROMPT), compiler_options=FAST_COMPILE)
  return np.asarray(out), info, probs


@pytest.mark.parametrize("mode,kw", [("chain", dict(gamma=3)),
                                     ("eagle", dict(gamma=2, top_k=2, num_nodes=5))])
def test_lossless_at_temperature_1(mode, kw):
  """Under the null X^2 has mean df and sd sqrt(2 df); reject beyond df + 6 sqrt(2 df)."""
  ecfg = _toy()[2]
  samples, info, probs = _toy_samples(eagle_drafter.EagleDrafter(ecfg, TOY_MODEL, mode=mode, **kw))
  stat, df, zero_hits = pooled_chi2(samples, probs)
  assert zero_hits == 0
  assert stat < df + 6 * np.sqrt(2 * df), (mode, stat, df)
  assert np.asarray(info.lengths).sum() > np.asarray(info.target_calls).sum()  # drafts accepted


class _UniformQDrafter(eagle_drafter.EagleDrafter):
  """A deliberately wrong sampler: draws the chain from the head's q but reports uniform q."""

  def draft(self, rng_key, params, state, ctx, *, processor):
    state, draft = super().draft(rng_key, params, state, ctx, processor=processor)
    return state, draft._replace(draft_probs=jnp.full_like(draft.draft_probs, 1.0 / V))


def test_misreported_q_is_detected():
  """Verifying the chain against a q other than the one its tokens were drawn from is biased;
  the same statistic rejects it (the reason the drafter reports its actual q)."""
  ecfg = _toy()[2]
  samples, _, probs = _toy_samples(_UniformQDrafter(ecfg, TOY_MODEL, mode="chain", gamma=3))
  stat, df, _ = pooled_chi2(samples, probs)
  assert stat > df + 6 * np.sqrt(2 * df), (stat, df)


# ------------------------------------------------------------------------------------ training


def _toy_data(base):
  rng = np.random.default_rng(0)
  # Rows with a repeating pattern: the target's features make the next greedy token learnable.
  rows = [list(np.tile(rng.integers(3, 97, size=4), 6)) for _ in range(12)]
  arrays = te.features_and_labels(MODEL, base, rows, seq_len=24, batch_size=4)
  data = {}
  for split, sl in (("train", slice(0, 10)), ("valid", slice(10, 12))):
    for name, a in zip(("tokens", "feats", "labels", "mask"), arrays):
      data[f"{split}_{name}"] = a[sl]
  return data


def test_training_lowers_the_loss_and_checkpoints_round_trip(base, tmp_path):
  data = _toy_data(base)
  cfg = te.EagleTrainConfig(num_steps=24, batch_size=4, draft_vocab_size=60, checkpoint_every=12,
                            learning_rate=3e-3, warmup_steps=2, token_loss_weight=1.0,
                            progress_bar=False)
  ecfg, head, ids, logs = te.train_head(data, base, CFG, cfg, workdir=str(tmp_path / "run"))
  assert len(ids) == 60
  assert logs[-1]["train/loss"] < logs[0]["train/loss"], logs
  frozen = te._frozen(base, ids, CFG)
  trained = te.evaluate_head(head, frozen, data, config=ecfg, cfg=cfg)
  untrained = te.evaluate_head(eagle_lib.init_params(jax.random.key(0), ecfg), frozen, data,
                               config=ecfg, cfg=cfg)
  assert trained["ce_1"] < untrained["ce_1"], (trained, untrained)
  # A rerun with the same workdir resumes at the end: nothing left to train, same head.
  _, head2, _, _ = te.train_head(data, base, CFG, cfg, workdir=str(tmp_path / "run"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, head, head2)
  # bf16 export and reload.
  te.save_head(str(tmp_path / "asset"), head, ecfg, ids, step=0)
  ecfg2, head3, ids2, _ = te.load_head(str(tmp_path / "asset"))
  assert ecfg2 == ecfg
  np.testing.assert_array_equal(ids2, ids)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-2, rtol=1e-2),
                         head, head3)
  with pytest.raises(checkpoint_lib.CheckpointError, match="no EAGLE checkpoint"):
    te.load_head(str(tmp_path / "missing"))


def test_parse_config_is_strict_and_config_file_parses():
  path = pathlib.Path(__file__).parents[1] / "configs" / "eagle.py"
  cfg = te.parse_config(runpy.run_path(str(path))["get_config"]())
  assert cfg.unroll_steps == 2 and cfg.draft_vocab_size == 4096
  with pytest.raises(ConfigError, match="nope"):
    te.parse_config({"nope": 1})
  with pytest.raises(ConfigError, match="validation_fraction"):
    te.parse_config({"validation_fraction": 1.5})


# -------------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smollm2():
  from partext_jax import pretrained  # pylint: disable=import-outside-toplevel
  return pretrained.load_bundle()


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 4])
def test_greedy_eagle_matches_ar_on_smollm2(smollm2, batch):
  """5 chat prompts x 64 tokens, batch 1 and 4: identical to plain greedy decoding (the shipped
  head if present, else a random one: lossless whatever the head)."""
  model, params, tok = smollm2
  asset = te.asset_directory()
  if os.path.isdir(asset):
    ecfg, head, ids, _ = te.load_head(asset)
  else:
    ecfg = eagle_lib.EagleConfig.from_base(model.config)
    head, ids = _head(0, ecfg), np.arange(4096)
  questions = ["What is the capital of France?", "Write a haiku about the sea.",
               "Explain recursion in one paragraph.", "List three uses of copper.",
               "How do I reverse a list in Python?"]
  prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]))
             for q in questions]
  drafter = eagle_drafter.EagleDrafter(ecfg, model, mode="eagle", gamma=4, top_k=4, num_nodes=10)
  dparams = eagle_drafter.drafter_params(head, params, ids, base_config=model.config)
  for i in range(0, len(prompts), batch):
    chunk = prompts[i:i + batch]
    want, winfo = ar.generate(jax.random.key(0), model, params, chunk, max_new_tokens=64)
    got, info = decode.generate(jax.random.key(0), model, params, chunk, drafter=drafter,
                                drafter_params=dparams, max_new_tokens=64)
    np.testing.assert_array_equal(np.asarray(info.lengths), np.asarray(winfo.lengths))
    np.testing.assert_array_equal(got, want)
