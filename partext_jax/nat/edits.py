"""Canvases, the oracle edit script and the three edit operations of the Levenshtein Transformer.

Gu et al. 2019 (Levenshtein Transformer); ``docs/algorithms.md#levenshtein-transformer``.

**Canvas.** A sequence being edited is a framed, padded row ``[BOS, y_1 .. y_n, EOS, PAD ..]``
(``int32[L]``, length ``n + 2``) over the ids of :class:`CanvasIds`: the ``V`` real tokens, then
the placeholder ``PLH``, ``BOS``, ``EOS`` and ``PAD``. ``BOS`` / ``EOS`` are never deleted; slot
``s`` is the gap between canvas positions ``s`` and ``s + 1`` (``s < length - 1``).

**Oracle.** The LevT edits are deletions and insertions only (a substitution is a deletion plus
an insertion), so the oracle minimises the insertion-deletion distance

    D[i][j] = min(D[i-1][j] + 1, D[i][j-1] + 1, D[i-1][j-1] if x_i = y_j),

``D[n][m] = n + m - 2 LCS(x, y)`` (fairseq's libnat computes the same table, with a substitution
cost of 2). A row of ``D`` is ``D[i][j] = j + cummin_k (c_k - k)`` with ``c_k`` the best of
"delete ``x_i``" and "match": one vectorised ``cummin`` per row, ``lax.scan`` over rows. The
back-trace (a ``lax.while_loop`` from ``(n, m)``) prefers a match, then a deletion, then an
insertion; it yields

* ``delete bool[Lx]``: the tokens of ``x`` to delete;
* ``insert int32[Lx + 1]``: the placeholders in gap ``g`` of the compacted ``x`` (before its
  ``g``-th kept token; gap ``n_kept`` is after the last one);
* ``placeholder bool[Ly]``: the positions of ``y`` the insertions produce.

Deleting, inserting placeholders and filling them with ``y``'s tokens turns ``x`` into ``y`` in
exactly ``D[n][m]`` edits (``tests/test_levenshtein.py`` checks every pair over ``V = 3``,
length ``<= 4``). On framed canvases ``BOS``/``EOS`` are always matched (they occur once in each,
at the ends), so gap ``g`` is LevT slot ``g - 1``: the labels are ``insert[1:]``.

Everything is static-shape JAX: single-row functions, ``jax.vmap`` for batches.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.base import checked_int
from partext_jax.nat.protocols import EditLogits


@dataclasses.dataclass(frozen=True)
class CanvasIds:
  """The ids of a canvas over ``vocab_size`` real tokens ``0 .. V - 1``."""

  vocab_size: int

  def __post_init__(self):
    checked_int("vocab_size", self.vocab_size, minimum=1)

  @property
  def plh(self) -> int:
    return self.vocab_size

  @property
  def bos(self) -> int:
    return self.vocab_size + 1

  @property
  def eos(self) -> int:
    return self.vocab_size + 2

  @property
  def pad(self) -> int:
    return self.vocab_size + 3

  @property
  def num_embeddings(self) -> int:
    return self.vocab_size + 4


class Edits(NamedTuple):
  """The oracle edit script turning ``x`` into ``y`` (module docstring)."""

  delete: jax.Array  # bool[Lx]
  insert: jax.Array  # int32[Lx + 1]: placeholders per gap of the compacted x
  placeholder: jax.Array  # bool[Ly]
  distance: jax.Array  # int32[]: deletions + insertions = D[n][m]


# --------------------------------------------------------------------------------------------
# Framing.


def frame(tokens, lengths, *, ids: CanvasIds, size: int):
  """``(canvas int32[B, size], canvas_lengths int32[B])`` from right-padded ``tokens [B, T]``.

  Raises ``ValueError`` (on concrete inputs) if a row needs more than ``size`` positions.
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  lengths = jnp.asarray(lengths, jnp.int32)
  if not isinstance(lengths, jax.core.Tracer) and int(np.max(lengths, initial=0)) + 2 > size:
    raise ValueError(f"a row of {int(np.max(lengths))} tokens needs {int(np.max(lengths)) + 2} "
                     f"canvas positions (BOS and EOS included); the canvas has size={size}")
  t = tokens.shape[1]
  pos = jnp.arange(size)[None, :]
  body = jnp.pad(tokens, ((0, 0), (1, max(size - t - 1, 0))))[:, :size]
  canvas = jnp.where(pos == 0, ids.bos, jnp.where(pos <= lengths[:, None], body, ids.pad))
  canvas = jnp.where(pos == lengths[:, None] + 1, ids.eos, canvas)
  return canvas.astype(jnp.int32), lengths + 2


