"""Training: typed configs, checkpoints, the trainer core and the trainers built on it.

* :mod:`~partext_jax.training.config`: strict ConfigDict -> frozen dataclass parsing
  (:func:`parse_dataclass`) and the masked-diffusion experiment's config (:func:`parse_config`).
* :mod:`~partext_jax.training.checkpoint`: the train state and its orbax checkpoints.
* :mod:`~partext_jax.training.core`: optimiser, jitted step, the loop (resume, metrics, plot).
* :mod:`~partext_jax.training.mdm`: the masked-diffusion denoiser (:func:`train_and_evaluate`);
  :mod:`~partext_jax.training.runs` loads a trained run for sampling and evaluation.
* :mod:`~partext_jax.training.planner`: the P2 planner head on a frozen denoiser.
* Drafters of a frozen LM, trained on its own greedy answers: the Medusa heads
  (:mod:`~partext_jax.training.medusa`), the EAGLE feature head
  (:mod:`~partext_jax.training.eagle`), MTP predictors (:mod:`~partext_jax.training.mtp`) and the
  diffusion drafter (:mod:`~partext_jax.training.diffusion_drafter`);
  :mod:`~partext_jax.training.distill` holds what they share (prompts, teacher answers, the data
  cache, the loop, parameter-only exports).
"""

from partext_jax.training.config import (
    ConfigError,
    DataConfig,
    DiffusionConfig,
    ExperimentConfig,
    LoopConfig,
    ModelConfig,
    OptimizerConfig,
    SampleConfig,
    TrainConfig,
    default_config,
    parse_config,
    parse_dataclass,
    to_config_dict,
)
from partext_jax.training.checkpoint import Checkpointer, CheckpointError, TrainState
from partext_jax.training.core import RunFiles, make_optimizer, train_loop
from partext_jax.training.mdm import train_and_evaluate
from partext_jax.training.runs import load_run

__all__ = [
    "ConfigError", "DataConfig", "DiffusionConfig", "ExperimentConfig", "LoopConfig",
    "ModelConfig", "OptimizerConfig", "SampleConfig", "TrainConfig", "default_config",
    "parse_config", "parse_dataclass", "to_config_dict", "Checkpointer", "CheckpointError",
    "TrainState", "RunFiles", "make_optimizer", "train_loop", "train_and_evaluate", "load_run",
]
