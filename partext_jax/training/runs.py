"""A trained denoiser run, loaded for inference: sampling and evaluating its latest checkpoint.

``load_run`` rebuilds config, model and train state (EMA parameters included) from a workdir's
latest checkpoint (or a chosen step); ``export_run`` writes the EMA parameters alone, with the
config and tokenizer, as a self-contained orbax directory, and ``load_shipped`` loads the exports
committed with the package (:data:`SHIPPED`, under ``partext_jax/assets/``) by name.
``sample_texts`` and ``evaluate_run`` are what ``experiments/sample.py`` and
``experiments/evaluate.py`` call; both accept a workdir or a loaded run. The sampling and
evaluation themselves are the trainer's (:func:`partext_jax.training.mdm.generate`,
:func:`partext_jax.training.mdm.evaluate_params`), so a loaded run is scored exactly as during
training.

Usage::

    run = load_run("workdir/default")               # or: load_shipped("mdm_small")
    fn = make_denoise_fn(run.model_config, run.state.ema_params)
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Callable

import jax
import numpy as np

from partext_jax.data import corpus
from partext_jax.models import denoiser
from partext_jax.models.denoiser import DenoiserConfig, init_params
from partext_jax.training import checkpoint as checkpoint_lib
from partext_jax.training import core
from partext_jax.training import datasets
from partext_jax.training import mdm
from partext_jax.training.config import ExperimentConfig, parse_config

#: Masked-diffusion checkpoints shipped with the package (``partext_jax/assets/<name>``), made by
#: ``experiments/export_mdm.py`` from a run of ``configs/<name>.py``.
SHIPPED = ("mdm_small",)


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


def load_run(workdir: str, *, config: Any = None, step: int | None = None) -> LoadedRun:
  """Restores the latest checkpoint of ``workdir`` (or ``step``), onto the first device.

  Args:
    workdir: a directory :func:`partext_jax.training.mdm.train_and_evaluate` trained into.
    config: ConfigDict or ExperimentConfig overriding the config stored in the checkpoint; its
      model and data sections must match the trained ones.
    step: the checkpoint step to read (default: the latest).
  Raises:
    CheckpointError: no checkpoint in ``workdir`` (the message says to train first), no
      checkpoint at ``step`` (the message lists the kept steps), or an unreadable one or one of
      another structure.
  """
  directory = core.RunFiles(workdir).checkpoint_dir
  if not os.path.isdir(directory):
    raise checkpoint_lib.CheckpointError(
        f"no checkpoint directory {os.path.abspath(directory)!r}: train into {workdir!r} first")
  with checkpoint_lib.Checkpointer(directory, read_only=True) as ckpt:
    if ckpt.latest_step() is None:
      raise checkpoint_lib.CheckpointError(f"no checkpoint in {ckpt.directory!r}: train first")
    if step is not None and step not in ckpt.all_steps():
      raise checkpoint_lib.CheckpointError(
          f"step={step} is not a checkpoint in {ckpt.directory!r}; kept steps: "
          f"{ckpt.all_steps()}")
    meta = ckpt.restore_metadata(step=step)
    cfg, model_cfg, decode, encode = _rebuild(meta, config)
    optimizer = core.make_optimizer(cfg.train, cfg.train.num_steps)
    state, meta = ckpt.restore(mdm.abstract_train_state(model_cfg, optimizer), step=step)
  return LoadedRun(cfg, model_cfg, state, meta, decode, encode)


def _rebuild(meta: dict[str, Any], config: Any):
  """``(config, model config, decode, encode)`` from a checkpoint's metadata."""
  cfg = parse_config(meta["config"] if config is None else config)
  vocab_size, decode, encode = datasets.build_decoder(cfg.data, meta["tokenizer"])
  model_cfg = cfg.model.denoiser_config(vocab_size=vocab_size, max_len=cfg.data.seq_len)
  return cfg, model_cfg, decode, encode


def export_run(workdir: str, destination: str, *, step: int | None = None,
               metadata: dict[str, Any] | None = None) -> str:
  """Writes the EMA parameters of ``workdir``'s checkpoint alone, as :func:`load_exported` reads.

  The export is an orbax checkpoint directory (``destination/<step>``) whose train state holds
  the EMA parameters as ``params`` (float32, as trained) and nothing else, and whose JSON
  metadata holds the run's config, its tokenizer JSON, the source step and ``metadata`` (e.g.
  the command that made it and the validation bound). It is written beside ``destination`` and
  moved into place only when complete, so an interrupted export leaves the old one intact.

  Args:
    workdir: a trained run (:func:`load_run`).
    destination: the export directory (replaced).
    step: the checkpoint step to export (default: the latest).
    metadata: extra JSON-serialisable entries for the metadata.
  Returns:
    ``destination``.
  Raises:
    CheckpointError: as :func:`load_run`, or if orbax fails to write.
  """
  run = load_run(workdir, step=step)
  state = checkpoint_lib.TrainState(step=run.state.step, params=run.state.ema_params,
                                    ema_params={}, opt_state={}, rng=run.state.rng)
  meta = {"config": run.metadata["config"], "tokenizer": run.metadata["tokenizer"],
          "source_workdir": os.path.abspath(workdir), "source_step": run.step, **(metadata or {})}
  destination = os.path.abspath(destination)
  staging = destination + ".partial"
  shutil.rmtree(staging, ignore_errors=True)
  with checkpoint_lib.Checkpointer(staging, keep=1) as ckpt:
    ckpt.save(state, metadata=meta)
  shutil.rmtree(destination, ignore_errors=True)
  os.replace(staging, destination)
  return destination


