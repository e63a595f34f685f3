"""Text corpora, packing into fixed-length examples, and a resumable batch iterator.

The default corpus needs no download: the Python standard library's own ``.py`` source
(``sysconfig.get_paths()["stdlib"]``), without ``test/``, ``tests/``, ``idlelib``,
``site-packages`` and the generated tables of ``encodings/`` and ``pydoc_data/``. Any directory of text files can be used instead (``load_text_files``).

* Files are taken in the order of a stable hash of their path relative to the corpus root
  (SHA-256 of ``"order:" + path``, never Python's salted ``hash()``) until ``max_bytes`` is
  reached, so a byte cap gives a spread of modules rather than the alphabetically first ones.
* The train/validation split is a pure function of that relative path: a file is in validation
  iff ``sha256("split:" + path) / 2**64 < validation_fraction``. It does not depend on the
  machine, the cap, or the other files.
* Packing concatenates ``doc_1 SEP doc_2 SEP ...`` and cuts ``[N, seq_len]`` int32 rows (the
  remainder is dropped).
* ``batch_at(examples, step=k, batch_size=B, seed=s)`` is a pure function of ``(seed, k)``: the
  examples are visited in a fresh permutation per epoch, ``permutation(seed, epoch)``, and batch k
  holds stream positions ``k*B .. k*B + B - 1``. Resuming at step k is exact.
"""

from __future__ import annotations

import dataclasses
import glob as glob_lib
import hashlib
import os
import sysconfig
from typing import Iterator, Sequence

import numpy as np

# Tests, the IDE, third-party packages, and two folders of generated data rather than code (the
# codec mapping tables in encodings/, the pydoc topic strings in pydoc_data/), which would make
# the corpus, its bound and its samples unrepresentative of Python source.
EXCLUDED_STDLIB_DIRS = ("test", "tests", "idlelib", "site-packages", "__pycache__", "encodings",
                        "pydoc_data")


@dataclasses.dataclass(frozen=True)
class Document:
  path: str  # Relative to the corpus root, with "/" separators.
  text: str


def stable_hash(text: str) -> int:
  """A 64-bit hash of ``text`` that is the same on every machine and Python run."""
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def is_validation(path: str, *, validation_fraction: float) -> bool:
  """Whether the file at relative ``path`` belongs to the validation split: a stable hash of the
  path below ``validation_fraction`` (in [0, 1]), so the split does not depend on file order."""
  return stable_hash("split:" + path) / 2.0**64 < validation_fraction


def split_documents(docs: Sequence[Document], *, validation_fraction: float
                    ) -> tuple[list[Document], list[Document]]:
  """``(train, validation)`` lists of ``docs`` by :func:`is_validation` of each document's path.

  Raises:
    ValueError: if ``validation_fraction`` is not in (0, 1).
  """
  if not 0.0 < validation_fraction < 1.0:
    raise ValueError(f"validation_fraction={validation_fraction} must be in (0, 1)")
  train, valid = [], []
  for d in docs:
    (valid if is_validation(d.path, validation_fraction=validation_fraction) else train).append(d)
  return train, valid


def _read_text(path: str) -> str:
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise OSError(f"cannot read corpus file {path!r}: {e}") from e
  return data.decode("utf-8", errors="replace")


def _collect(root: str, rel_paths: Sequence[str], *, max_bytes: int, what: str) -> list[Document]:
  if not rel_paths:
    raise ValueError(f"corpus {what} at {root!r} contains no matching files")
  # A hash independent of the split's, so a byte cap keeps the validation fraction unbiased.
  ordered = sorted(rel_paths, key=lambda p: (stable_hash("order:" + p), p))
  docs, total = [], 0
  for rel in ordered:
    if max_bytes > 0 and total >= max_bytes:
      break
    text = _read_text(os.path.join(root, rel))
    if not text.strip():
      continue
    docs.append(Document(rel, text))
    total += len(text.encode("utf-8"))
  if not docs:
    raise ValueError(f"corpus {what} at {root!r}: every matching file is empty")
  docs.sort(key=lambda d: d.path)  # A canonical order independent of the hash.
  return docs


def stdlib_root() -> str:
  """The directory of this interpreter's Python standard library (the always-present corpus)."""
  return sysconfig.get_paths()["stdlib"]


def load_stdlib(*, max_bytes: int, root: str | None = None) -> list[Document]:
  """The standard library's ``.py`` files (no tests / idlelib / site-packages), capped in bytes.

  ``max_bytes`` is the cap in bytes of text (``<= 0``: no cap); ``root`` the library directory
  (default :func:`stdlib_root`).

  Raises:
    FileNotFoundError: if ``root`` is not a directory.
    ValueError: if it holds no matching file, or only empty ones.
  """
  root = stdlib_root() if root is None else root
  if not os.path.isdir(root):
    raise FileNotFoundError(f"standard library directory {root!r} does not exist")
  rel_paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_STDLIB_DIRS)
    for name in filenames:
      if name.endswith(".py"):
        rel_paths.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
  return _collect(root, rel_paths, max_bytes=max_bytes, what="'stdlib'")


