"""Training loop for the masked-diffusion denoiser: ``train_and_evaluate(config, workdir)``.

* Optimiser: gradient clipping by global norm, then AdamW with linear warmup and cosine decay to
  ``end_learning_rate_ratio * learning_rate``; weight decay only on matrices (not norms/biases).
* EMA of the parameters with the warm-up ``decay_k = min(ema_decay, (1 + k) / (10 + k))``;
  validation and samples use the EMA parameters.
* ``train_step(state, batch, rng) -> (state, metrics)`` is pure and jitted with the state donated.
  Step ``k`` (0-based) uses batch ``batch_at(train, step=k, seed=train.seed)`` and key
  ``fold_in(state.rng, k)``, both pure functions of ``k``. Resuming from a checkpoint therefore
  replays exactly the same steps: on CPU an interrupted and resumed run gives bit-identical
  parameters and logged losses (``tokens_per_s`` aside).
* Validation: the Monte-Carlo NELBO of a fixed, seeded subset of the validation examples
  (``eval_batches`` batches, ``eval_time_samples`` draws of (t, mask) each, the same draws at
  every evaluation), in bits per token and, for text, bits per character.
* Logging: ``<workdir>/metrics.jsonl``, one JSON object per line (``train/*`` averaged over the
  steps since the previous log line, ``eval/*`` at ``eval_every`` and at the end); lines after
  the restored step are dropped on resume. ``metrics.png`` is drawn at the end.
* Checkpoints every ``checkpoint_every`` steps and at the end, newest ``keep_checkpoints`` kept.
* Devices: the run's ``mesh`` section (:mod:`partext_jax.parallel`) builds a ``(data, fsdp,
  tensor)`` mesh; the state is created sharded, each batch split over ``data * fsdp``, and the
  step jitted with in/out shardings. On one device this is a 1-device mesh (same numbers as
  unsharded); on several, the same numbers up to float summation order.
* At the end: the validation bound beside the unigram entropy of the training tokens, and a few
  tau-leaping samples (printed and written to ``<workdir>/samples.txt``).

Usage (a notebook can do the same as ``experiments/train.py``)::

    from configs import tiny
    metrics = train_and_evaluate(tiny.get_config(), "/tmp/run")
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from partext_jax import diffusion
from partext_jax import parallel
from partext_jax.data import corpus
from partext_jax.models.denoiser import (Denoiser, DenoiserApply, DenoiserConfig, count_params,
                                         init_params, param_logical_axes)
from partext_jax.training import checkpoint as checkpoint_lib
from partext_jax.training import datasets
from partext_jax.training import runs as sampling
from partext_jax.training.config import ExperimentConfig, TrainConfig, parse_config

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
SAMPLES_FILE = "samples.txt"


# --------------------------------------------------------------------------------------------
# Pure pieces: optimiser, state, train and eval steps.


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
  warmup = min(cfg.warmup_steps, cfg.num_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
      decay_steps=max(cfg.num_steps, warmup + 1),
      end_value=cfg.learning_rate * cfg.end_learning_rate_ratio)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  decay_mask = lambda params: jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm),
      optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2,
                  weight_decay=cfg.weight_decay, mask=decay_mask))


def init_train_state(rng: jax.Array, model_cfg: DenoiserConfig,
                     optimizer: optax.GradientTransformation, *,
                     shardings: checkpoint_lib.TrainState | None = None
                     ) -> checkpoint_lib.TrainState:
  """Fresh state; ``rng`` (raw key) seeds the parameters and becomes the run's base key.

  With ``shardings`` (:func:`train_state_shardings`) every array is created directly in its
  shards (``out_shardings``): no device ever holds the whole unsharded state.
  """

  def init(rng):
    init_rng, run_rng = jax.random.split(rng)
    params = init_params(init_rng, model_cfg)
    return checkpoint_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        ema_params=jax.tree_util.tree_map(jnp.copy, params),  # Own buffers (state is donated).
        opt_state=optimizer.init(params), rng=run_rng)

  # One compilation instead of hundreds of eager initialiser ops.
  return jax.jit(init, out_shardings=shardings)(rng)


def train_state_shardings(model_cfg: DenoiserConfig, optimizer: optax.GradientTransformation,
                          mesh, *, rules=parallel.DEFAULT_RULES) -> checkpoint_lib.TrainState:
  """``NamedSharding`` tree of the train state on ``mesh``.

  Parameters, their EMA and the optimiser's parameter-shaped moments follow the logical-axis
  rules (:mod:`partext_jax.parallel`); ``step``, ``rng`` and scalar optimiser state (counts) are
  replicated.
  """
  abstract = jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), model_cfg))
  params = parallel.param_shardings(param_logical_axes(model_cfg), abstract, mesh, rules=rules)
  repl = parallel.replicated(mesh)
  opt_state = optax.tree_map_params(
      optimizer, lambda _, s: s, jax.eval_shape(optimizer.init, abstract), params,
      transform_non_params=lambda _: repl)
  return checkpoint_lib.TrainState(step=repl, params=params, ema_params=params,
                                   opt_state=opt_state, rng=repl)


def make_train_step(model_cfg: DenoiserConfig, optimizer: optax.GradientTransformation, *,
                    schedule, antithetic: bool, ema_decay: float, mesh=None,
                    rules=parallel.DEFAULT_RULES):
  """The jitted ``train_step(state, batch, rng) -> (state, metrics)`` (``state`` is donated).

  With a ``mesh`` the step is compiled with ``in_shardings`` / ``out_shardings``: the state as
  :func:`train_state_shardings`, the batch split over the batch axes, key and metrics
  replicated. XLA inserts the gradient reductions (data/fsdp) and the parameter all-gathers
  (fsdp/tensor); the arithmetic is the same as on one device up to summation order.
  """
  model = Denoiser(model_cfg)

  def train_step(state, batch, rng):
    loss_rng, dropout_rng = jax.random.split(rng)

    def loss_fn(params):
      def denoise_fn(tokens, t):
        return model.apply({"params": params}, tokens, t, deterministic=False,
                           rngs={"dropout": dropout_rng})
      return diffusion.mdm_loss(loss_rng, denoise_fn, batch, schedule=schedule,
                                mask_id=model_cfg.mask_id, antithetic=antithetic)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
    ema_params = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p,
                                        state.ema_params, params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    new_state = state.replace(step=step, params=params, ema_params=ema_params,
                              opt_state=opt_state)
    return new_state, metrics

  if mesh is None:
    return jax.jit(train_step, donate_argnames=("state",))
  state_sh = train_state_shardings(model_cfg, optimizer, mesh, rules=rules)
  repl = parallel.replicated(mesh)
  return jax.jit(train_step, donate_argnames=("state",),
                 in_shardings=(state_sh, parallel.batch_sharding(mesh, 2, rules=rules), repl),
                 out_shardings=(state_sh, repl))


def make_eval_step(model_cfg: DenoiserConfig, *, schedule, num_time_samples: int):
  """Jitted ``eval_step(params, x0, rng) -> float32[num_time_samples]`` of NELBO nats/token."""
  model = Denoiser(model_cfg)

  @jax.jit
  def eval_step(params, x0, rng):
    def denoise_fn(tokens, t):
      return model.apply({"params": params}, tokens, t)

    def one(key):
      return diffusion.mdm_loss(key, denoise_fn, x0, schedule=schedule,
                                mask_id=model_cfg.mask_id)[0]

    return jax.lax.map(one, jax.random.split(rng, num_time_samples))

  return eval_step


def evaluate_params(eval_step, params, batches, rng, *, chars_per_token: float | None,
                    mesh=None) -> dict[str, float]:
  """Monte-Carlo NELBO over ``batches``: bits/token (and /char), perplexity bound, stderr.

  Same estimator and keys as :func:`partext_jax.diffusion.evaluate_bound`, with the parameters
  as a jit argument so repeated evaluations reuse one compilation. With a ``mesh`` each batch is
  split over its batch axes.
  """
  place = jnp.asarray if mesh is None else functools.partial(parallel.shard_batch, mesh=mesh)
  values = np.concatenate([
      parallel.to_host(eval_step(params, place(x0), jax.random.fold_in(rng, i)))
      for i, x0 in enumerate(batches)])
  nats = float(values.mean())
  stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
  out = {
      "nats_per_token": nats,
      "bits_per_token": nats / math.log(2.0),
      "perplexity_bound": math.exp(min(nats, 700.0)),
      "stderr_bits_per_token": stderr / math.log(2.0),
  }
  if chars_per_token:
    out["bits_per_char"] = out["bits_per_token"] / chars_per_token
  return out


# --------------------------------------------------------------------------------------------
# Host-side helpers: metrics file, plot.


def _read_metrics(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _reset_metrics(path: str, *, keep_until_step: int) -> None:
  """Keeps only records with ``step <= keep_until_step`` (what the restored state has seen)."""
  if jax.process_index() != 0:  # One writer in a multi-process run.
    return
  rows = [r for r in _read_metrics(path) if r["step"] <= keep_until_step]
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def _append_metrics(path: str, record: dict[str, Any]) -> None:
  if jax.process_index() != 0:
    return
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\n")


def plot_metrics(metrics_path: str, plot_path: str, *, unigram_bits: float | None = None,
                 true_entropy_bits: float | None = None) -> None:
  """Train loss and validation bound (bits/token) against step, saved with matplotlib/Agg."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  if jax.process_index() != 0:
    return
  rows = _read_metrics(metrics_path)
  train = [(r["step"], r["train/bits_per_token"]) for r in rows if "train/bits_per_token" in r]
  valid = [(r["step"], r["eval/bits_per_token"]) for r in rows if "eval/bits_per_token" in r]
  fig, ax = plt.subplots(figsize=(7, 4))
  if train:
    ax.plot(*zip(*train), label="train NELBO")
  if valid:
    ax.plot(*zip(*valid), "o-", label="validation NELBO (EMA)")
  if unigram_bits is not None:
    ax.axhline(unigram_bits, color="gray", ls="--", label="unigram entropy")
  if true_entropy_bits is not None:
    ax.axhline(true_entropy_bits, color="green", ls=":", label="true entropy")
  ax.set_xlabel("step")
  ax.set_ylabel("bits / token")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(plot_path, dpi=100)
  plt.close(fig)


