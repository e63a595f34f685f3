"""Typed, frozen experiment configuration built from an ``ml_collections.ConfigDict``.

Launchers read ``configs/*.py`` into a ConfigDict; :func:`parse_config` converts it once, at the
boundary, into the dataclasses below, and library code only ever sees those. Conversion is
strict: an unknown (e.g. misspelled) key raises :class:`ConfigError` naming the key, the closest
valid spelling and every valid key; string switches list their valid choices.

Sections (each a ConfigDict of the same name)::

    config.data       -> DataConfig       corpus, tokenizer, sequence length
    config.model      -> ModelConfig      denoiser size (vocab / length come from the data)
    config.diffusion  -> DiffusionConfig  masking schedule of the loss and the bound
    config.train      -> TrainConfig      optimiser, steps, logging, checkpoints
    config.sample     -> SampleConfig     tau-leaping samples printed at the end
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import Any, Mapping

from partext_jax.data.tokenizer import TOKENIZER_KINDS
from partext_jax.models.denoiser import DTYPES, DenoiserConfig
from partext_jax.schedules import SCHEDULE_KINDS, MaskingSchedule

DATA_SOURCES = ("stdlib", "files", "markov")
SAMPLER_METHODS = ("analytic", "euler")


class ConfigError(ValueError):
  """A configuration key or value is invalid."""


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ConfigError(f"{name}={value!r} is not one of {choices}")


def _positive(obj, *names: str) -> None:
  for name in names:
    if not getattr(obj, name) > 0:
      raise ConfigError(f"{type(obj).__name__}.{name}={getattr(obj, name)!r} must be > 0")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to train on. See ``configs/default.py`` for each field's meaning."""

  source: str = "stdlib"
  path: str = ""
  glob: str = "**/*.txt"
  max_bytes: int = 4_000_000
  validation_fraction: float = 0.05
  tokenizer: str = "char"
  vocab_size: int = 256
  seq_len: int = 128
  seed: int = 0
  num_states: int = 8
  concentration: float = 0.3
  num_train_sequences: int = 4096
  num_valid_sequences: int = 256

  def __post_init__(self):
    _choice("data.source", self.source, DATA_SOURCES)
    _choice("data.tokenizer", self.tokenizer, TOKENIZER_KINDS)
    _positive(self, "vocab_size", "seq_len", "num_states", "concentration",
              "num_train_sequences", "num_valid_sequences")
    if not 0.0 < self.validation_fraction < 1.0:
      raise ConfigError(f"data.validation_fraction={self.validation_fraction} must be in (0, 1)")
    if self.source == "files" and not self.path:
      raise ConfigError("data.source='files' needs data.path (a directory or file of text)")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """:class:`DenoiserConfig` minus the fields the data determines (``vocab_size``, ``max_len``)."""

  d_model: int = 128
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 512
  time_conditioning: bool = False
  rope_theta: float = 10000.0
  dropout_rate: float = 0.0
  dtype: str = "float32"
  attention_impl: str = "xla"

  def __post_init__(self):
    _choice("model.dtype", self.dtype, DTYPES)

  def denoiser_config(self, *, vocab_size: int, max_len: int) -> DenoiserConfig:
    return DenoiserConfig(vocab_size=vocab_size, max_len=max_len, **dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """The masking schedule ``alpha(t)`` and the training-time sampling of ``t``."""

  schedule: str = "linear"
  exponent: float = 2.0
  eps: float = 0.0
  antithetic: bool = True

  def __post_init__(self):
    _choice("diffusion.schedule", self.schedule, SCHEDULE_KINDS)

  def masking_schedule(self) -> MaskingSchedule:
    return MaskingSchedule(self.schedule, exponent=self.exponent, eps=self.eps)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimiser, length of the run, evaluation, logging and checkpointing."""

  seed: int = 0
  batch_size: int = 32
  num_steps: int = 1000
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  end_learning_rate_ratio: float = 0.1
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.98
  grad_clip_norm: float = 1.0
  ema_decay: float = 0.999
  log_every: int = 50
  eval_every: int = 500
  eval_batch_size: int = 32
  eval_batches: int = 8
  eval_time_samples: int = 4
  checkpoint_every: int = 500
  keep_checkpoints: int = 2
  progress_bar: bool = True

  def __post_init__(self):
    _positive(self, "batch_size", "num_steps", "learning_rate", "log_every", "eval_every",
              "eval_batch_size", "eval_batches", "eval_time_samples", "checkpoint_every",
              "keep_checkpoints")
    if self.warmup_steps < 0:
      raise ConfigError(f"train.warmup_steps={self.warmup_steps} must be >= 0")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ConfigError(f"train.ema_decay={self.ema_decay} must be in [0, 1)")
    if not 0.0 <= self.end_learning_rate_ratio <= 1.0:
      raise ConfigError(f"train.end_learning_rate_ratio={self.end_learning_rate_ratio} must be "
                        f"in [0, 1]")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """Tau-leaping samples drawn with the EMA parameters after training."""

  num_samples: int = 4
  num_steps: int = 128
  method: str = "analytic"
  temperature: float = 1.0
  noise_removal: bool = True
  seed: int = 0

  def __post_init__(self):
    _positive(self, "num_samples", "num_steps")
    _choice("sample.method", self.method, SAMPLER_METHODS)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh of the run (:func:`partext_jax.parallel.make_mesh`); ``-1`` fills the rest.

  ``data`` and ``fsdp`` split the batch, ``fsdp`` also the parameters' ``embed`` dimension,
  ``tensor`` their ``vocab``/``mlp``/``heads`` dimensions. The product must equal the number of
  devices (all processes together), and ``data * fsdp`` must divide the batch sizes.
  """

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def __post_init__(self):
    sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
    for name, v in sizes.items():
      if v < 1 and v != -1:
        raise ConfigError(f"mesh.{name}={v} must be >= 1 or -1 (fill in the remaining devices)")
    if sum(v == -1 for v in sizes.values()) > 1:
      raise ConfigError(f"at most one mesh axis may be -1, got {sizes}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  diffusion: DiffusionConfig = DiffusionConfig()
  train: TrainConfig = TrainConfig()
  sample: SampleConfig = SampleConfig()
  mesh: MeshConfig = MeshConfig()

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


_SECTION_TYPES = {"data": DataConfig, "model": ModelConfig, "diffusion": DiffusionConfig,
                  "train": TrainConfig, "sample": SampleConfig, "mesh": MeshConfig}


def _items(section: Any, where: str) -> dict[str, Any]:
  if hasattr(section, "to_dict"):  # ConfigDict / FrozenConfigDict.
    return dict(section.to_dict())
  if isinstance(section, Mapping):
    return dict(section)
  raise ConfigError(f"{where} must be a ConfigDict or mapping, got {type(section).__name__}")


def _unknown(key: str, where: str, valid: list[str]) -> ConfigError:
  close = difflib.get_close_matches(key, valid, n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  return ConfigError(f"unknown config key {where}.{key!r}{hint}; valid keys of {where}: "
                     f"{sorted(valid)}")


def _coerce(value: Any, field: dataclasses.Field, where: str) -> Any:
  kind = field.type if isinstance(field.type, str) else field.type.__name__
  if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  expected = {"int": int, "float": float, "bool": bool, "str": str}[kind]
  if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
    raise ConfigError(f"config {where}.{field.name}={value!r} must be of type {kind}, got "
                      f"{type(value).__name__}")
  return value


def _build(cls, section: Any, where: str):
  items = _items(section, where)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  for key in items:
    if key not in fields:
      raise _unknown(key, where, list(fields))
  kwargs = {k: _coerce(v, fields[k], where) for k, v in items.items()}
  try:
    return cls(**kwargs)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(f"invalid {where}: {e}") from e


def parse_config(config: Any) -> ExperimentConfig:
  """Converts a ConfigDict (or nested mapping, e.g. a saved JSON) to :class:`ExperimentConfig`.

  Sections or fields left out take the dataclass defaults; unknown ones raise ``ConfigError``.
  An ``ExperimentConfig`` is returned unchanged.
  """
  if isinstance(config, ExperimentConfig):
    return config
  top = _items(config, "config")
  for key in top:
    if key not in _SECTION_TYPES:
      raise _unknown(key, "config", list(_SECTION_TYPES))
  return ExperimentConfig(**{
      name: _build(cls, top[name], f"config.{name}")
      for name, cls in _SECTION_TYPES.items() if name in top})


def config_from_json(text: str) -> ExperimentConfig:
  return parse_config(json.loads(text))
