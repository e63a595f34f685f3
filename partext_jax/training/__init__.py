"""Training: typed configs, checkpoints, the training loop and sampling from a trained run."""

from partext_jax.training.config import (
    ConfigError,
    DataConfig,
    DiffusionConfig,
    ExperimentConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    parse_config,
)
from partext_jax.training.checkpoint import Checkpointer, CheckpointError, TrainState
from partext_jax.training.mdm import train_and_evaluate

__all__ = [
    "ConfigError", "DataConfig", "DiffusionConfig", "ExperimentConfig", "ModelConfig",
    "SampleConfig", "TrainConfig", "parse_config", "Checkpointer", "CheckpointError",
    "TrainState", "train_and_evaluate",
]
