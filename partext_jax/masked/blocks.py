r"""Semi-autoregressive (block) decoding for the adaptive samplers.

LLaDA-style (Nie et al. 2025) block decoding, ``docs/algorithms.md#semi-autoregressive-blocks``:
the generation window is the last ``gen_length`` positions of the sequence (everything before it
is the prompt); it is cut into ``num_blocks = gen_length / block_length`` consecutive blocks
(``gen_length % block_length == 0``), and at every step only the masked positions of the
*current* block are eligible for decoding:

    eligible[b, i] = (x[b, i] == MASK) and block(i) == current_block[b]
    block(i)       = (i - (L - gen_length)) // block_length    (-1 inside the prompt)

A block is finished before the next one starts. How "current" is defined depends on the rule:

* fixed step budget (``rule="topk"``, ``num_steps`` steps): the steps are split evenly,
  ``steps_per_block = num_steps / num_blocks`` (must divide), and step ``i`` works on block
  ``i // steps_per_block`` for every row. LLaDA's count schedule (computed at the block's first
  step from the block's masked count) empties the block in exactly its steps.
* variable number of tokens per step (``"threshold"``, ``"factor"``, EB): the current block of a
  row is the first block of the window that still holds a MASK; every step decodes at least one
  token of it, so the block empties and the row moves on (rows of a batch may be on different
  blocks: a row's trajectory does not depend on the other rows).

Block mode is therefore *only an eligibility mask*: every sampler built on
:func:`partext_jax.masked.adaptive.make_sampler` (every rule of
:mod:`partext_jax.masked.rules`, EB included) and the block caches of
:mod:`partext_jax.masked.block_cache` take ``block_length=`` and ``gen_length=``; :func:`semi_ar` is
the documented entry point that forwards them. Without ``block_length`` the whole window is one
block (``gen_length=None``: the whole sequence).

Masks inside the prompt region (before the window) would never be eligible: ``sample``/``init``
reject them on concrete inputs.

Example::

    from partext_jax.masked.adaptive import confidence, eb_sampler
    # LLaDA: 128 new tokens after a 32-token prompt, blocks of 32, 4 steps per block.
    x = jnp.full((B, 160), V, jnp.int32).at[:, :32].set(prompt)
    sampler = semi_ar(confidence, denoise_fn, block_length=32, gen_length=128, mask_id=V,
                      num_steps=16, rule="topk", proxy="max_prob", temperature=0.0)
    tokens, info = sampler.sample(jax.random.key(0), x)
    # EB-sampler block by block
    sampler = semi_ar(eb_sampler, denoise_fn, block_length=32, mask_id=V, gamma=0.1)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.base import checked_callable, checked_optional_int
from partext_jax.masked.driver import MaskedSampler


@dataclasses.dataclass(frozen=True)
class BlockLayout:
  """Where the generation window and its blocks lie in a sequence of ``length`` positions.

  Attributes:
    length: ``L``, the sequence length.
    gen_length: the window is positions ``[L - gen_length, L)``.
    block_length: positions per block; divides ``gen_length``.
  """
  length: int
  gen_length: int
  block_length: int

  @property
  def start(self) -> int:
    return self.length - self.gen_length

  @property
  def num_blocks(self) -> int:
    return self.gen_length // self.block_length

  def position_blocks(self) -> np.ndarray:
    """``int32[L]``: the block of every position, ``-1`` inside the prompt region."""
    pos = np.arange(self.length)
    return np.where(pos >= self.start, (pos - self.start) // self.block_length,
                    -1).astype(np.int32)

  def in_window(self) -> np.ndarray:
    return np.arange(self.length) >= self.start


def resolve_layout(length: int, *, gen_length=None, block_length=None) -> BlockLayout:
  """Validates the block options against a sequence length ``L`` (static, before compilation).

  ``gen_length=None`` means the whole sequence; ``block_length=None`` one block over the window.
  """
  checked_optional_int("gen_length", gen_length)
  checked_optional_int("block_length", block_length)
  gen = length if gen_length is None else int(gen_length)
  if gen > length:
    raise ValueError(f"gen_length={gen} exceeds the sequence length L={length} of x_init")
  block = gen if block_length is None else int(block_length)
  if gen % block:
    raise ValueError(f"gen_length={gen} must be a multiple of block_length={block} "
                     f"(LLaDA's semi-autoregressive blocks tile the generation window)")
  return BlockLayout(length=length, gen_length=gen, block_length=block)


def first_masked_block(masked, layout: BlockLayout):
  """``int32[B]``: the first block of the window holding a masked position (``num_blocks`` if
  none). ``masked`` is ``bool[B, L]``."""
  window = masked[:, layout.start:]
  b = masked.shape[0]
  has_mask = jnp.any(window.reshape(b, layout.num_blocks, layout.block_length), axis=-1)
  return jnp.where(jnp.any(has_mask, axis=-1), jnp.argmax(has_mask, axis=-1),
                   layout.num_blocks).astype(jnp.int32)


def eligible_positions(masked, layout: BlockLayout, current_block):
  """``bool[B, L]``: masked positions of each row's current block (``current_block int32[B]``)."""
  blocks = jnp.asarray(layout.position_blocks())
  return masked & (blocks[None, :] == current_block[:, None])


