"""Sequence-level distillation data: SmolLM2's greedy continuations of short prompts.

Kim & Rush 2016 (sequence-level knowledge distillation), the standard way NAT models are trained
(Gu et al. 2018 onwards); ``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing``.

* **Prompts**: first lines of docstrings (modules, classes, functions) of the Python standard
  library, 30-100 characters, deduplicated, in a stable hashed order; cut to
  ``max_prompt_tokens`` SmolLM2 tokens.
* **Teacher**: SmolLM2-135M-Instruct continues each prompt as raw text (no chat template)
  greedily for ``max_new_tokens`` tokens, stopping early at ``<|endoftext|>`` / ``<|im_end|>``
  (not kept). The pairs are cached in ``<workdir>/distill_<hash>.npz`` (the hash covers the
  fields that change them), written atomically.
* **Student vocabulary**: the SmolLM2 ids that occur in the training pairs, renumbered
  ``1 .. V - 1`` in id order; ``0`` is ``UNK`` (held-out tokens never seen in training). A NAT's
  output layer over 49152 ids would dominate a CPU budget; the compact vocabulary is exact on the
  training pairs.
* **Split**: a prompt is held out when its stable hash falls below ``validation_fraction``.
  Pairs the CTC model cannot produce (``upsampling * |prompt| < |target| + repeats``) are dropped
  from both splits, so every model kind is compared on the same held-out pairs.

Quality (:func:`generation_quality`): exact match against the teacher, and the generative
perplexity of the continuations under SmolLM2 (``partext_jax.evaluation``, ``UNK`` dropped)
beside their unigram entropy.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Sequence

import jax
import numpy as np
import tqdm

from partext_jax import evaluation
from partext_jax.ar import sampling as ar
from partext_jax.data import corpus
from partext_jax.nat import ctc
from partext_jax.nat.protocols import Output, Seq2Seq
from partext_jax.nat.tasks import TaskData

DATA_FIELDS = ("num_prompts", "max_prompt_tokens", "max_new_tokens", "validation_fraction")
UNK = 0


def docstring_lines(limit: int | None = None) -> list[str]:
  """First docstring lines (30-100 characters, with a space) of the standard library, deduped,
  in a stable hashed order."""
  root = corpus.stdlib_root()
  lines = set()
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if d not in corpus.EXCLUDED_STDLIB_DIRS)
    for name in sorted(files):
      if not name.endswith(".py"):
        continue
      try:
        with open(os.path.join(directory, name), encoding="utf-8") as f:
          tree = ast.parse(f.read())
      except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        continue
      for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
          doc = (ast.get_docstring(node) or "").strip().splitlines()
          if doc and 30 <= len(doc[0].strip()) <= 100 and " " in doc[0].strip():
            lines.add(doc[0].strip())
  ordered = sorted(lines, key=lambda s: corpus.stable_hash("nat-distill:" + s))
  return ordered if limit is None else ordered[:limit]


def teacher_continuations(bundle, prompts: Sequence[list[int]], *, max_new_tokens: int,
                          batch_size: int, progress: bool = True) -> list[list[int]]:
  """SmolLM2's greedy continuation of each prompt (ids), stopped before an end token."""
  model, params, tok = bundle
  stops = tuple(i for i in (tok.tokenizer.token_to_id("<|endoftext|>"), tok.eos_id)
                if i is not None)
  out = []
  batches = range(0, len(prompts), batch_size)
  if progress:
    batches = tqdm.tqdm(batches, desc="teacher (SmolLM2 greedy)", unit="batch")
  for start in batches:
    chunk = list(prompts[start:start + batch_size])
    padded = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one shape: one compilation
    tokens, info = ar.generate(jax.random.key(0), model, params, padded,
                               max_new_tokens=max_new_tokens, eos_id=stops)
    for row in ar.trim(tokens, info)[:len(chunk)]:
      out.append([t for t in row if t not in stops])
  return out


