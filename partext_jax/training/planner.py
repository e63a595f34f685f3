r"""Training the P2 planner head (:mod:`partext_jax.models.planner`) on a frozen denoiser.

One training example is made from a data window ``x`` exactly as the sampler will meet it:

1. ``t ~ U(0, 1)``, ``x_t`` = ``x`` with each token masked with probability ``1 - alpha_t``;
2. the frozen denoiser proposes ``y_l ~ p_theta(. | x_t)`` at the masked positions
   (temperature 1), ``y_l = x_l`` elsewhere;
3. label ``c_l = [y_l == x_l]`` at the masked (filled) positions, which are the only ones scored.

The head minimises the binary cross-entropy ``-c log sigmoid(s) - (1 - c) log sigmoid(-s)``
averaged over filled positions, with AdamW. Held-out metrics: cross-entropy against the base-rate
predictor, and the ROC AUC of the head's score against the AUC of the self-planning score (the
proposal's own log-probability ``log p_theta(y_l | x_t)``), both on the same examples.

Usage::

    run = load_run("workdir/default")
    head, metrics = train_planner(run, PlannerTrainConfig(), workdir="workdir/planner")
    planner = load_planner("workdir/planner", run)      # for p2(..., planner=planner)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from partext_jax import diffusion
from partext_jax.models import planner as planner_lib
from partext_jax.models.denoiser import Denoiser
from partext_jax.training import checkpoint as checkpoint_lib
from partext_jax.training import datasets


@dataclasses.dataclass(frozen=True)
class PlannerTrainConfig:
  """Hyper-parameters of :func:`train_planner` (all keyword, all validated)."""

  steps: int = 300  # optimiser steps
  batch_size: int = 32  # data windows per step
  learning_rate: float = 3e-3  # AdamW peak, cosine decay to 0
  weight_decay: float = 0.0
  hidden: int = 128  # width of the head's hidden layer
  eval_batches: int = 8  # held-out batches for the reported metrics
  seed: int = 0

  def __post_init__(self):
    for name in ("steps", "batch_size", "hidden", "eval_batches"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not self.learning_rate > 0 or self.weight_decay < 0:
      raise ValueError(f"need learning_rate > 0 and weight_decay >= 0, got "
                       f"{self.learning_rate=}, {self.weight_decay=}")


def make_examples(model_cfg, schedule):
  """Jitted ``(rng, denoiser_params, x) -> (filled, label, weight, self_score)``."""

  @jax.jit
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


def _bce(score, label, weight):
  per = -(label * jax.nn.log_sigmoid(score) + (1 - label) * jax.nn.log_sigmoid(-score))
  return jnp.sum(per * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def roc_auc(score, label) -> float:
  """P(score of a random positive > score of a random negative), ties counted half."""
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


def train_planner(run, cfg: PlannerTrainConfig = PlannerTrainConfig(), *,
                  workdir: str | None = None, progress: bool = True
                  ) -> tuple[Any, dict[str, float]]:
  """Trains the head on ``run`` (a :class:`~partext_jax.training.runs.LoadedRun`, whose EMA
  parameters stay frozen); saves it under ``<workdir>/planner`` when ``workdir`` is given."""
  model_cfg = run.model_config
  den_params = run.state.ema_params
  data = datasets.build_dataset(run.config.data, workdir=None,
                                tokenizer_json=run.metadata["tokenizer"])
  train, valid = np.asarray(data.train), np.asarray(data.valid)
  for split, arr in (("train", train), ("valid", valid)):
    if len(arr) < cfg.batch_size:
      raise ValueError(f"the {split} split has {len(arr)} windows, fewer than "
                       f"batch_size={cfg.batch_size}")
  examples = make_examples(model_cfg, run.config.diffusion.masking_schedule())
  head_cfg = planner_lib.PlannerConfig(hidden=cfg.hidden)
  head_module = planner_lib.PlannerHead(head_cfg)
  features = jax.jit(lambda p, y: planner_lib.denoiser_features(model_cfg, p, y))
  rng = jax.random.PRNGKey(cfg.seed)
  head = planner_lib.init_head(jax.random.fold_in(rng, 0), head_cfg, model_cfg.d_model)
  optimizer = optax.adamw(optax.cosine_decay_schedule(cfg.learning_rate, cfg.steps),
                          weight_decay=cfg.weight_decay)
  opt_state = optimizer.init(head)

  @jax.jit
  def train_step(head, opt_state, h, label, weight):
    loss, grads = jax.value_and_grad(
        lambda hp: _bce(head_module.apply({"params": hp}, h), label, weight))(head)
    updates, opt_state = optimizer.update(grads, opt_state, head)
    return optax.apply_updates(head, updates), opt_state, loss

  steps = range(cfg.steps)
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    steps = tqdm(steps, desc="planner head", unit="step")
  data_rng = np.random.default_rng(cfg.seed)
  for i in steps:
    x = jnp.asarray(train[data_rng.integers(0, len(train), cfg.batch_size)])
    filled, label, weight, _ = examples(jax.random.fold_in(rng, i + 1), den_params, x)
    head, opt_state, loss = train_step(head, opt_state, features(den_params, filled), label,
                                       weight)
    if progress and i % 25 == 0:
      steps.set_postfix(bce=f"{float(loss):.4f}")

  metrics = evaluate_head(run, head, head_cfg, valid, cfg, examples, features)
  if workdir is not None:
    save_head(workdir, head, head_cfg, metrics, step=cfg.steps)
  return head, metrics


def evaluate_head(run, head, head_cfg, valid, cfg, examples, features) -> dict[str, float]:
  """Held-out BCE (head vs base rate) and ROC AUC (head vs self-planning score)."""
  module = planner_lib.PlannerHead(head_cfg)
  rng = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 10**6)
  scores, selfs, labels = [], [], []
  for b in range(cfg.eval_batches):
    start = (b * cfg.batch_size) % (len(valid) - cfg.batch_size + 1)
    x = jnp.asarray(valid[start:start + cfg.batch_size])
    filled, label, weight, self_score = examples(jax.random.fold_in(rng, b),
                                                 run.state.ema_params, x)
    s = module.apply({"params": head}, features(run.state.ema_params, filled))
    keep = np.asarray(weight) > 0
    scores.append(np.asarray(s)[keep])
    selfs.append(np.asarray(self_score)[keep])
    labels.append(np.asarray(label)[keep])
  s, self_s, c = map(np.concatenate, (scores, selfs, labels))
  rate = float(np.clip(c.mean(), 1e-6, 1 - 1e-6))
  base = float(-(rate * np.log(rate) + (1 - rate) * np.log(1 - rate)))
  bce = float(_bce(jnp.asarray(s), jnp.asarray(c), jnp.ones_like(jnp.asarray(c))))
  return dict(num_tokens=int(len(c)), correct_rate=float(c.mean()), bce=bce, base_rate_bce=base,
              auc=roc_auc(s, c), self_planning_auc=roc_auc(self_s, c),
              accuracy=float(np.mean((s > 0) == (c > 0.5))))


def _state(head, step):
  # The head is trained in one go and never resumed: no optimiser state is kept.
  return checkpoint_lib.TrainState(step=jnp.int32(step), params=head, ema_params=head,
                                   opt_state=jnp.zeros((), jnp.int32),
                                   rng=jax.random.PRNGKey(0))


def save_head(workdir, head, head_cfg, metrics, *, step) -> str:
  directory = os.path.join(workdir, "planner")
  with checkpoint_lib.Checkpointer(directory, keep=1) as ckpt:
    ckpt.save(_state(head, step),
              metadata={"planner": dataclasses.asdict(head_cfg), "metrics": metrics})
  return directory


def load_head(workdir: str, d_model: int):
  """``(head_params, PlannerConfig, metrics)`` from ``<workdir>/planner``."""
  directory = os.path.join(workdir, "planner")
  if not os.path.isdir(directory):
    raise checkpoint_lib.CheckpointError(
        f"no planner checkpoint in {os.path.abspath(directory)!r}: run "
        f"experiments/train_planner.py --planner_workdir={workdir} first")
  with checkpoint_lib.Checkpointer(directory, keep=1_000_000) as ckpt:
    meta = ckpt.restore_metadata()
    head_cfg = planner_lib.PlannerConfig(**meta["planner"])
    head = planner_lib.init_head(jax.random.PRNGKey(0), head_cfg, d_model)
    target = checkpoint_lib.abstract_like(_state(head, 0))
    state, meta = ckpt.restore(target)
  return state.params, head_cfg, meta["metrics"]


def load_planner(workdir: str, run):
  """The trained planner callable for ``p2(..., planner=...)`` on ``run``'s denoiser."""
  head, head_cfg, _ = load_head(workdir, run.model_config.d_model)
  return planner_lib.trained_planner(run.model_config, run.state.ema_params, head,
                                     head_config=head_cfg)