def stop_at_eos_block(tokens, block, layout: BlockLayout, *, mask_id: int, eos_ids,
                      steps_per_block: int | None = None):
  """Block early stop (``docs/algorithms.md#real-diffusion-lms-llada-dream``): a row whose
  current block (``block int32[B]``) holds no MASK any more and only ids in ``eos_ids`` gets every
  MASK of its later blocks filled with the block's last token, so it never calls the model again
  (its text has ended).

  Returns ``(tokens int32[B, L], nfe_saved int32[B])``: the model calls each row no longer makes
  -- per skipped block ``min(steps_per_block, its MASK count)`` for the top-k count schedule
  (exact), or 1 when ``steps_per_block`` is None (the variable-count rules: a lower bound, each
  block takes at least one call). Without ``eos_ids``: ``tokens`` unchanged, zeros.
  """
  b, l = tokens.shape
  if not eos_ids:
    return tokens, jnp.zeros((b,), jnp.int32)
  position_block = jnp.asarray(layout.position_blocks())[None]
  in_block = position_block == block[:, None]
  masked = tokens == mask_id
  eos = jnp.isin(tokens, jnp.asarray(eos_ids, jnp.int32))
  stop = jnp.any(in_block, axis=1) & ~jnp.any(in_block & (masked | ~eos), axis=1)
  fill = stop[:, None] & masked & (position_block > block[:, None])
  last = jnp.clip(layout.start + (block + 1) * layout.block_length - 1, 0, l - 1)
  tokens = jnp.where(fill, jnp.take_along_axis(tokens, last[:, None], axis=1), tokens)
  per_block = jnp.sum(fill[:, layout.start:].reshape(b, layout.num_blocks, -1), axis=-1)
  calls = (per_block > 0 if steps_per_block is None
           else jnp.minimum(per_block, steps_per_block))
  return tokens, jnp.sum(calls, axis=1, dtype=jnp.int32)


def check_prompt_region(x_init, mask_id: int, layout: BlockLayout) -> None:
  """Rejects masks before the window (concrete inputs only; they could never be decoded)."""
  if isinstance(x_init, jax.core.Tracer) or layout.start == 0:
    return
  prompt = np.asarray(x_init)[:, :layout.start]
  if np.any(prompt == mask_id):
    raise ValueError(
        f"x_init holds mask_id={mask_id} before the generation window (positions < "
        f"L - gen_length = {layout.start}); block decoding never reaches them. Increase "
        f"gen_length or fill the prompt.")


def semi_ar(builder, denoise_fn, *, block_length: int, gen_length=None, **kwargs) -> MaskedSampler:
  """Block-by-block (semi-autoregressive) version of an adaptive sampler.

  Args:
    builder: a sampler constructor that accepts ``block_length=`` and ``gen_length=``, e.g.
      :func:`partext_jax.masked.adaptive.confidence` or
      :func:`partext_jax.masked.adaptive.eb_sampler`.
    denoise_fn: the model, passed on to ``builder``.
    block_length: positions per block; must divide ``gen_length``.
    gen_length: the generation window is the last ``gen_length`` positions (``None``: all).
    **kwargs: the builder's own hyper-parameters (``mask_id``, ``num_steps``, ``rule``, ...).
      With ``rule="topk"``, ``num_steps`` must be a multiple of the number of blocks.

  Returns:
    the builder's :class:`MaskedSampler`, decoding block by block.

  Raises:
    TypeError / ValueError: ``builder`` not callable, ``block_length`` missing or ``< 1``, and
      whatever the builder raises (e.g. ``gen_length`` not a multiple of ``block_length``).
  """
  checked_callable("builder", builder)
  checked_optional_int("block_length", block_length)
  if block_length is None:
    raise TypeError("block_length must be an int >= 1 for semi_ar")
  return builder(denoise_fn, block_length=block_length, gen_length=gen_length, **kwargs)
