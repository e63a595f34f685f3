"""Medusa heads: shapes and axes, trees from choice lists, training, checkpoints, lossless
decoding."""

import os
import pathlib
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.models import llama
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import decode, trees
from partext_jax.ar.speculative.drafters import medusa as medusa_drafter
from partext_jax.models import medusa as medusa_heads
from partext_jax.training import medusa as mt
from partext_jax.training import checkpoint as checkpoint_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _random_heads(key, mcfg, scale=0.5):
  """Non-zero heads (zeros would reproduce the base next-token head: drafts then mostly wrong)."""
  params = medusa_heads.init_params(key, mcfg)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, x.shape) / np.sqrt(x.shape[-1])
                                      for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_heads_shapes_axes_and_zero_init_equals_base_head(tie):
  cfg = llama.LlamaConfig.tiny(tie_embeddings=tie)
  base = llama.init_params(jax.random.key(0), cfg)
  mcfg = medusa_heads.MedusaConfig(num_heads=3, hidden_size=cfg.hidden_size, num_layers=2)
  params = medusa_heads.init_params(jax.random.key(1), mcfg)
  assert params["kernel"].shape == (3, 2, 32, 32) and params["bias"].shape == (3, 2, 32)
  axes = medusa_heads.param_logical_axes(mcfg)
  assert tuple(axes["kernel"]) == (None, None, "embed", "mlp")
  assert tuple(axes["bias"]) == (None, None, "mlp")
  assert mcfg.num_params == 3 * 2 * (32 * 32 + 32)
  tokens = jax.random.randint(jax.random.key(2), (2, 7), 3, cfg.vocab_size)
  pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
  logits, _, hidden = llama.forward(base, tokens, pos, config=cfg, return_hidden=True)
  heads = medusa_heads.head_logits(params, hidden, base, config=mcfg, base_config=cfg)
  assert heads.shape == (3, 2, 7, cfg.vocab_size)
  # Zero-initialised residual blocks are the identity: every head starts as the base LM head.
  np.testing.assert_allclose(heads, jnp.broadcast_to(logits, heads.shape), rtol=1e-5, atol=1e-5)
  # ... and non-zero blocks change the prediction.
  moved = medusa_heads.head_logits(_random_heads(jax.random.key(3), mcfg), hidden, base,
                                   config=mcfg, base_config=cfg)
  assert float(jnp.abs(moved - heads).max()) > 1e-2


def test_tree_from_choices_is_valid_and_matches_treespec():
  spec = trees.TreeSpec.from_choices(medusa_drafter.DEFAULT_CHOICES)
  trees.validate_parents(spec.parent)  # one root at 0, parent[i] < i
  assert spec.size == len(medusa_drafter.DEFAULT_CHOICES) + 1
  assert sorted(spec.choices) == sorted(medusa_drafter.DEFAULT_CHOICES)
  for i, c in enumerate(spec.choices, start=1):
    assert spec.depth[i] == len(c) and spec.sibling_rank[i] == c[-1]
    # Walking up the parents spells the choice backwards.
    walk, j = [], i
    while j > 0:
      walk.append(spec.sibling_rank[j])
      j = spec.parent[j]
    assert tuple(walk[::-1]) == c
  # The ancestor mask marks exactly the nodes on the walk to the root.
  anc = np.asarray(trees.ancestor_mask(spec.parent))
  for i in range(spec.size):
    want, j = np.zeros(spec.size, bool), i
    while j >= 0:
      want[j], j = True, spec.parent[j]
    np.testing.assert_array_equal(anc[i], want)
  # Head d needs its top-(largest rank at depth d + 1) tokens: 4, 3, 2, 1 for the default tree.
  widths = tuple(1 + max(r for r, d in zip(spec.sibling_rank, spec.depth) if d == k)
                 for k in range(1, spec.max_depth + 1))
  assert widths == (4, 3, 2, 1) and spec.max_children == 4
  leaves = [i for i in range(spec.size) if i not in spec.parent]
  paths = np.asarray(trees.root_paths(spec.parent, max_depth=spec.max_depth))[leaves]
  assert paths.shape == (8, 5) and (paths[:, 0] == 0).all()
  chain = trees.TreeSpec.from_choices(medusa_drafter.chain_choices(3))
  assert chain.parent == (-1, 0, 1, 2) == trees.TreeSpec.chain(3).parent


@pytest.mark.parametrize("choices,match", [
    (((0,), (1, 0), (0, 0)), "parent-closed"),
    (((0,), (0,)), "duplicates"),
    (((0,), (-1,)), "ranks"),
    ((), "non-empty"),
    (((0,), (0, 0), (0, 0, 0)), "num_heads=2"),
], ids=["not-closed", "duplicate", "negative", "empty", "too-deep"])
def test_tree_from_choices_rejects_bad_lists(choices, match):
  cfg = llama.LlamaConfig.tiny()
  mcfg = medusa_heads.MedusaConfig(num_heads=2, hidden_size=cfg.hidden_size)
  with pytest.raises(ValueError, match=match):
    medusa_drafter.MedusaDrafter(mcfg, cfg, choices=choices)