# --------------------------------------------------------------------------------------------
# The loop.


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Trains (or resumes, or skips if finished), evaluates and samples; returns final metrics.

  ``config``: an ``ml_collections.ConfigDict`` (see ``configs/``) or an ``ExperimentConfig``.
  The returned dict holds the last ``train/*`` and ``eval/*`` values, ``unigram_entropy_bits``,
  ``step`` and ``samples`` (decoded texts).
  """
  cfg: ExperimentConfig = parse_config(config)
  tcfg = cfg.train
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(cfg.to_json())

  data = datasets.build_dataset(cfg.data, workdir=workdir)
  logging.info("data: %s; %d train / %d validation examples of %d tokens", data.description,
               len(data.train), len(data.valid), cfg.data.seq_len)
  model_cfg = cfg.model.denoiser_config(vocab_size=data.vocab_size, max_len=cfg.data.seq_len)
  schedule = cfg.diffusion.masking_schedule()
  optimizer = make_optimizer(tcfg)
  lr_fn = learning_rate_schedule(tcfg)

  mesh = parallel.mesh_from_config(cfg.mesh)
  parallel.check_batch(tcfg.batch_size, mesh, name="train.batch_size")
  parallel.check_batch(tcfg.eval_batch_size, mesh, name="train.eval_batch_size")
  state_sh = train_state_shardings(model_cfg, optimizer, mesh)
  logging.info("mesh: %s", parallel.describe(mesh))

  root = jax.random.PRNGKey(tcfg.seed)
  state = init_train_state(jax.random.fold_in(root, 0), model_cfg, optimizer, shardings=state_sh)
  eval_rng = jax.random.fold_in(root, 1)  # The same masks at every evaluation.
  sample_rng = jax.random.PRNGKey(cfg.sample.seed)
  logging.info("model: %d parameters", count_params(state.params))

  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, sampling.CHECKPOINT_DIR),
                                     keep=tcfg.keep_checkpoints)
  metadata = {"config": cfg.to_dict(), "tokenizer": data.tokenizer_json,
              "vocab_size": data.vocab_size}
  metrics_path = os.path.join(workdir, METRICS_FILE)
  latest = ckpt.latest_step()
  if latest is not None:
    state, _ = ckpt.restore(state)
    state = parallel.put_tree(state, state_sh)
    logging.info("restored checkpoint step %d from %s", int(state.step), ckpt.directory)
  start = int(state.step)
  _reset_metrics(metrics_path, keep_until_step=start)

  train_step = make_train_step(model_cfg, optimizer, schedule=schedule,
                               antithetic=cfg.diffusion.antithetic, ema_decay=tcfg.ema_decay,
                               mesh=mesh)
  eval_step = make_eval_step(model_cfg, schedule=schedule,
                             num_time_samples=tcfg.eval_time_samples)
  valid_batches = corpus.eval_batches(data.valid, batch_size=tcfg.eval_batch_size,
                                      max_batches=tcfg.eval_batches)
  evaluate = functools.partial(evaluate_params, eval_step, batches=valid_batches, rng=eval_rng,
                               chars_per_token=data.chars_per_token, mesh=mesh)
  last_train: dict[str, float] = {}
  last_eval: dict[str, float] = {}

  def log_eval(step: int) -> None:
    nonlocal last_eval
    last_eval = {f"eval/{k}": v for k, v in evaluate(state.ema_params).items()}
    _append_metrics(metrics_path, {"step": step, **last_eval})
    logging.info("step %d: %s", step, _fmt(last_eval))

  if start >= tcfg.num_steps:
    logging.info("run already finished at step %d (num_steps=%d): skipping training", start,
                 tcfg.num_steps)
  else:
    bar = _progress(tcfg, start)
    pending: list[dict[str, jax.Array]] = []
    interval_start = time.perf_counter()
    for step in range(start, tcfg.num_steps):
      batch = parallel.shard_batch(corpus.batch_at(data.train, step=step,
                                                   batch_size=tcfg.batch_size, seed=tcfg.seed),
                                   mesh)
      state, metrics = train_step(state, batch, jax.random.fold_in(state.rng, step))
      pending.append(metrics)
      done = step + 1
      if bar is not None:
        bar.update(1)
      if done % tcfg.log_every == 0 or done == tcfg.num_steps:
        host = jax.device_get(pending)
        elapsed = time.perf_counter() - interval_start
        loss = float(np.mean([m["loss"] for m in host]))
        last_train = {
            "train/loss": loss,
            "train/bits_per_token": loss / math.log(2.0),
            "train/grad_norm": float(np.mean([m["grad_norm"] for m in host])),
            "train/masked_fraction": float(np.mean([m["masked_fraction"] for m in host])),
            "train/learning_rate": float(lr_fn(done - 1)),
            "train/tokens_per_s": len(host) * tcfg.batch_size * cfg.data.seq_len / elapsed,
        }
        if data.train_chars_per_token:
          last_train["train/bits_per_char"] = last_train["train/bits_per_token"] / (
              data.train_chars_per_token)
        _append_metrics(metrics_path, {"step": done, **last_train})
        if bar is not None:
          bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{last_train['train/tokens_per_s']:.0f}")
        pending = []
        interval_start = time.perf_counter()
      paused = False
      if done % tcfg.eval_every == 0 and done != tcfg.num_steps:
        log_eval(done)
        paused = True
      if done % tcfg.checkpoint_every == 0 or done == tcfg.num_steps:
        ckpt.save(state, metadata=metadata)
        paused = True
      if paused:  # Keep evaluation and checkpoint time out of tokens/s.
        interval_start = time.perf_counter()
    if bar is not None:
      bar.close()
  final_step = int(state.step)
  if start < tcfg.num_steps or not any("eval/bits_per_token" in r and r["step"] == final_step
                                       for r in _read_metrics(metrics_path)):
    log_eval(final_step)
  else:
    last_eval = [{k: v for k, v in r.items() if k.startswith("eval/")}
                 for r in _read_metrics(metrics_path) if "eval/bits_per_token" in r][-1]
  ckpt.close()

  plot_metrics(metrics_path, os.path.join(workdir, PLOT_FILE),
               unigram_bits=data.unigram_entropy_bits, true_entropy_bits=data.true_entropy_bits)
  summary = _summary(cfg, data, last_eval, final_step)
  print(summary, flush=True)

  samples = _draw_samples(cfg, model_cfg, state.ema_params, data, sample_rng, schedule, mesh)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, SAMPLES_FILE), "w", encoding="utf-8") as f:
      f.write(f"# {cfg.sample.num_samples} tau-leaping samples ({cfg.sample.num_steps} steps, "
              f"{cfg.sample.method}, temperature {cfg.sample.temperature}) at step "
              f"{final_step}\n")
      for i, text in enumerate(samples):
        f.write(f"\n===== sample {i} =====\n{text}\n")
  for i, text in enumerate(samples):
    print(f"===== sample {i} =====\n{text}", flush=True)

  return {"step": final_step, **last_train, **last_eval,
          "unigram_entropy_bits": data.unigram_entropy_bits,
          "true_entropy_bits": data.true_entropy_bits, "samples": samples}


def _progress(tcfg: TrainConfig, start: int):
  if not tcfg.progress_bar:
    return None
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=tcfg.num_steps, initial=start, desc="train", unit="step",
                   dynamic_ncols=True)


def _fmt(metrics: dict[str, float]) -> str:
  return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def _summary(cfg: ExperimentConfig, data: datasets.Dataset, last_eval: dict[str, float],
             step: int) -> str:
  lines = [f"step {step}: validation NELBO bound (EMA params) = "
           f"{last_eval['eval/bits_per_token']:.4f} +- "
           f"{last_eval['eval/stderr_bits_per_token']:.4f} bits/token"]
  lines.append(f"  unigram entropy of the training tokens = {data.unigram_entropy_bits:.4f} "
               f"bits/token")
  if data.chars_per_token:
    lines.append(f"  per character: bound {last_eval['eval/bits_per_char']:.4f} vs unigram "
                 f"{data.unigram_entropy_bits / data.train_chars_per_token:.4f} bits/char "
                 f"({data.chars_per_token:.3f} chars/token)")
  if data.true_entropy_bits is not None:
    lines.append(f"  true entropy of the {cfg.data.seq_len}-token Markov sequences = "
                 f"{data.true_entropy_bits:.4f} bits/token")
  return "\n".join(lines)


def _draw_samples(cfg, model_cfg, params, data, rng, schedule, mesh) -> list[str]:
  if jax.process_count() == 1:
    tokens, _ = sampling.generate(rng, params, model_cfg, sample_cfg=cfg.sample,
                                  schedule=schedule, seq_len=cfg.data.seq_len)
  else:  # Global parameters: sample on the mesh, rows padded to the batch axes.
    from partext_jax.masked.tau_leaping import tau_leaping  # pylint: disable=g-import-not-at-top
    split = math.prod(parallel.mesh_shape(mesh)[a] for a in parallel.batch_axes(mesh))
    rows = -(-cfg.sample.num_samples // split) * split
    x_init = np.full((rows, cfg.data.seq_len), model_cfg.mask_id, np.int32)
    build = functools.partial(
        tau_leaping, mask_id=model_cfg.mask_id, num_steps=cfg.sample.num_steps,
        schedule=schedule, method=cfg.sample.method, temperature=cfg.sample.temperature,
        noise_removal=cfg.sample.noise_removal)
    tokens, _ = parallel.sample(build, rng, x_init, params=params,
                                apply_fn=DenoiserApply(model_cfg), mesh=mesh)
    tokens = parallel.to_host(tokens)[:cfg.sample.num_samples]
  return [data.decode(row) for row in tokens]
