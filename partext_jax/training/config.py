"""Typed, frozen configuration built from an ``ml_collections.ConfigDict``, strictly.

Launchers read ``configs/*.py`` into a ConfigDict; :func:`parse_dataclass` converts it once, at
the boundary, into a frozen dataclass, and library code only ever sees that. Conversion is
strict: an unknown (e.g. misspelled) key raises :class:`ConfigError` naming the key, the closest
valid spelling and every valid key; a value of the wrong type raises too (``int`` is accepted
for ``float``); string switches list their valid choices (:func:`check_choice`). The same
machinery parses every trainer's config (the denoiser's :class:`ExperimentConfig` here, the
Medusa heads' and the planner head's in their trainer modules), and :func:`to_config_dict` turns
a dataclass back into the ConfigDict a ``configs/*.py`` file returns.

The masked-diffusion experiment (:func:`parse_config`) has one section per dataclass::

    config.data       -> DataConfig       corpus, tokenizer, sequence length
    config.model      -> ModelConfig      denoiser size (vocab / length come from the data)
    config.diffusion  -> DiffusionConfig  masking schedule of the loss and the bound
    config.train      -> TrainConfig      optimiser (OptimizerConfig), loop (LoopConfig), EMA
    config.sample     -> SampleConfig     tau-leaping samples printed at the end
    config.mesh       -> MeshConfig       device mesh

The dataclass defaults are the main job (``configs/default.py``); every field is documented in
its class's docstring. ``print(default_config())`` lists them all.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import Any, Mapping, TypeVar

import ml_collections

from partext_jax.data.tokenizer import TOKENIZER_KINDS
from partext_jax.models.denoiser import DTYPES, DenoiserConfig
from partext_jax.schedules import SCHEDULE_KINDS, MaskingSchedule

DATA_SOURCES = ("stdlib", "files", "markov")
SAMPLER_METHODS = ("analytic", "euler")

T = TypeVar("T")


class ConfigError(ValueError):
  """A configuration key or value is invalid; the message names the key and the valid ones."""


# --------------------------------------------------------------------------------------------
# The machinery: checks, ConfigDict -> dataclass, dataclass -> ConfigDict.


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  """Raises :class:`ConfigError` naming ``name`` and listing ``choices`` unless ``value`` is one."""
  if value not in choices:
    raise ConfigError(f"{name}={value!r} is not one of {choices}")


def check_positive(obj: Any, *names: str) -> None:
  """Raises :class:`ConfigError` unless every field ``names`` of ``obj`` is ``> 0``."""
  for name in names:
    if not getattr(obj, name) > 0:
      raise ConfigError(f"{type(obj).__name__}.{name}={getattr(obj, name)!r} must be > 0")


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


def parse_dataclass(cls: type[T], config: Any, *, where: str = "config") -> T:
  """Builds the frozen dataclass ``cls`` from a ConfigDict or mapping of its scalar fields.

  Args:
    cls: a dataclass whose fields are ``int``, ``float``, ``bool`` or ``str``.
    config: ``ml_collections.ConfigDict``, mapping (e.g. parsed JSON) or an instance of ``cls``
      (returned unchanged). Fields left out take the dataclass defaults.
    where: the section's name in error messages (``"config.train"``).
  Returns:
    the ``cls`` instance (its ``__post_init__`` checks ran).
  Raises:
    ConfigError: an unknown key (with the closest valid spelling and every valid key), a value
      of the wrong type, or an invalid value (any ``ValueError`` of ``cls``, re-raised as a
      ``ConfigError`` naming ``where``).
  """
  if isinstance(config, cls):
    return config
  items = _items(config, where)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  for key in items:
    if key not in fields:
      raise _unknown(key, where, list(fields))
  kwargs = {k: _coerce(v, fields[k], where) for k, v in items.items()}
  try:
    return cls(**kwargs)
  except ValueError as e:  # ConfigError included: say which section it came from.
    raise ConfigError(f"invalid {where}: {e}") from e


def to_config_dict(config: Any) -> ml_collections.ConfigDict:
  """The ConfigDict of a (nested) config dataclass: what a ``configs/*.py`` file returns."""
  return ml_collections.ConfigDict(dataclasses.asdict(config))


# --------------------------------------------------------------------------------------------
# Shared by every trainer (partext_jax.training.core).


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Gradient clipping, then AdamW with linear warmup and cosine decay.

  Attributes:
    learning_rate: peak learning rate (after warmup).
    warmup_steps: linear warmup from 0 to the peak, in optimiser steps.
    end_learning_rate_ratio: the cosine decay ends at this fraction of the peak.
    weight_decay: AdamW decoupled weight decay (matrices and embeddings only, not biases or
      norm scales).
    b1: Adam beta1.
    b2: Adam beta2.
    grad_clip_norm: clip gradients to this global norm; ``0`` turns clipping off.
  """

  learning_rate: float = 2e-3
  warmup_steps: int = 80
  end_learning_rate_ratio: float = 0.1
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.98
  grad_clip_norm: float = 1.0

  def check_optimizer(self) -> None:
    """Raises :class:`ConfigError` for a value outside its range (called by ``__post_init__``)."""
    check_positive(self, "learning_rate")
    for name in ("warmup_steps", "weight_decay", "grad_clip_norm"):
      if getattr(self, name) < 0:
        raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
    if not 0.0 <= self.end_learning_rate_ratio <= 1.0:
      raise ConfigError(f"end_learning_rate_ratio={self.end_learning_rate_ratio} must be in "
                        f"[0, 1]")
    if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
      raise ConfigError(f"b1={self.b1} and b2={self.b2} must be in [0, 1)")

  def __post_init__(self):
    self.check_optimizer()


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Length of a run, and how often it logs, evaluates and checkpoints.

  Attributes:
    num_steps: optimiser steps in the whole run.
    log_every: steps between ``train/*`` lines of ``metrics.jsonl`` (averaged over the steps).
    eval_every: steps between evaluations (one also runs at the end).
    checkpoint_every: steps between checkpoints (one is also written at the end).
    keep_checkpoints: checkpoints kept on disk (the newest).
    progress_bar: show a tqdm progress bar.
  """

  num_steps: int = 800
  log_every: int = 20
  eval_every: int = 200
  checkpoint_every: int = 200
  keep_checkpoints: int = 2
  progress_bar: bool = True

  def check_loop(self) -> None:
    """Raises :class:`ConfigError` unless every count is positive (called by ``__post_init__``)."""
    check_positive(self, "num_steps", "log_every", "eval_every", "checkpoint_every",
                   "keep_checkpoints")

  def __post_init__(self):
    self.check_loop()


# --------------------------------------------------------------------------------------------
# The masked-diffusion experiment.


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to train on.

  Attributes:
    source: ``"stdlib"`` (the Python standard library's source), ``"files"`` (``path``) or
      ``"markov"`` (a seeded random Markov chain with a known entropy).
    path: directory (or single file) of text; only read when ``source == "files"``.
    glob: glob relative to ``path`` selecting the files (recursive ``**`` allowed).
    max_bytes: cap on the corpus bytes read (files in a stable hashed order); 0 = no cap.
    validation_fraction: fraction of files (by a stable hash of the path) held out.
    tokenizer: ``"char"`` (one id per character) or ``"bpe"`` (byte-level BPE).
    vocab_size: largest vocabulary (real tokens; the model adds one MASK id).
    seq_len: tokens per packed example (and the model's sequence length).
    seed: seed of the Markov chain and its sequences (markov only).
    num_states: Markov states (markov only).
    concentration: Dirichlet concentration of the transition rows, small = peaked (markov only).
    num_train_sequences: training sequences (markov only).
    num_valid_sequences: validation sequences (markov only).
  """

  source: str = "stdlib"
  path: str = ""
  glob: str = "**/*.txt"
  max_bytes: int = 4_000_000
  validation_fraction: float = 0.05
  tokenizer: str = "bpe"
  vocab_size: int = 1024
  seq_len: int = 128
  seed: int = 0
  num_states: int = 8
  concentration: float = 0.3
  num_train_sequences: int = 512
  num_valid_sequences: int = 64

  def __post_init__(self):
    check_choice("data.source", self.source, DATA_SOURCES)
    check_choice("data.tokenizer", self.tokenizer, TOKENIZER_KINDS)
    check_positive(self, "vocab_size", "seq_len", "num_states", "concentration",
                   "num_train_sequences", "num_valid_sequences")
    if not 0.0 < self.validation_fraction < 1.0:
      raise ConfigError(f"data.validation_fraction={self.validation_fraction} must be in (0, 1)")
    if self.source == "files" and not self.path:
      raise ConfigError("data.source='files' needs data.path (a directory or file of text)")


