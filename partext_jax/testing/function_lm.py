"""Adapter: any stateless causal ``logits_fn`` as a :class:`partext_jax.base.CausalLM`.

``logits_fn(tokens int32[B, T]) -> logits float32[B, T, V]`` is a full causal forward (logits at
``t`` depend on ``tokens[:, :t + 1]`` only). :class:`FunctionLM` wraps it as::

    model(params, tokens, positions, attn_mask, cache, write_slots, *, logits_at=None,
          return_hidden=False) -> LMOutput(logits, cache, hidden)

Its "cache" (:class:`TokenCache`) stores the token and position of every slot instead of K/V. A
query ``(b, t)`` with mask row ``m = attn_mask[b, t]`` sees the sequence

    seq[j] = cache.tokens[b, s]   for the slot s with m[s] and cache.positions[b, s] == j

(one slot per position ``0 .. positions[b, t]``, exactly what a causal LM attends to through a
tree mask; a :class:`~partext_jax.models.attention.CacheBlockMask` is expanded to its dense
form), and gets ``logits_fn(seq)[positions[b, t]]``. That is ``O(T S)`` work per row, fine
for toy models and for checking the tree-attention plumbing of the decode loop against a plain
causal forward (``docs/algorithms.md#correctness-properties``). ``params`` is ignored (toys
close over their tables).

Usage::

    model = FunctionLM(my_logits_fn, vocab_size=8, context_length=64)
    cache = model.init_cache(batch=2, max_len=16)
    logits, cache, _ = model(None, tokens, positions, mask, cache, write_slots)
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from partext_jax.base import LMOutput
from partext_jax.models.attention import causal_cache_mask, resolve_mask


class TokenCache(NamedTuple):
  """The token and position written at every cache slot (``int32[B, S]`` each)."""

  tokens: jax.Array
  positions: jax.Array

  @property
  def max_len(self) -> int:
    return self.tokens.shape[1]

  @property
  def nbytes(self) -> int:
    return self.tokens.size * 4 + self.positions.size * 4

  def write(self, write_slots, tokens, positions) -> "TokenCache":
    """Stores ``tokens, positions [B, T]`` at slots ``write_slots[b] + t`` (``>= S`` dropped)."""
    rows = jnp.arange(tokens.shape[0])[:, None]
    slots = write_slots[:, None] + jnp.arange(tokens.shape[1])[None]
    return TokenCache(self.tokens.at[rows, slots].set(tokens, mode="drop"),
                      self.positions.at[rows, slots].set(positions, mode="drop"))

  def compact(self, src, dst) -> "TokenCache":
    """Moves slot ``src[b, j]`` to ``dst[b, j]`` (all reads before all writes, as
    :meth:`partext_jax.models.attention.KVCache.compact`)."""
    rows = jnp.arange(self.tokens.shape[0])[:, None]
    return TokenCache(self.tokens.at[rows, dst].set(self.tokens[rows, src], mode="drop"),
                      self.positions.at[rows, dst].set(self.positions[rows, src], mode="drop"))


@dataclasses.dataclass(frozen=True)
class FunctionLM:
  """A stateless causal ``logits_fn`` in the model protocol (module docstring).

  ``logits_fn`` must be hashable (a module-level function or a frozen dataclass) since the model
  is a static argument of the samplers.
  """

  logits_fn: Callable
  vocab_size: int
  context_length: int = 1 << 16
  eos_id: int | None = None
  pad_id: int | None = 0

  def __post_init__(self):
    if not callable(self.logits_fn):
      raise TypeError(f"logits_fn must be callable, got {self.logits_fn!r}")
    if not isinstance(self.vocab_size, int) or self.vocab_size < 1:
      raise ValueError(f"vocab_size={self.vocab_size!r} must be a positive int")

  def init(self, rng_key=None):
    return None

  def init_cache(self, batch: int, max_len: int, dtype=None) -> TokenCache:
    del dtype
    z = jnp.zeros((batch, max_len), jnp.int32)
    return TokenCache(z, z)

  def __call__(self, params, tokens, positions, attn_mask=None, cache=None, write_slots=None, *,
               logits_at=None, return_hidden=False):
    del params
    tokens = jnp.asarray(tokens, jnp.int32)
    b, t = tokens.shape
    if cache is None:
      logits = self.logits_fn(tokens).astype(jnp.float32)
    else:
      if write_slots is None:
        raise ValueError("write_slots (int[B]) is required when a cache is given")
      s_len = cache.max_len
      write_slots = jnp.broadcast_to(jnp.asarray(write_slots, jnp.int32), (b,))
      positions = jnp.broadcast_to(jnp.asarray(positions, jnp.int32), (b, t))
      cache = cache.write(write_slots, tokens, positions)
      if attn_mask is None:
        attn_mask = causal_cache_mask(write_slots[:, None] + jnp.arange(t)[None], 0, s_len)
      attn_mask = jnp.broadcast_to(resolve_mask(attn_mask, impl="xla", max_len=s_len,
                                                write_slots=write_slots), (b, t, s_len))
      # seq[b, t, j]: the token at the attended slot with position j.
      idx = jnp.where(attn_mask, cache.positions[:, None, :], s_len)  # [B, T, S]
      seq = jax.vmap(jax.vmap(lambda ix, tok: jnp.zeros((s_len,), jnp.int32).at[ix].set(
          tok, mode="drop"), in_axes=(0, None)))(idx, cache.tokens)
      full = self.logits_fn(seq.reshape(b * t, s_len)).astype(jnp.float32)
      full = full.reshape(b, t, s_len, -1)
      at = jnp.clip(positions, 0, s_len - 1)
      logits = jnp.take_along_axis(full, at[:, :, None, None], axis=2)[:, :, 0]
    if logits_at is not None:
      logits = jnp.take_along_axis(logits, jnp.asarray(logits_at, jnp.int32)[:, :, None], axis=1)
    hidden = jnp.zeros(logits.shape[:2] + (1,), jnp.float32) if return_hidden else None
    return LMOutput(logits, cache, hidden)