def load_exported(directory: str) -> LoadedRun:
  """Loads an :func:`export_run` directory as a :class:`LoadedRun` (onto the first device).

  Its ``state.params`` and ``state.ema_params`` are the same (EMA) arrays; ``opt_state`` is
  empty, so it samples and evaluates like a run but cannot resume training.

  Raises:
    CheckpointError: no such directory, no checkpoint in it, or an unreadable one or one whose
      parameters do not match its stored config.
  """
  if not os.path.isdir(directory):
    raise checkpoint_lib.CheckpointError(f"no exported checkpoint directory {directory!r}")
  with checkpoint_lib.Checkpointer(directory, read_only=True) as ckpt:
    meta = ckpt.restore_metadata()
    cfg, model_cfg, decode, encode = _rebuild(meta, None)
    abstract = jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), model_cfg))
    try:
      params, meta = ckpt.restore_params(abstract)
    except checkpoint_lib.CheckpointError as error:
      # An export written before the denoiser's blocks ran under nn.scan (block_<i> keys).
      try:
        params, meta = ckpt.restore_params(denoiser.unstacked_shapes(abstract))
      except checkpoint_lib.CheckpointError:
        raise error from None
      params = denoiser.stack_blocks(params)
  state = checkpoint_lib.TrainState(step=np.int32(meta["source_step"]), params=params,
                                    ema_params=params, opt_state={},
                                    rng=np.zeros((2,), np.uint32))
  return LoadedRun(cfg, model_cfg, state, meta, decode, encode)


def shipped_directory(name: str) -> str:
  """The asset directory of the shipped checkpoint ``name`` (one of :data:`SHIPPED`).

  Raises:
    ValueError: ``name`` is not one of :data:`SHIPPED` (the message lists them).
  """
  if name not in SHIPPED:
    raise ValueError(f"unknown shipped checkpoint {name!r}; choose one of {list(SHIPPED)}")
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                      name)


def load_shipped(name: str = "mdm_small") -> LoadedRun:
  """The masked-diffusion checkpoint ``name`` shipped with the package, ready to sample.

  ``mdm_small``: a 5.6M-parameter denoiser trained by ``experiments/train.py
  --config=configs/mdm_small.py`` on the main job's data (stdlib source, 1024-token BPE, 128
  tokens); ``run.metadata`` records its step, bound and the export command.

  Raises:
    ValueError: unknown ``name`` (the message lists :data:`SHIPPED`).
    CheckpointError: the asset is missing or unreadable (a broken install).
  """
  return load_exported(shipped_directory(name))


def _as_run(run: LoadedRun | str, config: Any) -> LoadedRun:
  return run if isinstance(run, LoadedRun) else load_run(run, config=config)


def sample_texts(workdir: LoadedRun | str, *, config: Any = None, num_samples: int | None = None,
                 num_steps: int | None = None, seed: int = 0, prompt: str | None = None,
                 mesh=None) -> list[str]:
  """Decoded tau-leaping samples from the latest checkpoint of ``workdir`` (EMA parameters).

  ``workdir`` may also be a :class:`LoadedRun` (e.g. :func:`load_shipped`'s).
  ``None`` arguments take the run's ``config.sample`` values; ``prompt`` is encoded with the
  run's tokenizer and kept fixed at the start of every sample. With a ``mesh`` the parameters
  and rows are sharded over it (:func:`partext_jax.training.mdm.generate`).

  Raises:
    ValueError: a prompt for data without a tokenizer (``data.source='markov'``).
    CheckpointError: as :func:`load_run`.
  """
  run = _as_run(workdir, config)
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


def evaluate_run(workdir: LoadedRun | str, *, config: Any = None, num_batches: int | None = None,
                 num_time_samples: int | None = None) -> dict[str, Any]:
  """Validation NELBO of the latest checkpoint (EMA parameters), as the trainer computes it.

  Returns ``step``, ``nats_per_token``, ``bits_per_token``, ``perplexity_bound``,
  ``stderr_bits_per_token``, ``bits_per_char`` (text data), ``unigram_entropy_bits`` and
  ``true_entropy_bits`` (Markov data, else ``None``). ``None`` arguments take the run's
  ``config.train`` values (``eval_batches``, ``eval_time_samples``). ``workdir`` may also be a
  :class:`LoadedRun` (e.g. :func:`load_shipped`'s: its EMA parameters are scored the same way).
  """
  run = _as_run(workdir, config)
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
