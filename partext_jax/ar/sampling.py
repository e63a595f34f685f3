"""Autoregressive sampling with a KV cache: one jit-compiled prefill + ``lax.while_loop`` decode.

The model is injected (the sampler imports no model): any :class:`partext_jax.base.CausalLM`::

    model(params, tokens int[B, T], positions int[B, T], attn_mask bool[B, T, S], cache,
          write_slots int[B], *, logits_at=None) -> LMOutput(logits float[B, T or K, V], cache, _)

with ``model.init_cache(batch, max_len)``, optionally ``model.context_length``, ``vocab_size``,
``eos_id`` and ``pad_id``, e.g. :class:`partext_jax.models.llama.LlamaLM`
(``docs/algorithms.md#autoregressive-sampling-and-logits-processors``).

Layout. The ragged prompts are padded to a bucket length ``P`` (:func:`bucket_length`), so
prompts of the same bucket share one compilation. The cache has ``S = P + N`` slots
(``N = max_new_tokens``). Row ``b`` with prompt length ``n_b`` occupies

* left padding:  slots ``[P - n_b, P)`` and generates at ``P, P + 1, ...``;
* right padding: slots ``[0, n_b)`` and generates at ``n_b, n_b + 1, ...`` (overwriting pads).

With ``first_b`` the first real slot, a token at slot ``s`` has RoPE position ``s - first_b`` and
attends to slots ``first_b <= s' <= s`` (:func:`~partext_jax.models.attention.causal_cache_mask`):
a prompt gives the same tokens alone and inside a padded batch, whichever the side.

Loop. ``x_0 ~ proc(logits(prompt))``; for ``i = 1 .. N-1`` while some row is unfinished:
``x_i ~ proc(logits(x_{i-1} | cache))`` with key ``fold_in(rng_key, i)``. A row finishes after
emitting an EOS id; later positions hold ``pad_id``.

Streaming: ``stream_callback(step, tokens, done)`` (numpy ``int32[B]``, ``bool[B]``; a hashable
function, part of the compilation key) is called on the host for every step through
``jax.debug.callback(..., ordered=True)``, while the device loop continues.

Usage::

    model = LlamaLM(config)
    tokens, info = generate(jax.random.key(0), model, params, [[1, 2, 3], [4, 5]],
                            max_new_tokens=32, processor=processors.build(temperature=0.7,
                            top_p=0.9), eos_id=2)
    tokens[b, :info.lengths[b]]   # the generated ids of row b
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax import ops
from partext_jax.ar import processors as lp
from partext_jax.base import (LMOutput, checked_callable, checked_choice, checked_hashable,
                              checked_int, resolve_special_ids, vocab_size_of_lm)
from partext_jax.models.attention import causal_cache_mask

PADDING_SIDES = ("left", "right")


class GenerateInfo(NamedTuple):
  """Diagnostics of :func:`generate` (device arrays)."""

  lengths: jax.Array  # int32[B]: generated tokens per row, EOS included
  prompt_lengths: jax.Array  # int32[B]
  finished: jax.Array  # bool[B]: row emitted an EOS id
  num_steps: jax.Array  # int32[]: tokens produced per row by the loop (prefill step included)


class DecodeState(NamedTuple):
  """The ``while_loop`` carry."""

  step: jax.Array  # int32[]: index of the next token to produce
  tokens: jax.Array  # int32[B, N]
  cache: Any
  last: jax.Array  # int32[B]: last produced token (input of the next step)
  next_slot: jax.Array  # int32[B]: cache slot where ``last`` is written
  done: jax.Array  # bool[B]
  lengths: jax.Array  # int32[B]


def bucket_length(n: int, *, min_bucket: int = 16) -> int:
  """``max(min_bucket, 2 ** ceil(log2(n)))``: the smallest power of two ``>= n``, or
  ``min_bucket`` itself when that is larger (``min_bucket`` need not be a power of two)."""
  return max(min_bucket, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def _sample(key, logits, processor):
  if lp.is_greedy(processor):
    # Deterministic: skip the Gumbel noise. (Processors before Greedy may still reorder.)
    return ops.argmax(processor(logits))
  return ops.categorical(key, processor(logits))


def is_eos(tokens, eos_ids: tuple) -> jax.Array:
  """``bool`` array of ``tokens``' shape: the token is one of ``eos_ids`` (none when empty)."""
  if not eos_ids:
    return jnp.zeros(tokens.shape, bool)
  return functools.reduce(jnp.logical_or, [tokens == e for e in eos_ids])


