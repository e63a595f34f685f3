"""Drawing text from a trained denoiser with tau-leaping, and loading a run for inference.

``generate`` builds ``x_init`` (MASK everywhere, an optional prompt in the first positions, which
the sampler keeps fixed) and calls :func:`partext_jax.masked.tau_leaping.tau_leaping`.
``load_run`` rebuilds config, model and EMA parameters from a workdir's latest checkpoint, which
is what ``experiments/sample.py`` and ``experiments/evaluate.py`` use.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.models.denoiser import DenoiserConfig, init_params, make_denoise_fn
from partext_jax.masked.tau_leaping import tau_leaping
from partext_jax.training import checkpoint as checkpoint_lib
from partext_jax.training import datasets
from partext_jax.training.config import ExperimentConfig, SampleConfig, parse_config

CHECKPOINT_DIR = "checkpoints"


def generate(rng: jax.Array, params, model_cfg: DenoiserConfig, *, sample_cfg: SampleConfig,
             schedule, seq_len: int, prompt: np.ndarray | None = None,
             num_samples: int | None = None) -> tuple[np.ndarray, Any]:
  """``int32[num_samples, seq_len]`` tau-leaping samples (and the sampler's info).

  ``prompt`` (int ids, at most ``seq_len``) fills the first positions of every row and is kept.
  """
  num = sample_cfg.num_samples if num_samples is None else num_samples
  mask_id = model_cfg.mask_id
  x_init = np.full((num, seq_len), mask_id, np.int32)
  if prompt is not None and len(prompt):
    prompt = np.asarray(prompt, np.int32)[:seq_len]
    x_init[:, : len(prompt)] = prompt
  denoise_fn = make_denoise_fn(model_cfg, params)  # Parameters as traced arguments.
  sampler = tau_leaping(
      denoise_fn, mask_id=mask_id, num_steps=sample_cfg.num_steps, schedule=schedule,
      method=sample_cfg.method, temperature=sample_cfg.temperature,
      noise_removal=sample_cfg.noise_removal)
  tokens, info = sampler.sample(rng, jnp.asarray(x_init))
  return np.asarray(jax.device_get(tokens)), info


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedRun:
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
  """Restores the latest checkpoint of ``workdir``.

  ``config`` (ConfigDict or ExperimentConfig) overrides the config stored in the checkpoint; the
  model and data sections must then match the trained ones.
  """
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    raise checkpoint_lib.CheckpointError(
        f"no checkpoint directory {os.path.abspath(directory)!r}: train into {workdir!r} first")
  ckpt = checkpoint_lib.Checkpointer(directory, keep=1_000_000)  # Read-only use: never prunes.
  if ckpt.latest_step() is None:
    raise checkpoint_lib.CheckpointError(f"no checkpoint in {ckpt.directory!r}: train first")
  meta = ckpt.restore_metadata()
  cfg = parse_config(meta["config"] if config is None else config)
  vocab_size, decode, encode = datasets.build_decoder(cfg.data, meta["tokenizer"])
  model_cfg = cfg.model.denoiser_config(vocab_size=vocab_size, max_len=cfg.data.seq_len)
  params = jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), model_cfg))
  target = _abstract_state(cfg, params)
  state, meta = ckpt.restore(target)
  ckpt.close()
  return LoadedRun(cfg, model_cfg, state, meta, decode, encode)


def _abstract_state(cfg: ExperimentConfig, params) -> checkpoint_lib.TrainState:
  from partext_jax.training import mdm as trainer  # pylint: disable=g-import-not-at-top

  optimizer = trainer.make_optimizer(cfg.train)
  return jax.eval_shape(lambda p: checkpoint_lib.TrainState(
      step=jnp.int32(0), params=p, ema_params=p, opt_state=optimizer.init(p),
      rng=jax.random.PRNGKey(0)), params)


def sample_texts(workdir: str, *, config: Any = None, num_samples: int | None = None,
                 num_steps: int | None = None, seed: int = 0, prompt: str | None = None
                 ) -> list[str]:
  """Decoded tau-leaping samples from the latest checkpoint of ``workdir`` (EMA parameters).

  ``None`` arguments take the run's ``config.sample`` values; ``prompt`` is encoded with the
  run's tokenizer and kept fixed at the start of every sample.
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
  tokens, _ = generate(jax.random.PRNGKey(seed), run.state.ema_params, run.model_config,
                       sample_cfg=sample_cfg, schedule=run.config.diffusion.masking_schedule(),
                       seq_len=run.config.data.seq_len, prompt=prompt_ids)
  return [run.decode(row) for row in tokens]


def evaluate_run(workdir: str, *, config: Any = None, num_batches: int | None = None,
                 num_time_samples: int | None = None) -> dict[str, Any]:
  """Validation NELBO (bits/token, bits/char, perplexity bound) of the latest checkpoint."""
  from partext_jax.data import corpus  # pylint: disable=g-import-not-at-top
  from partext_jax.training import mdm as trainer  # pylint: disable=g-import-not-at-top

  run = load_run(workdir, config=config)
  tcfg = run.config.train
  data = datasets.build_dataset(run.config.data, workdir=None,
                                tokenizer_json=run.metadata["tokenizer"])
  eval_step = trainer.make_eval_step(
      run.model_config, schedule=run.config.diffusion.masking_schedule(),
      num_time_samples=tcfg.eval_time_samples if num_time_samples is None else num_time_samples)
  batches = corpus.eval_batches(
      data.valid, batch_size=tcfg.eval_batch_size,
      max_batches=tcfg.eval_batches if num_batches is None else num_batches)
  metrics = trainer.evaluate_params(
      eval_step, run.state.ema_params, batches,
      jax.random.fold_in(jax.random.PRNGKey(tcfg.seed), 1), chars_per_token=data.chars_per_token)
  return {"step": run.step, **metrics, "unigram_entropy_bits": data.unigram_entropy_bits,
          "true_entropy_bits": data.true_entropy_bits}