def test_draft_tree_tokens_takes_per_head_ranks():
  spec = trees.TreeSpec.from_choices(((0,), (1,), (0, 0), (0, 1), (1, 0)))
  v = 10
  # Head d ranks tokens in a known order: head 1 prefers 7 > 3 > ..., head 2 prefers 5 > 2 > ...
  logits = np.zeros((2, 1, v), np.float32)
  logits[0, 0, [7, 3, 1]] = [3.0, 2.0, 1.0]
  logits[1, 0, [5, 2, 9]] = [3.0, 2.0, 1.0]
  toks = medusa_drafter.draft_tree_tokens(jnp.asarray(logits), jnp.array([4]), spec=spec)
  np.testing.assert_array_equal(toks, [[4, 7, 3, 5, 2, 5]])


def test_parse_config_is_strict_and_config_file_parses():
  cfg = runpy.run_path(str(ROOT / "configs" / "medusa.py"))["get_config"]()
  parsed = mt.parse_config(cfg)
  assert parsed == mt.MedusaTrainConfig(**cfg.to_dict())
  with pytest.raises(mt.MedusaConfigError, match="did you mean 'num_heads'"):
    mt.parse_config({"num_head": 3})
  with pytest.raises(mt.MedusaConfigError, match="head_decay"):
    mt.parse_config({"head_decay": 0.0})


def _shift_data(model_cfg, base, *, n_seq, seq_len, period, num_heads, seed):
  """Sequences ``x_{t+1} = 3 + (x_t - 3 + 1) mod period`` and the heads' targets ``x_{t+1+k}``."""
  rng = np.random.default_rng(seed)
  start = rng.integers(0, period, n_seq)
  x = 3 + (start[:, None] + np.arange(seq_len)[None]) % period
  pos = jnp.broadcast_to(jnp.arange(seq_len), x.shape)
  _, _, hidden = llama.forward(base, jnp.asarray(x, jnp.int32), pos, config=model_cfg,
                               return_hidden=True)
  hidden = np.asarray(hidden)[:, 4:]  # skip the first positions (little context)
  targets = np.stack([x[:, 4:] - 3 for _ in range(num_heads)], -1)
  targets = 3 + (targets + 1 + np.arange(1, num_heads + 1)) % period
  return hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1, num_heads).astype(np.int32)


def test_training_learns_a_deterministic_shift():
  """Heads learn ``x_{t+1+k} = x_t + 1 + k`` (mod 12) from a frozen random model's hidden states."""
  cfg = llama.LlamaConfig.tiny()
  base = llama.init_params(jax.random.key(0), cfg)
  # A sharper frozen head (std 0.4 instead of 0.02) so that modest residuals move the argmax.
  base["lm_head"]["kernel"] = 20.0 * base["lm_head"]["kernel"]
  k = 3
  h_tr, t_tr = _shift_data(cfg, base, n_seq=32, seq_len=24, period=12, num_heads=k, seed=0)
  h_va, t_va = _shift_data(cfg, base, n_seq=16, seq_len=24, period=12, num_heads=k, seed=1)
  tcfg = mt.MedusaTrainConfig(num_heads=k, batch_size=64, num_epochs=8, learning_rate=1e-2,
                              warmup_steps=5, progress_bar=False)
  mcfg, params, logs = mt.train_heads({"train_hidden": h_tr, "train_targets": t_tr}, base, cfg,
                                      tcfg)
  assert logs[-1]["train_loss"] < 0.1 * logs[0]["train_loss"]
  before = mt.evaluate_heads(medusa_heads.init_params(jax.random.key(0), mcfg), base, h_va, t_va,
                             config=mcfg, base_config=cfg, topk=2)
  after = mt.evaluate_heads(params, base, h_va, t_va, config=mcfg, base_config=cfg, topk=2)
  for h in range(1, k + 1):
    # Untrained heads predict the random base model's next token: ~chance (1/97) here.
    assert before[f"head{h}_top1"] < 0.3
    assert after[f"head{h}_top1"] > 0.95, after
  assert after["chain_accept_len"] > 3.8  # root + 3 heads, nearly always all right


