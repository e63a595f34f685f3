"""The NAT experiment's configuration: typed, frozen, parsed strictly from a ConfigDict.

``configs/nat.py`` returns :func:`default_config`; :func:`parse_config` turns it into a
:class:`NATExperimentConfig` with :func:`partext_jax.training.config.parse_dataclass` (unknown
keys, wrong types and invalid values raise ``ConfigError`` naming the key and the valid ones)::

    config.task   -> TaskConfig    copy / reverse / sort (lengths, V) or distill (SmolLM2 data)
    config.model  -> ModelConfig   ctc / glat / levenshtein / ar, and the network's size
    config.train  -> TrainConfig   optimiser and loop (the trainer core's), batch, glancing, eval

The models it configures: ``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing``,
``docs/algorithms.md#levenshtein-transformer``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import ml_collections

from partext_jax.nat.networks import NATConfig
from partext_jax.nat.tasks import TOY_TASKS
from partext_jax.training.config import (ConfigError, LoopConfig, OptimizerConfig, check_choice,
                                         check_positive, parse_dataclass, to_config_dict)

TASKS = TOY_TASKS + ("distill",)
MODEL_KINDS = ("ctc", "glat", "levenshtein", "ar")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """The task.

  Attributes:
    name: ``"copy"``, ``"reverse"``, ``"sort"`` (:mod:`partext_jax.nat.tasks`) or ``"distill"``
      (SmolLM2's greedy continuations, :mod:`partext_jax.nat.distill`).
    vocab_size: symbols of a toy task.
    min_length: shortest toy source.
    max_length: longest toy source (and the padded length).
    num_valid: held-out toy pairs.
    num_prompts: distill: prompts (first docstring lines of the Python standard library).
    max_prompt_tokens: distill: prompts are cut to this many SmolLM2 tokens.
    max_new_tokens: distill: greedy tokens SmolLM2 writes after each prompt (the target).
    gen_batch_size: distill: prompts per teacher generation batch.
    validation_fraction: distill: fraction of prompts held out (by a stable hash).
  """

  name: str = "copy"
  vocab_size: int = 8
  min_length: int = 16
  max_length: int = 16
  num_valid: int = 512
  num_prompts: int = 2048
  max_prompt_tokens: int = 16
  max_new_tokens: int = 16
  gen_batch_size: int = 64
  validation_fraction: float = 0.1

  def __post_init__(self):
    check_choice("task.name", self.name, TASKS)
    check_positive(self, "vocab_size", "min_length", "num_valid", "num_prompts",
                   "max_prompt_tokens", "max_new_tokens", "gen_batch_size")
    if self.max_length < self.min_length:
      raise ConfigError(f"task.max_length={self.max_length} must be >= task.min_length="
                        f"{self.min_length}")
    if not 0.0 < self.validation_fraction < 1.0:
      raise ConfigError(f"task.validation_fraction={self.validation_fraction} must be in (0, 1)")


_DATA_DETERMINED = ("vocab_size", "max_source_len", "max_target_len")


class _ModelConfigMethods:
  """Checks and conversion of :data:`ModelConfig`."""

  def __post_init__(self):
    check_choice("model.kind", self.kind, MODEL_KINDS)
    if self.upsampling < 1:
      raise ConfigError(f"model.upsampling={self.upsampling} must be >= 1 (decoder positions "
                        f"per source token)")
    try:  # Every other check is NATConfig's own, run on placeholder data sizes.
      self.nat_config(vocab_size=1, max_source_len=1, max_target_len=1)
    except ValueError as e:
      raise ConfigError(str(e)) from e

  def nat_config(self, *, vocab_size: int, max_source_len: int, max_target_len: int
                 ) -> NATConfig:
    """The network's :class:`~partext_jax.nat.networks.NATConfig` once the data fixed sizes."""
    sizes = {f.name: getattr(self, f.name) for f in dataclasses.fields(NATConfig)
             if f.name not in _DATA_DETERMINED}
    return NATConfig(vocab_size=vocab_size, max_source_len=max_source_len,
                     max_target_len=max_target_len, **sizes)


ModelConfig = dataclasses.make_dataclass(
    "ModelConfig",
    [("kind", "str", dataclasses.field(default="ctc"))]
    + [(f.name, f.type, dataclasses.field(default=f.default))
       for f in dataclasses.fields(NATConfig) if f.name not in _DATA_DETERMINED],
    bases=(_ModelConfigMethods,), frozen=True)
ModelConfig.__module__ = __name__
ModelConfig.__doc__ = (
    """The model: ``kind`` -- ``"ctc"`` (one-shot CTC NAT), ``"glat"`` (the same network trained
    with glancing), ``"levenshtein"`` (Levenshtein Transformer) or ``"ar"`` (the causal Llama
    peer, ``num_encoder_layers + num_decoder_layers`` layers) -- and the fields of
    :class:`~partext_jax.nat.networks.NATConfig` minus those the data determines (``vocab_size``,
    ``max_source_len``, ``max_target_len``): the same fields, defaults and checks.""")


@dataclasses.dataclass(frozen=True)
class TrainConfig(OptimizerConfig, LoopConfig):
  """The optimiser and loop fields of
  :class:`~partext_jax.training.config.OptimizerConfig` / ``LoopConfig``, plus:

  Attributes:
    batch_size: pairs per step.
    seed: seed of the parameters, the data order and the training noise.
    glancing_start: GLAT's glancing ratio ``f`` at step 0 ...
    glancing_end: ... annealed linearly to this at the last step (GLAT: 0.5 -> 0.3).
    roll_in: Levenshtein training: probability that a row's insertion input is the target after
      the model's own deletion policy (else a random deletion of it).
    max_iterations: the Levenshtein decoder's step cap.
    eval_batch_size: pairs per decoding batch in evaluation.
  """

  num_steps: int = 1000
  log_every: int = 50
  eval_every: int = 1000
  checkpoint_every: int = 1000
  keep_checkpoints: int = 1
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  batch_size: int = 64
  seed: int = 0
  glancing_start: float = 0.5
  glancing_end: float = 0.3
  roll_in: float = 0.5
  max_iterations: int = 10
  eval_batch_size: int = 256

  def __post_init__(self):
    self.check_optimizer()
    self.check_loop()
    check_positive(self, "batch_size", "max_iterations", "eval_batch_size")
    for name in ("glancing_start", "glancing_end", "roll_in"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ConfigError(f"train.{name}={getattr(self, name)} must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class NATExperimentConfig:
  """One NAT experiment: a field per section (module docstring)."""

  task: TaskConfig = TaskConfig()
  model: ModelConfig = ModelConfig()
  train: TrainConfig = TrainConfig()

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


_SECTIONS = {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig}


def parse_config(config: Any) -> NATExperimentConfig:
  """A ConfigDict / nested mapping (or the config itself) -> :class:`NATExperimentConfig`.

  Raises:
    ConfigError: an unknown section or key, a wrong type or an invalid value.
  """
  if isinstance(config, NATExperimentConfig):
    return config
  top = dict(config.to_dict()) if hasattr(config, "to_dict") else dict(config)
  for key in top:
    if key not in _SECTIONS:
      raise ConfigError(f"unknown config section {key!r}; valid sections: {sorted(_SECTIONS)}")
  return NATExperimentConfig(**{name: parse_dataclass(cls, top[name], where=f"config.{name}")
                                for name, cls in _SECTIONS.items() if name in top})


def default_config() -> ml_collections.ConfigDict:
  """Every section and field at its default (``configs/nat.py``)."""
  return to_config_dict(NATExperimentConfig())
