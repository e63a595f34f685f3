"""Issue 17: each fault a new user met, with its exact input, now fails loudly and says why."""

import glob
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.ar import processors as lp
from partext_jax.ar import sampling as ar
from partext_jax.masked.tau_leaping import tau_leaping
from partext_jax.training import checkpoint as ckpt_lib
from partext_jax.training import mdm


def _state(step, w):
  return ckpt_lib.TrainState(step=step, params={"w": w}, ema_params={}, opt_state={},
                             rng=jax.random.PRNGKey(0))


@pytest.fixture(name="saved")
def _saved(tmp_path):
  state = _state(jnp.int32(16777217), jnp.array([1.0000001, 2, 3.3333333], jnp.float32))
  with ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=2) as ckpt:
    ckpt.save(state, metadata={"config": {}})
    yield ckpt, state


def test_reader_leaves_a_save_in_progress_alone(saved, tmp_path):
  """Opening a training run's checkpoints to read (sample while it trains) never deletes the
  temporary directory of the save in progress; a writer's open removes it, and a reader cannot
  save."""
  ckpt, state = saved
  in_progress = tmp_path / "checkpoints" / "16777300.orbax-checkpoint-tmp-1"
  os.makedirs(in_progress / "state")
  with ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), read_only=True) as reader:
    assert reader.latest_step() == 16777217
    with pytest.raises(ckpt_lib.CheckpointError, match="read_only=True"):
      reader.save(state, metadata={})
  assert in_progress.is_dir()
  with ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=2):
    pass  # close() awaits orbax's clean-up thread, so the removal is done on exit.
  assert not in_progress.exists()
  with ckpt_lib.Checkpointer(str(tmp_path / "absent"), read_only=True) as reader:
    assert reader.latest_step() is None
  assert not os.path.exists(tmp_path / "absent")  # A reader creates nothing.
  with pytest.raises(ValueError, match="keep=None must be an integer >= 1"):
    ckpt_lib.Checkpointer(str(tmp_path / "w"))


# Case 2: restores never cast; a scrambled data file fails naming the file.
def test_exact_restore_round_trips(saved):
  ckpt, state = saved
  restored, _ = ckpt.restore(state)
  assert int(restored.step) == 16777217
  np.testing.assert_array_equal(restored.params["w"], state.params["w"])


def test_restore_into_float_step_is_refused(saved):
  ckpt, state = saved
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"leaf step is stored as int32\[\] but float32\[\] was requested"):
    ckpt.restore(state.replace(step=jnp.float32(0)))


def test_restore_into_bfloat16_params_is_refused(saved):
  ckpt, state = saved
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"leaf params/w is stored as float32\[3\] but bfloat16\[3\]"):
    ckpt.restore(state.replace(params={"w": jnp.zeros(3, jnp.bfloat16)}))
  with pytest.raises(ckpt_lib.CheckpointError, match=r"float32\[3\] but bfloat16\[3\]"):
    ckpt.restore_params({"w": jnp.zeros(3, jnp.bfloat16)})


# Case 6: another config's shapes: the leaf, stored vs requested, and a safe action.
def test_config_mismatch_names_leaf_and_safe_action(saved):
  ckpt, state = saved
  with pytest.raises(ckpt_lib.CheckpointError) as err:
    ckpt.restore(state.replace(params={"w": jnp.zeros(4, jnp.float32)}))
  msg = str(err.value)
  assert "leaf params/w is stored as float32[3] but float32[4] was requested" in msg
  assert "with the config that wrote it" in msg and "new workdir" in msg
  assert "Delete" not in msg and "delete" not in msg
  with pytest.raises(ckpt_lib.CheckpointError, match=r"another tree .*missing leaves \['params/v'"):
    ckpt.restore(state.replace(params={"w": state.params["w"], "v": jnp.zeros(1)}))


def test_scrambled_data_file_fails_naming_it(saved):
  ckpt, state = saved
  data = max(glob.glob(os.path.join(ckpt.step_directory(16777217), "state", "**", "d", "*"),
                     recursive=True), key=os.path.getsize)
  with open(data, "r+b") as f:  # Scramble up to 4 KB of the largest data file.
    size = os.path.getsize(data)
    f.write(np.random.default_rng(0).integers(0, 256, min(size, 4096), np.uint8).tobytes())
  with pytest.raises(ckpt_lib.CheckpointError) as err:
    ckpt.restore(state)
  assert repr(data) in str(err.value) and "has changed since it was saved" in str(err.value)
  assert "restore an older step" in str(err.value)
  with pytest.raises(ckpt_lib.CheckpointError, match="has changed since it was saved"):
    ckpt.restore_params(state.params)