def test_checkpoint_round_trip_and_corruption(tmp_path):
  mcfg = medusa_heads.MedusaConfig(num_heads=2, hidden_size=16)
  params = _random_heads(jax.random.key(0), mcfg)
  path = mt.save_heads(str(tmp_path / "ckpt"), params, mcfg, step=7, metadata={"note": "x"})
  cfg2, params2, meta = mt.load_heads(str(tmp_path / "ckpt"))
  assert cfg2 == mcfg and meta["note"] == "x"
  jax.tree.map(np.testing.assert_array_equal, params, params2)
  with pytest.raises(checkpoint_lib.CheckpointError, match="no Medusa checkpoint"):
    mt.load_heads(str(tmp_path / "missing"))
  # Corrupt every array data file of the step: loading must fail with the path in the message.
  for dirpath, _, files in os.walk(path):
    for f in files:
      if "d" == os.path.basename(dirpath) or f.endswith(".data") or "ocdbt" in dirpath:
        with open(os.path.join(dirpath, f), "wb") as fh:
          fh.write(b"garbage")
  with pytest.raises(checkpoint_lib.CheckpointError, match=str(tmp_path)):
    mt.load_heads(str(tmp_path / "ckpt"))


def test_drafter_rejects_bad_configs():
  cfg = llama.LlamaConfig.tiny()
  with pytest.raises(ValueError, match="hidden_size"):
    medusa_drafter.MedusaDrafter(medusa_heads.MedusaConfig(num_heads=2, hidden_size=8), cfg)
  with pytest.raises(ValueError, match="num_heads=2"):
    medusa_drafter.MedusaDrafter(medusa_heads.MedusaConfig(num_heads=2, hidden_size=32), cfg,
                         choices=medusa_drafter.chain_choices(3))


def test_greedy_medusa_decoding_is_lossless_on_tiny_model():
  cfg = llama.LlamaConfig.tiny()
  model = llama.LlamaLM(cfg)
  base = model.init(jax.random.key(0))
  mcfg = medusa_heads.MedusaConfig(num_heads=3, hidden_size=cfg.hidden_size)
  drafter = medusa_drafter.MedusaDrafter(mcfg, cfg,
                                         choices=((0,), (1,), (0, 0), (1, 0), (0, 0, 0)))
  prompts = [[1, 5, 9, 4], [1, 7], [1, 3, 3, 3, 8, 11]]
  want, _ = ar.generate(jax.random.key(0), model, base, prompts, max_new_tokens=24, eos_id=None)
  # The base model's own next-token head as head 1 guarantees accepted drafts somewhere.
  for heads in (medusa_heads.init_params(jax.random.key(0), mcfg),
                _random_heads(jax.random.key(1), mcfg)):
    dparams = medusa_drafter.drafter_params(heads, base, base_config=cfg)
    got, info = decode.generate(jax.random.key(0), model, base, prompts, drafter=drafter,
                                drafter_params=dparams, max_new_tokens=24, eos_id=None)
    np.testing.assert_array_equal(got, want)
    assert int(np.asarray(info.lengths).min()) == 24


@pytest.fixture(scope="module")
def smollm2():
  from partext_jax import pretrained  # pylint: disable=import-outside-toplevel
  return pretrained.load_bundle()


@pytest.mark.slow
def test_greedy_medusa_matches_ar_on_smollm2(smollm2):
  """5 chat prompts x 64 tokens: identical to plain greedy decoding (trained heads if shipped)."""
  model, params, tok = smollm2
  asset = mt.asset_directory()
  if os.path.isdir(asset):
    mcfg, heads, _ = mt.load_heads(asset)
    trained = True
  else:  # Lossless whatever the heads: random ones must give the same tokens.
    mcfg = medusa_heads.MedusaConfig(num_heads=4, hidden_size=model.config.hidden_size)
    heads, trained = _random_heads(jax.random.key(0), mcfg, scale=0.1), False
  questions = ["What is the capital of France?", "Write a haiku about the sea.",
               "Explain recursion in one paragraph.", "List three uses of copper.",
               "How do I reverse a list in Python?"]
  prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]))
             for q in questions]
  want, winfo = ar.generate(jax.random.key(0), model, params, prompts, max_new_tokens=64)
  # A 6-node tree (two depth-1 siblings, top-1 path to depth 4): branching, yet cheap to compile
  # and score; the 16-node default tree is exercised by experiments/bench_medusa.py.
  choices = ((0,), (1,), (0, 0), (0, 0, 0), (0, 0, 0, 0))
  drafter = medusa_drafter.MedusaDrafter(mcfg, model.config, choices=choices)
  got, info = decode.generate(jax.random.key(0), model, params, prompts, drafter=drafter,
                              drafter_params=medusa_drafter.drafter_params(heads, params,
                                                                   base_config=model.config),
                              max_new_tokens=64)
  np.testing.assert_array_equal(np.asarray(info.lengths), np.asarray(winfo.lengths))
  np.testing.assert_array_equal(got, want)
  if trained:
    # Trained heads get drafts accepted (validation top-1 of head 1 is ~0.29); zero-initialised
    # heads would re-predict the root token and almost never be accepted.
    rate = np.asarray(info.accepted).sum() / np.asarray(info.target_calls).sum()
    assert rate > 0.1, info