_DATA_DETERMINED = ("vocab_size", "max_len")


class _ModelConfigMethods:
  """Checks and conversion of :data:`ModelConfig` (its fields come from DenoiserConfig)."""

  def __post_init__(self):
    check_choice("model.dtype", self.dtype, DTYPES)
    try:  # Every other check is DenoiserConfig's own, run on placeholder data sizes.
      self.denoiser_config(vocab_size=1, max_len=1)
    except ValueError as e:
      raise ConfigError(f"invalid config.model: {e}") from e

  def denoiser_config(self, *, vocab_size: int, max_len: int) -> DenoiserConfig:
    """The model's :class:`DenoiserConfig` once the data fixed ``vocab_size`` and ``max_len``."""
    return DenoiserConfig(vocab_size=vocab_size, max_len=max_len, **dataclasses.asdict(self))


ModelConfig = dataclasses.make_dataclass(
    "ModelConfig",
    [(f.name, f.type, dataclasses.field(default=f.default))
     for f in dataclasses.fields(DenoiserConfig) if f.name not in _DATA_DETERMINED],
    bases=(_ModelConfigMethods,), frozen=True)
ModelConfig.__module__ = __name__
ModelConfig.__doc__ = (
    """:class:`~partext_jax.models.denoiser.DenoiserConfig` minus the fields the data determines
    (``vocab_size``, ``max_len``): the same fields, defaults and checks, derived from it.""")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """The masking schedule ``alpha(t)`` and the training-time sampling of ``t``.

  See ``docs/algorithms.md#masking-schedules-and-the-elbo``.

  Attributes:
    schedule: ``"linear"``, ``"cosine"`` or ``"polynomial"``.
    exponent: exponent ``k`` of the polynomial schedule (unused otherwise).
    eps: MD4-style shift of ``alpha`` into ``[eps, 1 - eps]``; 0 keeps the exact bound.
    antithetic: stratified (antithetic) times across the batch: a lower-variance loss.
  """

  schedule: str = "linear"
  exponent: float = 2.0
  eps: float = 0.0
  antithetic: bool = True

  def __post_init__(self):
    check_choice("diffusion.schedule", self.schedule, SCHEDULE_KINDS)

  def masking_schedule(self) -> MaskingSchedule:
    return MaskingSchedule(self.schedule, exponent=self.exponent, eps=self.eps)


