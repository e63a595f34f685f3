"""Jacobi decoding: greedy decoding as a fixed-point iteration over blocks of ``n`` tokens.

Santilli et al. (2023), "Accelerating Transformer Inference for Translation via Parallel
Decoding"; ``docs/algorithms.md#jacobi-decoding``.

Greedy decoding of a block of ``n`` tokens after the committed text ``x`` solves the ``n`` equations
``y_i = argmax p(. | x, y_<i)``, ``i = 1 .. n``. Jacobi iteration solves all of them at once: from a
guess ``y^0`` (``n`` copies of ``pad_id``), one causal forward of ``[x_last, y^k_1 .. y^k_{n-1}]``
over the cached prefix gives ``y^{k+1}_i = argmax p(. | x, y^k_<i)`` for every ``i``. ``y^{k+1}_1``
is always right, and if ``y^k_<i`` is right so is ``y^{k+1}_i``: after ``k`` iterations the first
``k`` tokens are greedy's. The iteration stops at the fixed point of the forward's inputs,
``y^{k+1}_<n = y^k_<n`` (then ``y^{k+1}`` is the greedy block, and so are the K/V just written for
``x_last, y_1 .. y_{n-1}``): at most ``n`` iterations. The block is committed, its last token is
the next ``x_last`` and a new guess starts.

Layout (as :mod:`partext_jax.ar.speculative.decode`, left padding): prompts padded to a bucket
``P``; the cache has ``S = P + N + n`` slots (``N = max_new_tokens``). The *root* ``x_last`` sits at
``root_slot`` (its K/V is rewritten by every forward); block token ``i`` is written at
``root_slot + i`` with position ``root_position + i`` and sees the prefix and block tokens
``<= i`` (:func:`~partext_jax.ar.speculative.trees.tree_mask` of a chain: a structured
:class:`~partext_jax.models.attention.CacheBlockMask`). A row's block is shorter near the end
(``min(n, N - generated)`` tokens are checked), and is also complete once an EOS id lies in its
proven-correct prefix: the tokens up to the EOS are committed and the row is finished.

Rows converge at different iterations (ragged): every loop step is one forward of all rows; a
converged row commits and restarts with a fresh guess while the others keep iterating; finished
rows idle. One ``lax.while_loop`` per generation, one compilation per (prompt bucket, batch,
``n``, ``N``, EOS ids).

Usage::

    tokens, info = generate(model, params, [[1, 2, 3]], block_size=8, max_new_tokens=64)
    info.block_iterations[b, :info.num_blocks[b]]   # iterations of each block (<= 8)
    info.tokens_per_call                            # committed tokens per target forward
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.ar import processors as lp
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import trees as trees_lib
from partext_jax.base import checked_int


class JacobiInfo(NamedTuple):
  """Diagnostics of :func:`generate` (device arrays)."""

  lengths: jax.Array  # int32[B]: generated tokens per row (EOS included)
  prompt_lengths: jax.Array  # int32[B]
  finished: jax.Array  # bool[B]: emitted an EOS
  num_steps: jax.Array  # int32[]: loop iterations = target forwards after the prefill
  target_calls: jax.Array  # int32[B]: target forwards while the row was active
  block_iterations: jax.Array  # int32[B, ceil(N / n)]: iterations of each committed block, 0 pad
  num_blocks: jax.Array  # int32[B]: committed blocks
  cache: Any = None  # the final cache with ``generate(..., return_cache=True)``

  @property
  def tokens_per_call(self):
    """Mean tokens committed per target forward (``lengths / target_calls``), per row."""
    return np.asarray(self.lengths) / np.maximum(np.asarray(self.target_calls), 1)


class JacobiState(NamedTuple):
  """The ``while_loop`` carry."""

  step: jax.Array  # int32[]
  out: jax.Array  # int32[B, N]: committed tokens, pad_id after the last
  n_out: jax.Array  # int32[B]
  cache: Any  # valid on [first, root_slot)
  root: jax.Array  # int32[B]: last committed token (block input 0)
  root_slot: jax.Array  # int32[B]
  guess: jax.Array  # int32[B, n]: the current iterate y^k (y^k_n is never an input)
  iters: jax.Array  # int32[B]: iterations spent on the current block
  done: jax.Array  # bool[B]
  finished: jax.Array  # bool[B]
  calls: jax.Array  # int32[B]
  block_iters: jax.Array  # int32[B, M]
  num_blocks: jax.Array  # int32[B]


def generate_impl(params, tokens, prompt_lengths, *, model, block_size: int,
                  max_new_tokens: int, eos_ids: tuple, pad_id: int):
  """The traced body of :func:`generate` (module docstring); jit it with
  ``static_argnames=STATIC_ARGNAMES``. Returns ``(tokens int32[B, N], JacobiInfo without cache,
  cache)``."""
  b, p_len = tokens.shape
  n, total = block_size, max_new_tokens
  s_len = p_len + total + n
  num_blocks_max = -(-total // n)
  first = (p_len - prompt_lengths).astype(jnp.int32)
  root_slot = jnp.full((b,), p_len - 1, jnp.int32)
  cache = ar.prefill(model, params, tokens, first, s_len,
                     logits_at=jnp.zeros((b, 1), jnp.int32)).cache
  fresh = jnp.full((b, n), pad_id, jnp.int32)
  zeros = jnp.zeros((b,), jnp.int32)
  no = jnp.zeros((b,), bool)
  state = JacobiState(jnp.int32(0), jnp.full((b, total), pad_id, jnp.int32), zeros, cache,
                      tokens[:, -1], root_slot, fresh, zeros, no, no, zeros,
                      jnp.zeros((b, num_blocks_max), jnp.int32), zeros)
  causal = jnp.broadcast_to(jnp.tril(jnp.ones((n, n), bool)), (b, n, n))
  j = jnp.arange(n)[None]
  rows = jnp.arange(b)

  def cond(st: JacobiState):
    return ~jnp.all(st.done)

  def body(st: JacobiState):
    inputs = jnp.concatenate([st.root[:, None], st.guess[:, :-1]], axis=1)
    mask = trees_lib.tree_mask(causal, root_slot=st.root_slot, first_slot=first)
    out = model(params, inputs, (st.root_slot - first)[:, None] + j, mask, st.cache,
                st.root_slot)
    new = jnp.argmax(out.logits, axis=-1).astype(jnp.int32)  # y^{k+1}, [B, n]
    # new[:, :a + 1] is proven greedy, a = matching prefix of the inputs (new_<n vs guess_<n).
    same = (new == st.guess) & (j < n - 1)
    proven = jnp.minimum(jnp.sum(jnp.cumprod(same, axis=1), axis=1) + 1, n)
    need = jnp.minimum(n, total - st.n_out)  # block length this row still has room for
    eos = ar.is_eos(new, eos_ids) & (j < jnp.minimum(proven, need)[:, None])
    first_eos = jnp.where(eos.any(1), jnp.argmax(eos, axis=1), n)
    active = ~st.done
    converged = active & ((proven >= need) | (first_eos < n))
    count = jnp.where(converged, jnp.minimum(need, first_eos + 1), 0)
    keep = j < count[:, None]
    out_tokens = st.out.at[rows[:, None], jnp.where(keep, st.n_out[:, None] + j, total)].set(
        new, mode="drop")
    last = jnp.take_along_axis(new, jnp.maximum(count - 1, 0)[:, None], axis=1)[:, 0]
    n_out = st.n_out + count
    hit_eos = converged & (first_eos < count)
    iters = st.iters + active.astype(jnp.int32)
    block_iters = st.block_iters.at[rows, jnp.where(converged, st.num_blocks,
                                                    num_blocks_max)].set(iters, mode="drop")
    return JacobiState(
        st.step + 1, out_tokens, n_out, out.cache, jnp.where(converged, last, st.root),
        st.root_slot + count, jnp.where(converged[:, None], fresh, jnp.where(
            active[:, None], new, st.guess)), jnp.where(converged, 0, iters),
        st.done | hit_eos | (n_out >= total), st.finished | hit_eos,
        st.calls + active.astype(jnp.int32), block_iters,
        st.num_blocks + converged.astype(jnp.int32))

  st = jax.lax.while_loop(cond, body, state)
  return st.out, JacobiInfo(st.n_out, prompt_lengths, st.finished, st.step, st.calls,
                            st.block_iters, st.num_blocks), st.cache


STATIC_ARGNAMES = ("model", "block_size", "max_new_tokens", "eos_ids", "pad_id")
_generate_jit = jax.jit(generate_impl, static_argnames=STATIC_ARGNAMES)


def check_block_headroom(block_size: int, *, context_length, prefix_len: int,
                         max_new_tokens: int) -> None:
  """Raises ``ValueError`` if a block of ``block_size`` tokens scored after the longest prompt and
  ``max_new_tokens`` generated tokens would not fit in ``context_length`` (``None``: no limit)."""
  if context_length is None:
    return
  need = prefix_len + max_new_tokens + block_size
  if need > context_length:
    raise ValueError(f"block_size={block_size} does not fit: prompt ({prefix_len}) + "
                     f"max_new_tokens ({max_new_tokens}) + block_size needs {need} positions but "
                     f"context_length={context_length}; lower block_size to <= "
                     f"{context_length - prefix_len - max_new_tokens} or generate fewer tokens")


def generate(model, params, prompts, *, block_size: int, max_new_tokens: int, eos_id="model",
             pad_id: int | None = None, min_bucket: int = 16, return_cache: bool = False):
  """Greedy generation of up to ``max_new_tokens`` tokens per prompt by Jacobi iteration.

  Deterministic (greedy): no PRNG key. The output equals
  :func:`partext_jax.ar.sampling.generate` with the greedy processor token for token.

  Args:
    model, params: the :class:`~partext_jax.base.CausalLM` and its parameters.
    prompts: ragged list of token-id lists (or ``int[B, T]``).
    block_size: ``n >= 1`` tokens solved per block (``n = 1`` is plain greedy decoding).
    max_new_tokens: ``N >= 1``.
    eos_id, pad_id, min_bucket: as :func:`partext_jax.ar.sampling.generate`; ``pad_id`` is also
      the initial guess of every block.
    return_cache: also return the final cache, as ``info.cache`` (tests: it equals the cache
      plain AR decoding builds on the committed slots).
  Returns:
    ``(tokens int32[B, N], JacobiInfo)``: ``info.block_iterations[b, :info.num_blocks[b]]`` are
    the iterations each committed block took (each ``<= n``), ``info.tokens_per_call`` the
    committed tokens per target forward.
  Raises:
    TypeError, ValueError: bad arguments (those of
      :func:`partext_jax.ar.sampling.prepare_batch`, ``block_size < 1``, or a block that does not
      fit in the model's ``context_length`` after the prompt and ``max_new_tokens``), before
      compiling.
  """
  block_size = checked_int("block_size", block_size, minimum=1)
  batch = ar.prepare_batch(model, prompts, max_new_tokens=max_new_tokens,
                           processor=lp.greedy(), eos_id=eos_id, pad_id=pad_id, padding="left",
                           min_bucket=min_bucket)
  check_block_headroom(block_size, context_length=getattr(model, "context_length", None),
                       prefix_len=int(batch.lengths.max()), max_new_tokens=int(max_new_tokens))
  out, info, cache = _generate_jit(params, jnp.asarray(batch.tokens), jnp.asarray(batch.lengths),
                                   model=model, block_size=block_size,
                                   max_new_tokens=int(max_new_tokens), eos_ids=batch.eos_ids,
                                   pad_id=batch.pad_id)
  return out, info._replace(cache=cache if return_cache else None)
