"""The NAT family end to end: one-shot decoding, training (CTC, GLAT, Levenshtein, the AR peer),
compilation counts, bad inputs and the launcher.

``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing`` and ``#levenshtein-transformer``.
Models are tiny and train for a few hundred steps (seconds on a CPU); the longer runs are
``experiments/bench_nat.py``'s.
"""

import dataclasses
import functools
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.nat import (ar_baseline, config as nat_config, ctc, networks, objectives,
                             one_shot, tasks, trainer)
from partext_jax.nat import levenshtein as lev_module
from partext_jax.nat.levenshtein import levenshtein
from partext_jax.nat.protocols import Seq2Seq, Source
from partext_jax.training.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(d_model=64, mlp_dim=128, num_heads=4, num_encoder_layers=1, num_decoder_layers=1)
FAST = dict(batch_size=32, learning_rate=3e-3, warmup_steps=20, log_every=50,
            progress_bar=False)


def experiment(kind, task, steps, *, model=(), train=()):
  cfg = nat_config.default_config()
  cfg.task.update(task)
  cfg.model.update(dict(TINY, kind=kind, **dict(model)))
  cfg.train.update(dict(FAST, num_steps=steps, eval_every=steps, checkpoint_every=steps,
                        **dict(train)))
  return nat_config.parse_config(cfg)


@pytest.fixture(scope="module")
def copy16():
  """The acceptance run: one-shot CTC on copy of length 16 (V = 8), 150 steps of 32 pairs.
  The full-size run is in experiments/bench_nat.py."""
  start = time.perf_counter()
  result = trainer.train_and_evaluate(
      experiment("ctc", dict(name="copy", vocab_size=8, min_length=16, max_length=16), 150))
  return result, time.perf_counter() - start


@pytest.fixture(scope="module")
def levt():
  """A Levenshtein Transformer on copy (V = 4, length 1 .. 4)."""
  return trainer.train_and_evaluate(
      experiment("levenshtein", dict(name="copy", vocab_size=4, min_length=1, max_length=4), 200,
                 model=dict(num_decoder_layers=2), train=dict(batch_size=64)))


def test_one_shot_ctc_reaches_99_percent_exact_match_on_copy_16(copy16):
  result, seconds = copy16
  assert result.metrics["num_examples"] == 512
  assert result.metrics["exact_match"] >= 0.99, result.metrics
  assert result.metrics["forwards_per_sequence"] == 1.0
  assert seconds < 300  # the acceptance budget (measured: about a minute on a loaded 2-core CPU)
  # The untrained model is far from it: the accuracy is learned.
  untrained = result.family.init_params(jax.random.PRNGKey(1))
  assert trainer.evaluate(result.family, untrained, result.data.valid,
                          batch_size=256)["exact_match"] < 0.01


def test_one_shot_decodes_an_exact_alignment():
  """A model whose logits are one-hot on an alignment of the target (each token then a blank,
  then blanks) is decoded to the target exactly, for every row and length."""
  data = tasks.toy_task("sort", vocab_size=5, min_length=1, max_length=7, batch_size=1, seed=0,
                        num_valid=64).valid
  v, lam = 5, 2

  def ctc_fn(src, src_len):  # a closure over the targets of this batch
    del src_len
    align = jnp.full((src.shape[0], lam * src.shape[1]), v).at[:, ::2].set(data.target)
    return 50.0 * jax.nn.one_hot(align, v + 1)

  out, info = one_shot.one_shot(ctc_fn, upsampling=lam).sample(
      jax.random.key(0), Source(data.source, data.source_lengths))
  assert trainer.exact_matches(out, data).all()
  assert np.all(info.forwards == 1) and np.all(info.decoder_lengths == lam * data.source_lengths)


def test_one_shot_init_step_equals_sample(copy16):
  result, _ = copy16
  cfg = result.family.config
  decoder = one_shot.one_shot(networks.make_ctc_fn(cfg, result.params), upsampling=2)
  source = Source(result.data.valid.source[:16], result.data.valid.source_lengths[:16])
  state, _ = jax.jit(decoder.step)(jax.random.key(0), decoder.init(source))
  out, _ = decoder.sample(jax.random.key(0), source)
  np.testing.assert_array_equal(state.output.tokens, out.tokens)