def _cache_key(task) -> str:
  blob = json.dumps({f: getattr(task, f) for f in DATA_FIELDS} | {"version": 1}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _pad(rows: Sequence[Sequence[int]], width: int) -> np.ndarray:
  out = np.full((len(rows), width), -1, np.int64)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def load_or_build_pairs(task, workdir: str, *, bundle=None) -> dict[str, np.ndarray]:
  """The cached teacher pairs: ``source`` / ``target`` (SmolLM2 ids, ``-1``-padded), their
  lengths and ``valid`` (held-out flags). Built on the first call (loads SmolLM2)."""
  path = os.path.join(workdir, f"distill_{_cache_key(task)}.npz")
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  if bundle is None:
    from partext_jax import pretrained  # pylint: disable=import-outside-toplevel
    bundle = pretrained.load_bundle()
  tok = bundle.tokenizer
  lines = docstring_lines(task.num_prompts)
  if len(lines) < task.num_prompts:
    raise ValueError(f"task.num_prompts={task.num_prompts} exceeds the {len(lines)} docstring "
                     f"lines available")
  start = time.perf_counter()
  prompts = [tok.encode(line, add_bos=False)[:task.max_prompt_tokens] for line in lines]
  targets = teacher_continuations(bundle, prompts, max_new_tokens=task.max_new_tokens,
                                  batch_size=task.gen_batch_size)
  valid = np.array([corpus.stable_hash("nat-split:" + s) / 2.0**64 < task.validation_fraction
                    for s in lines])
  data = dict(source=_pad(prompts, task.max_prompt_tokens),
              source_lengths=np.array([len(p) for p in prompts], np.int32),
              target=_pad(targets, task.max_new_tokens),
              target_lengths=np.array([len(t) for t in targets], np.int32), valid=valid)
  os.makedirs(workdir, exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **data)
  os.replace(tmp, path)
  print(f"teacher pairs: {len(lines)} prompts in {time.perf_counter() - start:.0f} s -> {path}")
  return data


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """SmolLM2 ids <-> compact ids (``0`` = UNK)."""

  ids: np.ndarray  # int64[V - 1]: the SmolLM2 id of compact id 1 + i

  @property
  def size(self) -> int:
    return len(self.ids) + 1

  def encode(self, rows: np.ndarray) -> np.ndarray:
    """SmolLM2 ids (``-1`` padding kept as ``-1``) -> compact ids."""
    pos = np.searchsorted(self.ids, rows)
    found = (pos < len(self.ids)) & (self.ids[np.minimum(pos, len(self.ids) - 1)] == rows)
    return np.where(rows < 0, -1, np.where(found, pos + 1, UNK))

  def decode(self, compact: Sequence[int]) -> list[int]:
    """Compact ids -> SmolLM2 ids, UNK and padding dropped."""
    return [int(self.ids[c - 1]) for c in compact if 0 < c < self.size]


def _to_seq2seq(pairs, rows: np.ndarray, vocab: Vocabulary) -> Seq2Seq:
  pad = vocab.size

  def arr(name):
    x = vocab.encode(pairs[name][rows])
    return np.where(x < 0, pad, x).astype(np.int32)

  return Seq2Seq(arr("source"), pairs["source_lengths"][rows], arr("target"),
                 pairs["target_lengths"][rows])


def feasible(pairs, upsampling: int) -> np.ndarray:
  """``bool[N]``: the target fits CTC's ``upsampling * |prompt|`` positions (and is non-empty)."""
  return np.array([
      0 < m and ctc.required_length(t, m) <= upsampling * n
      for t, m, n in zip(pairs["target"], pairs["target_lengths"], pairs["source_lengths"])])


def distill_task(task, *, upsampling: int, batch_size: int, seed: int, workdir: str | None,
                 bundle=None, tokenizer=None) -> TaskData:
  """The distillation :class:`~partext_jax.nat.tasks.TaskData` (module docstring).

  Raises ``ValueError`` without a ``workdir`` (the teacher pairs are cached there).
  """
  if workdir is None:
    raise ValueError("task.name='distill' needs a workdir: the teacher's pairs are cached there")
  pairs = load_or_build_pairs(task, workdir, bundle=bundle)
  keep = feasible(pairs, upsampling)
  train_rows = np.flatnonzero(keep & ~pairs["valid"])
  valid_rows = np.flatnonzero(keep & pairs["valid"])
  seen = np.unique(np.concatenate([pairs[k][train_rows].ravel() for k in ("source", "target")]))
  vocab = Vocabulary(seen[seen >= 0])
  train = _to_seq2seq(pairs, train_rows, vocab)
  if tokenizer is None:
    tokenizer = bundle.tokenizer if bundle is not None else _smollm2_tokenizer()

  def batch_at(step: int) -> Seq2Seq:
    idx = corpus.batch_indices(len(train_rows), step=step, batch_size=batch_size, seed=seed)
    return Seq2Seq(*(x[idx] for x in train))

  data = TaskData(name="distill", vocab_size=vocab.size,
                  max_source_len=task.max_prompt_tokens, max_target_len=task.max_new_tokens,
                  batch_at=batch_at, valid=_to_seq2seq(pairs, valid_rows, vocab),
                  detokenize=lambda ids: tokenizer.decode(vocab.decode(ids)))
  print(f"distill: {len(train_rows)} train / {len(valid_rows)} held-out pairs "
        f"({int((~keep).sum())} dropped: too long for upsampling={upsampling}), "
        f"student vocabulary {vocab.size}")
  return data


def _smollm2_tokenizer():
  from partext_jax.pretrained import gguf, tokenizer  # pylint: disable=import-outside-toplevel
  return tokenizer.load_tokenizer(gguf.smollm2_path())


def generation_quality(data: TaskData, output: Output, *, judge: evaluation.Judge | None = None
                       ) -> dict[str, Any]:
  """``gen_ppl`` (SmolLM2, ``partext_jax.evaluation``), ``entropy`` (mean unigram entropy in
  nats over the non-empty outputs, student ids) and ``empty`` (fraction of empty outputs)."""
  tokens, lengths = np.asarray(output.tokens), np.asarray(output.lengths)
  rows = [tokens[i, :lengths[i]].tolist() for i in range(len(lengths))]
  texts = [data.text(r) or " " for r in rows]
  stats = evaluation.generative_perplexity(texts, judge=judge)
  non_empty = [r for r in rows if r]
  return dict(gen_ppl=stats.ppl,
              entropy=evaluation.unigram_entropy(non_empty) if non_empty else 0.0,
              empty=1.0 - len(non_empty) / len(rows))
