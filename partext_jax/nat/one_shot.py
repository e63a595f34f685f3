"""One-shot CTC decoding: every output position in one forward pass, then collapse.

Libovicky & Helcl 2018 (CTC-NAT) and Gu et al. 2018 (NAT, one pass over a fixed-length decoder
input); ``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing``. For a source of length
``n`` the model scores ``lambda n`` positions over the ``V`` tokens and the blank; decoding takes
the argmax at each position, merges repeats and drops blanks (:func:`partext_jax.nat.ctc.collapse`).
No PRNG is used (argmax): the key is accepted for the common sampler shape.

Usage::

    decoder = one_shot(make_ctc_fn(cfg, params), upsampling=cfg.upsampling)
    output, info = decoder.sample(jax.random.key(0), Source(src, src_len))
    output.tokens[b, :output.lengths[b]]          # row b; info.forwards == 1 per row
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.base import SamplingAlgorithm, checked_callable, checked_int, model_jit
from partext_jax.base import validate_key
from partext_jax.nat import ctc
from partext_jax.nat.protocols import CTCFn, Output, Source, as_source


class OneShotState(NamedTuple):
  """``source``; ``output`` (empty before the step); ``step int32[]`` (0 or 1)."""

  source: Source
  output: Output
  step: jax.Array


class OneShotInfo(NamedTuple):
  """``forwards int32[B]`` model passes per row (1); ``decoder_lengths int32[B]``
  (``lambda src_len``)."""

  forwards: jax.Array
  decoder_lengths: jax.Array


@dataclasses.dataclass(frozen=True)
class OneShotConfig:
  upsampling: int
  pad_id: int | None = None

  def __post_init__(self):
    checked_int("upsampling", self.upsampling, minimum=1,
                hint=" (decoder positions per source token)")


def _init(source: Source, upsampling: int) -> OneShotState:
  b, s = source.tokens.shape
  empty = Output(jnp.zeros((b, upsampling * s), jnp.int32), jnp.zeros((b,), jnp.int32))
  return OneShotState(source, empty, jnp.int32(0))


def _step(state: OneShotState, *, ctc_fn: CTCFn, config: OneShotConfig):
  logits = ctc_fn(state.source.tokens, state.source.lengths)
  vocab = logits.shape[-1] - 1
  lengths = config.upsampling * state.source.lengths
  tokens, out_len = ctc.greedy_decode(logits, lengths, blank_id=vocab,
                                      pad_id=vocab if config.pad_id is None else config.pad_id)
  info = OneShotInfo(jnp.ones_like(lengths), lengths)
  return OneShotState(state.source, Output(tokens, out_len), state.step + 1), info


def _sample_impl(rng_key, source: Source, *, ctc_fn, config: OneShotConfig):
  del rng_key  # argmax decoding
  state, info = _step(_init(source, config.upsampling), ctc_fn=ctc_fn, config=config)
  return state.output, info


_sample = model_jit(_sample_impl, static_argnames=("config",), model_argnames=("ctc_fn",))


class _ShapeKey:
  """Hashes a model by what its output shape depends on: a Partial's function and leaf shapes
  (not their values), any other callable by identity; plus the source shape."""

  def __init__(self, fn, b: int, s: int):
    self.fn, self.b, self.s = fn, b, s
    if isinstance(fn, jax.tree_util.Partial):
      leaves, treedef = jax.tree_util.tree_flatten(fn)
      self.key = (treedef, tuple((np.shape(x), str(jnp.result_type(x))) for x in leaves), b, s)
    else:
      self.key = (fn, b, s)

  def __hash__(self):
    return hash(self.key)

  def __eq__(self, other):
    return self.key == other.key


@functools.lru_cache(maxsize=64)
def _logits_shape(key: _ShapeKey):
  return jax.eval_shape(key.fn, jax.ShapeDtypeStruct((key.b, key.s), jnp.int32),
                        jax.ShapeDtypeStruct((key.b,), jnp.int32)).shape


def _check_model(ctc_fn, source: Source, upsampling: int) -> None:
  """The logits' shape by abstract evaluation (cached per model signature and source shape, so
  a decoder built per call costs no retrace)."""
  b, s = source.tokens.shape
  shape = _logits_shape(_ShapeKey(ctc_fn, b, s))
  if len(shape) != 3 or shape[:2] != (b, upsampling * s) or shape[2] < 2:
    raise ValueError(f"ctc_fn must map a source [{b}, {s}] to logits [{b}, upsampling * {s} = "
                     f"{upsampling * s}, V + 1] (blank last); it returned {shape} "
                     f"(check upsampling={upsampling})")


def one_shot(ctc_fn: CTCFn, *, upsampling: int, pad_id: int | None = None) -> SamplingAlgorithm:
  """The one-shot CTC decoder of ``ctc_fn`` (module docstring).

  Args:
    ctc_fn: ``(src int32[B, S], src_len int32[B]) -> logits float32[B, upsampling S, V + 1]``
      (:data:`partext_jax.nat.protocols.CTCFn`; blank = the last column).
    upsampling: ``lambda >= 1``, decoder positions per source token.
    pad_id: written after each output (default ``V``).
  Returns:
    ``SamplingAlgorithm``: ``init(source) -> OneShotState``, ``step(rng_key, state) ->
    (state, OneShotInfo)``, ``sample(rng_key, source) -> (Output, OneShotInfo)`` with
    ``Output.tokens int32[B, upsampling S]``; ``source`` is a
    :class:`~partext_jax.nat.protocols.Source` (or ``(tokens, lengths)``).
  Raises:
    ValueError / TypeError: ``upsampling < 1``, a non-callable model, a malformed source, or
      logits whose shape does not match ``upsampling`` (checked by abstract evaluation, before
      compiling).
  """
  checked_callable("ctc_fn", ctc_fn)
  config = OneShotConfig(upsampling, pad_id)

  def init_fn(source) -> OneShotState:
    source = as_source(source)
    _check_model(ctc_fn, source, upsampling)
    return _init(source, upsampling)

  def step_fn(rng_key, state: OneShotState):
    del rng_key
    return _step(state, ctc_fn=ctc_fn, config=config)

  def sample_fn(rng_key, source):
    validate_key(rng_key)
    source = as_source(source)
    _check_model(ctc_fn, source, upsampling)
    return _sample(rng_key, source, ctc_fn=ctc_fn, config=config)

  return SamplingAlgorithm(init=init_fn, step=step_fn, sample=sample_fn)
