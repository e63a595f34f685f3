"""Configs, checkpoints, exact resume and a learning check of the trainer on tiny configs."""

import dataclasses
import importlib.util
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from partext_jax.models.denoiser import DenoiserConfig
from partext_jax.training import checkpoint as checkpoint_lib
from partext_jax.training import config as config_lib
from partext_jax.training import runs as sampling
from partext_jax.training import mdm as trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f"configs_{name}",
                                                os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "tiny", "markov"])
def test_shipped_configs_parse(name):
  cfg = config_lib.parse_config(load_config(name))
  assert isinstance(cfg.train, config_lib.TrainConfig)
  # Every field of every section is set explicitly in the file (nothing left to defaults).
  raw = load_config(name)
  for section in ("data", "model", "diffusion", "train", "sample"):
    fields = {f.name for f in dataclasses.fields(type(getattr(cfg, section)))}
    assert set(raw[section].keys()) == fields, section


def test_model_config_mirrors_denoiser_config():
  model_fields = {f.name for f in dataclasses.fields(config_lib.ModelConfig)}
  denoiser_fields = {f.name for f in dataclasses.fields(DenoiserConfig)}
  assert model_fields == denoiser_fields - {"vocab_size", "max_len"}


def test_unknown_key_names_the_key_and_the_valid_ones():
  cfg = load_config("tiny")
  cfg.train.lerning_rate = 1.0
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.parse_config(cfg)
  msg = str(e.value)
  assert "config.train" in msg and "'lerning_rate'" in msg and "learning_rate" in msg
  assert "did you mean 'learning_rate'" in msg and "warmup_steps" in msg
  with pytest.raises(config_lib.ConfigError, match="'optimizer'.*valid keys of config"):
    config_lib.parse_config({"optimizer": {}})


def test_string_switches_list_choices_and_types_are_checked():
  with pytest.raises(config_lib.ConfigError, match=r"data.tokenizer='wordpiece'.*'char', 'bpe'"):
    config_lib.parse_config({"data": {"tokenizer": "wordpiece"}})
  with pytest.raises(config_lib.ConfigError, match=r"'linear', 'cosine', 'polynomial'"):
    config_lib.parse_config({"diffusion": {"schedule": "loglinear"}})
  with pytest.raises(config_lib.ConfigError, match=r"'stdlib', 'files', 'markov'"):
    config_lib.parse_config({"data": {"source": "wikipedia"}})
  with pytest.raises(config_lib.ConfigError, match="num_steps"):
    config_lib.parse_config({"train": {"num_steps": "100"}})
  cfg = config_lib.parse_config({"train": {"learning_rate": 1}})  # int -> float is fine.
  assert cfg.train.learning_rate == 1.0
  assert config_lib.config_from_json(cfg.to_json()) == cfg


# --- checkpoints -----------------------------------------------------------------------------


def _state(step=0, seed=0):
  params = {"w": jax.random.normal(jax.random.PRNGKey(seed), (3, 4)), "b": jnp.arange(4.0)}
  opt = optax.adamw(1e-3)
  return checkpoint_lib.TrainState(
      step=jnp.int32(step), params=params,
      ema_params=jax.tree_util.tree_map(lambda x: x * 2, params), opt_state=opt.init(params),
      rng=jax.random.PRNGKey(seed + 1))


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_round_trip_keep_n_and_corruption(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "ckpt"), keep=2)
  assert ckpt.latest_step() is None
  states = {s: _state(step=s, seed=s) for s in (10, 20, 30)}
  for s, st in states.items():
    ckpt.save(st, metadata={"config": {"step": s}, "tokenizer": None})
  assert ckpt.all_steps() == [20, 30]  # keep=2.
  restored, meta = ckpt.restore(_state())
  _assert_trees_equal(restored, states[30])
  assert meta == {"config": {"step": 30}, "tokenizer": None}
  older, _ = ckpt.restore(checkpoint_lib.abstract_like(_state()), step=20)
  _assert_trees_equal(older, states[20])
  # Corrupt the newest checkpoint's array data: a clear error naming its directory.
  data_files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "ckpt" / "30" / "state")
                for f in fs if os.sep + "d" + os.sep in os.path.join(d, f) + os.sep]
  assert data_files
  for f in data_files:
    with open(f, "r+b") as fh:
      fh.truncate(3)
  with pytest.raises(checkpoint_lib.CheckpointError, match=r"ckpt/30.*unreadable"):
    ckpt.restore(_state())
  # A wrong structure is reported too.
  with pytest.raises(checkpoint_lib.CheckpointError, match="ckpt/20"):
    bad_target = _state().replace(params={"w": jnp.zeros((3, 4))})
    ckpt.restore(bad_target, step=20)
  ckpt.close()
  empty = checkpoint_lib.Checkpointer(str(tmp_path / "empty"), keep=1)
  with pytest.raises(checkpoint_lib.CheckpointError, match="no checkpoint found in.*empty"):
    empty.restore(_state())
  empty.close()