def prefill(model, params, tokens, first_slot, cache_len: int, *, logits_at,
            return_hidden: bool = False) -> LMOutput:
  """Scores padded prompts into a fresh cache of ``cache_len`` slots (slot ``j`` = column ``j``).

  Args:
    model, params: a :class:`partext_jax.base.CausalLM` and its parameters.
    tokens: ``int32[B, P]`` padded prompts; row ``b``'s real tokens start at ``first_slot[b]``
      (left padding: ``P - n_b``; right padding: 0).
    first_slot: ``int32[B]``.
    cache_len: ``S >= P``.
    logits_at: ``int[B, K]`` columns whose logits (and hidden states) are returned.
    return_hidden: also return the final hidden states there.
  Returns:
    the model's :class:`~partext_jax.base.LMOutput`; a token at slot ``s`` has position
    ``s - first_slot`` and attends causally to ``[first_slot, s]``.
  """
  b, p = tokens.shape
  slots = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[None], (b, p))
  kwargs = {"return_hidden": True} if return_hidden else {}
  return model(params, tokens, jnp.maximum(slots - first_slot[:, None], 0),
               causal_cache_mask(slots, first_slot, cache_len), model.init_cache(b, cache_len),
               jnp.zeros((b,), jnp.int32), logits_at=logits_at, **kwargs)


def generate_impl(rng_key, params, tokens, prompt_lengths, *, model, max_new_tokens: int,
                  processor, eos_ids: tuple, pad_id: int, padding: str,
                  stream_callback: Callable | None):
  """The traced body of :func:`generate` (see the module docstring for the layout); jit it with
  ``static_argnames=STATIC_ARGNAMES`` (:mod:`partext_jax.parallel.runs` adds shardings)."""
  b, p = tokens.shape
  n = max_new_tokens
  s_len = p + n
  prompt_lengths = prompt_lengths.astype(jnp.int32)
  if padding == "left":
    first = p - prompt_lengths
    next_slot = jnp.full((b,), p, jnp.int32)
  else:
    first = jnp.zeros((b,), jnp.int32)
    next_slot = prompt_lengths
  logits, cache, _ = prefill(model, params, tokens, first, s_len,
                             logits_at=(next_slot - 1)[:, None])
  tok = _sample(jax.random.fold_in(rng_key, 0), logits[:, 0], processor)
  done = is_eos(tok, eos_ids)
  out = jnp.full((b, n), pad_id, jnp.int32).at[:, 0].set(tok)
  if stream_callback is not None:
    jax.debug.callback(stream_callback, jnp.int32(0), tok, done, ordered=True)
  state = DecodeState(jnp.int32(1), out, cache, tok, next_slot, done, jnp.ones((b,), jnp.int32))

  def cond(st: DecodeState):
    return (st.step < n) & ~jnp.all(st.done)

  def body(st: DecodeState):
    q = st.next_slot[:, None]
    logits, cache, _ = model(params, st.last[:, None], q - first[:, None],
                             causal_cache_mask(q, first, s_len), st.cache, st.next_slot)
    tok = _sample(jax.random.fold_in(rng_key, st.step), logits[:, 0], processor)
    tok = jnp.where(st.done, pad_id, tok)
    out = jax.lax.dynamic_update_slice(st.tokens, tok[:, None], (0, st.step))
    lengths = st.lengths + (~st.done).astype(jnp.int32)
    done = st.done | is_eos(tok, eos_ids)
    if stream_callback is not None:
      jax.debug.callback(stream_callback, st.step, tok, st.done, ordered=True)
    return DecodeState(st.step + 1, out, cache, tok, st.next_slot + 1, done, lengths)

  state = jax.lax.while_loop(cond, body, state)
  info = GenerateInfo(lengths=state.lengths, prompt_lengths=prompt_lengths,
                      finished=state.done if eos_ids else jnp.zeros((b,), bool),
                      num_steps=state.step)
  return state.tokens, info


STATIC_ARGNAMES = ("model", "max_new_tokens", "processor", "eos_ids", "pad_id", "padding",
                   "stream_callback")
_generate_jit = jax.jit(generate_impl, static_argnames=STATIC_ARGNAMES)