@dataclasses.dataclass(frozen=True)
class TrainConfig(OptimizerConfig, LoopConfig):
  """The denoiser's optimiser and loop (fields of :class:`OptimizerConfig` and
  :class:`LoopConfig`), plus:

  Attributes:
    seed: seed of parameter init, masking noise and data order.
    batch_size: sequences per optimiser step.
    ema_decay: EMA decay of the parameters, warmed up as ``min(decay, (1 + k) / (10 + k))``.
    eval_batch_size: sequences per validation batch.
    eval_batches: validation batches per evaluation (at most).
    eval_time_samples: Monte-Carlo (time, mask) draws per validation batch.
  """

  seed: int = 0
  batch_size: int = 32
  ema_decay: float = 0.995
  eval_batch_size: int = 32
  eval_batches: int = 12
  eval_time_samples: int = 4

  def __post_init__(self):
    self.check_optimizer()
    self.check_loop()
    check_positive(self, "batch_size", "eval_batch_size", "eval_batches", "eval_time_samples")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ConfigError(f"train.ema_decay={self.ema_decay} must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """Tau-leaping samples drawn with the EMA parameters after training.

  Attributes:
    num_samples: samples drawn and printed.
    num_steps: tau-leaping steps per sample.
    method: ``"analytic"`` (exact absorbing posterior) or ``"euler"`` (first order).
    temperature: softmax temperature of the denoiser's categorical.
    noise_removal: at the last step, fill any remaining MASK with the argmax token.
    seed: seed of the sampler.
  """

  num_samples: int = 4
  num_steps: int = 128
  method: str = "analytic"
  temperature: float = 1.0
  noise_removal: bool = True
  seed: int = 0

  def __post_init__(self):
    check_positive(self, "num_samples", "num_steps")
    check_choice("sample.method", self.method, SAMPLER_METHODS)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh of the run (:func:`partext_jax.parallel.make_mesh`); ``-1`` fills the rest.

  ``data`` and ``fsdp`` split the batch, ``fsdp`` also the parameters' ``embed`` dimension,
  ``tensor`` their ``vocab``/``mlp``/``heads`` dimensions. The product must equal the number of
  devices (all processes together), and ``data * fsdp`` must divide the batch sizes. One
  CPU/GPU: leave the defaults (every device on ``data``).
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
  """A masked-diffusion experiment: one field per section (module docstring)."""

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


_SECTION_TYPES = {f.name: f.default.__class__ for f in dataclasses.fields(ExperimentConfig)}


def parse_config(config: Any) -> ExperimentConfig:
  """Converts ``config`` -- a ConfigDict or nested mapping (e.g. a saved JSON) -- to
  :class:`ExperimentConfig`.

  Sections or fields left out take the dataclass defaults; an ``ExperimentConfig`` is returned
  unchanged.

  Raises:
    ConfigError: an unknown section or key, a wrong type or an invalid value (see
      :func:`parse_dataclass`).
  """
  if isinstance(config, ExperimentConfig):
    return config
  top = _items(config, "config")
  for key in top:
    if key not in _SECTION_TYPES:
      raise _unknown(key, "config", list(_SECTION_TYPES))
  return ExperimentConfig(**{
      name: parse_dataclass(cls, top[name], where=f"config.{name}")
      for name, cls in _SECTION_TYPES.items() if name in top})


def config_from_json(text: str) -> ExperimentConfig:
  """:func:`parse_config` of a JSON string (``ExperimentConfig.to_json``, ``config.json``)."""
  return parse_config(json.loads(text))


def default_config() -> ml_collections.ConfigDict:
  """The main job's ConfigDict: every section and field at its default (``configs/default.py``)."""
  return to_config_dict(ExperimentConfig())
