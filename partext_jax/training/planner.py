r"""Trains the P2 planner head (:mod:`partext_jax.models.planner`) on a frozen denoiser.

Peng et al. 2025 (P2), ``docs/algorithms.md#p2-path-planning`` (trained head). One training
example is made from a data window ``x`` exactly as the sampler will meet it:

1. ``t ~ U(0, 1)``, ``x_t`` = ``x`` with each token masked with probability ``1 - alpha_t``;
2. the frozen denoiser proposes ``y_l ~ p_theta(. | x_t)`` at the masked positions
   (temperature 1), ``y_l = x_l`` elsewhere;
3. label ``c_l = [y_l == x_l]`` at the masked (filled) positions, which are the only ones scored.

The head minimises the binary cross-entropy ``-c log sigmoid(s) - (1 - c) log sigmoid(-s)``
averaged over filled positions. Everything else is the trainer core's
(:mod:`partext_jax.training.core`): AdamW with cosine decay, the step (the example generation
runs inside it, keyed by the step's key), the loop, ``<workdir>/planner`` checkpoints (resumable)
and ``planner_metrics.jsonl``. Step ``k`` uses the data windows ``corpus.batch_at(train, step=k,
seed=seed)``. Held-out metrics: cross-entropy against the base-rate predictor, and the ROC AUC
of the head's score against the AUC of the self-planning score (the proposal's own
log-probability ``log p_theta(y_l | x_t)``), both on the same examples.

Usage::

    run = load_run("workdir/default")
    head, metrics = train_planner(run, PlannerTrainConfig(), workdir="workdir/planner")
    planner = load_planner("workdir/planner", run)      # for p2(..., planner=planner)
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax import diffusion
from partext_jax.data import corpus
from partext_jax.models import planner as planner_lib
from partext_jax.models.denoiser import Denoiser, DenoiserConfig
from partext_jax.schedules import MaskingSchedule
from partext_jax.training import checkpoint as checkpoint_lib
from partext_jax.training import core
from partext_jax.training import datasets
from partext_jax.training.config import (LoopConfig, OptimizerConfig, check_positive,
                                         parse_dataclass)

CHECKPOINT_DIR = "planner"
EVAL_KEY = 10**6  # fold_in(PRNGKey(seed), EVAL_KEY): the held-out examples' key.


@dataclasses.dataclass(frozen=True)
class PlannerTrainConfig(OptimizerConfig, LoopConfig):
  """Hyper-parameters of :func:`train_planner` (``configs/planner.py``).

  The optimiser and loop fields of :class:`~partext_jax.training.config.OptimizerConfig` and
  :class:`~partext_jax.training.config.LoopConfig` (here: no warmup, cosine decay to 0, no
  clipping, no weight decay, AdamW's default betas), plus:

  Attributes:
    batch_size: data windows per step.
    hidden: width of the head's hidden layer.
    eval_batches: held-out batches for the reported metrics.
    seed: seed of the head's init, the data order and the examples.
  """

  num_steps: int = 300
  log_every: int = 25
  eval_every: int = 300
  checkpoint_every: int = 300
  keep_checkpoints: int = 1
  learning_rate: float = 3e-3
  warmup_steps: int = 0
  end_learning_rate_ratio: float = 0.0
  weight_decay: float = 0.0
  b2: float = 0.999
  grad_clip_norm: float = 0.0
  batch_size: int = 32
  hidden: int = 128
  eval_batches: int = 8
  seed: int = 0

  def __post_init__(self):
    self.check_optimizer()
    self.check_loop()
    check_positive(self, "batch_size", "hidden", "eval_batches")


def parse_config(config: Any) -> PlannerTrainConfig:
  """A ``ConfigDict`` / mapping (or the config itself) -> :class:`PlannerTrainConfig`.

  Strict, as :func:`partext_jax.training.config.parse_dataclass`: unknown keys, wrong types and
  invalid values raise ``ConfigError``.
  """
  return parse_dataclass(PlannerTrainConfig, config, where="config")


def make_examples(model_cfg: DenoiserConfig, schedule: MaskingSchedule):
  """``(rng, denoiser_params, x int32[B, L]) -> (filled, label, weight, self_score)``.

  ``filled`` int32[B, L] (the proposal at masked positions, ``x`` elsewhere); ``label``,
  ``weight`` (1 at filled positions) and ``self_score`` (``log p_theta(y_l | x_t)``) float32[B, L].
  Traceable (called inside the jitted step and evaluation).
  """

  def examples(rng, params, x):
    k_t, k_mask, k_y = jax.random.split(rng, 3)
    t = jax.random.uniform(k_t, (x.shape[0],))
    x_t = diffusion.mask_tokens(k_mask, x, t, schedule=schedule, mask_id=model_cfg.mask_id)
    logits = Denoiser(model_cfg).apply({"params": params}, x_t, t)
    y = jax.random.categorical(k_y, logits).astype(jnp.int32)
    masked = x_t == model_cfg.mask_id
    filled = jnp.where(masked, y, x)
    logp = jax.nn.log_softmax(logits, axis=-1)
    self_score = jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
    return filled, (filled == x).astype(jnp.float32), masked.astype(jnp.float32), self_score

  return examples


def bce(score, label, weight):
  """Weighted mean binary cross-entropy (nats) of logits ``score`` against 0/1 ``label``."""
  per = -(label * jax.nn.log_sigmoid(score) + (1 - label) * jax.nn.log_sigmoid(-score))
  return jnp.sum(per * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def roc_auc(score, label) -> float:
  """P(score of a random positive > score of a random negative), ties counted half.

  ``score``, ``label``: 1-D, the same length. Raises ``ValueError`` unless both classes occur.
  """
  score, label = np.asarray(score, np.float64), np.asarray(label, bool)
  pos, neg = int(label.sum()), int((~label).sum())
  if pos == 0 or neg == 0:
    raise ValueError("roc_auc needs both positive and negative labels")
  order = np.argsort(score, kind="stable")
  ranks = np.empty(len(score))
  sorted_scores = score[order]
  # Average ranks over ties.
  _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  avg = first + (counts - 1) / 2.0 + 1.0
  ranks[order] = np.repeat(avg, counts)
  return float((ranks[label].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _check_splits(data: datasets.Dataset, batch_size: int) -> None:
  for split, arr in (("train", data.train), ("valid", data.valid)):
    if len(arr) < batch_size:
      raise ValueError(f"the {split} split has {len(arr)} windows, fewer than "
                       f"batch_size={batch_size}")


def train_planner(run, cfg: PlannerTrainConfig = PlannerTrainConfig(), *,
                  workdir: str | None = None) -> tuple[Any, dict[str, float]]:
  """Trains the head on ``run``'s denoiser (its EMA parameters stay frozen).

  Args:
    run: a :class:`~partext_jax.training.runs.LoadedRun`; its data config gives the windows.
    cfg: hyper-parameters.
    workdir: checkpoints go to ``<workdir>/planner`` (a rerun resumes, a finished run only
      reports) and the log to ``<workdir>/planner_metrics.jsonl`` / ``.png``; ``None`` keeps
      everything in memory.
  Returns:
    ``(head_params, metrics)``, the held-out metrics of :func:`evaluate_head`.
  Raises:
    ValueError: a data split smaller than ``batch_size``.
  """
  model_cfg = run.model_config
  den_params = run.state.ema_params
  data = datasets.build_dataset(run.config.data, workdir=None,
                                tokenizer_json=run.metadata["tokenizer"])
  _check_splits(data, cfg.batch_size)
  examples = make_examples(model_cfg, run.config.diffusion.masking_schedule())
  head_cfg = planner_lib.PlannerConfig(hidden=cfg.hidden)
  head_module = planner_lib.PlannerHead(head_cfg)

  def loss_fn(head, x, rng, den_params):
    filled, label, weight, _ = examples(rng, den_params, x)
    h = planner_lib.denoiser_features(model_cfg, den_params, filled)
    return bce(head_module.apply({"params": head}, h), label, weight), {}

  optimizer = core.make_optimizer(cfg, cfg.num_steps)
  state = core.init_train_state(
      jax.random.PRNGKey(cfg.seed),
      lambda key: planner_lib.init_head(key, head_cfg, model_cfg.d_model), optimizer, ema=False)
  files = None
  if workdir is not None:
    files = core.RunFiles(workdir, checkpoints=CHECKPOINT_DIR, metrics="planner_metrics.jsonl",
                          plot="planner_metrics.png")
  valid = np.asarray(data.valid)
  result = core.train_loop(
      state, core.make_train_step(loss_fn, optimizer),
      lambda step: corpus.batch_at(data.train, step=step, batch_size=cfg.batch_size,
                                   seed=cfg.seed),
      loop=cfg, files=files, metadata={"planner": dataclasses.asdict(head_cfg)},
      evaluate=lambda s: evaluate_head(run, s.params, head_cfg, valid, cfg),
      frozen=(den_params,), learning_rate=core.learning_rate_schedule(cfg, cfg.num_steps),
      desc="planner head")
  if files is not None:
    core.plot_metrics(files.metrics_path, files.plot_path,
                      curves=(("train/loss", "train BCE"), ("eval/bce", "held-out BCE")),
                      ylabel="nats")
  metrics = {k[len("eval/"):]: v for k, v in result.last_eval.items()}
  return result.state.params, metrics


@functools.partial(jax.jit, static_argnames=("model_cfg", "head_cfg", "schedule"))
def _judge(key, den_params, head, x, *, model_cfg, head_cfg, schedule):
  filled, label, weight, self_score = make_examples(model_cfg, schedule)(key, den_params, x)
  h = planner_lib.denoiser_features(model_cfg, den_params, filled)
  return planner_lib.PlannerHead(head_cfg).apply({"params": head}, h), self_score, label, weight


def evaluate_head(run, head, head_cfg: planner_lib.PlannerConfig, valid: np.ndarray,
                  cfg: PlannerTrainConfig) -> dict[str, float]:
  """Held-out BCE (head vs base rate) and ROC AUC (head vs self-planning score).

  ``cfg.eval_batches`` batches of ``valid`` windows (int32[N, L]) with the fixed key
  ``fold_in(PRNGKey(seed), EVAL_KEY)``: the same examples at every evaluation. Returns
  ``num_tokens`` (filled positions scored), ``correct_rate``, ``bce``, ``base_rate_bce``,
  ``auc``, ``self_planning_auc`` and ``accuracy`` (of ``score > 0``).
  """
  rng = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), EVAL_KEY)
  judge = functools.partial(_judge, model_cfg=run.model_config, head_cfg=head_cfg,
                            schedule=run.config.diffusion.masking_schedule())
  scores, selfs, labels = [], [], []
  for b in range(cfg.eval_batches):
    start = (b * cfg.batch_size) % (len(valid) - cfg.batch_size + 1)
    x = jnp.asarray(valid[start:start + cfg.batch_size])
    s, self_score, label, weight = map(
        np.asarray, judge(jax.random.fold_in(rng, b), run.state.ema_params, head, x))
    keep = weight > 0
    scores.append(s[keep])
    selfs.append(self_score[keep])
    labels.append(label[keep])
  s, self_s, c = map(np.concatenate, (scores, selfs, labels))
  rate = float(np.clip(c.mean(), 1e-6, 1 - 1e-6))
  base = float(-(rate * np.log(rate) + (1 - rate) * np.log(1 - rate)))
  loss = float(bce(jnp.asarray(s), jnp.asarray(c), jnp.ones_like(jnp.asarray(c))))
  return dict(num_tokens=int(len(c)), correct_rate=float(c.mean()), bce=loss,
              base_rate_bce=base, auc=roc_auc(s, c), self_planning_auc=roc_auc(self_s, c),
              accuracy=float(np.mean((s > 0) == (c > 0.5))))


def format_report(metrics: dict[str, float]) -> str:
  """The held-out metrics of :func:`evaluate_head` as three lines of text."""
  return (f"held-out filled tokens: {metrics['num_tokens']}, correct: "
          f"{metrics['correct_rate']:.3f}\n"
          f"BCE {metrics['bce']:.4f} nats (base rate {metrics['base_rate_bce']:.4f}); "
          f"accuracy {metrics['accuracy']:.3f}\n"
          f"ROC AUC: planner head {metrics['auc']:.3f} vs self-planning score "
          f"{metrics['self_planning_auc']:.3f}")


def load_head(workdir: str, d_model: int):
  """``(head_params, PlannerConfig, metrics)`` from ``<workdir>/planner``.

  ``d_model``: the denoiser's width (the head's input). ``metrics``: the held-out metrics of
  the finished run. Raises ``CheckpointError`` if there is no planner checkpoint (the message
  names ``experiments/train_planner.py``) or it is unreadable.
  """
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    raise checkpoint_lib.CheckpointError(
        f"no planner checkpoint in {os.path.abspath(directory)!r}: run "
        f"experiments/train_planner.py --planner_workdir={workdir} first")
  with checkpoint_lib.Checkpointer(directory, read_only=True) as ckpt:
    meta = ckpt.restore_metadata()
    head_cfg = planner_lib.PlannerConfig(**meta["planner"])
    target = jax.eval_shape(lambda: planner_lib.init_head(jax.random.PRNGKey(0), head_cfg,
                                                          d_model))
    head, meta = ckpt.restore_params(target)
  return head, head_cfg, meta.get("eval", meta.get("metrics", {}))  # "metrics": before 0.2


def load_planner(workdir: str, run):
  """The trained planner callable for ``p2(..., planner=...)`` on ``run``'s denoiser."""
  head, head_cfg, _ = load_head(workdir, run.model_config.d_model)
  return planner_lib.trained_planner(run.model_config, run.state.ema_params, head,
                                     head_config=head_cfg)