def test_new_parameters_reuse_the_compiled_decoders(copy16, levt):
  """Models are Partials: decoding with other parameters of the same shapes does not
  recompile (one-shot and Levenshtein)."""
  result, _ = copy16
  cfg = result.family.config
  source = Source(result.data.valid.source[:16], result.data.valid.source_lengths[:16])
  jitted = one_shot._sample.dynamic  # pylint: disable=protected-access
  sizes = []
  for seed in (7, 8):
    params = result.family.init_params(jax.random.PRNGKey(seed))
    one_shot.one_shot(networks.make_ctc_fn(cfg, params), upsampling=2).sample(
        jax.random.key(seed), source)
    sizes.append(jitted._cache_size())  # pylint: disable=protected-access
  assert sizes[0] == sizes[1]

  lcfg = levt.family.config
  lsource = Source(levt.data.valid.source[:16], levt.data.valid.source_lengths[:16])
  jitted = lev_module._sample.dynamic  # pylint: disable=protected-access
  sizes = []
  for seed in (3, 4):
    levt_decoder(levt, levt.family.init_params(jax.random.PRNGKey(seed))).sample(
        jax.random.key(0), lsource)
    sizes.append(jitted._cache_size())  # pylint: disable=protected-access
  assert sizes[0] == sizes[1]


def levt_decoder(run, params, max_iterations=6):
  cfg = run.family.config
  return levenshtein(*networks.make_levenshtein_fns(cfg, params), vocab_size=cfg.vocab_size,
                     canvas_size=cfg.canvas_size, max_iterations=max_iterations)


def test_levenshtein_trained_on_a_toy_converges(levt):
  """Decoding reaches a fixed point on every held-out row well before the cap, and copies."""
  data = levt.data
  out, info = levt_decoder(levt, levt.params, 10).sample(
      jax.random.key(0), Source(data.valid.source, data.valid.source_lengths))
  assert np.all(info.converged) and info.iterations.max() <= 5
  assert np.all(info.forwards == 3 * info.iterations)
  assert trainer.exact_matches(out, data.valid).mean() >= 0.8, levt.metrics
  assert levt.metrics["exact_match"] == trainer.exact_matches(out, data.valid).mean()


def test_levenshtein_rows_do_not_depend_on_the_batch(levt):
  """A row decodes to the same canvas alone and inside the batch (rows that finish early are
  frozen while the others continue)."""
  decoder = levt_decoder(levt, levt.family.init_params(jax.random.PRNGKey(5)))
  v = levt.data.valid
  batch, batch_info = decoder.sample(jax.random.key(0), Source(v.source[:16],
                                                               v.source_lengths[:16]))
  assert len(set(batch_info.iterations.tolist())) > 1  # rows stop at different iterations
  for i in range(0, 16, 5):
    alone, info = decoder.sample(jax.random.key(0), Source(v.source[i:i + 1],
                                                           v.source_lengths[i:i + 1]))
    np.testing.assert_array_equal(alone.tokens[0], batch.tokens[i])
    assert int(info.iterations[0]) == int(batch_info.iterations[i])


def test_glat_with_ratio_zero_is_the_ctc_loss_and_reveals_nothing(copy16):
  result, _ = copy16
  cfg = result.family.config
  pairs = result.data.batch_at(0)
  params = result.family.init_params(jax.random.PRNGKey(2))
  ctc_loss = jax.jit(functools.partial(objectives.ctc_loss, cfg=cfg))
  glat_loss = jax.jit(functools.partial(objectives.glat_loss, cfg=cfg))
  ctc_value, _ = ctc_loss(params, objectives.TrainBatch(pairs, jnp.float32(0.0)), None)
  glat_value, aux = glat_loss(params, objectives.TrainBatch(pairs, jnp.float32(0.0)),
                              jax.random.key(0))
  np.testing.assert_allclose(glat_value, ctc_value, rtol=1e-6)
  assert float(aux["revealed"]) == 0.0 and float(aux["hamming"]) > 0.5  # untrained: far off
  _, aux = glat_loss(params, objectives.TrainBatch(pairs, jnp.float32(1.0)), jax.random.key(0))
  np.testing.assert_allclose(aux["revealed"], aux["hamming"], rtol=1e-6)  # f = 1: all of d


def test_glat_trains_and_the_step_compiles_once(monkeypatch):
  """GLAT learns, logs its glancing statistics, and the trainer core's step is traced once for
  the whole run (new batches, keys and ratios every step)."""
  from partext_jax.training import core  # pylint: disable=import-outside-toplevel
  steps = []
  make = core.make_train_step
  monkeypatch.setattr(core, "make_train_step",
                      lambda *a, **k: steps.append(make(*a, **k)) or steps[-1])
  result = trainer.train_and_evaluate(
      experiment("glat", dict(name="copy", vocab_size=6, min_length=3, max_length=6), 60))
  losses = [r["train/loss"] for r in result.history if "train/loss" in r]
  assert losses[-1] < 0.5 * losses[0]
  assert all("train/revealed" in r for r in result.history if "train/loss" in r)
  assert len(steps) == 1 and steps[0]._cache_size() == 1  # pylint: disable=protected-access