def pad_prompts(prompts, *, padding: str = "left", pad_id: int = 0,
                min_bucket: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """Ragged prompts -> ``(tokens int32[B, P], lengths int32[B])`` with ``P`` a bucket length.

  Raises ``TypeError`` / ``ValueError`` for anything but a non-empty list of non-empty token-id
  lists (or an ``int[B, T]`` array), for ids that are not integers (a float prompt is never
  rounded), or an unknown ``padding``.
  """
  checked_choice("padding", padding, PADDING_SIDES)
  if isinstance(prompts, (np.ndarray, jax.Array)):
    arr = np.asarray(prompts)
    if arr.ndim != 2:
      raise ValueError(f"prompts array must be int[B, T], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
      raise TypeError(f"prompts array must hold integer token ids, got dtype={arr.dtype}")
    prompts = [list(r) for r in arr]
  if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
    raise TypeError("prompts must be a non-empty list of token-id lists (or an int[B, T] array)")
  rows = []
  for i, row in enumerate(prompts):
    if isinstance(row, (int, np.integer)):
      raise TypeError(f"prompts[{i}] is an int: pass a list of prompts, e.g. [[1, 2, 3]]")
    bad = [t for t in row if not isinstance(t, (int, np.integer)) or isinstance(t, bool)]
    if bad:
      raise TypeError(f"prompts[{i}] holds {bad[0]!r} ({type(bad[0]).__name__}): token ids must "
                      f"be ints")
    row = [int(t) for t in row]
    if not row:
      raise ValueError(f"prompts[{i}] is empty: every prompt needs at least one token (e.g. BOS)")
    rows.append(row)
  lengths = np.array([len(r) for r in rows], np.int32)
  p = bucket_length(int(lengths.max()), min_bucket=min_bucket)
  tokens = np.full((len(rows), p), pad_id, np.int32)
  for i, row in enumerate(rows):
    if padding == "left":
      tokens[i, p - len(row):] = row
    else:
      tokens[i, :len(row)] = row
  return tokens, lengths


class Batch(NamedTuple):
  """A checked, padded generation batch (host values): what :func:`prepare_batch` returns."""

  tokens: np.ndarray  # int32[B, P], P = bucket_length(longest prompt)
  lengths: np.ndarray  # int32[B] prompt lengths
  eos_ids: tuple  # resolved EOS ids (empty: never stop early)
  pad_id: int


def prepare_batch(model, prompts, *, max_new_tokens: int, processor, eos_id="model",
                  pad_id: int | None = None, padding: str = "left",
                  min_bucket: int = 16) -> Batch:
  """Every host-side check of an autoregressive generation call, then the padded batch.

  Shared by :func:`generate`, :func:`partext_jax.ar.speculative.decode.generate` and
  :func:`partext_jax.parallel.generate`; the arguments are those of :func:`generate`.
  Raises ``TypeError`` / ``ValueError`` (naming the argument) before anything is compiled: a bad
  ``max_new_tokens`` / ``min_bucket`` / ``padding`` / processor, malformed prompts, ids outside
  the model's ``[0, vocab_size)``, or prompt + ``max_new_tokens`` beyond ``context_length``.
  """
  checked_choice("padding", padding, PADDING_SIDES)
  max_new_tokens = checked_int("max_new_tokens", max_new_tokens, minimum=1)
  checked_int("min_bucket", min_bucket, minimum=1)
  checked_hashable("processor", checked_callable("processor", processor))
  eos_ids, pad_id = resolve_special_ids(model, eos_id=eos_id, pad_id=pad_id)
  tokens, lengths = pad_prompts(prompts, padding=padding, pad_id=pad_id, min_bucket=min_bucket)
  vocab = vocab_size_of_lm(model)
  if vocab is not None and (tokens.min() < 0 or tokens.max() >= vocab):
    raise ValueError(f"prompt token ids must lie in [0, {vocab}) (the model's vocab_size); got "
                     f"ids in [{tokens.min()}, {tokens.max()}] (pad_id={pad_id} included)")
  ctx = getattr(model, "context_length", None)
  longest = int(lengths.max())
  if ctx is not None:
    if longest > ctx:
      raise ValueError(f"a prompt has {longest} tokens, longer than the model's context_length="
                       f"{ctx}")
    if longest + max_new_tokens > ctx:
      raise ValueError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                       f"context_length={ctx}; lower max_new_tokens to <= {ctx - longest}")
  return Batch(tokens, lengths, eos_ids, pad_id)


def generate(rng_key, model, params, prompts, *, max_new_tokens: int,
             processor: Callable = lp.greedy(), eos_id: int | Sequence[int] | None = "model",
             pad_id: int | None = None, padding: str = "left", min_bucket: int = 16,
             stream_callback: Callable | None = None):
  """Samples up to ``max_new_tokens`` tokens after each prompt.

  Args:
    rng_key: a PRNG key (step ``i`` uses ``fold_in(rng_key, i)``); unused by greedy.
    model: the injected :class:`~partext_jax.base.CausalLM` (module docstring), e.g.
      ``LlamaLM(config)``.
    params: its parameters.
    prompts: a list of token-id lists (ragged), or ``int[B, T]`` (taken as full-length prompts).
    max_new_tokens: ``N >= 1``; the output buffer is ``int32[B, N]``.
    processor: a hashable logits processor (:mod:`partext_jax.ar.processors`), e.g.
      ``processors.build(...)``.
    eos_id: an id, a sequence of ids, ``None`` (never stop early) or ``"model"`` (the model's
      ``eos_id``).
    pad_id: id written after a row finished and into prompt padding (default: model's, else 0).
    padding: ``"left"`` or ``"right"`` (identical results; see the module docstring).
    min_bucket: smallest prompt bucket (:func:`bucket_length`).
    stream_callback: optional hashable host function ``(step, tokens, done)`` per step.
  Returns:
    ``(tokens int32[B, N], GenerateInfo)``.
  Raises:
    TypeError, ValueError: bad arguments (:func:`prepare_batch`), before compiling.
  """
  if stream_callback is not None:
    checked_callable("stream_callback", stream_callback)
  batch = prepare_batch(model, prompts, max_new_tokens=max_new_tokens, processor=processor,
                        eos_id=eos_id, pad_id=pad_id, padding=padding, min_bucket=min_bucket)
  return _generate_jit(rng_key, params, jnp.asarray(batch.tokens), jnp.asarray(batch.lengths),
                       model=model, max_new_tokens=int(max_new_tokens), processor=processor,
                       eos_ids=batch.eos_ids, pad_id=batch.pad_id, padding=padding,
                       stream_callback=stream_callback)


def trim(tokens, info: GenerateInfo) -> list[list[int]]:
  """Per-row generated ids (up to and including EOS)."""
  tokens, lengths = np.asarray(tokens), np.asarray(info.lengths)
  return [tokens[i, :lengths[i]].tolist() for i in range(tokens.shape[0])]


class GeneratedText(NamedTuple):
  """What :func:`generate_text` returns."""

  texts: list  # list[str], special tokens removed
  token_ids: list  # list[list[int]], EOS included
  info: GenerateInfo
  seconds: float  # wall time of the generate call (compilation included on a first call)


def generate_text(model_bundle, prompts, *, rng_key=None, max_new_tokens: int = 128,
                  temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                  chat: bool = True, system: str | None = None, padding: str = "left",
                  stream_callback: Callable | None = None) -> GeneratedText:
  """Tokenizes ``prompts`` (a str or a list of str), generates, and decodes.

  Args:
    model_bundle: ``ModelBundle(model, params, tokenizer)`` (``pretrained.load_bundle()``).
    rng_key: required unless ``temperature == 0`` (greedy).
    temperature, top_k, top_p: the processor (:func:`partext_jax.ar.processors.build`).
    chat: wrap each prompt as a user message with the tokenizer's chat template (and optional
      ``system`` message); otherwise the raw text is encoded.
    max_new_tokens, padding, stream_callback: as :func:`generate`.
  Returns:
    :class:`GeneratedText` (texts without special tokens, ids with EOS, info, wall seconds).
  Raises:
    TypeError: ``prompts`` is not a str or a non-empty list of str.
    ValueError: no ``rng_key`` with ``temperature > 0``, or :func:`generate`'s bad arguments.
  """
  model, params, tok = model_bundle
  if isinstance(prompts, str):
    prompts = [prompts]
  if not prompts or not all(isinstance(p, str) for p in prompts):
    raise TypeError("prompts must be a str or a non-empty list of str")
  processor = lp.build(temperature=temperature, top_k=top_k, top_p=top_p)
  if rng_key is None:
    if temperature != 0:
      raise ValueError("rng_key is required when temperature > 0 (sampling); pass "
                       "jax.random.key(seed)")
    rng_key = jax.random.key(0)  # unused by greedy decoding
  ids = []
  for p in prompts:
    if chat:
      msgs = ([{"role": "system", "content": system}] if system is not None else [])
      msgs.append({"role": "user", "content": p})
      ids.append(tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True)))
    else:
      ids.append(tok.encode(p))
  start = time.perf_counter()
  tokens, info = generate(rng_key, model, params, ids, max_new_tokens=max_new_tokens,
                          processor=processor, eos_id=tok.eos_id if tok.eos_id is not None
                          else "model", padding=padding, stream_callback=stream_callback)
  tokens = jax.block_until_ready(tokens)
  seconds = time.perf_counter() - start
  out_ids = trim(tokens, info)
  return GeneratedText([tok.decode(r) for r in out_ids], out_ids, info, seconds)
