"""Trains and evaluates a NAT model (or the AR peer) with the project's trainer core.

Everything generic is :mod:`partext_jax.training.core`'s: AdamW with warmup and cosine decay, the
jitted step, the loop (tqdm, ``metrics.jsonl``, orbax checkpoints in ``<workdir>/checkpoints``,
exact resume: step ``k`` trains on ``data.batch_at(k)`` with the key ``fold_in(rng, k)``). This
module adds, per model kind, a :class:`Family`: the parameters' initialiser, the loss
(:mod:`partext_jax.nat.objectives` or :func:`partext_jax.nat.ar_baseline.ar_loss`) and the
decoder (:func:`partext_jax.nat.one_shot.one_shot`, :func:`partext_jax.nat.levenshtein.levenshtein`
or greedy AR decoding), and the held-out evaluation: exact match (the whole output equals the
target), length match and model forwards per sequence.

Usage::

    result = train_and_evaluate(parse_config(get_config()), workdir="/tmp/nat_copy")
    result.metrics["exact_match"], result.metrics["forwards_per_sequence"]
    output, forwards = decode_all(result.family, result.params, result.data.valid)

The losses it trains: ``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing``,
``docs/algorithms.md#levenshtein-transformer``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from partext_jax.nat import ar_baseline, ctc, networks, objectives
from partext_jax.nat.config import NATExperimentConfig, parse_config
from partext_jax.nat.glancing import ratio_at
from partext_jax.nat.levenshtein import levenshtein
from partext_jax.nat.one_shot import one_shot
from partext_jax.nat.protocols import Output, Seq2Seq, Source
from partext_jax.nat.tasks import TOY_TASKS, TaskData, toy_task
from partext_jax.training import core


class Family(NamedTuple):
  """A model kind as the trainer sees it.

  ``init_params(key) -> params``; ``loss_fn(params, TrainBatch, rng) -> (loss, aux)``;
  ``decode(params, Source) -> (Output, forwards int[B])`` (numpy or jax arrays).
  """

  kind: str
  config: Any  # NATConfig, or the AR peer's LlamaConfig
  init_params: Callable[[jax.Array], Any]
  loss_fn: Callable
  decode: Callable[[Any, Source], tuple[Output, Any]]


def _nat_decoder(kind: str, cfg: networks.NATConfig, max_iterations: int):
  def decode(params, source):
    if kind == "levenshtein":
      decoder = levenshtein(*networks.make_levenshtein_fns(cfg, params),
                            vocab_size=cfg.vocab_size, canvas_size=cfg.canvas_size,
                            max_iterations=max_iterations)
      output, info = decoder.sample(jax.random.key(0), source)
    else:
      decoder = one_shot(networks.make_ctc_fn(cfg, params), upsampling=cfg.upsampling)
      output, info = decoder.sample(jax.random.key(0), source)
    return output, info.forwards

  return decode


def build_family(experiment: NATExperimentConfig, data: TaskData) -> Family:
  """The :class:`Family` of ``experiment.model.kind`` sized for ``data``."""
  model = experiment.model
  sizes = dict(vocab_size=data.vocab_size, max_source_len=data.max_source_len)
  if model.kind == "ar":
    cfg = ar_baseline.llama_config(
        **sizes, max_target_len=data.max_target_len, d_model=model.d_model,
        num_heads=model.num_heads, num_layers=model.num_encoder_layers + model.num_decoder_layers,
        mlp_dim=model.mlp_dim)
    from partext_jax.models.llama import init_params  # pylint: disable=import-outside-toplevel
    return Family("ar", cfg, lambda key: init_params(key, cfg),
                  functools.partial(ar_baseline.ar_loss, config=cfg),
                  functools.partial(ar_baseline.decode, config=cfg,
                                    max_target_len=data.max_target_len))
  cfg = model.nat_config(**sizes, max_target_len=data.max_target_len)
  network = "levenshtein" if model.kind == "levenshtein" else "ctc"
  loss = {"ctc": objectives.ctc_loss, "glat": objectives.glat_loss,
          "levenshtein": functools.partial(objectives.levenshtein_loss,
                                           roll_in=experiment.train.roll_in)}[model.kind]
  return Family(model.kind, cfg, lambda key: networks.init_params(key, cfg, network),
                functools.partial(loss, cfg=cfg),
                _nat_decoder(model.kind, cfg, experiment.train.max_iterations))


def build_data(experiment: NATExperimentConfig, workdir: str | None) -> TaskData:
  """The toy task, or the distillation data (built with SmolLM2 and cached in ``workdir``)."""
  task, train = experiment.task, experiment.train
  if task.name in TOY_TASKS:
    return toy_task(task.name, vocab_size=task.vocab_size, min_length=task.min_length,
                    max_length=task.max_length, batch_size=train.batch_size, seed=train.seed,
                    num_valid=task.num_valid)
  from partext_jax.nat import distill  # pylint: disable=import-outside-toplevel
  return distill.distill_task(task, upsampling=experiment.model.upsampling,
                              batch_size=train.batch_size, seed=train.seed, workdir=workdir)


def check_data(data: TaskData, experiment: NATExperimentConfig) -> None:
  """CTC feasibility of the held-out pairs and a training batch (``ctc.check_lengths``)."""
  if experiment.model.kind in ("ctc", "glat"):
    for pairs in (data.valid, data.batch_at(0)):
      ctc.check_lengths(pairs.source_lengths, pairs.target, pairs.target_lengths,
                        upsampling=experiment.model.upsampling)


def decode_all(family: Family, params, pairs: Seq2Seq, *, batch_size: int = 256
               ) -> tuple[Output, np.ndarray]:
  """Decodes every source of ``pairs`` in batches of ``batch_size`` (the last one padded by
  repetition, so every call has one shape): ``(Output, forwards int[N])`` as numpy."""
  n = len(pairs.source_lengths)
  tokens, lengths, forwards = [], [], []
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size) % n
    out, fw = family.decode(params, Source(np.asarray(pairs.source)[idx],
                                           np.asarray(pairs.source_lengths)[idx]))
    keep = min(batch_size, n - start)
    tokens.append(np.asarray(out.tokens)[:keep])
    lengths.append(np.asarray(out.lengths)[:keep])
    forwards.append(np.asarray(fw)[:keep])
  width = max(t.shape[1] for t in tokens)
  tokens = [np.pad(t, ((0, 0), (0, width - t.shape[1])), constant_values=-1) for t in tokens]
  return Output(np.concatenate(tokens), np.concatenate(lengths)), np.concatenate(forwards)


def exact_matches(output: Output, pairs: Seq2Seq) -> np.ndarray:
  """``bool[N]``: the output has the target's length and tokens."""
  out_len, tgt_len = np.asarray(output.lengths), np.asarray(pairs.target_lengths)
  out, tgt = np.asarray(output.tokens), np.asarray(pairs.target)
  width = min(out.shape[1], tgt.shape[1])
  same = np.all((out[:, :width] == tgt[:, :width]) | (np.arange(width)[None] >= tgt_len[:, None]),
                axis=1)
  return (out_len == tgt_len) & same