def test_ar_peer_sequences():
  pairs = Seq2Seq(np.array([[1, 2, 5], [3, 5, 5]]), np.array([2, 1]), np.array([[2, 1, 5],
                                                                               [4, 5, 5]]),
                  np.array([2, 1]))
  tokens, weights = ar_baseline.sequences(pairs, vocab_size=5)
  sep, eos, pad = 5, 6, 7
  assert tokens[0].tolist() == [1, 2, sep, 2, 1, eos, pad, pad]
  assert tokens[1].tolist() == [3, sep, 4, eos, pad, pad, pad, pad]
  # Labels (tokens[:, 1:]) weighted: the target tokens and the EOS.
  assert weights[0].tolist() == [0, 0, 1, 1, 1, 0, 0]
  assert weights[1].tolist() == [0, 1, 1, 0, 0, 0, 0]


def test_the_ar_peer_learns_the_task():
  result = trainer.train_and_evaluate(
      experiment("ar", dict(name="copy", vocab_size=4, min_length=1, max_length=3), 200,
                 model=dict(num_decoder_layers=1)))
  assert result.metrics["exact_match"] >= 0.9, result.metrics
  # One model call per generated token: a right answer of n tokens costs n + 1 (the EOS).
  out, forwards = trainer.decode_all(result.family, result.params, result.data.valid)
  right = trainer.exact_matches(out, result.data.valid)
  np.testing.assert_array_equal(forwards[right], out.lengths[right] + 1)


# ------------------------------------------------------------------------------ bad inputs


def test_bad_inputs_fail_before_compiling():
  with pytest.raises(ValueError, match="upsampling=0 must be >= 1"):
    networks.NATConfig(vocab_size=4, max_source_len=4, max_target_len=4, upsampling=0)
  with pytest.raises(ValueError, match="upsampling=0 must be >= 1"):
    one_shot.one_shot(lambda s, n: s, upsampling=0)
  with pytest.raises(ConfigError, match="model.upsampling=0 must be >= 1"):
    experiment("ctc", dict(name="copy"), 1, model=dict(upsampling=0))
  with pytest.raises(ConfigError, match=r"max_iterations=0 must be > 0"):
    experiment("levenshtein", dict(name="copy"), 1, train=dict(max_iterations=0))
  with pytest.raises(ConfigError, match=r"glancing_start=1.5 must be in \[0, 1\]"):
    experiment("glat", dict(name="copy"), 1, train=dict(glancing_start=1.5))
  with pytest.raises(ConfigError, match="model.kind='nat' is not one of"):
    experiment("nat", dict(name="copy"), 1)
  with pytest.raises(ConfigError, match="unknown config key config.task.'lenght'"):
    nat_config.parse_config({"task": {"lenght": 3}})
  # A model whose logits do not have upsampling * S positions.
  decoder = one_shot.one_shot(lambda s, n: jnp.zeros(s.shape + (5,)), upsampling=2)
  with pytest.raises(ValueError, match=r"upsampling \* 3 = 6"):
    decoder.sample(jax.random.key(0), Source(np.zeros((1, 3), np.int32), np.array([3])))


def test_target_longer_than_the_upsampled_input_is_refused():
  """sort's target is as long as its source: with upsampling 1, any adjacent repeat in it is
  unreachable; the trainer refuses before compiling anything."""
  exp = experiment("ctc", dict(name="sort", vocab_size=3, min_length=6, max_length=6), 1,
                   model=dict(upsampling=1))
  with pytest.raises(ValueError, match="needing more positions than the upsampled input"):
    trainer.train_and_evaluate(exp)
  longer = tasks.TaskData("pad", 3, 2, 4, lambda k: Seq2Seq(
      np.zeros((1, 2), np.int32), np.array([1]), np.zeros((1, 4), np.int32), np.array([3])),
                          Seq2Seq(np.zeros((1, 2), np.int32), np.array([1]),
                                  np.array([[0, 1, 2, 3]]), np.array([3])))
  with pytest.raises(ValueError, match="longer than the upsampled input"):
    trainer.train_and_evaluate(dataclasses.replace(exp, model=dataclasses.replace(
        exp.model, upsampling=2)), data=longer)


def test_launcher(tmp_path):
  workdir = str(tmp_path / "run")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  args = [sys.executable, os.path.join(REPO, "experiments", "nat.py"), "--task=reverse",
          "--model=ctc", f"--workdir={workdir}", "--config.train.num_steps=4",
          "--config.train.batch_size=8", "--config.task.min_length=1",
          "--config.task.max_length=4", "--config.task.num_valid=8",
          "--config.model.d_model=32", "--config.model.mlp_dim=64", "--num_examples=2"]
  proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ctc on reverse: exact match" in proc.stdout and proc.stdout.count("source:") == 2
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["4"]
  bad = subprocess.run(args[:2] + ["--task=translate"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode != 0 and "copy" in bad.stderr and "distill" in bad.stderr
