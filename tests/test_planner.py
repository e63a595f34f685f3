"""The trained P2 planner head: its logits encoding, AUC, training, checkpoints, use in p2."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import runpy

from partext_jax.models import planner as planner_lib
from partext_jax.masked.p2 import p2
from partext_jax.training import planner as train_lib
from partext_jax.training import mdm
from partext_jax.training.checkpoint import CheckpointError
from partext_jax.training.runs import load_run

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_score_as_logits_encodes_sigmoid_at_x0():
  score = jnp.array([[-3.0, 0.0, 2.5]])
  x0 = jnp.array([[4, 0, 6]])
  logits = planner_lib.score_as_logits(score, x0, 7)
  logp = jax.nn.log_softmax(logits, axis=-1)
  np.testing.assert_allclose(jnp.take_along_axis(logp, x0[..., None], -1)[..., 0],
                             jax.nn.log_sigmoid(score), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jnp.exp(logits).sum(-1), 1.0, rtol=1e-5)  # already normalised
  with pytest.raises(ValueError, match="vocab_size"):
    planner_lib.score_as_logits(score, x0, 1)


def test_roc_auc_against_all_pairs():
  rng = np.random.default_rng(0)
  score = rng.integers(0, 5, 60).astype(float)  # many ties
  label = rng.random(60) < 0.4
  pos, neg = score[label], score[~label]
  pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
  np.testing.assert_allclose(train_lib.roc_auc(score, label), pairs)
  assert train_lib.roc_auc([1, 2, 3], [0, 1, 1]) == 1.0
  with pytest.raises(ValueError, match="both positive and negative"):
    train_lib.roc_auc([1, 2], [1, 1])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A tiny MDM trained for a few seconds (configs/tiny.py, 60 steps)."""
  workdir = str(tmp_path_factory.mktemp("mdm"))
  config = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
  config.train.num_steps = 60
  mdm.train_and_evaluate(config, workdir)
  return load_run(workdir)


def _auc_standard_error(auc, n_pos, n_neg):
  """Hanley & McNeil (1982)."""
  q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
  var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2))
  return math.sqrt(var / (n_pos * n_neg))


def test_head_learns_and_round_trips(tiny_run, tmp_path):
  cfg = train_lib.PlannerTrainConfig(num_steps=150, batch_size=16, learning_rate=1e-2, hidden=32,
                                     eval_batches=8, progress_bar=False)
  head, metrics = train_lib.train_planner(tiny_run, cfg, workdir=str(tmp_path))
  # Better than predicting the base rate, and ranks correct tokens above wrong ones by more
  # than 4 standard errors of the AUC.
  assert metrics["bce"] < metrics["base_rate_bce"]
  n_pos = round(metrics["correct_rate"] * metrics["num_tokens"])
  se = _auc_standard_error(metrics["auc"], n_pos, metrics["num_tokens"] - n_pos)
  assert metrics["auc"] > 0.5 + 4 * se, metrics
  # Checkpoint round trip: identical parameters.
  loaded, head_cfg, loaded_metrics = train_lib.load_head(str(tmp_path),
                                                         tiny_run.model_config.d_model)
  assert head_cfg == planner_lib.PlannerConfig(hidden=32)
  assert loaded_metrics == pytest.approx(metrics)
  for a, b in zip(jax.tree_util.tree_leaves(head), jax.tree_util.tree_leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_trained_planner_in_p2(tiny_run):
  cfg = tiny_run.model_config
  head = planner_lib.init_head(jax.random.key(1), planner_lib.PlannerConfig(hidden=16),
                               cfg.d_model)
  planner = planner_lib.trained_planner(cfg, tiny_run.state.ema_params, head,
                                        head_config=planner_lib.PlannerConfig(hidden=16))
  from partext_jax.models.denoiser import make_denoise_fn  # pylint: disable=import-outside-toplevel
  denoise_fn = make_denoise_fn(cfg, tiny_run.state.ema_params)
  sampler = p2(denoise_fn, mask_id=cfg.mask_id, num_steps=4, planner=planner)
  x = jnp.full((3, cfg.max_len), cfg.mask_id, jnp.int32).at[:, :4].set(jnp.array([5, 6, 7, 8]))
  tokens, info = sampler.sample(jax.random.key(0), x)
  # (p2's invariant battery, planners included, runs in tests/test_p2.py.)
  assert not np.any(np.asarray(tokens) == cfg.mask_id)
  np.testing.assert_array_equal(np.asarray(tokens)[:, :4], np.asarray(x)[:, :4])
  # Every step but the first has decoded tokens to judge: one denoiser + one planner call.
  assert int(np.asarray(info.nfe).sum()) == 2 * 4 - 1
  # The planner judges held tokens at decoded positions (x), the proposal elsewhere (x0).
  tokens = x.at[:, 4].set(9)
  x0 = jnp.full_like(x, 11)
  a = planner(tokens, x0)
  b = planner(tokens.at[:, 4].set(10), x0)
  assert not np.allclose(np.asarray(a[:, 4]), np.asarray(b[:, 4]))


def test_missing_planner_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(CheckpointError, match="train_planner"):
    train_lib.load_head(str(tmp_path), 32)


def test_bad_config():
  with pytest.raises(ValueError, match="steps"):
    train_lib.PlannerTrainConfig(num_steps=0)
  with pytest.raises(ValueError, match="learning_rate"):
    train_lib.PlannerTrainConfig(learning_rate=-1.0)
  with pytest.raises(ValueError, match="hidden"):
    planner_lib.PlannerConfig(hidden=0)
