"""Exported and shipped MDM checkpoints: export_run -> load_exported round trip, load_shipped."""

import json
import os
import pathlib
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.models.denoiser import make_denoise_fn
from partext_jax.training import mdm
from partext_jax.training import runs
from partext_jax.training.checkpoint import CheckpointError

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
  """configs/tiny.py trained 8 steps, checkpoints at 4 and 8 (both kept)."""
  workdir = str(tmp_path_factory.mktemp("mdm"))
  config = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
  config.train.update(num_steps=8, log_every=4, eval_every=4, checkpoint_every=4,
                      keep_checkpoints=2)
  mdm.train_and_evaluate(config, workdir)
  return workdir


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("step", [None, 4])
def test_export_round_trip_keeps_ema_params_config_and_bound(tiny_workdir, tmp_path, step):
  source = runs.load_run(tiny_workdir, step=step)
  assert source.step == (8 if step is None else 4)
  out = runs.export_run(tiny_workdir, str(tmp_path / "export"), step=step,
                        metadata={"note": "test"})
  assert sorted(os.listdir(out)) == [str(source.step)]  # Only the export, no staging leftovers.
  assert not os.path.exists(out + ".partial")
  loaded = runs.load_exported(out)
  assert loaded.step == source.step and loaded.metadata["note"] == "test"
  assert loaded.model_config == source.model_config and loaded.config == source.config
  _assert_trees_equal(loaded.state.ema_params, source.state.ema_params)
  assert loaded.state.params is loaded.state.ema_params and loaded.state.opt_state == {}
  # Same tokenizer, same denoiser outputs, same validation bound (the trainer's estimator).
  text = "def f(x):\n    return x\n"
  np.testing.assert_array_equal(loaded.encode(text), source.encode(text))
  x = jnp.asarray(source.encode(text)[None, :8], jnp.int32)
  t = jnp.full((1,), 0.5)
  np.testing.assert_array_equal(
      make_denoise_fn(loaded.model_config, loaded.state.ema_params)(x, t),
      make_denoise_fn(source.model_config, source.state.ema_params)(x, t))
  assert runs.evaluate_run(loaded, num_batches=1) == runs.evaluate_run(source, num_batches=1)


def test_reexport_replaces_and_bad_steps_name_the_kept_ones(tiny_workdir, tmp_path):
  out = str(tmp_path / "export")
  runs.export_run(tiny_workdir, out, step=4)
  runs.export_run(tiny_workdir, out)
  assert sorted(os.listdir(out)) == ["8"]
  with pytest.raises(CheckpointError, match=r"step=5 .*kept steps: \[4, 8\]"):
    runs.load_run(tiny_workdir, step=5)
  with pytest.raises(CheckpointError, match="no exported checkpoint directory"):
    runs.load_exported(str(tmp_path / "missing"))


def test_unknown_shipped_name_lists_the_choices():
  with pytest.raises(ValueError, match=r"unknown shipped checkpoint 'mdm_big'.*'mdm_small'"):
    runs.load_shipped("mdm_big")


def test_shipped_mdm_small_loads_by_name_and_matches_its_record():
  run = runs.load_shipped("mdm_small")
  cfg = run.model_config
  assert (cfg.d_model, cfg.num_layers, cfg.vocab_size, cfg.max_len) == (256, 6, 1024, 128)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(run.state.ema_params))
  assert 5_000_000 < n_params < 6_500_000
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(run.state.ema_params))
  meta = run.metadata
  assert run.step == meta["source_step"] == meta["valid"]["step"]
  assert meta["export_command"].startswith("python experiments/export_mdm.py")
  # The bound recorded by the training run at this step (when it evaluated there) is the
  # asset's: the recorded estimate is reproduced from the shipped parameters.
  if meta.get("recorded_valid"):
    assert meta["recorded_valid"]["eval/bits_per_token"] == pytest.approx(
        meta["valid"]["bits_per_token"], abs=meta["valid"]["stderr_bits_per_token"] / 10)
  results = json.loads((ROOT / "experiments/results/mdm_small/summary.json").read_text())
  assert results["step"] == run.step
  assert results["asset_eval"]["bits_per_token"] == meta["valid"]["bits_per_token"]
  # Text in, text out: the tokenizer round-trips source code.
  text = "import os\n\ndef main():\n    return os.getcwd()\n"
  assert run.decode(run.encode(text)) == text
  size = sum(f.stat().st_size for f in pathlib.Path(runs.shipped_directory("mdm_small")).rglob("*")
             if f.is_file())
  assert size < 25 * 2**20