def load_text_files(path: str, *, glob: str, max_bytes: int) -> list[Document]:
  """Files under directory ``path`` matching ``glob`` (e.g. ``**/*.txt``), capped in bytes.

  ``path`` may also name a single file; ``max_bytes`` is the cap in bytes of text (``<= 0``: no
  cap).

  Raises:
    ValueError: an empty ``path``, no matching file, or only empty ones.
    PermissionError, FileNotFoundError: an unreadable or missing ``path`` (named).
  """
  if not path:
    raise ValueError("data.path is empty: name a directory (or file) of text files")
  if os.path.exists(path) and not os.access(path, os.R_OK):
    raise PermissionError(f"corpus path {path!r} is not readable")
  if os.path.isfile(path):
    root, rel_paths = os.path.dirname(path) or ".", [os.path.basename(path)]
  elif os.path.isdir(path):
    root = path
    rel_paths = sorted(
        os.path.relpath(p, root).replace(os.sep, "/")
        for p in glob_lib.glob(os.path.join(root, glob), recursive=True) if os.path.isfile(p))
  else:
    raise FileNotFoundError(f"corpus path {path!r} does not exist or is not readable")
  return _collect(root, rel_paths, max_bytes=max_bytes, what=f"files (glob {glob!r})")


def pack(token_docs: Sequence[np.ndarray], *, seq_len: int, separator_id: int) -> np.ndarray:
  """Concatenates ``doc SEP doc SEP ...`` and cuts int32 rows of ``seq_len`` (rest dropped).

  ``token_docs`` are int id arrays, one per document; ``separator_id`` the SEP token. Returns
  ``int32[N, seq_len]``.

  Raises:
    ValueError: if ``seq_len < 1``.
  """
  if seq_len < 1:
    raise ValueError(f"seq_len={seq_len} must be >= 1")
  pieces = []
  sep = np.asarray([separator_id], np.int32)
  for ids in token_docs:
    pieces.append(np.asarray(ids, np.int32))
    pieces.append(sep)
  stream = np.concatenate(pieces) if pieces else np.zeros([0], np.int32)
  n = stream.size // seq_len
  return stream[: n * seq_len].reshape(n, seq_len)


def batch_indices(num_examples: int, *, step: int, batch_size: int, seed: int) -> np.ndarray:
  """Example indices of batch ``step``: a pure function of ``(seed, step)``."""
  if num_examples < 1:
    raise ValueError("cannot draw batches from an empty example set")
  pos = step * batch_size + np.arange(batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(pos, num_examples)
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
    sel = epochs == epoch
    out[sel] = perm[offsets[sel]]
  return out


def batch_at(examples: np.ndarray, *, step: int, batch_size: int, seed: int) -> np.ndarray:
  """Batch number ``step`` of the shuffled stream over ``examples`` (``[batch_size, L]``).

  ``examples`` is ``int32[N, L]``; the stream visits a fresh permutation of the ``N`` rows per
  epoch, drawn from ``seed``, so the batch depends only on ``(seed, step)`` (exact resume).
  """
  return examples[batch_indices(len(examples), step=step, batch_size=batch_size, seed=seed)]


def iterate_batches(examples: np.ndarray, *, batch_size: int, seed: int, start_step: int = 0
                    ) -> Iterator[np.ndarray]:
  """Endless iterator of :func:`batch_at` (``examples``, ``batch_size``, ``seed``) from
  ``start_step`` on (resume = pass the step)."""
  step = start_step
  while True:
    yield batch_at(examples, step=step, batch_size=batch_size, seed=seed)
    step += 1


def eval_batches(examples: np.ndarray, *, batch_size: int, max_batches: int, seed: int = 0
                 ) -> list[np.ndarray]:
  """Up to ``max_batches`` full batches (``int32[batch_size, L]`` each) drawn without replacement
  from ``examples`` (``int32[N, L]``).

  The examples are taken in a fixed permutation drawn from ``seed``, so a budget smaller than the
  split still covers all of its files rather than the first few. When there are fewer examples
  than one batch, they are tiled to fill one batch.

  Raises:
    ValueError: if ``examples`` is empty.
  """
  if len(examples) == 0:
    raise ValueError("validation split is empty: lower seq_len or raise the corpus size")
  examples = examples[np.random.default_rng(seed).permutation(len(examples))]
  if len(examples) < batch_size:
    reps = -(-batch_size // len(examples))
    examples = np.concatenate([examples] * reps)[:batch_size]
  n = min(max_batches, len(examples) // batch_size)
  return [examples[i * batch_size:(i + 1) * batch_size] for i in range(n)]


@dataclasses.dataclass(frozen=True)
class TokenizedSplit:
  """One split: packed examples plus the counts needed for bits/char and unigram entropy."""
  examples: np.ndarray  # int32[N, seq_len]
  num_chars: int  # Characters of the split's text (documents + one per separator).
  num_tokens: int  # Tokens of the split's stream (documents + separators), before cutting.
  token_counts: np.ndarray  # int64[V]: how often each id occurs in the stream.

  @property
  def chars_per_token(self) -> float:
    return self.num_chars / max(self.num_tokens, 1)


def tokenize_split(docs: Sequence[Document], tokenizer, *, seq_len: int) -> TokenizedSplit:
  """Encodes and packs ``docs`` with ``tokenizer`` (a ``partext_jax.data.tokenizer.Tokenizer``)
  into rows of ``seq_len`` tokens (:func:`pack`), with the split's character and token counts."""
  token_docs = tokenizer.encode_batch([d.text for d in docs])
  examples = pack(token_docs, seq_len=seq_len, separator_id=tokenizer.separator_id)
  counts = np.zeros(tokenizer.vocab_size, np.int64)
  for ids in token_docs:
    counts += np.bincount(ids, minlength=tokenizer.vocab_size)
  counts[tokenizer.separator_id] += len(token_docs)
  return TokenizedSplit(
      examples=examples,
      num_chars=sum(len(d.text) + 1 for d in docs),
      num_tokens=int(counts.sum()),
      token_counts=counts,
  )


def unigram_entropy_bits(counts: np.ndarray) -> float:
  """Entropy in bits of the empirical unigram distribution ``counts / sum(counts)``."""
  counts = np.asarray(counts, np.float64)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log2(p)).sum())
