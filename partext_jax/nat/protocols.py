"""The non-autoregressive family's contract: data, model protocols and input checks.

Sequence-to-sequence data (``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing``): a
:class:`Seq2Seq` batch holds right-padded sources and targets over ``V`` real tokens
``0 .. V - 1`` with their lengths; the padding id is ``V``. Decoders take a :class:`Source`
(the conditioning, the ``x_init`` of :class:`partext_jax.base.SamplingAlgorithm`) and return an
:class:`Output` (right-padded tokens and lengths).

Model protocols (any JAX callables; wrap real models as ``jax.tree_util.Partial`` so parameters
are traced arguments, see :mod:`partext_jax.nat.networks`):

* **One-shot CTC** -- :data:`CTCFn` ``ctc_fn(src int32[B, S], src_len int32[B]) -> logits
  float32[B, lambda S, V + 1]``: one pass over ``lambda = upsampling`` decoder positions per
  source token, row ``b`` valid on its first ``lambda src_len[b]``; column ``V`` is the blank.
* **Levenshtein Transformer** -- :data:`EncodeFn` ``encode_fn(src, src_len) -> memory`` (any
  pytree, computed once per decode) and :data:`EditFn` ``edit_fn(memory, canvas int32[B, L]) ->
  EditLogits`` over a canvas of :class:`partext_jax.nat.edits.CanvasIds`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Seq2Seq(NamedTuple):
  """A batch of pairs (numpy or jax): ``source int32[B, S]``, ``source_lengths int32[B]``,
  ``target int32[B, T]``, ``target_lengths int32[B]``; padding id ``V``."""

  source: Any
  source_lengths: Any
  target: Any
  target_lengths: Any


class Source(NamedTuple):
  """What a decoder conditions on: ``tokens int32[B, S]`` (right-padded), ``lengths int32[B]``."""

  tokens: jax.Array
  lengths: jax.Array


class Output(NamedTuple):
  """What a decoder returns: ``tokens int32[B, T]`` (padded after ``lengths``), ``lengths``."""

  tokens: jax.Array
  lengths: jax.Array


class EditLogits(NamedTuple):
  """The Levenshtein Transformer's three classifiers on one canvas ``[B, L]``.

  Attributes:
    delete: ``float32[B, L, 2]`` (keep, delete) per position.
    insert: ``float32[B, L - 1, K + 1]`` placeholders to insert in slot ``s`` (between positions
      ``s`` and ``s + 1``), ``0 .. K``.
    token: ``float32[B, L, V]`` the real token for each position (used at placeholders).
  """

  delete: jax.Array
  insert: jax.Array
  token: jax.Array


CTCFn = Callable[[jax.Array, jax.Array], jax.Array]
EncodeFn = Callable[[jax.Array, jax.Array], Any]
EditFn = Callable[[Any, jax.Array], EditLogits]


def as_source(source) -> Source:
  """``source`` (a :class:`Source`, :class:`Seq2Seq` or ``(tokens, lengths)``) as int32 arrays.

  Raises ``TypeError`` / ``ValueError`` before compilation: non-integer tokens, a shape other
  than ``[B, S]`` / ``[B]``, or (on concrete inputs) lengths outside ``[1, S]``.
  """
  tokens, lengths = source[0], source[1]
  for name, value, rank in (("source tokens", tokens, 2), ("source lengths", lengths, 1)):
    dtype = getattr(value, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
      raise TypeError(f"{name} must be an integer array, got {type(value).__name__} "
                      f"with dtype={dtype}")
    if np.ndim(value) != rank:
      raise ValueError(f"{name} must have rank {rank}, got shape={np.shape(value)}")
  if np.shape(lengths)[0] != np.shape(tokens)[0]:
    raise ValueError(f"source lengths {np.shape(lengths)} do not match the batch of source "
                     f"tokens {np.shape(tokens)}")
  if not isinstance(lengths, jax.core.Tracer):
    lens = np.asarray(lengths)
    if lens.size and (lens.min() < 1 or lens.max() > np.shape(tokens)[1]):
      raise ValueError(f"source lengths must lie in [1, {np.shape(tokens)[1]}] (the padded "
                       f"length), got [{lens.min()}, {lens.max()}]")
  return Source(jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32))
