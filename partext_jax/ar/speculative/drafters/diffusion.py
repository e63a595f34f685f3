"""A masked-diffusion drafter: one (or a few) bidirectional denoising passes draft a block.

``docs/algorithms.md#diffusion-drafters``. After SpecDiff (Christopher et al. 2025) and DFlash
(Chen et al. 2025): a small masked denoiser (:mod:`partext_jax.models.denoiser`) reads the last
``P`` committed tokens of the target's text (root included) followed by ``gamma`` MASKs, the
*window* ``[x_{t-P+1} .. x_t, MASK x gamma]``, and proposes the ``gamma`` tokens after the root
as a chain.

* ``passes = 1``: every draft is drawn independently from its position's distribution
  ``q_i = softmax(processor(logits_i))`` (argmax under a greedy processor).
* ``passes = k``: the block is split left to right into ``k`` chunks; pass ``j`` draws chunk
  ``j`` from the logits of a window whose earlier chunks hold the tokens already drawn. A draft
  is then independent of the drafts of its own chunk and depends on earlier drafts only, so its
  law given every earlier draft is exactly the ``q_i`` it was drawn from.

``Draft.draft_probs[:, i] = q_{i+1}``, the law actually sampled from, and ``sibling_rule =
"iid"``: the chain verifier (:func:`partext_jax.ar.speculative.verify.verify`) is then lossless
(``docs/algorithms.md#speculative-decoding``); under greedy processing ``q`` is one-hot and the
verifier's exact-match rule makes the output plain greedy decoding of the target.

A drafter over a smaller vocabulary than the target's (the shipped SmolLM2 drafter keeps the
``K`` most frequent tokens) carries ``vocab_ids int32[K]`` (target id of each denoiser id) in its
parameters: context tokens outside it enter the window as MASK and ``q`` is 0 outside it.

Usage::

    from partext_jax.training import diffusion_drafter     # the shipped SmolLM2 drafter
    drafter, dparams = diffusion_drafter.load_drafter(gamma=4)
    tokens, info = decode.generate(key, model, params, prompts, drafter=drafter,
                                   drafter_params=dparams, max_new_tokens=64)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from partext_jax.ar.speculative import trees as trees_lib
from partext_jax.ar.speculative.drafters.base import BaseDrafter, Draft, DraftContext
from partext_jax.base import checked_callable, checked_hashable, checked_int


@dataclasses.dataclass(frozen=True)
class DiffusionDrafter(BaseDrafter):
  """A masked denoiser as a chain drafter of the
  :mod:`~partext_jax.ar.speculative.drafters.base` protocol (module docstring).

  Attributes:
    denoiser: hashable ``(params, window int32[B, W], t float32[B]) -> logits float32[B, W, K]``
      with ``W = context_len + gamma`` (e.g. :class:`partext_jax.models.denoiser.DenoiserApply`,
      or :class:`PrefixAligned` around a toy's exact denoiser). ``params`` is
      ``drafter_params["denoiser"]``; ``t`` is the window's masked fraction.
    vocab_size: the target's vocabulary ``V`` (``K = V`` unless ``drafter_params`` holds
      ``vocab_ids``).
    mask_id: the denoiser's MASK id.
    gamma: drafted tokens per step (``M`` of APD), ``>= 1``.
    context_len: ``P``, committed tokens the window holds (the root last), ``>= 1``.
    passes: denoising passes per draft (``1 <= passes <= gamma``), left-to-right chunks.
    pad_id: the id of window slots before the row's first token (default ``mask_id``).
    block_len: MASKs after the context (default ``gamma``; ``>= gamma``): a denoiser trained on
      blocks of ``G`` tokens keeps its window ``P + G`` and drafts the first ``gamma``.

  Raises ``ValueError`` / ``TypeError`` naming the attribute for a bad value.
  """

  denoiser: Callable
  vocab_size: int
  mask_id: int
  gamma: int = 4
  context_len: int = 32
  passes: int = 1
  pad_id: int | None = None
  block_len: int | None = None

  sibling_rule = "iid"

  def __post_init__(self):
    checked_hashable("denoiser", checked_callable("denoiser", self.denoiser))
    checked_int("vocab_size", self.vocab_size, minimum=1)
    checked_int("mask_id", self.mask_id, minimum=0)
    checked_int("gamma", self.gamma, minimum=1, hint=" (M, the drafted block length)")
    checked_int("context_len", self.context_len, minimum=1)
    checked_int("passes", self.passes, minimum=1)
    if self.block_len is not None:
      checked_int("block_len", self.block_len, minimum=self.gamma, hint=" (gamma)")
    if self.passes > self.gamma:
      raise ValueError(f"passes={self.passes} must be <= gamma={self.gamma} (one pass per chunk "
                       "of at least one token)")

  @property
  def spec(self) -> trees_lib.TreeSpec:
    return trees_lib.TreeSpec.chain(self.gamma)

  @property
  def block(self) -> int:
    """``G``, the MASKs in the window."""
    return self.gamma if self.block_len is None else self.block_len

  @property
  def window_len(self) -> int:
    return self.context_len + self.block

  def chunks(self) -> tuple[tuple[int, int], ...]:
    """The ``(start, stop)`` block positions drawn by each pass (sizes differ by at most 1)."""
    bounds = [round(j * self.gamma / self.passes) for j in range(self.passes + 1)]
    return tuple(zip(bounds[:-1], bounds[1:]))

  # ------------------------------------------------------------------ vocabulary mapping

  def _to_draft_ids(self, params, tokens):
    """Target ids -> denoiser ids (MASK outside the draft vocabulary)."""
    if not params or "vocab_ids" not in params:
      return tokens
    ids = params["vocab_ids"]
    table = jnp.full((self.vocab_size,), self.mask_id, jnp.int32)
    table = table.at[ids].set(jnp.arange(ids.shape[0], dtype=jnp.int32))
    return table[tokens]

  def _to_target_logits(self, params, logits):
    """``[..., K]`` denoiser logits -> ``[..., V]`` (``-inf`` outside the draft vocabulary)."""
    if not params or "vocab_ids" not in params:
      return logits[..., :self.vocab_size]
    full = jnp.full(logits.shape[:-1] + (self.vocab_size,), -jnp.inf, logits.dtype)
    return full.at[..., params["vocab_ids"]].set(logits[..., :params["vocab_ids"].shape[0]])

  # --------------------------------------------------------------------------- passes

  def window(self, params, ctx: DraftContext):
    """``int32[B, W]``: the last ``P`` committed tokens (root last), then ``G`` MASKs."""
    b, s_len = ctx.history.shape
    slots = ctx.root_slot[:, None] - self.context_len + 1 + jnp.arange(self.context_len)[None]
    tokens = jnp.take_along_axis(ctx.history, jnp.clip(slots, 0, s_len - 1), axis=1)
    pad = self.mask_id if self.pad_id is None else self.pad_id
    tokens = jnp.where(slots >= ctx.first_slot[:, None],
                       self._to_draft_ids(params, tokens), pad)
    masks = jnp.full((b, self.block), self.mask_id, jnp.int32)
    return jnp.concatenate([tokens.astype(jnp.int32), masks], axis=1)

  def _block_logits(self, params, window, start: int, stop: int):
    """Target-vocabulary logits ``float32[B, stop - start, V]`` of block positions
    ``[start, stop)`` from one denoiser pass over ``window``."""
    b = window.shape[0]
    t = jnp.full((b,), (self.block - start) / self.window_len, jnp.float32)
    logits = self.denoiser(params["denoiser"] if params else None, window, t)
    p = self.context_len
    return self._to_target_logits(params, logits[:, p + start:p + stop].astype(jnp.float32))

  def marginal_logits(self, params, ctx: DraftContext):
    """``float32[B, gamma, V]``: one pass's logits at every block position (APD's ``log p_D``
    up to a constant per position; ``-inf`` outside the draft vocabulary)."""
    return self._block_logits(params, self.window(params, ctx), 0, self.gamma)

  def draft(self, rng_key, params, state, ctx: DraftContext, *, processor):
    window = self.window(params, ctx)
    b, p = window.shape[0], self.context_len
    drawn, logq = [], []
    for j, (start, stop) in enumerate(self.chunks()):
      logits = self._block_logits(params, window, start, stop)  # [B, c, V]
      c, v = stop - start, logits.shape[-1]
      lq = jax.nn.log_softmax(processor(logits.reshape(b * c, v)), axis=-1).reshape(b, c, v)
      tok = jax.random.categorical(jax.random.fold_in(rng_key, j), lq, axis=-1)
      tok = tok.astype(jnp.int32)
      window = window.at[:, p + start:p + stop].set(self._to_draft_ids(params, tok))
      drawn.append(tok)
      logq.append(lq)
    drawn = jnp.concatenate(drawn, axis=1)
    probs = jnp.exp(jnp.concatenate(logq, axis=1))
    # draft_probs[:, i]: the law node i's child was drawn from (the leaf has none).
    probs = jnp.concatenate([probs, jnp.zeros_like(probs[:, :1])], axis=1)
    tokens = jnp.concatenate([ctx.root[:, None].astype(jnp.int32), drawn], axis=1)
    return state, Draft(self.spec.tree(tokens), probs)


@dataclasses.dataclass(frozen=True)
class PrefixAligned:
  """Adapter: a denoiser over absolute positions ``0 .. L-1`` as a :class:`DiffusionDrafter`
  window model (toys: the exact denoiser of a joint over a whole text).

  The window must be left-padded with ``pad_id`` (``DiffusionDrafter(pad_id=...)``, a value
  ``!= mask_id``) and ``context_len >= L`` so that it holds the row's whole text. The adapter
  strips the padding, calls ``denoise_fn(tokens int32[B, L], t) -> logits [B, L, V]`` on the text
  (MASK after it) and returns the logits at each window slot's absolute position (zeros past
  ``L - 1``: uniform). ``params`` is ignored.
  """

  denoise_fn: Callable
  length: int
  pad_id: int
  mask_id: int

  def __call__(self, params, window, t):
    del params
    b, w = window.shape
    pads = jnp.sum(window == self.pad_id, axis=1)[:, None]
    src = pads + jnp.arange(self.length)[None]
    text = jnp.take_along_axis(window, jnp.clip(src, 0, w - 1), axis=1)
    text = jnp.where(src < w, text, self.mask_id)
    logits = self.denoise_fn(text, t)  # [B, L, V]
    pos = jnp.arange(w)[None] - pads
    out = jnp.take_along_axis(logits, jnp.clip(pos, 0, self.length - 1)[..., None], axis=1)
    return jnp.where(((pos >= 0) & (pos < self.length))[..., None], out, 0.0)