def evaluate(family: Family, params, pairs: Seq2Seq, *, batch_size: int) -> dict[str, float]:
  """``exact_match``, ``length_match``, ``forwards_per_sequence`` (mean), ``num_examples``."""
  output, forwards = decode_all(family, params, pairs, batch_size=batch_size)
  return dict(exact_match=float(np.mean(exact_matches(output, pairs))),
              length_match=float(np.mean(np.asarray(output.lengths)
                                         == np.asarray(pairs.target_lengths))),
              forwards_per_sequence=float(np.mean(forwards)),
              num_examples=int(len(forwards)))


class Result(NamedTuple):
  """What :func:`train_and_evaluate` returns: the trained ``params``, the final held-out
  ``metrics`` (:func:`evaluate` plus ``train_seconds``, the steps' wall time), the ``history``
  of ``metrics.jsonl``, the ``family`` and the ``data``."""

  params: Any
  metrics: dict[str, float]
  history: list[dict[str, Any]]
  family: Family
  data: TaskData


def train_and_evaluate(config: Any, workdir: str | None = None, *,
                       data: TaskData | None = None) -> Result:
  """Trains ``config`` (a ConfigDict or :class:`NATExperimentConfig`) and evaluates it.

  Args:
    config: the experiment (``configs/nat.py``).
    workdir: checkpoints (resumable; a finished run only evaluates), ``metrics.jsonl`` and the
      distillation data cache; ``None`` keeps everything in memory (toy tasks only).
    data: a prebuilt :class:`~partext_jax.nat.tasks.TaskData` (else :func:`build_data`).
  Raises:
    ConfigError: an invalid config. ValueError: a target longer than its upsampled source
      (CTC / GLAT), before anything is compiled.
  """
  experiment = parse_config(config)
  train = experiment.train
  data = build_data(experiment, workdir) if data is None else data
  check_data(data, experiment)
  family = build_family(experiment, data)
  optimizer = core.make_optimizer(train, train.num_steps)
  state = core.init_train_state(jax.random.PRNGKey(train.seed), family.init_params, optimizer,
                                ema=False)

  def batch_at(step: int) -> objectives.TrainBatch:
    ratio = ratio_at(step, start=train.glancing_start, end=train.glancing_end,
                     num_steps=train.num_steps)
    return objectives.TrainBatch(data.batch_at(step), ratio)

  evaluate_state = lambda st: evaluate(family, st.params, data.valid,  # noqa: E731
                                       batch_size=train.eval_batch_size)
  result = core.train_loop(
      state, core.make_train_step(family.loss_fn, optimizer), batch_at, loop=train,
      files=None if workdir is None else core.RunFiles(workdir),
      metadata={"config": dataclasses.asdict(experiment)},
      evaluate=evaluate_state, learning_rate=core.learning_rate_schedule(train, train.num_steps),
      summarize=lambda means, steps, seconds: {"train/seconds": seconds},
      desc=f"{family.kind} on {data.name}")
  metrics = {k[len("eval/"):]: v for k, v in result.last_eval.items()}
  # Wall time of the training steps (evaluation and checkpoints excluded), over every call.
  metrics["train_seconds"] = sum(r.get("train/seconds", 0.0) for r in result.history)
  return Result(result.state.params, metrics, result.history, family, data)
