"""Tokenizers built on HuggingFace ``tokenizers`` (no hand-written BPE).

Two kinds, both exact on round trip (``decode(encode(s)) == s``) for every text whose characters
the tokenizer knows:

``char``  one token per Unicode character. The alphabet is the ``vocab_size - 2`` most frequent
          characters of the training texts (ties broken by code point, so it is deterministic);
          a character outside it becomes ``UNK`` = U+FFFD (the replacement character, which
          decodes to itself). Implemented as a ``tokenizers`` BPE model with no merges.
``bpe``   byte-level BPE (GPT-2 style byte alphabet) trained on the texts up to ``vocab_size``
          entries. Every string is representable, so nothing is ever unknown.

Both reserve id 0 for the document separator ``SEPARATOR`` that the packer puts between
documents. The model adds its own MASK id (= ``vocab_size``) on top; the tokenizer never emits it.

Example::

    tok = train_tokenizer(["def f(x):\\n  return x\\n"], kind="char", vocab_size=64)
    ids = tok.encode("def f")            # int32[5]
    tok.decode(ids)                      # "def f"
    tok.save("/tmp/w/tokenizer.json"); load_tokenizer("/tmp/w/tokenizer.json")
"""

from __future__ import annotations

import collections
import os
from typing import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

TOKENIZER_KINDS = ("char", "bpe")
SEPARATOR = "<|endoftext|>"
UNK = "\ufffd"
_KIND_KEY = "partext_jax_kind"


class Tokenizer:
  """A thin wrapper over ``tokenizers.Tokenizer`` that speaks int32 numpy arrays."""

  def __init__(self, hf_tokenizer: tokenizers.Tokenizer, *, kind: str):
    if kind not in TOKENIZER_KINDS:
      raise ValueError(f"tokenizer kind={kind!r} is not one of {TOKENIZER_KINDS}")
    self.hf = hf_tokenizer
    self.kind = kind
    sep = hf_tokenizer.token_to_id(SEPARATOR)
    if sep is None:
      raise ValueError(f"tokenizer has no separator token {SEPARATOR!r}")
    self.separator_id = sep

  @property
  def vocab_size(self) -> int:
    """Number of real token ids ``V`` (ids are ``0 .. V-1``)."""
    return self.hf.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    encs = self.hf.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, np.int32) for e in encs]

  def decode(self, ids: Iterable[int], *, skip_separator: bool = False) -> str:
    """Decodes ids to text; ids outside ``[0, V)`` (e.g. a leftover MASK) are shown as ``UNK``."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    v = self.vocab_size
    pieces, run = [], []
    for i in ids:  # Decode runs of valid ids; an invalid id becomes UNK.
      if 0 <= i < v and not (skip_separator and i == self.separator_id):
        run.append(i)
        continue
      if run:
        pieces.append(self.hf.decode(run, skip_special_tokens=False))
        run = []
      if not (0 <= i < v):
        pieces.append(UNK)
    if run:
      pieces.append(self.hf.decode(run, skip_special_tokens=False))
    return "".join(pieces)

  def to_json(self) -> str:
    return self.hf.to_str()

  def save(self, path: str) -> None:
    """Writes the tokenizer as JSON (atomically: write then rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(self.to_json())
    os.replace(tmp, path)


def _char_tokenizer(texts: Iterable[str], *, vocab_size: int) -> tokenizers.Tokenizer:
  counts = collections.Counter()
  for text in texts:
    counts.update(text)
  counts.pop(UNK, None)
  ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
  alphabet = [c for c, _ in ranked[: vocab_size - 2]]
  vocab = {SEPARATOR: 0, UNK: 1}
  for c in sorted(alphabet):  # Sorted by code point: readable ids, independent of counts' ties.
    vocab[c] = len(vocab)
  hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
  hf.add_special_tokens([SEPARATOR])
  hf.decoder = decoders.Fuse()
  return hf


def _bpe_tokenizer(texts: Iterable[str], *, vocab_size: int) -> tokenizers.Tokenizer:
  hf = tokenizers.Tokenizer(models.BPE())
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  hf.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=[SEPARATOR],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  hf.train_from_iterator(texts, trainer=trainer)
  return hf


def train_tokenizer(texts: Sequence[str], *, kind: str, vocab_size: int) -> Tokenizer:
  """Builds a tokenizer of ``kind`` (one of :data:`TOKENIZER_KINDS`) from ``texts`` with at most
  ``vocab_size`` ids.

  Raises:
    ValueError: an unknown ``kind``, or a ``vocab_size`` too small for it (char: 3, byte-level
      BPE: 257).
  """
  if kind not in TOKENIZER_KINDS:
    raise ValueError(f"tokenizer kind={kind!r} is not one of {TOKENIZER_KINDS}")
  if kind == "char":
    if vocab_size < 3:
      raise ValueError(f"char tokenizer needs vocab_size >= 3, got {vocab_size}")
    return Tokenizer(_char_tokenizer(texts, vocab_size=vocab_size), kind=kind)
  if vocab_size < 257:
    raise ValueError(f"byte-level bpe needs vocab_size >= 257 (256 bytes + separator), "
                     f"got {vocab_size}")
  return Tokenizer(_bpe_tokenizer(texts, vocab_size=vocab_size), kind=kind)


def _kind_of(hf: tokenizers.Tokenizer) -> str:
  return "bpe" if isinstance(hf.pre_tokenizer, pre_tokenizers.ByteLevel) else "char"


def tokenizer_from_json(text: str) -> Tokenizer:
  """A :class:`Tokenizer` from the JSON ``text`` of a saved HF ``tokenizers`` tokenizer (its kind
  inferred from the model type).
  """
  hf = tokenizers.Tokenizer.from_str(text)
  return Tokenizer(hf, kind=_kind_of(hf))


def load_tokenizer(path: str) -> Tokenizer:
  """Loads a tokenizer saved by :meth:`Tokenizer.save`; a ``ValueError`` names the path."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
    return tokenizer_from_json(text)
  except Exception as e:  # tokenizers raises a bare Exception on malformed JSON.
    raise ValueError(f"could not load tokenizer from {path!r}: {e}") from e
