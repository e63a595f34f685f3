"""The trainer core: optimiser, train state, jitted step and the loop every trainer runs.

Every trainer builds on it and keeps only what is its own (loss, data, evaluation, report): the
masked-diffusion denoiser (:mod:`partext_jax.training.mdm`), the P2 planner head
(:mod:`partext_jax.training.planner`), and the four SmolLM2 drafters trained by
self-distillation through :mod:`partext_jax.training.distill` (Medusa heads, the EAGLE head, MTP
predictors, the masked-diffusion drafter).

* **Optimiser** (:func:`make_optimizer`): clipping by global norm, then AdamW with linear warmup
  and cosine decay to ``end_learning_rate_ratio * learning_rate``; weight decay on every
  parameter but biases and norm scales.
* **State** (:func:`init_train_state`): a :class:`~partext_jax.training.checkpoint.TrainState`
  built in one compiled call, optionally directly in its shards (no device ever holds the whole
  unsharded state).
* **Step** (:func:`make_train_step`): ``step(state, batch, rng, *frozen) -> (state, metrics)``,
  jitted with the state donated: the gradient of the trainer's ``loss_fn(params, batch, rng,
  *frozen) -> (loss, aux)`` (``frozen``: parameters of a frozen model, passed as traced
  arguments), an AdamW update and, optionally, an EMA of the parameters with the warm-up
  ``decay_k = min(ema_decay, (1 + k) / (10 + k))``.
* **Loop** (:func:`train_loop`): step ``k`` (0-based) uses ``batch_at(k)`` and the key
  ``fold_in(state.rng, k)``, both pure functions of ``k``. Resuming from a checkpoint therefore
  replays exactly the same steps: on CPU an interrupted and resumed run gives bit-identical
  parameters and logged metrics (timings aside). A tqdm progress bar; every ``log_every`` steps
  one ``train/*`` line in ``metrics.jsonl`` (the means over the steps since the previous line);
  ``eval/*`` lines every ``eval_every`` steps and at the end; orbax checkpoints (atomic, newest
  ``keep_checkpoints`` kept) every ``checkpoint_every`` steps and at the end. On restart the run
  resumes from its latest checkpoint, dropping the metrics lines written after it (a checkpoint
  also carries the per-step metrics not yet averaged into a line, so the lines come out the same
  whether or not checkpoints fall on logging steps); a finished run trains nothing and only
  evaluates if its final evaluation is missing.
* **Plot** (:func:`plot_metrics`): curves of ``metrics.jsonl`` against the step (matplotlib).

Usage (what each trainer does)::

    optimizer = make_optimizer(cfg, cfg.num_steps)
    state = init_train_state(jax.random.PRNGKey(seed), init_params, optimizer)
    step = make_train_step(loss_fn, optimizer, ema_decay=0.999)
    result = train_loop(state, step, batch_at, loop=cfg, files=RunFiles(workdir),
                        metadata={...}, evaluate=lambda state: {...})
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import logging

from partext_jax import parallel
from partext_jax.training.checkpoint import Checkpointer, TrainState
from partext_jax.training.config import LoopConfig, OptimizerConfig

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
NO_WEIGHT_DECAY = ("bias", "scale")  # Parameter names excluded from weight decay.
UNLOGGED_METRICS = "unlogged_metrics"  # Checkpoint metadata: the steps since the last log line.

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


# --------------------------------------------------------------------------------------------
# Optimiser.


def learning_rate_schedule(cfg: OptimizerConfig, num_steps: int) -> optax.Schedule:
  """Linear warmup over ``min(warmup_steps, num_steps)`` steps, then cosine decay to the end.

  Returns ``step -> float32`` learning rate: 0 at step 0 (``cfg.learning_rate`` at once when
  ``warmup_steps == 0``), the peak after warmup, ``end_learning_rate_ratio * learning_rate`` at
  ``num_steps``.
  """
  warmup = min(cfg.warmup_steps, num_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1),
      end_value=cfg.learning_rate * cfg.end_learning_rate_ratio)


def weight_decay_mask(params: Any) -> Any:
  """``True`` for every leaf of ``params`` but those named in :data:`NO_WEIGHT_DECAY`."""

  def decayed(path, _):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return not names or names[-1] not in NO_WEIGHT_DECAY

  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(cfg: OptimizerConfig, num_steps: int, *,
                   decay_mask: Callable[[Any], Any] = weight_decay_mask
                   ) -> optax.GradientTransformation:
  """``clip_by_global_norm(cfg.grad_clip_norm)`` (none if 0), then AdamW on
  :func:`learning_rate_schedule` over ``num_steps`` steps; ``decay_mask(params)`` selects the
  decayed leaves."""
  clip = (optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.grad_clip_norm > 0
          else optax.identity())  # The same (empty) state either way.
  return optax.chain(
      clip, optax.adamw(learning_rate_schedule(cfg, num_steps), b1=cfg.b1, b2=cfg.b2,
                        weight_decay=cfg.weight_decay, mask=decay_mask))


# --------------------------------------------------------------------------------------------
# Train state and step.


def _fresh_state(rng: jax.Array, init_params: Callable[[jax.Array], Any],
                 optimizer: optax.GradientTransformation, ema: bool) -> TrainState:
  init_rng, run_rng = jax.random.split(rng)
  params = init_params(init_rng)
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      # Own buffers, not aliases of params (the state is donated to the step).
      ema_params=jax.tree_util.tree_map(jnp.copy, params) if ema else {},
      opt_state=optimizer.init(params), rng=run_rng)


def init_train_state(rng: jax.Array, init_params: Callable[[jax.Array], Any],
                     optimizer: optax.GradientTransformation, *, ema: bool = True,
                     shardings: TrainState | None = None) -> TrainState:
  """A fresh :class:`TrainState` at step 0, built in one compiled call.

  Args:
    rng: raw key ``uint32[2]``; split into the parameters' key (``init_params(key)``) and the
      run's base key ``state.rng``.
    init_params: ``key -> params`` (traced once).
    optimizer: its ``init`` makes ``opt_state``.
    ema: keep an EMA copy of the parameters (else ``ema_params = {}``).
    shardings: a ``NamedSharding`` tree like the state (:func:`train_state_shardings`): every
      array is created directly in its shards.
  """
  init = lambda rng: _fresh_state(rng, init_params, optimizer, ema)  # noqa: E731
  return jax.jit(init, out_shardings=shardings)(rng)


def abstract_train_state(init_params: Callable[[jax.Array], Any],
                         optimizer: optax.GradientTransformation, *, ema: bool = True
                         ) -> TrainState:
  """The ``ShapeDtypeStruct`` tree of :func:`init_train_state` (a restore target; no memory)."""
  return jax.eval_shape(lambda rng: _fresh_state(rng, init_params, optimizer, ema),
                        jax.random.PRNGKey(0))


def train_state_shardings(param_shardings: Any, abstract_params: Any,
                          optimizer: optax.GradientTransformation, mesh, *, ema: bool = True
                          ) -> TrainState:
  """``NamedSharding`` tree of the train state on ``mesh``.

  Parameters, their EMA and the optimiser's parameter-shaped moments take ``param_shardings``;
  ``step``, ``rng`` and scalar optimiser state (counts) are replicated.
  """
  repl = parallel.replicated(mesh)
  opt_state = optax.tree_map_params(
      optimizer, lambda _, s: s, jax.eval_shape(optimizer.init, abstract_params),
      param_shardings, transform_non_params=lambda _: repl)
  return TrainState(step=repl, params=param_shardings,
                    ema_params=param_shardings if ema else {}, opt_state=opt_state, rng=repl)


def ema_update(ema_params: Any, params: Any, step: jax.Array, decay: float) -> Any:
  """``e <- d e + (1 - d) p`` with ``d = min(decay, (1 + step) / (10 + step))`` (float32)."""
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
  return jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema_params, params)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    ema_decay: float | None = None, **jit_kwargs):
  """The jitted ``step(state, batch, rng, *frozen) -> (state, metrics)`` (``state`` donated).

  Args:
    loss_fn: ``(params, batch, rng, *frozen) -> (loss float32[], aux)``, ``aux`` a dict of
      float32 scalars; differentiated with respect to ``params`` only.
    optimizer: the update rule (:func:`make_optimizer`).
    ema_decay: update ``state.ema_params`` with :func:`ema_update` (``None``: left as is).
    **jit_kwargs: passed to ``jax.jit`` (e.g. ``in_shardings`` / ``out_shardings`` for
      ``(state, batch, rng)`` on a mesh).
  Returns:
    the step; ``metrics`` holds ``loss``, ``grad_norm`` (global norm before clipping) and
    ``aux``'s entries.
  """

  def train_step(state: TrainState, batch: Any, rng: jax.Array, *frozen):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng,
                                                                   *frozen)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    ema_params = (state.ema_params if ema_decay is None
                  else ema_update(state.ema_params, params, step, ema_decay))
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    return state.replace(step=step, params=params, ema_params=ema_params,
                         opt_state=opt_state), metrics

  return jax.jit(train_step, donate_argnames=("state",), **jit_kwargs)


# --------------------------------------------------------------------------------------------
# Files of a run: metrics.jsonl and its plot.


@dataclasses.dataclass(frozen=True)
class RunFiles:
  """Where a run writes: ``<directory>/<checkpoints>/``, ``<directory>/<metrics>`` and its plot."""

  directory: str
  checkpoints: str = CHECKPOINT_DIR
  metrics: str = METRICS_FILE
  plot: str = PLOT_FILE

  @property
  def checkpoint_dir(self) -> str:
    return os.path.join(self.directory, self.checkpoints)

  @property
  def metrics_path(self) -> str:
    return os.path.join(self.directory, self.metrics)

  @property
  def plot_path(self) -> str:
    return os.path.join(self.directory, self.plot)


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The records of a ``metrics.jsonl`` (``[]`` if it does not exist), in file order."""
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _write_metrics(path: str, rows: Sequence[dict[str, Any]], mode: str) -> None:
  if jax.process_index() != 0:  # One writer in a multi-process run.
    return
  with open(path, mode, encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def plot_metrics(metrics_path: str, plot_path: str, *,
                 curves: Sequence[tuple[str, str]] = (("train/loss", "train loss"),
                                                      ("eval/loss", "validation loss")),
                 reference_lines: Sequence[tuple[float | None, str]] = (),
                 ylabel: str = "loss") -> None:
  """Draws ``curves`` (``(metrics key, label)``) of ``metrics.jsonl`` against the step.

  ``eval/*`` curves get markers; ``reference_lines`` (``(value, label)``, ``None`` skipped) are
  horizontal lines. Saved as a PNG with matplotlib's Agg backend, by process 0 only.
  """
  if jax.process_index() != 0:
    return
  # matplotlib is imported only where a plot is drawn (it is slow to import).
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = read_metrics(metrics_path)
  fig, ax = plt.subplots(figsize=(7, 4))
  for key, label in curves:
    points = [(r["step"], r[key]) for r in rows if key in r]
    if points:
      ax.plot(*zip(*points), "o-" if key.startswith("eval/") else "-", label=label)
  for (value, label), style in zip(reference_lines, ("--", ":", "-.")):
    if value is not None:
      ax.axhline(value, color="gray", ls=style, label=label)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(plot_path, dpi=100)
  plt.close(fig)


# --------------------------------------------------------------------------------------------
# The loop.


class LoopResult(NamedTuple):
  """What :func:`train_loop` returns.

  ``last_train``: the last ``train/*`` record written by this call (``{}`` if it trained
  nothing); ``last_eval``: the ``eval/*`` values at the final step (``{}`` without
  ``evaluate``); ``history``: every record of the run (the whole ``metrics.jsonl``).
  """

  state: TrainState
  start_step: int
  last_train: dict[str, float]
  last_eval: dict[str, float]
  history: list[dict[str, Any]]


def _fmt(metrics: dict[str, float]) -> str:
  return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def train_loop(state: TrainState, train_step, batch_at: Callable[[int], Any], *,
               loop: LoopConfig, files: RunFiles | None = None,
               metadata: dict[str, Any] | None = None,
               evaluate: Callable[[TrainState], dict[str, float]] | None = None,
               frozen: Sequence[Any] = (), shardings: TrainState | None = None,
               learning_rate: optax.Schedule | None = None,
               summarize: Callable[[dict[str, float], int, float], dict[str, float]] | None = None,
               desc: str = "train") -> LoopResult:
  """Runs ``state`` to ``loop.num_steps`` steps (resuming, or skipping a finished run).

  Args:
    state: the fresh state (:func:`init_train_state`); also the restore target.
    train_step: :func:`make_train_step`'s step.
    batch_at: ``k -> batch`` of step ``k``, a pure function of ``k`` (exact resume needs it).
    loop: lengths and intervals (:class:`~partext_jax.training.config.LoopConfig`).
    files: where checkpoints and ``metrics.jsonl`` go; ``None`` keeps the history in memory
      and writes no checkpoint.
    metadata: JSON saved with every checkpoint (the final one adds ``"eval"``: the final
      evaluation without the ``eval/`` prefix; others may add :data:`UNLOGGED_METRICS`).
    evaluate: ``state -> {name: float}``, logged as ``eval/<name>``.
    frozen: extra arguments of every step (a frozen model's parameters).
    shardings: the state's ``NamedSharding`` tree: a restored state is placed with it.
    learning_rate: logged as ``train/learning_rate`` (the rate of each line's last step).
    summarize: ``(means, num_steps, seconds) -> {key: float}``: derived ``train/*`` values
      (throughput, other units) from a line's metric means and the steps this call ran since
      the previous line with their wall time (evaluation and checkpoint time excluded).
    desc: the progress bar's label.
  Returns:
    a :class:`LoopResult`.
  Raises:
    partext_jax.training.checkpoint.CheckpointError: an unreadable latest checkpoint.
  """
  metadata = dict(metadata or {})
  history: list[dict[str, Any]] = []
  # Per-step metrics (host floats) not yet averaged into a log line. Checkpoints carry them, so
  # a resumed run writes the same lines whether or not checkpoints fall on logging steps.
  unlogged: list[dict[str, float]] = []
  ckpt = None
  if files is not None:
    os.makedirs(files.directory, exist_ok=True)
    ckpt = Checkpointer(files.checkpoint_dir, keep=loop.keep_checkpoints)
    if ckpt.latest_step() is not None:
      state, restored_metadata = ckpt.restore(state)
      unlogged = list(restored_metadata.get(UNLOGGED_METRICS, []))
      if shardings is not None:
        state = parallel.put_tree(state, shardings)
      logging.info("restored checkpoint step %d from %s", int(state.step), ckpt.directory)
  start = int(state.step)
  if files is not None:  # Drop the lines the restored state has not seen.
    history = [r for r in read_metrics(files.metrics_path) if r["step"] <= start]
    _write_metrics(files.metrics_path, history, "w")

  def record(row: dict[str, Any]) -> None:
    history.append(row)
    if files is not None:
      _write_metrics(files.metrics_path, [row], "a")

  last_train: dict[str, float] = {}
  last_eval: dict[str, float] = {}

  def run_eval(step: int) -> None:
    nonlocal last_eval
    last_eval = {f"eval/{k}": v for k, v in evaluate(state).items()}
    record({"step": step, **last_eval})
    logging.info("step %d: %s", step, _fmt(last_eval))

  trained = start < loop.num_steps
  if not trained:
    logging.info("run already finished at step %d (num_steps=%d): skipping training", start,
                 loop.num_steps)
  else:
    bar = (tqdm.tqdm(total=loop.num_steps, initial=start, desc=desc, unit="step",
                     dynamic_ncols=True) if loop.progress_bar else None)
    pending: list[dict[str, jax.Array]] = []  # Device metrics of the steps since the last sync.
    timed_steps, busy_seconds, mark = 0, 0.0, time.perf_counter()

    def sync() -> None:
      nonlocal pending
      unlogged.extend({k: float(v) for k, v in m.items()} for m in jax.device_get(pending))
      pending = []

    for step in range(start, loop.num_steps):
      state, metrics = train_step(state, batch_at(step), jax.random.fold_in(state.rng, step),
                                  *frozen)
      pending.append(metrics)
      timed_steps += 1
      done = step + 1
      if bar is not None:
        bar.update(1)
      if done % loop.log_every == 0 or done == loop.num_steps:
        sync()
        busy_seconds += time.perf_counter() - mark
        # float64 means of the float values: the same bits from restored values.
        means = {k: float(np.mean(np.asarray([m[k] for m in unlogged], np.float64)))
                 for k in unlogged[0]}
        last_train = {f"train/{k}": v for k, v in means.items()}
        if learning_rate is not None:
          last_train["train/learning_rate"] = float(learning_rate(done - 1))
        if summarize is not None:
          last_train.update(summarize(means, timed_steps, busy_seconds))
        record({"step": done, **last_train})
        if bar is not None:
          bar.set_postfix(loss=f"{means['loss']:.4g}")
        unlogged = []
        timed_steps, busy_seconds, mark = 0, 0.0, time.perf_counter()
      if done == loop.num_steps:
        break
      evaluating = evaluate is not None and done % loop.eval_every == 0
      saving = ckpt is not None and done % loop.checkpoint_every == 0
      if evaluating or saving:  # Keep evaluation and checkpoint time out of the throughput.
        sync()
        busy_seconds += time.perf_counter() - mark
        if evaluating:
          run_eval(done)
        if saving:
          ckpt.save(state, metadata={**metadata, **({UNLOGGED_METRICS: unlogged} if unlogged
                                                    else {})})
        mark = time.perf_counter()
    if bar is not None:
      bar.close()

  final = int(state.step)
  if evaluate is not None:
    evals = [r for r in history if r["step"] == final and any(k.startswith("eval/") for k in r)]
    if trained or not evals:
      run_eval(final)
    else:
      last_eval = {k: v for k, v in evals[-1].items() if k != "step"}
  if ckpt is not None:
    if trained:
      final_eval = {k[len("eval/"):]: v for k, v in last_eval.items()}
      ckpt.save(state, metadata={**metadata, "eval": final_eval})
    ckpt.close()
  return LoopResult(state, start, last_train, last_eval, history)