# --- trainer ---------------------------------------------------------------------------------


def _losses(workdir):
  with open(os.path.join(workdir, trainer.METRICS_FILE)) as f:
    rows = [json.loads(line) for line in f]
  return [(r["step"], {k: v for k, v in r.items() if k != "train/tokens_per_s"}) for r in rows]


def _final_state(workdir):
  return sampling.load_run(workdir).state


def test_resume_is_exact_and_finished_runs_skip_training(tmp_path):
  cfg = load_config("tiny")
  cfg.train.num_steps = 8
  cfg.train.log_every = 2
  cfg.train.eval_every = 4
  cfg.train.checkpoint_every = 4
  cfg.train.keep_checkpoints = 3
  cfg.model.dropout_rate = 0.1  # Exercise the dropout rng as well.
  workdir = str(tmp_path / "run")
  straight = trainer.train_and_evaluate(cfg, workdir)
  assert straight["step"] == 8
  reference_metrics = _losses(workdir)
  reference_state = _final_state(workdir)
  assert [s for s, _ in reference_metrics] == [2, 4, 4, 6, 8, 8]

  # Simulate a crash after the step-4 checkpoint (the step-8 one never got written): the rerun
  # restores step 4, drops the stale log lines and replays steps 5..8.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))
  resumed = trainer.train_and_evaluate(cfg, workdir)
  assert _losses(workdir) == reference_metrics
  resumed_state = _final_state(workdir)
  _assert_trees_equal(resumed_state, reference_state)
  assert resumed["eval/bits_per_token"] == straight["eval/bits_per_token"]

  # Finished: nothing is trained, the metrics file is untouched.
  again = trainer.train_and_evaluate(cfg, workdir)
  assert again["step"] == 8 and _losses(workdir) == reference_metrics
  assert "train/loss" not in again
  for name in ("metrics.png", "samples.txt", "tokenizer.json", "config.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0


def test_loss_decreases_on_markov_data(tmp_path):
  cfg = load_config("markov")
  cfg.data.seq_len = 16
  cfg.data.num_train_sequences = 1024
  cfg.data.num_valid_sequences = 64
  cfg.model.d_model = 32
  cfg.model.num_layers = 1
  cfg.model.mlp_dim = 64
  cfg.train.num_steps = 40
  cfg.train.warmup_steps = 5
  cfg.train.learning_rate = 3e-3
  cfg.train.log_every = 10
  cfg.train.eval_every = 40
  cfg.train.checkpoint_every = 40
  cfg.train.progress_bar = False
  cfg.sample.num_steps = 8
  cfg.sample.num_samples = 2
  out = trainer.train_and_evaluate(cfg, str(tmp_path / "markov"))
  rows = [r for _, r in _losses(str(tmp_path / "markov")) if "train/loss" in r]
  first, last = rows[0]["train/loss"], rows[-1]["train/loss"]
  uniform_nats = np.log(cfg.data.num_states)
  assert first > 0.9 * uniform_nats  # Starts near the uniform distribution's log K ...
  assert last < first - 0.2  # ... and learns within a few dozen steps.
  # The bound is a bound: above the exact entropy (minus Monte-Carlo noise), below uniform.
  bound = out["eval/bits_per_token"]
  assert bound > out["true_entropy_bits"] - 5 * out["eval/stderr_bits_per_token"]
  assert bound < np.log2(cfg.data.num_states)
  assert all(len(s) == cfg.data.seq_len for s in out["samples"])
  assert set("".join(out["samples"])) <= set("abcdefgh")