def unframe(canvas, lengths, *, pad_id: int):
  """``(tokens int32[B, L - 2], lengths - 2)``: the body of each canvas, padded with ``pad_id``."""
  canvas = jnp.asarray(canvas, jnp.int32)
  n = jnp.asarray(lengths, jnp.int32) - 2
  body = canvas[:, 1:-1]
  return jnp.where(jnp.arange(body.shape[1])[None, :] < n[:, None], body, pad_id), n


# --------------------------------------------------------------------------------------------
# The oracle.


def distance_table(x, x_len, y, y_len) -> jax.Array:
  """``int32[Lx + 1, Ly + 1]`` insertion-deletion distances of the prefixes of one pair.

  Entries beyond ``(x_len, y_len)`` are computed from the padding and are meaningless.
  """
  del x_len, y_len  # Static shapes: every row is computed; the caller reads inside the lengths.
  ly = y.shape[0]
  cols = jnp.arange(ly + 1, dtype=jnp.int32)
  big = jnp.int32(1 << 20)

  def row(prev, xi_i):
    xi, i = xi_i
    match = jnp.concatenate([jnp.array([big]), jnp.where(xi == y, prev[:-1], big)])
    c = jnp.minimum(prev + 1, match).at[0].set(i)
    new = cols + jax.lax.cummin(c - cols)
    return new, new

  _, rows = jax.lax.scan(row, cols, (x, jnp.arange(1, x.shape[0] + 1, dtype=jnp.int32)))
  return jnp.concatenate([cols[None], rows], axis=0)


def oracle(x, x_len, y, y_len) -> Edits:
  """The edit script from ``x[:x_len]`` to ``y[:y_len]`` (one pair; module docstring).

  Args:
    x: ``int32[Lx]``; y: ``int32[Ly]``; x_len, y_len: ``int32[]``.
  Returns:
    :class:`Edits`.
  """
  x = jnp.asarray(x, jnp.int32)
  y = jnp.asarray(y, jnp.int32)
  d = distance_table(x, x_len, y, y_len)
  lx, ly = x.shape[0], y.shape[0]

  def cond(carry):
    i, j = carry[:2]
    return (i > 0) | (j > 0)

  def body(carry):
    i, j, delete, gaps, placeholder = carry
    here = d[i, j]
    match = (i > 0) & (j > 0) & (x[i - 1] == y[j - 1]) & (d[i - 1, j - 1] == here)
    remove = ~match & (i > 0) & (d[i - 1, j] + 1 == here)
    insert = ~match & ~remove
    delete = delete.at[i - 1].set(delete[i - 1] | remove)
    gaps = gaps.at[i].add(insert.astype(jnp.int32))  # after the first i tokens of x
    placeholder = placeholder.at[j - 1].set(placeholder[j - 1] | insert)
    return (i - (match | remove).astype(jnp.int32), j - (match | insert).astype(jnp.int32),
            delete, gaps, placeholder)

  init = (jnp.asarray(x_len, jnp.int32), jnp.asarray(y_len, jnp.int32), jnp.zeros(lx, bool),
          jnp.zeros(lx + 1, jnp.int32), jnp.zeros(ly, bool))
  _, _, delete, after, placeholder = jax.lax.while_loop(cond, body, init)
  # Insertions after the first i tokens of x land in gap (kept tokens among x[:i]).
  kept_before = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(~delete & (
      jnp.arange(lx) < x_len)).astype(jnp.int32)])
  insert = jnp.zeros(lx + 1, jnp.int32).at[kept_before].add(after)
  distance = d[x_len, y_len]
  return Edits(delete, insert, placeholder, distance)


oracle_batch = jax.vmap(oracle)
""":func:`oracle` over a batch: ``x [B, Lx]``, ``x_len [B]``, ``y [B, Ly]``, ``y_len [B]``."""


# --------------------------------------------------------------------------------------------
# Edit operations on canvases (batched; static shapes).


def _rows(canvas):
  return jnp.arange(canvas.shape[0])[:, None]


