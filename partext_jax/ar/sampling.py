"""Autoregressive sampling with a KV cache: one jit-compiled prefill + ``lax.while_loop`` decode.

The model is injected (the sampler imports no model): any hashable callable

    model(params, tokens int[B, T], positions int[B, T], attn_mask bool[B, T, S], cache,
          write_slots int[B], *, logits_at=None) -> (logits float[B, T or K, V], cache)

with ``model.init_cache(batch, max_len)``, ``model.context_length`` (and optionally ``eos_id`` /
``pad_id``), e.g. :class:`partext_jax.models.llama.LlamaLM`.

Layout. The ragged prompts are padded to a bucket length ``P`` (the next power of two ``>=
min_bucket``), so prompts of the same bucket share one compilation. The cache has ``S = P + N``
slots (``N = max_new_tokens``). Row ``b`` with prompt length ``n_b`` occupies

* left padding:  slots ``[P - n_b, P)`` and generates at ``P, P + 1, ...``;
* right padding: slots ``[0, n_b)`` and generates at ``n_b, n_b + 1, ...`` (overwriting pads).

With ``first_b`` the first real slot, a token at slot ``s`` has RoPE position ``s - first_b`` and
attends to slots ``first_b <= s' <= s``: a prompt gives the same tokens alone and inside a padded
batch, whichever the side.

Loop. ``x_0 ~ proc(logits(prompt))``; for ``i = 1 .. N-1`` while some row is unfinished:
``x_i ~ proc(logits(x_{i-1} | cache))`` with key ``fold_in(rng_key, i)``. A row finishes after
emitting an EOS id; later positions hold ``pad_id``.

Streaming: ``stream_callback(step, tokens, done)`` (numpy ``int32[B]``, ``bool[B]``; a hashable
function, part of the compilation key) is called on the host for every step through
``jax.debug.callback(..., ordered=True)``, while the device loop continues.

Usage::

    model = LlamaLM(config)
    tokens, info = generate(jax.random.key(0), model, params, [[1, 2, 3], [4, 5]],
                            max_new_tokens=32, processor=logits_processors.build(temperature=0.7,
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

from partext_jax.ar import processors as lp
from partext_jax.base import resolve_special_ids, vocab_size_of_lm

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
  """Smallest power of two ``>= max(n, min_bucket)``."""
  return max(min_bucket, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def _sample(key, logits, processor):
  if lp.is_greedy(processor):
    # Deterministic: skip the Gumbel noise. (Processors before Greedy may still reorder.)
    return jnp.argmax(processor(logits), axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, processor(logits), axis=-1).astype(jnp.int32)


def _is_eos(tok, eos_ids):
  if not eos_ids:
    return jnp.zeros(tok.shape, bool)
  return functools.reduce(jnp.logical_or, [tok == e for e in eos_ids])


def _mask(q_slots, first, max_len):
  s = jnp.arange(max_len)[None, None, :]
  return (s >= first[:, None, None]) & (s <= q_slots[:, :, None])


def generate_impl(rng_key, params, tokens, prompt_lengths, *, model, max_new_tokens: int,
                   processor, eos_ids: tuple, pad_id: int, padding: str,
                   stream_callback: Callable | None):
  """The traced body of :func:`generate` (see the module docstring for the layout)."""
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
  slots = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[None], (b, p))
  positions = jnp.maximum(slots - first[:, None], 0)
  cache = model.init_cache(b, s_len)
  logits, cache, _ = model(params, tokens, positions, _mask(slots, first, s_len), cache,
                        jnp.zeros((b,), jnp.int32), logits_at=(next_slot - 1)[:, None])
  tok = _sample(jax.random.fold_in(rng_key, 0), logits[:, 0], processor)
  done = _is_eos(tok, eos_ids)
  out = jnp.full((b, n), pad_id, jnp.int32).at[:, 0].set(tok)
  if stream_callback is not None:
    jax.debug.callback(stream_callback, jnp.int32(0), tok, done, ordered=True)
  state = DecodeState(jnp.int32(1), out, cache, tok, next_slot, done, jnp.ones((b,), jnp.int32))

  def cond(st: DecodeState):
    return (st.step < n) & ~jnp.all(st.done)

  def body(st: DecodeState):
    q = st.next_slot[:, None]
    logits, cache, _ = model(params, st.last[:, None], q - first[:, None],
                          _mask(q, first, s_len), st.cache, st.next_slot)
    tok = _sample(jax.random.fold_in(rng_key, st.step), logits[:, 0], processor)
    tok = jnp.where(st.done, pad_id, tok)
    out = jax.lax.dynamic_update_slice(st.tokens, tok[:, None], (0, st.step))
    lengths = st.lengths + (~st.done).astype(jnp.int32)
    done = st.done | _is_eos(tok, eos_ids)
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
  """Ragged prompts -> ``(tokens int32[B, P], lengths int32[B])`` with ``P`` a bucket length."""
  if padding not in PADDING_SIDES:
    raise ValueError(f"padding={padding!r} is not one of {PADDING_SIDES}")
  if isinstance(prompts, (np.ndarray, jax.Array)):
    arr = np.asarray(prompts)
    if arr.ndim != 2:
      raise ValueError(f"prompts array must be int[B, T], got shape {arr.shape}")
    prompts = [list(r) for r in arr]
  if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
    raise TypeError("prompts must be a non-empty list of token-id lists (or an int[B, T] array)")
  rows = []
  for i, row in enumerate(prompts):
    if isinstance(row, (int, np.integer)):
      raise TypeError(f"prompts[{i}] is an int: pass a list of prompts, e.g. [[1, 2, 3]]")
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


def generate(rng_key, model, params, prompts, *, max_new_tokens: int,
             processor: Callable = lp.greedy(), eos_id: int | Sequence[int] | None = "model",
             pad_id: int | None = None, padding: str = "left", min_bucket: int = 16,
             stream_callback: Callable | None = None):
  """Samples up to ``max_new_tokens`` tokens after each prompt.

  Args:
    rng_key: a PRNG key (step ``i`` uses ``fold_in(rng_key, i)``); unused by greedy.
    model: the injected model callable (module docstring), e.g. ``LlamaLM(config)``.
    params: its parameters.
    prompts: a list of token-id lists (ragged), or ``int[B, T]`` (taken as full-length prompts).
    max_new_tokens: ``N >= 1``; the output buffer is ``int32[B, N]``.
    processor: a hashable logits processor (:mod:`logits_processors`), e.g. ``lp.build(...)``.
    eos_id: an id, a sequence of ids, ``None`` (never stop early) or ``"model"`` (the model's
      ``eos_id``).
    pad_id: id written after a row finished and into prompt padding (default: model's, else 0).
    padding: ``"left"`` or ``"right"`` (identical results; see the module docstring).
    min_bucket: smallest prompt bucket.
    stream_callback: optional hashable host function ``(step, tokens, done)`` per step.
  Returns:
    ``(tokens int32[B, N], GenerateInfo)``.
  """
  if padding not in PADDING_SIDES:
    raise ValueError(f"padding={padding!r} is not one of {PADDING_SIDES}")
  if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool):
    raise TypeError(f"max_new_tokens must be an int, got {max_new_tokens!r}")
  if max_new_tokens <= 0:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
  if not isinstance(min_bucket, int) or min_bucket < 1:
    raise ValueError(f"min_bucket={min_bucket!r} must be an int >= 1")
  if not callable(processor):
    raise TypeError(f"processor must be a logits processor (callable), got {processor!r}")
  try:
    hash(processor)
  except TypeError as e:
    raise TypeError(f"processor {processor!r} must be hashable (use logits_processors)") from e
  if stream_callback is not None and not callable(stream_callback):
    raise TypeError(f"stream_callback must be callable or None, got {stream_callback!r}")
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
  return _generate_jit(rng_key, params, jnp.asarray(tokens), jnp.asarray(lengths), model=model,
                       max_new_tokens=int(max_new_tokens), processor=processor, eos_ids=eos_ids,
                       pad_id=pad_id, padding=padding, stream_callback=stream_callback)


def trim(tokens, info: GenerateInfo) -> list[list[int]]:
  """Per-row generated ids (up to and including EOS)."""
  tokens, lengths = np.asarray(tokens), np.asarray(info.lengths)
  return [tokens[i, :lengths[i]].tolist() for i in range(tokens.shape[0])]


class GeneratedText(NamedTuple):
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
    chat: wrap each prompt as a user message with the tokenizer's chat template (and optional
      ``system`` message); otherwise the raw text is encoded.
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
