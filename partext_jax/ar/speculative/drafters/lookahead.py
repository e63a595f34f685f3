"""Lookahead decoding as a drafter: a 2-D window of Jacobi trajectories and an n-gram pool.

Fu et al. (2024), "Break the Sequential Dependency of LLM Inference Using Lookahead Decoding"
(reference: hao-ai-lab/LookaheadDecoding, ``lade/decoding.py``);
``docs/algorithms.md#lookahead-decoding``.

Every step of :func:`partext_jax.ar.speculative.decode.generate` scores **one** tree rooted at the
last committed token ``x`` (position ``t``) holding two branches:

* the *lookahead branch*: a window of ``N - 1`` rows x ``W`` columns; row ``l`` column ``j`` is a
  guess for position ``t + l + j`` (row 0 column 0 is ``x`` itself). The token at ``(l, j)``
  attends to row 0 columns ``0 .. j`` and rows ``1 .. l - 1`` of column ``j`` -- a chain, so the
  window is a tree ("comb": row 0 is the spine, each column hangs off it) and the forward gives
  every top-row token's next-token argmax, ``y_j`` for position ``t + N - 1 + j``: one Jacobi
  iteration of every column at once.
* the *verification branch*: the ``G`` n-grams of the pool stored under key ``x`` (each
  ``N - 1`` tokens continuing ``x``), merged into a trie (candidates sharing a prefix share its
  nodes), verified by the loop's rule: greedy exact match, or at temperature ``> 0`` the
  deterministic-sibling rule ``"topk"`` (accept a child ``c`` with the residual probability of
  ``c``, zero it and renormalise on rejection -- the reference's rule, its draft probability being
  1) or equally ``"match"`` (sample-and-match); the candidates are not drawn from a ``q``.

After verification (:meth:`LookaheadDrafter.commit`): column ``j`` yields the n-gram
``(row_0[j], row_1[j], .., row_{N-2}[j], y_j)`` (``row_0[0] = x``), stored under its first
token; the window moves one row down (row ``l`` <- row ``l + 1``, the top row <- ``y``) whatever
the number of tokens accepted (the reference's ``ALWAYS_FWD_ONE``). With ``pool_from_prompt`` the
pool also holds every n-gram of the prompt and of the committed text.

Choices that differ from the reference (static shapes, explicit state):

* The pool holds ``G`` n-grams per first token in a static array ``int32[B, V, G, N - 1]`` with
  a last-use time per entry: the reference's LRU policy (a re-harvested n-gram becomes the most
  recent; a new one replaces the least recently harvested once the key is full). Candidates are
  listed by slot, not by recency (the order only affects which sibling is tried first, not the
  law or, under greedy, the tokens).
* The window starts filled, row ``l`` column ``j`` with the prompt's token ``(l W + j) mod n``
  (the reference's in-order prompt copy), and advances like the steady state from the first step
  on; n-grams are harvested once the ``N - 2`` upper rows all hold predictions (after ``N - 2``
  steps), as the reference's warm-up does. The verification branch runs from the first step
  (prompt n-grams).
* EOS tokens in the window are kept (the reference replaces them for numerical reasons that do
  not arise here).

The tree has ``T = 1 + G (N - 1) + (W - 1) + (N - 2) W`` nodes (window nodes are never accepted:
they are marked invalid for verification but still scored). The KV cache is compacted to exactly
what plain AR decoding holds, by the decode loop.

Usage::

    drafter = LookaheadDrafter(vocab_size=model.config.vocab_size, window=5, ngram=4, pool_size=5)
    tokens, info = decode.generate(key, model, params, prompts, drafter=drafter,
                                   max_new_tokens=64)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.ar.speculative import trees as trees_lib
from partext_jax.ar.speculative.drafters.base import BaseDrafter, CommitInfo, Draft, DraftContext
from partext_jax.base import checked_bool, checked_int


class Pool(NamedTuple):
  """The n-gram pool: ``G`` slots per first token, least recently harvested evicted first."""

  grams: jax.Array  # int32[B, V, G, N - 1]: continuations of each key token
  time: jax.Array  # int32[B, V, G]: last harvest time of each slot, -1 = empty
  clock: jax.Array  # int32[B]: harvests so far (the next time stamp)

  @classmethod
  def empty(cls, batch: int, vocab_size: int, size: int, length: int) -> "Pool":
    return cls(jnp.zeros((batch, vocab_size, size, length), jnp.int32),
               jnp.full((batch, vocab_size, size), -1, jnp.int32), jnp.zeros((batch,), jnp.int32))

  def insert(self, key, gram, ok) -> "Pool":
    """Harvests one n-gram per row: ``gram int32[B, N-1]`` under ``key int32[B]`` where ``ok``.

    Already stored: its time is refreshed. Otherwise it takes an empty slot, else the least
    recently harvested one (the reference's LRU list, ``update_token_map``).
    """
    rows = jnp.arange(key.shape[0])
    stored, time = self.grams[rows, key], self.time[rows, key]  # [B, G, N - 1], [B, G]
    same = jnp.all(stored == gram[:, None], axis=-1) & (time >= 0)
    slot = jnp.where(same.any(1), jnp.argmax(same, axis=1), jnp.argmin(time, axis=1))
    grams = self.grams.at[rows, key, slot].set(jnp.where(ok[:, None], gram, stored[rows, slot]))
    time = self.time.at[rows, key, slot].set(jnp.where(ok, self.clock, time[rows, slot]))
    return Pool(grams, time, self.clock + ok.astype(jnp.int32))

  def candidates(self, key):
    """``(grams int32[B, G, N-1], stored bool[B, G])`` under ``key int32[B]``."""
    rows = jnp.arange(key.shape[0])
    return self.grams[rows, key], self.time[rows, key] >= 0


class LookaheadState(NamedTuple):
  """The drafter's state (batched over rows)."""

  pool: Pool
  window: jax.Array  # int32[B, N - 1, W]: the Jacobi window (row 0 column 0 unused: the root)
  steps: jax.Array  # int32[B]: lookahead steps taken (harvesting starts at N - 2)
  harvested: jax.Array  # int32[B]: the n-grams ending at committed slots <= this are pooled


@dataclasses.dataclass(frozen=True)
class LookaheadDrafter(BaseDrafter):
  """Lookahead decoding's window and n-gram pool (module docstring) as a drafter.

  Attributes:
    vocab_size: the target's vocabulary ``V`` (the pool has ``G`` slots per token).
    window: ``W >= 1`` columns of the Jacobi window (parallel trajectories).
    ngram: ``N >= 2``: n-gram size (the key and ``N - 1`` verified tokens); the window has
      ``N - 1`` rows.
    pool_size: ``G >= 1`` n-grams kept per key, all verified at every step.
    pool_from_prompt: also pool the n-grams of the prompt and of the committed text.

  Raises ``ValueError`` / ``TypeError`` naming the attribute for values out of range (at
  construction, before anything compiles).
  """

  vocab_size: int
  window: int = 5
  ngram: int = 4
  pool_size: int = 5
  pool_from_prompt: bool = True

  sibling_rule = "topk"  # deterministic candidates, merged into a trie: distinct siblings

  def __post_init__(self):
    checked_int("vocab_size", self.vocab_size, minimum=1)
    checked_int("window", self.window, minimum=1)
    checked_int("ngram", self.ngram, minimum=2, hint=" (a key token and >= 1 continuation)")
    checked_int("pool_size", self.pool_size, minimum=1)
    checked_bool("pool_from_prompt", self.pool_from_prompt)

  # ---------------------------------------------------------------------- static tree layout

  @property
  def tree_size(self) -> int:
    w, n, g = self.window, self.ngram, self.pool_size
    return 1 + g * (n - 1) + (w - 1) + (n - 2) * w

  @property
  def max_depth(self) -> int:
    """The deepest verified node, ``N - 1``: a candidate has ``N - 1`` tokens (window nodes are never
    accepted)."""
    return self.ngram - 1

  def _window_node(self, row: int, col: int) -> int:
    """Tree index of window cell ``(row, col)``; ``(0, 0)`` is the root."""
    base = 1 + self.pool_size * (self.ngram - 1)
    if row == 0:
      return 0 if col == 0 else base + col - 1
    return base + (self.window - 1) + (row - 1) * self.window + col

  def _window_layout(self):
    """``(parent, depth)`` of the window nodes in index order, and the top row's node indices."""
    w, rows = self.window, self.ngram - 1
    cells = [(0, c) for c in range(1, w)] + [(r, c) for r in range(1, rows) for c in range(w)]
    parent = [self._window_node(r - 1, c) if r else self._window_node(0, c - 1) for r, c in cells]
    depth = [r + c for r, c in cells]
    top = [self._window_node(rows - 1, c) for c in range(w)]
    return np.asarray(parent, np.int32), np.asarray(depth, np.int32), np.asarray(top, np.int32)

  # ---------------------------------------------------------------------- protocol

  def init(self, params, prompt, first_slot, *, cache_len: int):
    del params, cache_len
    b, p = prompt.shape
    w, n, g = self.window, self.ngram, self.pool_size
    length = p - first_slot
    cell = jnp.arange((n - 1) * w).reshape(n - 1, w)
    src = first_slot[:, None, None] + cell[None] % length[:, None, None]
    window = jnp.take_along_axis(prompt, src.reshape(b, -1), axis=1).reshape(b, n - 1, w)
    pool = Pool.empty(b, self.vocab_size, g, n - 1)
    if self.pool_from_prompt:  # every n-gram of the prompt: ends at slots n - 1 .. p - 1
      pool = self._insert_ngrams(pool, prompt, first_slot, jnp.full((b,), n - 2, jnp.int32),
                                 p - 1, max_count=max(p - n + 1, 0))
    return LookaheadState(pool, window, jnp.zeros((b,), jnp.int32),
                          jnp.full((b,), p - 1, jnp.int32))

  def _insert_ngrams(self, pool: Pool, history, first_slot, after, upto, *,
                     max_count: int) -> Pool:
    """Pools the n-grams of ``history int32[B, S]`` ending at slots ``after + 1 .. upto``
    (``int[B]``) that start at or after ``first_slot``; at most ``max_count`` (static) per row."""
    n = self.ngram
    upto = jnp.broadcast_to(jnp.asarray(upto, jnp.int32), after.shape)

    def body(i, pool):
      end = after + 1 + i
      idx = jnp.clip(end[:, None] + jnp.arange(1 - n, 1)[None], 0, history.shape[1] - 1)
      gram = jnp.take_along_axis(history, idx, axis=1)
      ok = (end <= upto) & (end - (n - 1) >= first_slot)
      return pool.insert(gram[:, 0], gram[:, 1:], ok)

    return jax.lax.fori_loop(0, max_count, body, pool)

  def draft(self, rng_key, params, state: LookaheadState, ctx: DraftContext, *, processor):
    del rng_key, params, processor
    b, n = ctx.root.shape[0], self.ngram
    pool = state.pool
    if self.pool_from_prompt:  # the n-grams ending at the tokens committed since the last draft
      pool = self._insert_ngrams(pool, ctx.history, ctx.first_slot, state.harvested,
                                 ctx.root_slot, max_count=n)
    state = state._replace(pool=pool, harvested=ctx.root_slot)
    cand, cand_ok = pool.candidates(ctx.root)  # [B, G, N - 1], [B, G]
    c_tok, c_par, c_dep, c_val = _candidate_trie(cand, cand_ok)
    w_par, w_dep, _ = self._window_layout()
    nw = w_par.shape[0]
    w_tok = jnp.concatenate([state.window[:, 0, 1:], state.window[:, 1:].reshape(b, -1)], axis=1)
    tokens = jnp.concatenate([ctx.root[:, None], c_tok, w_tok], axis=1)
    parent = jnp.concatenate([jnp.full((b, 1), -1, jnp.int32), c_par,
                              jnp.broadcast_to(w_par, (b, nw))], axis=1)
    depth = jnp.concatenate([jnp.zeros((b, 1), jnp.int32), c_dep,
                             jnp.broadcast_to(w_dep, (b, nw))], axis=1)
    valid = jnp.concatenate([jnp.ones((b, 1), bool), c_val, jnp.zeros((b, nw), bool)], axis=1)
    return state, Draft(trees_lib.Tree(tokens, parent, depth, valid), None)

  def commit(self, params, state: LookaheadState, info: CommitInfo):
    del params
    _, _, top = self._window_layout()
    n = self.ngram
    guesses = jnp.argmax(info.logits[:, top], axis=-1).astype(jnp.int32)  # [B, W]: y_j
    window = state.window
    keys = window[:, 0].at[:, 0].set(info.tree.tokens[:, 0])  # row 0, column 0 = the root
    # Column j's n-gram continues keys[j] with rows 1 .. N-2 of column j and y_j; the same array,
    # read as rows, is the window moved one row down.
    moved = jnp.concatenate([window[:, 1:], guesses[:, None]], axis=1)  # [B, N - 1, W]
    ok = info.active & (state.steps >= n - 2)

    pool = jax.lax.fori_loop(0, self.window,
                             lambda j, pool: pool.insert(keys[:, j], moved[:, :, j], ok),
                             state.pool)
    window = jnp.where(info.active[:, None, None], moved, window)
    return state._replace(pool=pool, window=window,
                          steps=state.steps + info.active.astype(jnp.int32))


def _candidate_trie(cand, ok):
  """The pool's candidates as a trie hanging off the root (node 0).

  Args:
    cand: ``int32[B, G, M]`` candidate continuations; ``ok``: ``bool[B, G]`` which are stored.
  Returns:
    ``(tokens, parent, depth, valid)``, each ``[B, G M]``, candidate ``c``'s token ``d`` at tree
    index ``1 + c M + d``. A node is kept (valid) iff no earlier stored candidate has the same
    prefix up to it; its parent is the kept node of that prefix one token shorter (the root at
    ``d = 0``), so ``parent[i] < i``.
  """
  b, g, m = cand.shape
  same = (cand[:, :, None, :] == cand[:, None, :, :]) & ok[:, None, :, None]  # [B, G, G', M]
  same_prefix = jnp.cumprod(same, axis=-1).astype(bool)
  first = jnp.argmax(same_prefix, axis=2).astype(jnp.int32)  # [B, G, M] lowest g' sharing it
  valid = ok[:, :, None] & (first == jnp.arange(g)[None, :, None])
  d = jnp.arange(m)[None, None, :]
  parent = jnp.where(d == 0, 0, 1 + jnp.roll(first, 1, axis=2) * m + d - 1)
  # Dropped nodes hang off the root (never verified; keeps parent[i] < i).
  parent = jnp.where(valid, parent, 0)
  depth = jnp.where(valid, d + 1, 1)
  flat = lambda x: x.reshape(b, g * m)
  return flat(cand), flat(parent).astype(jnp.int32), flat(depth).astype(jnp.int32), flat(valid)
