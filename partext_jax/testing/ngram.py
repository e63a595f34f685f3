"""Enumerable toy n-gram LMs for exactness tests of draft-and-verify decoding.

:class:`NGramTable` is a hashable ``logits_fn``: the logits at position ``t`` are
``table[x_{t-n+2}, .., x_t]`` (``n = order``; positions before 0 read token 0). Wrapped by
:class:`partext_jax.testing.function_lm.FunctionLM` it is a target or a drafter.
:func:`exact_continuation_probs` enumerates the exact joint of the first ``K`` generated tokens
under a logits processor -- the oracle the losslessness tests compare samples against
(``docs/algorithms.md#correctness-properties``, ``#statistical-tests``).

Usage::

    target = FunctionLM(random_ngram(0, vocab_size=4, order=2), vocab_size=4)
    joint = exact_continuation_probs(target.logits_fn, [1, 2], num_tokens=3, processor=proc)
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.testing.function_lm import FunctionLM


class NGramTable:
  """``logits_fn`` of an order-``n`` Markov LM (hash / equality by identity)."""

  def __init__(self, logits):
    logits = np.asarray(logits, np.float32)
    if logits.ndim < 2 or len(set(logits.shape)) != 1:
      raise ValueError(f"logits must have shape (V,) * order, got {logits.shape}")
    self.logits = logits
    self.vocab_size = logits.shape[-1]
    self.order = logits.ndim

  def __call__(self, tokens):
    tokens = jnp.asarray(tokens, jnp.int32)
    n = self.order - 1
    padded = jnp.pad(tokens, ((0, 0), (n - 1, 0))) if n > 1 else tokens
    ctx = [padded[:, i:i + tokens.shape[1]] for i in range(n)]
    return jnp.asarray(self.logits)[tuple(ctx)]


def random_ngram(seed: int, *, vocab_size: int, order: int = 2, concentration: float = 1.0,
                 zero_tokens=()) -> NGramTable:
  """A Dirichlet-random n-gram table: ``order`` (2 = bigram) over ``vocab_size`` tokens, each
  next-token row ``~ Dirichlet(concentration * 1)``, deterministic in ``seed``; ``zero_tokens``
  get probability 0 (logit -inf) everywhere."""
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.full(vocab_size, concentration), size=(vocab_size,) * (order - 1))
  logits = np.log(np.maximum(probs, 1e-30))
  for z in zero_tokens:
    logits[..., z] = -np.inf
  return NGramTable(logits)


def ngram_lm(table: NGramTable, **kw) -> FunctionLM:
  """The n-gram ``table`` as a :class:`~partext_jax.testing.FunctionLM` (a causal LM of the
  :class:`~partext_jax.base.CausalLM` protocol); ``kw`` go to ``FunctionLM`` (e.g. ``eos_id``).
  """
  return FunctionLM(table, vocab_size=table.vocab_size, **kw)


def exact_continuation_probs(logits_fn, prompt, *, num_tokens: int, processor) -> np.ndarray:
  """Exact ``P(x_1..x_K | prompt)`` under ``softmax(processor(logits))``, shape ``(V,) * K``.

  ``logits_fn(tokens int32[1, T]) -> logits [1, T, V]`` is the model (e.g. an
  :class:`NGramTable`); ``K = num_tokens`` continuation tokens are enumerated exhaustively.
  """
  prompt = [int(t) for t in prompt]
  out = None
  v = None
  for k in range(num_tokens):
    prefixes = list(itertools.product(*[range(v)] * k)) if k else [()]
    seqs = jnp.asarray([prompt + list(p) for p in prefixes], jnp.int32)
    logits = logits_fn(seqs)[:, -1]
    probs = np.asarray(jax.nn.softmax(processor(logits), axis=-1), np.float64)
    v = probs.shape[-1]
    cond = probs.reshape((v,) * k + (v,))
    out = cond if out is None else out[..., None] * cond
  return out / out.sum()
