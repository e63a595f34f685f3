"""A trained denoiser run, loaded for inference: sampling and evaluating its latest checkpoint.

``load_run`` rebuilds config, model and train state (EMA parameters included) from a workdir's
latest checkpoint; ``sample_texts`` and ``evaluate_run`` are what ``experiments/sample.py`` and
``experiments/evaluate.py`` call. The sampling and evaluation themselves are the trainer's
(:func:`partext_jax.training.mdm.generate`, :func:`partext_jax.training.mdm.evaluate_params`),
so a loaded run is scored exactly as during training.

Usage::

    run = load_run("workdir/default")
    fn = make_denoise_fn(run.model_config, run.state.ema_params)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np

from partext_jax.data import corpus
from partext_jax.models.denoiser import DenoiserConfig
from partext_jax.training import checkpoint as checkpoint_lib
from partext_jax.training import core
from partext_jax.training import datasets
from partext_jax.training import mdm
from partext_jax.training.config import ExperimentConfig, parse_config


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedRun:
  """A restored run: its config, model config, full train state and tokenizer functions.

  ``decode(int ids [L]) -> str``; ``encode(str) -> int32 ids`` (``None`` for Markov data).
  """

  config: ExperimentConfig
  model_config: DenoiserConfig
  state: checkpoint_lib.TrainState
  metadata: dict[str, Any]
  decode: Callable[[np.ndarray], str]
  encode: Callable[[str], np.ndarray] | None

  @property
  def step(self) -> int:
    return int(self.state.step)


def load_run(workdir: str, *, config: Any = None) -> LoadedRun:
  """Restores the latest checkpoint of ``workdir`` (onto the first device).

  Args:
    workdir: a directory :func:`partext_jax.training.mdm.train_and_evaluate` trained into.
    config: ConfigDict or ExperimentConfig overriding the config stored in the checkpoint; its
      model and data sections must match the trained ones.
  Raises:
    CheckpointError: no checkpoint in ``workdir`` (the message says to train first), or an
      unreadable one or one of another structure.
  """
  directory = core.RunFiles(workdir).checkpoint_dir
  if not os.path.isdir(directory):
    raise checkpoint_lib.CheckpointError(
        f"no checkpoint directory {os.path.abspath(directory)!r}: train into {workdir!r} first")
  with checkpoint_lib.Checkpointer(directory, keep=1_000_000) as ckpt:  # Never prunes.
    if ckpt.latest_step() is None:
      raise checkpoint_lib.CheckpointError(f"no checkpoint in {ckpt.directory!r}: train first")
    meta = ckpt.restore_metadata()
    cfg = parse_config(meta["config"] if config is None else config)
    vocab_size, decode, encode = datasets.build_decoder(cfg.data, meta["tokenizer"])
    model_cfg = cfg.model.denoiser_config(vocab_size=vocab_size, max_len=cfg.data.seq_len)
    optimizer = core.make_optimizer(cfg.train, cfg.train.num_steps)
    state, meta = ckpt.restore(mdm.abstract_train_state(model_cfg, optimizer))
  return LoadedRun(cfg, model_cfg, state, meta, decode, encode)


def sample_texts(workdir: str, *, config: Any = None, num_samples: int | None = None,
                 num_steps: int | None = None, seed: int = 0, prompt: str | None = None,
                 mesh=None) -> list[str]:
  """Decoded tau-leaping samples from the latest checkpoint of ``workdir`` (EMA parameters).

  ``None`` arguments take the run's ``config.sample`` values; ``prompt`` is encoded with the
  run's tokenizer and kept fixed at the start of every sample. With a ``mesh`` the parameters
  and rows are sharded over it (:func:`partext_jax.training.mdm.generate`).

  Raises:
    ValueError: a prompt for data without a tokenizer (``data.source='markov'``).
    CheckpointError: as :func:`load_run`.
  """
  run = load_run(workdir, config=config)
  sample_cfg = dataclasses.replace(
      run.config.sample,
      num_samples=run.config.sample.num_samples if num_samples is None else num_samples,
      num_steps=run.config.sample.num_steps if num_steps is None else num_steps)
  prompt_ids = None
  if prompt:
    if run.encode is None:
      raise ValueError(f"data.source={run.config.data.source!r} has no tokenizer for a prompt")
    prompt_ids = run.encode(prompt)
  tokens, _ = mdm.generate(jax.random.PRNGKey(seed), run.state.ema_params, run.model_config,
                           sample_cfg=sample_cfg,
                           schedule=run.config.diffusion.masking_schedule(),
                           seq_len=run.config.data.seq_len, prompt=prompt_ids, mesh=mesh)
  return [run.decode(row) for row in tokens]


def evaluate_run(workdir: str, *, config: Any = None, num_batches: int | None = None,
                 num_time_samples: int | None = None) -> dict[str, Any]:
  """Validation NELBO of the latest checkpoint (EMA parameters), as the trainer computes it.

  Returns ``step``, ``nats_per_token``, ``bits_per_token``, ``perplexity_bound``,
  ``stderr_bits_per_token``, ``bits_per_char`` (text data), ``unigram_entropy_bits`` and
  ``true_entropy_bits`` (Markov data, else ``None``). ``None`` arguments take the run's
  ``config.train`` values (``eval_batches``, ``eval_time_samples``).
  """
  run = load_run(workdir, config=config)
  tcfg = run.config.train
  data = datasets.build_dataset(run.config.data, workdir=None,
                                tokenizer_json=run.metadata["tokenizer"])
  eval_step = mdm.make_eval_step(
      run.model_config, schedule=run.config.diffusion.masking_schedule(),
      num_time_samples=tcfg.eval_time_samples if num_time_samples is None else num_time_samples)
  batches = corpus.eval_batches(
      data.valid, batch_size=tcfg.eval_batch_size,
      max_batches=tcfg.eval_batches if num_batches is None else num_batches)
  metrics = mdm.evaluate_params(
      eval_step, run.state.ema_params, batches,
      jax.random.fold_in(jax.random.PRNGKey(tcfg.seed), 1), chars_per_token=data.chars_per_token)
  return {"step": run.step, **metrics, "unigram_entropy_bits": data.unigram_entropy_bits,
          "true_entropy_bits": data.true_entropy_bits}