def apply_deletions(canvas, lengths, delete, *, ids: CanvasIds):
  """Removes the positions where ``delete`` (``bool[B, L]``) is set, except ``BOS``/``EOS``, and
  closes the gaps: ``(canvas, lengths)``."""
  l = canvas.shape[1]
  valid = jnp.arange(l)[None, :] < lengths[:, None]
  protected = (canvas == ids.bos) | (canvas == ids.eos)
  keep = valid & ~(delete & ~protected)
  dest = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, l)
  out = jnp.full_like(canvas, ids.pad).at[_rows(canvas), dest].set(canvas, mode="drop")
  return out, jnp.sum(keep, axis=1).astype(jnp.int32)


def apply_insertions(canvas, lengths, counts, *, ids: CanvasIds):
  """Inserts ``counts[b, s]`` placeholders in slot ``s`` (between positions ``s`` and ``s + 1``,
  ``s < lengths[b] - 1``): ``(canvas, lengths)``.

  ``counts`` is ``int32[B, L - 1]``. Counts that would overflow the canvas are cut from the left
  (each slot gets at most the room left after the slots before it).
  """
  l = canvas.shape[1]
  slots = jnp.arange(l - 1)[None, :]
  counts = jnp.where(slots < lengths[:, None] - 1, jnp.maximum(counts, 0), 0)
  room = (l - lengths)[:, None]
  before = jnp.cumsum(counts, axis=1) - counts
  counts = jnp.clip(room - before, 0, counts)
  shift = jnp.concatenate([jnp.zeros_like(counts[:, :1]), jnp.cumsum(counts, axis=1)], axis=1)
  pos = jnp.arange(l)[None, :]
  dest = jnp.where(pos < lengths[:, None], pos + shift, l)
  new_lengths = lengths + jnp.sum(counts, axis=1)
  base = jnp.where(pos < new_lengths[:, None], ids.plh, ids.pad)
  out = base.astype(canvas.dtype).at[_rows(canvas), dest].set(canvas, mode="drop")
  return out, new_lengths.astype(jnp.int32)


def fill_placeholders(canvas, tokens, *, ids: CanvasIds):
  """``tokens`` (``int32[B, L]``) at the placeholder positions, the canvas elsewhere."""
  return jnp.where(canvas == ids.plh, tokens, canvas).astype(canvas.dtype)


def random_deletion(rng_key, canvas, lengths, *, ids: CanvasIds):
  """Fairseq's ``random_delete`` noise: keep ``floor(n u)`` of the ``n`` real tokens of each row
  (``u ~ U[0, 1)``), a uniformly random subset in order; ``BOS``/``EOS`` stay. Row ``b`` draws
  from ``fold_in(rng_key, b)``. Returns ``(canvas, lengths)``."""
  b, l = canvas.shape
  keys = jax.vmap(lambda r: jax.random.fold_in(rng_key, r))(jnp.arange(b))
  u, scores = jax.vmap(lambda k: (jax.random.uniform(jax.random.fold_in(k, 0)),
                                  jax.random.uniform(jax.random.fold_in(k, 1), (l,))))(keys)
  real = (jnp.arange(l)[None, :] < lengths[:, None]) & (canvas != ids.bos) & (canvas != ids.eos)
  n = jnp.sum(real, axis=1)
  k = jnp.floor(n * u).astype(jnp.int32)
  rank = jnp.argsort(jnp.argsort(jnp.where(real, scores, 2.0), axis=1), axis=1)
  return apply_deletions(canvas, lengths, real & (rank >= k[:, None]), ids=ids)


def oracle_logits(target, target_lengths, canvas, *, ids: CanvasIds, max_insertions: int,
                  scale: float = 30.0):
  """The expert policy as logits: the :class:`~partext_jax.nat.protocols.EditLogits` whose
  argmax applies the oracle edit script from ``canvas`` to the framed ``target`` (a test double
  and the imitation target, ``[B, L]`` canvases).

  ``delete`` marks the oracle's deletions, ``insert`` its placeholder counts per slot (clipped to
  ``max_insertions``), ``token`` the target's token at each position (right after the oracle's
  insertions, the placeholders sit exactly where the target has the inserted tokens). One-hot
  logits times ``scale``.
  """
  lengths = jnp.sum(canvas != ids.pad, axis=1).astype(jnp.int32)
  script = oracle_batch(canvas, lengths, target, target_lengths)
  one_hot = lambda labels, n: scale * jax.nn.one_hot(labels, n)  # noqa: E731
  insert = jnp.minimum(script.insert[:, 1:canvas.shape[1]], max_insertions)
  token = jnp.clip(target, 0, ids.vocab_size - 1)
  return EditLogits(one_hot(script.delete.astype(jnp.int32), 2),
                    one_hot(insert, max_insertions + 1), one_hot(token, ids.vocab_size))
