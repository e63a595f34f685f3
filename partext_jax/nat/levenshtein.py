"""Levenshtein Transformer decoding: delete, insert placeholders, fill, until nothing changes.

Gu et al. 2019 (LevT), fairseq ``levenshtein_transformer.py: forward_decoder`` and
``iterative_refinement_generator.py``; ``docs/algorithms.md#levenshtein-transformer``.
Starting from the empty canvas ``[BOS, EOS]`` (or a given one), one iteration is

1. **delete**: ``argmax`` of the deletion classifier at every real token (``BOS``/``EOS`` stay);
2. **insert placeholders**: ``argmax`` of the insertion classifier in every slot of the new
   canvas, ``PLH`` tokens inserted (cut from the left when the canvas is full);
3. **fill**: ``argmax`` of the token classifier at every ``PLH``,

three decoder passes over the encoder ``memory`` computed once. A row stops at the first
iteration that leaves its canvas unchanged (it is then a fixed point: the iteration is a
deterministic function of the canvas) or after ``max_iterations``. Everything is static-shape:
the canvas is ``int32[B, L]`` with lengths, the loop a ``lax.while_loop`` over iterations while
some row is unfinished; a finished row is carried unchanged.

Choices. All three stages run on every row at every iteration (fairseq skips a stage for rows
with nothing to do; the result is the same since a no-op stage changes nothing). No
``eos_penalty`` / ``max_ratio`` (fairseq's defaults 0 / none); the canvas size bounds the length.
Argmax decoding: the key is accepted for the common shape.

Usage::

    encode_fn, edit_fn = make_levenshtein_fns(cfg, params)
    decoder = levenshtein(encode_fn, edit_fn, vocab_size=V, canvas_size=cfg.canvas_size,
                          max_iterations=10)
    output, info = decoder.sample(jax.random.key(0), Source(src, src_len))
    info.iterations, info.converged        # per row; decoder passes = 3 * iterations
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from partext_jax.base import SamplingAlgorithm, checked_callable, checked_int, model_jit
from partext_jax.base import validate_key
from partext_jax.nat import edits
from partext_jax.nat.edits import CanvasIds
from partext_jax.nat.protocols import EditFn, EncodeFn, Output, Source, as_source

PASSES_PER_ITERATION = 3


class LevenshteinState(NamedTuple):
  """Carried state.

  Attributes:
    memory: the encoder output (``encode_fn``'s pytree).
    canvas: ``int32[B, L]`` framed canvas; ``lengths int32[B]`` its lengths.
    done: ``bool[B]`` the row reached a fixed point.
    iterations: ``int32[B]`` iterations the row ran (the last, unchanged one included).
    step: ``int32[]`` iterations run.
  """

  memory: Any
  canvas: jax.Array
  lengths: jax.Array
  done: jax.Array
  iterations: jax.Array
  step: jax.Array


class LevenshteinInfo(NamedTuple):
  """One iteration: ``deleted``, ``inserted`` (``int32[B]`` tokens removed / placeholders
  added) and ``changed`` (``bool[B]``)."""

  deleted: jax.Array
  inserted: jax.Array
  changed: jax.Array


class LevenshteinSampleInfo(NamedTuple):
  """``iterations int32[B]``; ``forwards int32[B]`` decoder passes (``3 * iterations``, the
  encoder pass not counted); ``converged bool[B]`` (stopped before the cap)."""

  iterations: jax.Array
  forwards: jax.Array
  converged: jax.Array


@dataclasses.dataclass(frozen=True)
class LevenshteinConfig:
  vocab_size: int
  canvas_size: int
  max_iterations: int

  def __post_init__(self):
    checked_int("vocab_size", self.vocab_size, minimum=1)
    checked_int("canvas_size", self.canvas_size, minimum=2, hint=" (BOS and EOS)")
    checked_int("max_iterations", self.max_iterations, minimum=1, hint=" (the step cap)")

  @property
  def ids(self) -> CanvasIds:
    return CanvasIds(self.vocab_size)


def empty_canvas(batch: int, ids: CanvasIds, size: int):
  """``([BOS, EOS, PAD ..] int32[B, size], lengths = 2)``."""
  pos = jnp.arange(size)[None, :]
  canvas = jnp.where(pos == 0, ids.bos, jnp.where(pos == 1, ids.eos, ids.pad))
  return jnp.broadcast_to(canvas, (batch, size)).astype(jnp.int32), jnp.full((batch,), 2,
                                                                            jnp.int32)


def iteration(memory, canvas, lengths, *, edit_fn: EditFn, ids: CanvasIds):
  """One delete / insert / fill iteration on every row: ``(canvas, lengths, LevenshteinInfo)``."""
  delete = jnp.argmax(edit_fn(memory, canvas).delete, axis=-1) == 1
  deleted_canvas, deleted_lengths = edits.apply_deletions(canvas, lengths, delete, ids=ids)
  counts = jnp.argmax(edit_fn(memory, deleted_canvas).insert, axis=-1).astype(jnp.int32)
  inserted_canvas, inserted_lengths = edits.apply_insertions(deleted_canvas, deleted_lengths,
                                                             counts, ids=ids)
  tokens = jnp.argmax(edit_fn(memory, inserted_canvas).token, axis=-1).astype(jnp.int32)
  new = edits.fill_placeholders(inserted_canvas, tokens, ids=ids)
  changed = jnp.any(new != canvas, axis=1) | (inserted_lengths != lengths)
  info = LevenshteinInfo(lengths - deleted_lengths, inserted_lengths - deleted_lengths, changed)
  return new, inserted_lengths, info


def _init(memory, batch: int, config: LevenshteinConfig, canvas=None) -> LevenshteinState:
  if canvas is None:
    canvas, lengths = empty_canvas(batch, config.ids, config.canvas_size)
  else:
    canvas, lengths = canvas
  zeros = jnp.zeros((batch,), jnp.int32)
  return LevenshteinState(memory, canvas, lengths, jnp.zeros((batch,), bool), zeros,
                          jnp.int32(0))


def _step(state: LevenshteinState, *, edit_fn, config: LevenshteinConfig):
  canvas, lengths, info = iteration(state.memory, state.canvas, state.lengths, edit_fn=edit_fn,
                                    ids=config.ids)
  run = ~state.done
  keep = lambda new, old: jnp.where(run.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)  # noqa
  info = LevenshteinInfo(*(keep(x, jnp.zeros_like(x)) for x in info))
  return LevenshteinState(
      state.memory, keep(canvas, state.canvas), keep(lengths, state.lengths),
      state.done | (run & ~info.changed), state.iterations + run.astype(jnp.int32),
      state.step + 1), info


def _output(state: LevenshteinState, ids: CanvasIds) -> Output:
  return Output(*edits.unframe(state.canvas, state.lengths, pad_id=ids.vocab_size))


def _sample_impl(rng_key, source: Source, *, encode_fn, edit_fn, config: LevenshteinConfig):
  del rng_key  # argmax decoding
  memory = encode_fn(source.tokens, source.lengths)
  state = _init(memory, source.tokens.shape[0], config)
  state = jax.lax.while_loop(
      lambda st: (st.step < config.max_iterations) & ~jnp.all(st.done),
      lambda st: _step(st, edit_fn=edit_fn, config=config)[0], state)
  info = LevenshteinSampleInfo(state.iterations, PASSES_PER_ITERATION * state.iterations,
                               state.done)
  return _output(state, config.ids), info


_sample = model_jit(_sample_impl, static_argnames=("config",),
                    model_argnames=("encode_fn", "edit_fn"))


def levenshtein(encode_fn: EncodeFn, edit_fn: EditFn, *, vocab_size: int, canvas_size: int,
                max_iterations: int = 10) -> SamplingAlgorithm:
  """The Levenshtein Transformer's iterative decoder (module docstring).

  Args:
    encode_fn: ``(src int32[B, S], src_len int32[B]) -> memory`` (any pytree).
    edit_fn: ``(memory, canvas int32[B, L]) -> EditLogits`` (``delete [B, L, 2]``, ``insert
      [B, L - 1, K + 1]``, ``token [B, L, V]``) over :class:`CanvasIds` ``(vocab_size)``.
    vocab_size: ``V`` real tokens.
    canvas_size: ``L``, the canvas positions (the longest output is ``L - 2`` tokens).
    max_iterations: the step cap (``>= 1``).
  Returns:
    ``SamplingAlgorithm``: ``init(source, canvas=None) -> LevenshteinState`` (``canvas``: an
    optional ``(canvas, lengths)`` to refine instead of the empty one), ``step(rng_key, state)
    -> (state, LevenshteinInfo)``, ``sample(rng_key, source) -> (Output,
    LevenshteinSampleInfo)``; ``Output.tokens int32[B, L - 2]`` padded with ``V``.
  Raises:
    ValueError / TypeError: ``max_iterations < 1``, ``canvas_size < 2``, non-callable models or
      a malformed source, before compiling.
  """
  checked_callable("encode_fn", encode_fn)
  checked_callable("edit_fn", edit_fn)
  config = LevenshteinConfig(vocab_size, canvas_size, max_iterations)

  def init_fn(source, canvas=None) -> LevenshteinState:
    source = as_source(source)
    return _init(encode_fn(source.tokens, source.lengths), source.tokens.shape[0], config,
                 canvas)

  def step_fn(rng_key, state: LevenshteinState):
    del rng_key
    return _step(state, edit_fn=edit_fn, config=config)

  def sample_fn(rng_key, source):
    validate_key(rng_key)
    return _sample(rng_key, as_source(source), encode_fn=encode_fn, edit_fn=edit_fn,
                   config=config)

  return SamplingAlgorithm(init=init_fn, step=step_fn, sample=sample_fn)


def output_of(state: LevenshteinState, *, vocab_size: int) -> Output:
  """The unframed tokens of a state (for step-by-step use)."""
  return _output(state, CanvasIds(vocab_size))
