"""Turns a :class:`DataConfig` into packed train/validation arrays plus encode/decode.

Text sources (``stdlib``, ``files``) train a tokenizer on the training split the first time and
save it as ``<workdir>/tokenizer.json``; later runs in the same workdir (a resumed run, sampling,
evaluation) load that file, or the JSON stored in a checkpoint, so ids never change under a
trained model. The ``markov`` source needs no tokenizer: its states are shown as letters.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np

from partext_jax.data import corpus
from partext_jax.data import synthetic
from partext_jax.data import tokenizer as tokenizer_lib
from partext_jax.training.config import DataConfig

TOKENIZER_FILE = "tokenizer.json"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """Everything the trainer needs from the data side."""

  train: np.ndarray  # int32[N, seq_len]
  valid: np.ndarray  # int32[M, seq_len]
  vocab_size: int  # V real ids; the model's MASK id is V.
  decode: Callable[[np.ndarray], str]
  encode: Callable[[str], np.ndarray] | None  # None for sources without text (markov).
  tokenizer_json: str | None
  unigram_entropy_bits: float  # Of the training token counts, bits per token.
  chars_per_token: float | None  # Validation characters per token (None without text).
  train_chars_per_token: float | None  # The same on the training split.
  true_entropy_bits: float | None  # Exact entropy per token (markov only).
  description: str


def _tokenizer(cfg: DataConfig, train_docs, workdir: str | None, tokenizer_json: str | None):
  if tokenizer_json is not None:
    tok = tokenizer_lib.tokenizer_from_json(tokenizer_json)
  elif workdir is not None and os.path.exists(os.path.join(workdir, TOKENIZER_FILE)):
    tok = tokenizer_lib.load_tokenizer(os.path.join(workdir, TOKENIZER_FILE))
  else:
    tok = tokenizer_lib.train_tokenizer([d.text for d in train_docs], kind=cfg.tokenizer,
                                        vocab_size=cfg.vocab_size)
    if workdir is not None:
      tok.save(os.path.join(workdir, TOKENIZER_FILE))
    return tok
  if tok.kind != cfg.tokenizer:
    raise ValueError(f"the saved tokenizer is {tok.kind!r} but data.tokenizer={cfg.tokenizer!r}; "
                     f"use a fresh workdir (or delete {TOKENIZER_FILE}) to change tokenizers")
  return tok


def load_markov_chain(cfg: DataConfig) -> synthetic.MarkovChain:
  """The random Markov chain of the data config ``cfg`` (its ``seed``, ``num_states`` and
  ``concentration``).
  """
  return synthetic.MarkovChain.random(seed=cfg.seed, num_states=cfg.num_states,
                                      concentration=cfg.concentration)


def build_dataset(cfg: DataConfig, *, workdir: str | None,
                  tokenizer_json: str | None = None) -> Dataset:
  """Loads (and tokenizes) the data named by ``cfg``; see the module docstring."""
  if cfg.source == "markov":
    chain = load_markov_chain(cfg)
    train = chain.sample_numpy(np.random.default_rng([cfg.seed, 1]),
                               num_sequences=cfg.num_train_sequences, length=cfg.seq_len)
    valid = chain.sample_numpy(np.random.default_rng([cfg.seed, 2]),
                               num_sequences=cfg.num_valid_sequences, length=cfg.seq_len)
    counts = np.bincount(train.reshape(-1), minlength=cfg.num_states)
    return Dataset(
        train=train, valid=valid, vocab_size=cfg.num_states, decode=chain.decode, encode=None,
        tokenizer_json=None, unigram_entropy_bits=corpus.unigram_entropy_bits(counts),
        chars_per_token=None, train_chars_per_token=None,
        true_entropy_bits=chain.sequence_entropy(cfg.seq_len) / cfg.seq_len / np.log(2.0),
        description=f"markov chain (K={cfg.num_states}, concentration={cfg.concentration})")
  if cfg.source == "stdlib":
    docs = corpus.load_stdlib(max_bytes=cfg.max_bytes)
    where = corpus.stdlib_root()
  else:
    docs = corpus.load_text_files(cfg.path, glob=cfg.glob, max_bytes=cfg.max_bytes)
    where = cfg.path
  train_docs, valid_docs = corpus.split_documents(
      docs, validation_fraction=cfg.validation_fraction)
  if not train_docs or not valid_docs:
    raise ValueError(f"corpus at {where!r} has {len(train_docs)} training and {len(valid_docs)} "
                     f"validation files: need at least one of each (change "
                     f"data.validation_fraction or data.max_bytes)")
  tok = _tokenizer(cfg, train_docs, workdir, tokenizer_json)
  train = corpus.tokenize_split(train_docs, tok, seq_len=cfg.seq_len)
  valid = corpus.tokenize_split(valid_docs, tok, seq_len=cfg.seq_len)
  if len(train.examples) == 0 or len(valid.examples) == 0:
    raise ValueError(f"corpus at {where!r} is too small for seq_len={cfg.seq_len}: "
                     f"{len(train.examples)} train / {len(valid.examples)} validation examples")
  return Dataset(
      train=train.examples, valid=valid.examples, vocab_size=tok.vocab_size,
      decode=tok.decode, encode=tok.encode, tokenizer_json=tok.to_json(),
      unigram_entropy_bits=corpus.unigram_entropy_bits(train.token_counts),
      chars_per_token=valid.chars_per_token, train_chars_per_token=train.chars_per_token,
      true_entropy_bits=None,
      description=(f"{cfg.source} corpus at {where} ({len(train_docs)} train / {len(valid_docs)} "
                   f"validation files, {tok.kind} tokenizer, V={tok.vocab_size})"))


def build_decoder(cfg: DataConfig, tokenizer_json: str | None
                  ) -> tuple[int, Callable[[np.ndarray], str], Callable[[str], np.ndarray] | None]:
  """``(vocab_size, decode, encode)`` without loading the corpus (for sampling)."""
  if cfg.source == "markov":
    chain = load_markov_chain(cfg)
    return cfg.num_states, chain.decode, None
  if tokenizer_json is None:
    raise ValueError("a text-data checkpoint must carry its tokenizer JSON")
  tok = tokenizer_lib.tokenizer_from_json(tokenizer_json)
  return tok.vocab_size, tok.decode, tok.encode
