"""The distillation task without the teacher: vocabulary, split, CTC feasibility, batches.

``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing`` (distillation data). A synthetic
teacher cache stands in for SmolLM2's continuations (written where ``distill_task`` looks for
it), so the data path is checked exactly and in milliseconds.
"""

import os

import numpy as np
import pytest

from partext_jax.nat import distill
from partext_jax.nat.config import TaskConfig

TASK = TaskConfig(name="distill", num_prompts=6, max_prompt_tokens=3, max_new_tokens=4)


class _Tokenizer:
  def decode(self, ids):
    return "/".join(map(str, ids))


def _write_cache(workdir):
  pad = -1
  pairs = dict(
      source=np.array([[10, 11, pad], [12, 10, 13], [11, pad, pad], [10, 12, pad],
                       [14, 15, pad], [11, 11, 10]]),
      source_lengths=np.array([2, 3, 1, 2, 2, 3], np.int32),
      target=np.array([[20, 21, 22, pad], [21, pad, pad, pad], [23, 23, 23, 23],
                       [20, 99, pad, pad], [24, 20, pad, pad], [21, 22, 20, 21]]),
      target_lengths=np.array([3, 1, 4, 2, 2, 4], np.int32),
      valid=np.array([False, False, False, True, True, False]))
  os.makedirs(workdir, exist_ok=True)
  key = distill._cache_key(TASK)  # pylint: disable=protected-access
  np.savez(os.path.join(workdir, f"distill_{key}.npz"), **pairs)
  return pairs


def test_distill_task_builds_the_student_data(tmp_path):
  workdir = str(tmp_path)
  _write_cache(workdir)
  data = distill.distill_task(TASK, upsampling=2, batch_size=4, seed=0, workdir=workdir,
                              tokenizer=_Tokenizer())
  # Row 2 (4 repeated tokens from 1 source token: needs 7 positions, has 2) is dropped; rows
  # 0, 1, 5 train; 3, 4 are held out. The vocabulary is the training ids, in order, after UNK.
  train_ids = [10, 11, 12, 13, 20, 21, 22]
  assert data.vocab_size == len(train_ids) + 1
  valid = data.valid
  assert valid.source_lengths.tolist() == [2, 2] and valid.target_lengths.tolist() == [2, 2]
  pad = data.vocab_size
  # Held-out ids unseen in training (99, 14, 15, 24) become UNK = 0; padding becomes V.
  assert valid.source.tolist() == [[1, 3, pad], [0, 0, pad]]
  assert valid.target.tolist() == [[5, 0, pad, pad], [0, 5, pad, pad]]
  assert data.text([5, 0, 7]) == "20/22"  # UNK dropped when detokenising
  first = data.batch_at(3)
  np.testing.assert_array_equal(first.source, data.batch_at(3).source)  # pure in the step
  assert set(first.source_lengths.tolist()) <= {2, 3}
  assert first.source.shape == (4, 3) and first.target.shape == (4, 4)


def test_vocabulary_round_trip():
  vocab = distill.Vocabulary(np.array([3, 7, 9]))
  rows = np.array([[7, 3, 8, -1]])
  assert vocab.encode(rows).tolist() == [[2, 1, distill.UNK, -1]]
  assert vocab.decode([2, 1, 0, 3, 4]) == [7, 3, 9]


def test_feasible_counts_repeats():
  pairs = dict(target=np.array([[1, 1, 2], [1, 2, 3], [5, 0, 0]]),
               target_lengths=np.array([3, 3, 0]), source_lengths=np.array([2, 2, 2]))
  # [1 1 2] needs 4 positions (a blank between the repeats), [1 2 3] needs 3; empty is dropped.
  assert distill.feasible(pairs, 2).tolist() == [True, True, False]
  pairs["source_lengths"] = np.array([1, 1, 1])
  assert distill.feasible(pairs, 3).tolist() == [False, True, False]


def test_distill_needs_a_workdir():
  with pytest.raises(ValueError, match="needs a workdir"):
    distill.distill_task(TASK, upsampling=2, batch_size=4, seed=0, workdir=None)