# Case 3: mask_id beyond the output width; NaN logits.
def test_mask_id_beyond_output_width():
  model = lambda x, t: jnp.zeros(x.shape + (3,))
  sampler = tau_leaping(model, mask_id=5, num_steps=4)
  with pytest.raises(ValueError, match=r"mask_id=5 lies beyond the model's output width V=3.*"
                     r"use mask_id=3"):
    sampler.sample(jax.random.key(0), jnp.full((2, 4), 5, jnp.int32))


def test_nan_logits_are_rejected():
  model = lambda x, t: jnp.full(x.shape + (3,), jnp.nan)
  sampler = tau_leaping(model, mask_id=3, num_steps=4)
  with pytest.raises(FloatingPointError, match=r"non-finite logits \(NaN or \+inf\)"):
    sampler.sample(jax.random.key(0), jnp.full((2, 4), 3, jnp.int32))


def test_minus_inf_logits_are_allowed():
  model = lambda x, t: jnp.log(jnp.array([0.0, 0.5, 0.5]))[None, None].repeat(
      x.shape[0], 0).repeat(x.shape[1], 1)
  tokens, _ = tau_leaping(model, mask_id=3, num_steps=4).sample(
      jax.random.key(0), jnp.full((2, 4), 3, jnp.int32))
  assert set(np.unique(tokens).tolist()) <= {1, 2}


# Case 4: prompts longer than the model allows; float prompts; processor ranges.
def test_prompt_longer_than_seq_len_fails():
  cfg = types.SimpleNamespace(mask_id=7)
  sample_cfg = types.SimpleNamespace(num_samples=2, num_steps=4)
  with pytest.raises(ValueError, match=r"prompt has 3000 tokens but samples are seq_len=128 "
                     r"tokens long"):
    mdm.generate(jax.random.PRNGKey(0), {}, cfg, sample_cfg=sample_cfg, schedule=None,
                 seq_len=128, prompt=np.zeros(3000, np.int32))


def test_float_prompt_is_rejected():
  with pytest.raises(TypeError, match=r"prompts\[0\] holds 1.5 \(float\): token ids must be ints"):
    ar.pad_prompts([[1.5, 2.0]])
  with pytest.raises(TypeError, match="must hold integer token ids, got dtype=float32"):
    ar.pad_prompts(np.array([[1.5, 2.0]], np.float32))


@pytest.mark.parametrize("kwargs,match", [
    (dict(top_p=1.5), r"top_p=1.5 must lie in \(0, 1\]"),
    (dict(top_p=0.0), r"top_p=0.0 must lie in \(0, 1\]"),
    (dict(top_k=-1), r"top_k=-1 must be an int >= 1"),
    (dict(temperature=-1.0), r"temperature=-1.0 must be finite and >= 0"),
    (dict(temperature=float("inf")), r"temperature=inf must be finite and >= 0"),
    (dict(temperature=float("nan")), r"temperature=nan must be finite and >= 0"),
])
def test_processor_ranges(kwargs, match):
  with pytest.raises(ValueError, match=match):
    lp.build(**kwargs)


# Case 5: the per-character figures are each divided by their own split's chars/token.
def test_summary_per_character_figures_are_consistent():
  data = types.SimpleNamespace(unigram_entropy_bits=8.6204, chars_per_token=2.681,
                               train_chars_per_token=2.726, true_entropy_bits=None)
  last_eval = {"eval/bits_per_token": 8.4776, "eval/stderr_bits_per_token": 0.01,
               "eval/bits_per_char": 8.4776 / 2.681}
  text = mdm._summary(None, data, last_eval, 100)  # pylint: disable=protected-access
  line = next(l for l in text.splitlines() if "per character" in l)
  assert f"{8.4776 / 2.681:.4f} bits/char (validation, 2.681 chars/token)" in line
  assert f"{8.6204 / 2.726:.4f} bits/char (training, 2.726 chars/token)" in line


# Case 9: the library never configures global logging (launchers choose the level).
def test_importing_the_package_leaves_logging_alone():
  # orbax's import adds a root handler itself (absl's basicConfig on its first log line): it is
  # imported before the baseline, so only this package's own side effects are measured.
  code = ("import logging, absl.logging as al, orbax.checkpoint\n"
          "before = (logging.root.level, len(logging.root.handlers), al.get_verbosity())\n"
          "import partext_jax, partext_jax.training.mdm, partext_jax.training.runs\n"
          "import partext_jax.pretrained, partext_jax.masked, partext_jax.ar.sampling\n"
          "after = (logging.root.level, len(logging.root.handlers), al.get_verbosity())\n"
          "assert before == after, (before, after)\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
