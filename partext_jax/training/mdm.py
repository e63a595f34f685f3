"""The masked-diffusion denoiser's trainer: ``train_and_evaluate(config, workdir)``.

What is specific to the denoiser; the optimiser, the step, the loop, checkpoints and the metrics
file are the trainer core's (:mod:`partext_jax.training.core`, whose docstring states the exact
resume guarantee).

* Loss: the masked-diffusion NELBO (Sahoo et al. 2024, MDLM; Shi et al. 2024, MD4) with
  antithetic times, ``docs/algorithms.md#masking-schedules-and-the-elbo``
  (:func:`partext_jax.diffusion.mdm_loss`), dropout keyed by the step's key.
* EMA of the parameters (``train.ema_decay``); validation and samples use the EMA parameters.
* Data: step ``k`` trains on ``corpus.batch_at(train, step=k, seed=train.seed)``.
* Validation: the Monte-Carlo NELBO of a fixed, seeded subset of the validation examples
  (``eval_batches`` batches, ``eval_time_samples`` draws of (t, mask) each, the same draws at
  every evaluation), in bits per token and, for text, bits per character.
* Logging: ``<workdir>/metrics.jsonl`` (``train/*`` with bits/token, bits/char and tokens/s
  added; ``eval/*``) and ``metrics.png`` (train and validation NELBO beside the unigram entropy
  of the training tokens and, for Markov data, the true entropy).
* Devices: the run's ``mesh`` section (:mod:`partext_jax.parallel`) builds a ``(data, fsdp,
  tensor)`` mesh; the state is created sharded, each batch split over ``data * fsdp``, and the
  step jitted with in/out shardings. On one device this is a 1-device mesh (same numbers as
  unsharded); on several, the same numbers up to float summation order.
* At the end: the validation bound beside the unigram entropy of the training tokens, and a few
  tau-leaping samples (printed and written to ``<workdir>/samples.txt``).

Usage (a notebook can do the same as ``experiments/train.py``)::

    from partext_jax.training import config
    metrics = train_and_evaluate(config.default_config(), "/tmp/run")
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from partext_jax import diffusion
from partext_jax import parallel
from partext_jax.data import corpus
from partext_jax.masked.tau_leaping import tau_leaping
from partext_jax.models.denoiser import (Denoiser, DenoiserApply, DenoiserConfig, count_params,
                                         init_params, make_denoise_fn, param_logical_axes)
from partext_jax.schedules import MaskingSchedule
from partext_jax.training import core
from partext_jax.training import datasets
from partext_jax.training.checkpoint import TrainState
from partext_jax.training.config import ExperimentConfig, SampleConfig, parse_config

CONFIG_FILE = "config.json"
SAMPLES_FILE = "samples.txt"
LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# Pure pieces: state, train and eval steps.


def init_train_state(rng: jax.Array, model_cfg: DenoiserConfig,
                     optimizer: optax.GradientTransformation, *,
                     shardings: TrainState | None = None) -> TrainState:
  """A fresh denoiser :class:`TrainState` (with EMA) from the raw key ``rng``.

  With ``shardings`` (:func:`train_state_shardings`) every array is created in its shards.
  """
  return core.init_train_state(rng, functools.partial(init_params, cfg=model_cfg), optimizer,
                               shardings=shardings)


def abstract_train_state(model_cfg: DenoiserConfig, optimizer: optax.GradientTransformation
                         ) -> TrainState:
  """``ShapeDtypeStruct`` tree of :func:`init_train_state` (the target to restore a run into)."""
  return core.abstract_train_state(functools.partial(init_params, cfg=model_cfg), optimizer)


def train_state_shardings(model_cfg: DenoiserConfig, optimizer: optax.GradientTransformation,
                          mesh, *, rules=parallel.DEFAULT_RULES) -> TrainState:
  """``NamedSharding`` tree of the denoiser's train state on ``mesh``.

  Parameters, their EMA and the optimiser's moments follow the logical-axis rules
  (:mod:`partext_jax.parallel`); ``step``, ``rng`` and optimiser counts are replicated.
  """
  abstract = jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), model_cfg))
  params = parallel.param_shardings(param_logical_axes(model_cfg), abstract, mesh, rules=rules)
  return core.train_state_shardings(params, abstract, optimizer, mesh)


def make_loss_fn(model_cfg: DenoiserConfig, *, schedule: MaskingSchedule, antithetic: bool):
  """``loss_fn(params, x0 int32[B, L], rng) -> (nats/token float32[], aux)`` for the core.

  The NELBO of ``docs/algorithms.md#masking-schedules-and-the-elbo`` with dropout on; ``aux``
  holds ``masked_fraction`` and ``mean_t``.
  """
  model = Denoiser(model_cfg)

  def loss_fn(params, x0, rng):
    loss_rng, dropout_rng = jax.random.split(rng)

    def denoise_fn(tokens, t):
      return model.apply({"params": params}, tokens, t, deterministic=False,
                         rngs={"dropout": dropout_rng})

    return diffusion.mdm_loss(loss_rng, denoise_fn, x0, schedule=schedule,
                              mask_id=model_cfg.mask_id, antithetic=antithetic)

  return loss_fn


def make_train_step(model_cfg: DenoiserConfig, optimizer: optax.GradientTransformation, *,
                    schedule: MaskingSchedule, antithetic: bool, ema_decay: float, mesh=None,
                    rules=parallel.DEFAULT_RULES):
  """The jitted ``train_step(state, x0 int32[B, L], rng) -> (state, metrics)`` (state donated).

  With a ``mesh`` the step is compiled with ``in_shardings`` / ``out_shardings``: the state as
  :func:`train_state_shardings`, the batch split over the batch axes, key and metrics
  replicated. XLA inserts the gradient reductions (data/fsdp) and the parameter all-gathers
  (fsdp/tensor); the arithmetic is the same as on one device up to summation order.
  """
  loss_fn = make_loss_fn(model_cfg, schedule=schedule, antithetic=antithetic)
  if mesh is None:
    return core.make_train_step(loss_fn, optimizer, ema_decay=ema_decay)
  state_sh = train_state_shardings(model_cfg, optimizer, mesh, rules=rules)
  repl = parallel.replicated(mesh)
  return core.make_train_step(
      loss_fn, optimizer, ema_decay=ema_decay,
      in_shardings=(state_sh, parallel.batch_sharding(mesh, 2, rules=rules), repl),
      out_shardings=(state_sh, repl))


def make_eval_step(model_cfg: DenoiserConfig, *, schedule: MaskingSchedule,
                   num_time_samples: int):
  """Jitted ``eval_step(params, x0 int32[B, L], rng) -> float32[num_time_samples]``.

  The NELBO in nats/token of ``num_time_samples`` independent (t, mask) draws (antithetic times,
  ``docs/algorithms.md#masking-schedules-and-the-elbo``), dropout off.
  """
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

  Same estimator and keys as :func:`partext_jax.diffusion.evaluate_bound` (batch ``i`` uses
  ``fold_in(rng, i)``), with the parameters as a jit argument so repeated evaluations reuse one
  compilation. With a ``mesh`` each batch is split over its batch axes. Returns
  ``nats_per_token``, ``bits_per_token``, ``perplexity_bound``, ``stderr_bits_per_token`` and,
  given ``chars_per_token``, ``bits_per_char``.
  """
  place = jnp.asarray if mesh is None else functools.partial(parallel.shard_batch, mesh=mesh)
  values = np.concatenate([
      parallel.to_host(eval_step(params, place(x0), jax.random.fold_in(rng, i)))
      for i, x0 in enumerate(batches)])
  nats = float(values.mean())
  stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
  out = {
      "nats_per_token": nats,
      "bits_per_token": nats / LN2,
      "perplexity_bound": math.exp(min(nats, 700.0)),
      "stderr_bits_per_token": stderr / LN2,
  }
  if chars_per_token:
    out["bits_per_char"] = out["bits_per_token"] / chars_per_token
  return out


# --------------------------------------------------------------------------------------------
# Sampling from a trained denoiser (the samples printed at the end; runs.sample_texts).


def generate(rng: jax.Array, params, model_cfg: DenoiserConfig, *, sample_cfg: SampleConfig,
             schedule: MaskingSchedule, seq_len: int, prompt: np.ndarray | None = None,
             num_samples: int | None = None, mesh=None) -> tuple[np.ndarray, Any]:
  """Tau-leaping samples ``int32[num_samples, seq_len]`` (numpy) and the sampler's info.

  Args:
    rng: the sampler's key.
    params: the denoiser's parameters (the EMA ones of a run).
    model_cfg: their config.
    sample_cfg: steps, method, temperature, noise removal; ``num_samples`` unless given.
    schedule: the masking schedule the model was trained with.
    seq_len: sample length.
    prompt: int ids (fewer than ``seq_len``) filling the first positions of every row; the
      sampler keeps them fixed.
    mesh: sample on this device mesh (:func:`partext_jax.parallel.sample`): the parameters are
      sharded by the logical-axis rules and the rows (padded to a multiple of the batch axes)
      split over ``data * fsdp``; each row's key depends only on its index, so the samples are
      the mesh-independent ones.
  Raises:
    ValueError: a prompt of ``seq_len`` tokens or more (nothing would be generated; it is never
      cut), or from the sampler's checks (e.g. ``num_steps``), before compiling.
  """
  num = sample_cfg.num_samples if num_samples is None else num_samples
  rows = num
  if mesh is not None:  # Pad the rows to a multiple of the batch axes.
    split = math.prod(parallel.mesh_shape(mesh)[a] for a in parallel.batch_axes(mesh))
    rows = -(-num // split) * split
  x_init = np.full((rows, seq_len), model_cfg.mask_id, np.int32)
  if prompt is not None and len(prompt):
    if len(prompt) >= seq_len:
      raise ValueError(f"prompt has {len(prompt)} tokens but samples are seq_len={seq_len} tokens "
                       f"long: it leaves no position to generate (shorten the prompt to at most "
                       f"{seq_len - 1} tokens)")
    x_init[:, : len(prompt)] = np.asarray(prompt, np.int32)
  build = functools.partial(
      tau_leaping, mask_id=model_cfg.mask_id, num_steps=sample_cfg.num_steps, schedule=schedule,
      method=sample_cfg.method, temperature=sample_cfg.temperature,
      noise_removal=sample_cfg.noise_removal)
  if mesh is None:
    # Parameters as traced arguments (a Partial), not constants of the compiled sampler.
    tokens, info = build(make_denoise_fn(model_cfg, params)).sample(rng, jnp.asarray(x_init))
    return np.asarray(jax.device_get(tokens)), info
  params = parallel.shard_params(params, param_logical_axes(model_cfg), mesh)
  tokens, info = parallel.sample(build, rng, x_init, params=params,
                                 apply_fn=DenoiserApply(model_cfg), mesh=mesh)
  return parallel.to_host(tokens)[:num], info


# --------------------------------------------------------------------------------------------
# The trainer.


def _throughput(means: dict[str, float], num_steps: int, seconds: float, *,
                tokens_per_step: int, chars_per_token: float | None) -> dict[str, float]:
  out = {"train/bits_per_token": means["loss"] / LN2,
         "train/tokens_per_s": num_steps * tokens_per_step / seconds}
  if chars_per_token:
    out["train/bits_per_char"] = out["train/bits_per_token"] / chars_per_token
  return out


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Trains (or resumes, or skips if finished), evaluates and samples; returns final metrics.

  Args:
    config: an ``ml_collections.ConfigDict`` (``configs/*.py``), a nested mapping or an
      :class:`~partext_jax.training.config.ExperimentConfig`.
    workdir: where ``config.json``, ``tokenizer.json``, ``checkpoints/``, ``metrics.jsonl``,
      ``metrics.png`` and ``samples.txt`` go; a rerun with the same workdir resumes.
  Returns:
    the last ``train/*`` values of this call (none if the run had finished), the final
    ``eval/*`` values, ``step``, ``unigram_entropy_bits``, ``true_entropy_bits`` (Markov data,
    else ``None``) and ``samples`` (decoded texts).
  Raises:
    ConfigError: an invalid config.
    ValueError: data too small for the batch or sequence length, or batch sizes that do not
      split over the mesh.
    CheckpointError: an unreadable checkpoint.
  """
  cfg: ExperimentConfig = parse_config(config)
  tcfg = cfg.train
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, CONFIG_FILE), "w", encoding="utf-8") as f:
      f.write(cfg.to_json())

  data = datasets.build_dataset(cfg.data, workdir=workdir)
  logging.info("data: %s; %d train / %d validation examples of %d tokens", data.description,
               len(data.train), len(data.valid), cfg.data.seq_len)
  model_cfg = cfg.model.denoiser_config(vocab_size=data.vocab_size, max_len=cfg.data.seq_len)
  schedule = cfg.diffusion.masking_schedule()
  optimizer = core.make_optimizer(tcfg, tcfg.num_steps)

  mesh = parallel.mesh_from_config(cfg.mesh)
  parallel.check_batch(tcfg.batch_size, mesh, name="train.batch_size")
  parallel.check_batch(tcfg.eval_batch_size, mesh, name="train.eval_batch_size")
  state_sh = train_state_shardings(model_cfg, optimizer, mesh)
  logging.info("mesh: %s", parallel.describe(mesh))

  root = jax.random.PRNGKey(tcfg.seed)
  state = init_train_state(jax.random.fold_in(root, 0), model_cfg, optimizer, shardings=state_sh)
  eval_rng = jax.random.fold_in(root, 1)  # The same masks at every evaluation.
  logging.info("model: %d parameters", count_params(state.params))

  train_step = make_train_step(model_cfg, optimizer, schedule=schedule,
                               antithetic=cfg.diffusion.antithetic, ema_decay=tcfg.ema_decay,
                               mesh=mesh)
  eval_step = make_eval_step(model_cfg, schedule=schedule,
                             num_time_samples=tcfg.eval_time_samples)
  valid_batches = corpus.eval_batches(data.valid, batch_size=tcfg.eval_batch_size,
                                      max_batches=tcfg.eval_batches)
  files = core.RunFiles(workdir)
  result = core.train_loop(
      state, train_step,
      lambda step: parallel.shard_batch(corpus.batch_at(
          data.train, step=step, batch_size=tcfg.batch_size, seed=tcfg.seed), mesh),
      loop=tcfg, files=files,
      metadata={"config": cfg.to_dict(), "tokenizer": data.tokenizer_json,
                "vocab_size": data.vocab_size},
      evaluate=lambda s: evaluate_params(eval_step, s.ema_params, valid_batches, eval_rng,
                                         chars_per_token=data.chars_per_token, mesh=mesh),
      shardings=state_sh, learning_rate=core.learning_rate_schedule(tcfg, tcfg.num_steps),
      summarize=functools.partial(_throughput,
                                  tokens_per_step=tcfg.batch_size * cfg.data.seq_len,
                                  chars_per_token=data.train_chars_per_token))
  final_step = int(result.state.step)

  core.plot_metrics(files.metrics_path, files.plot_path,
                    curves=(("train/bits_per_token", "train NELBO"),
                            ("eval/bits_per_token", "validation NELBO (EMA)")),
                    reference_lines=((data.unigram_entropy_bits, "unigram entropy"),
                                     (data.true_entropy_bits, "true entropy")),
                    ylabel="bits / token")

  tokens, _ = generate(jax.random.PRNGKey(cfg.sample.seed), result.state.ema_params, model_cfg,
                       sample_cfg=cfg.sample, schedule=schedule, seq_len=cfg.data.seq_len,
                       mesh=mesh if jax.process_count() > 1 else None)
  samples = [data.decode(row) for row in tokens]
  if jax.process_index() == 0:
    with open(os.path.join(workdir, SAMPLES_FILE), "w", encoding="utf-8") as f:
      f.write(f"# {cfg.sample.num_samples} tau-leaping samples ({cfg.sample.num_steps} steps, "
              f"{cfg.sample.method}, temperature {cfg.sample.temperature}) at step "
              f"{final_step}\n")
      for i, text in enumerate(samples):
        f.write(f"\n===== sample {i} =====\n{text}\n")
  for i, text in enumerate(samples):
    print(f"===== sample {i} =====\n{text}", flush=True)
  print(_summary(cfg, data, result.last_eval, final_step), flush=True)  # The closing block.

  return {"step": final_step, **result.last_train, **result.last_eval,
          "unigram_entropy_bits": data.unigram_entropy_bits,
          "true_entropy_bits": data.true_entropy_bits, "samples": samples}


def _summary(cfg: ExperimentConfig, data: datasets.Dataset, last_eval: dict[str, float],
             step: int) -> str:
  lines = [f"step {step}: validation NELBO bound (EMA params) = "
           f"{last_eval['eval/bits_per_token']:.4f} +- "
           f"{last_eval['eval/stderr_bits_per_token']:.4f} bits/token"]
  lines.append(f"  unigram entropy of the training tokens = {data.unigram_entropy_bits:.4f} "
               f"bits/token")
  if data.chars_per_token:
    # Each figure is divided by the chars/token of the split it was measured on.
    lines.append(f"  per character: bound {last_eval['eval/bits_per_char']:.4f} bits/char "
                 f"(validation, {data.chars_per_token:.3f} chars/token) vs unigram "
                 f"{data.unigram_entropy_bits / data.train_chars_per_token:.4f} bits/char "
                 f"(training, {data.train_chars_per_token:.3f} chars/token)")
  if data.true_entropy_bits is not None:
    lines.append(f"  true entropy of the {cfg.data.seq_len}-token Markov sequences = "
                 f"{data.true_entropy_bits:.4f} bits/token")
  return "\n".join(lines)

