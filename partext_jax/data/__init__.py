"""Data: tokenizers, text corpora with packing and resumable batches, synthetic Markov data."""

from partext_jax.data.corpus import (
    Document,
    TokenizedSplit,
    batch_at,
    eval_batches,
    is_validation,
    iterate_batches,
    load_stdlib,
    load_text_files,
    pack,
    split_documents,
    tokenize_split,
    unigram_entropy_bits,
)
from partext_jax.data.synthetic import MarkovChain
from partext_jax.data.tokenizer import (
    SEPARATOR,
    TOKENIZER_KINDS,
    Tokenizer,
    load_tokenizer,
    tokenizer_from_json,
    train_tokenizer,
)

__all__ = [
    "Document", "TokenizedSplit", "batch_at", "eval_batches", "is_validation", "iterate_batches",
    "load_stdlib", "load_text_files", "pack", "split_documents", "tokenize_split",
    "unigram_entropy_bits", "MarkovChain", "SEPARATOR", "TOKENIZER_KINDS", "Tokenizer",
    "load_tokenizer", "tokenizer_from_json", "train_tokenizer",
]
