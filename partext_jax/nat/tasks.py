"""Sequence-to-sequence tasks with known answers: copy, reverse, sort; and the task container.

``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing``. A source is ``n`` tokens drawn
uniformly from ``V`` symbols with ``n`` uniform in ``[min_length, max_length]``; its target is
the source itself (``copy``), reversed (``reverse``) or sorted ascending (``sort``). Batches are
:class:`~partext_jax.nat.protocols.Seq2Seq` numpy arrays padded with ``V`` to ``max_length``.

Training batch ``k`` is a pure function of ``(seed, k)`` (:func:`toy_batch_at`, seeded numpy
generator ``[seed, k]``), so an interrupted run resumes on exactly the same data; the held-out
set uses the stream ``[seed, HELD_OUT]``, which no training step reaches in practice.

Usage::

    data = toy_task("reverse", vocab_size=8, min_length=4, max_length=12, batch_size=64, seed=0,
                    num_valid=512)
    batch = data.batch_at(0)       # Seq2Seq, [64, 12] arrays
    data.valid                     # Seq2Seq, 512 held-out pairs
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from partext_jax.base import checked_choice, checked_int
from partext_jax.nat.protocols import Seq2Seq

TOY_TASKS = ("copy", "reverse", "sort")
HELD_OUT = 1 << 40  # the held-out set's stream; training steps never reach it


@dataclasses.dataclass(frozen=True)
class TaskData:
  """A task as the trainer sees it.

  Attributes:
    name: the task.
    vocab_size: ``V`` (sources and targets share the symbols; padding id ``V``).
    max_source_len / max_target_len: padded lengths of the arrays.
    batch_at: ``step -> Seq2Seq`` (numpy), a pure function of the step.
    valid: the held-out pairs (numpy :class:`Seq2Seq`).
    detokenize: ``ids -> str`` for printing (``None``: space-separated ids).
  """

  name: str
  vocab_size: int
  max_source_len: int
  max_target_len: int
  batch_at: Callable[[int], Seq2Seq]
  valid: Seq2Seq
  detokenize: Callable[[list[int]], str] | None = None

  def text(self, ids) -> str:
    ids = [int(i) for i in ids]
    return self.detokenize(ids) if self.detokenize else " ".join(map(str, ids))


def toy_target(task: str, source: np.ndarray) -> np.ndarray:
  """The answer of ``task`` for one unpadded source row."""
  if task == "copy":
    return source.copy()
  if task == "reverse":
    return source[::-1].copy()
  if task == "sort":
    return np.sort(source, kind="stable")
  raise ValueError(f"task={task!r} is not one of {TOY_TASKS}")


def toy_batch(task: str, rng: np.random.Generator, *, batch_size: int, vocab_size: int,
              min_length: int, max_length: int) -> Seq2Seq:
  """``batch_size`` random pairs of ``task`` (int32 arrays ``[B, max_length]``, padding ``V``)."""
  lengths = rng.integers(min_length, max_length + 1, batch_size).astype(np.int32)
  source = np.full((batch_size, max_length), vocab_size, np.int32)
  target = np.full((batch_size, max_length), vocab_size, np.int32)
  for i, n in enumerate(lengths):
    row = rng.integers(0, vocab_size, n).astype(np.int32)
    source[i, :n] = row
    target[i, :n] = toy_target(task, row)
  return Seq2Seq(source, lengths, target, lengths.copy())


def toy_batch_at(task: str, *, step: int, seed: int, **kwargs) -> Seq2Seq:
  """Training batch ``step``: :func:`toy_batch` with the generator ``default_rng([seed, step])``."""
  return toy_batch(task, np.random.default_rng([seed, step]), **kwargs)


def toy_task(task: str, *, vocab_size: int, min_length: int, max_length: int, batch_size: int,
             seed: int, num_valid: int) -> TaskData:
  """The :class:`TaskData` of a toy task (module docstring).

  Raises ``ValueError`` for an unknown task or lengths outside ``1 <= min <= max``.
  """
  checked_choice("task", task, TOY_TASKS)
  checked_int("vocab_size", vocab_size, minimum=1)
  checked_int("min_length", min_length, minimum=1)
  checked_int("max_length", max_length, minimum=min_length,
              hint=f" (min_length={min_length})")
  shape = dict(vocab_size=vocab_size, min_length=min_length, max_length=max_length)
  valid = toy_batch(task, np.random.default_rng([seed, HELD_OUT]), batch_size=num_valid, **shape)
  return TaskData(
      name=task, vocab_size=vocab_size, max_source_len=max_length, max_target_len=max_length,
      batch_at=lambda step: toy_batch_at(task, step=step, seed=seed, batch_size=batch_size,
                                         **shape),
      valid=valid)
