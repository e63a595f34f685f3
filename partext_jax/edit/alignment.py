"""Aligning two sequences with blanks (Needleman-Wunsch), the coupling of Edit Flows' training.

Havasi et al. 2025 (Edit Flows), ``docs/algorithms.md#edit-flows``. Two right-padded sequences
``x0[:n0]`` and ``x1[:n1]`` are written as two rows ``z0, z1`` of equal width ``M = N0 + N1``
over the tokens plus :data:`BLANK`, such that removing the blanks of ``z0`` gives ``x0`` and of
``z1`` gives ``x1``. Each column is a match (``z0 = z1``), a substitution (two different
tokens), a deletion (``z1 = BLANK``) or an insertion (``z0 = BLANK``); columns past the
alignment are ``(BLANK, BLANK)``, which never edit anything. The alignment minimises the number
of edit columns (Levenshtein distance with unit insertion, deletion and substitution costs):

    D[i][j] = min(D[i-1][j] + 1, D[i][j-1] + 1, D[i-1][j-1] + [x0_i != x1_j]),

one row at a time as ``D[i][j] = j + cummin_k (c_k - k)`` (``c_k`` the best of the two moves from
row ``i - 1``; the trick :func:`partext_jax.nat.edits.distance_table` uses for the
insertion-deletion distance), ``lax.scan`` over rows. The back-trace (a ``lax.while_loop`` from
``(n0, n1)``) prefers the diagonal (match or substitution), then a deletion, then an insertion.
Static shapes; single pair, ``jax.vmap`` for batches (:data:`align_batch`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BLANK = -1
"""The blank of an alignment column (never a token id)."""


def levenshtein_table(x0, x1) -> jax.Array:
  """``int32[N0 + 1, N1 + 1]``: Levenshtein distances of all prefix pairs of ``x0 [N0]`` and
  ``x1 [N1]`` (entries past the true lengths are computed from the padding and meaningless)."""
  n1 = x1.shape[0]
  cols = jnp.arange(n1 + 1, dtype=jnp.int32)

  def row(prev, xi_i):
    xi, i = xi_i
    diag = prev[:-1] + (xi != x1).astype(jnp.int32)
    c = jnp.minimum(prev + 1, jnp.concatenate([jnp.array([i]), diag]))
    new = cols + jax.lax.cummin(c - cols)
    return new, new

  _, rows = jax.lax.scan(row, cols, (x0, jnp.arange(1, x0.shape[0] + 1, dtype=jnp.int32)))
  return jnp.concatenate([cols[None], rows], axis=0)


def align_with_blanks(x0, n0, x1, n1):
  """The minimal alignment of ``x0[:n0]`` and ``x1[:n1]`` with blanks (module docstring).

  Args:
    x0: ``int32[N0]``; n0: ``int32[]``; x1: ``int32[N1]``; n1: ``int32[]``.

  Returns:
    ``(z0 int32[N0 + N1], z1 int32[N0 + N1], distance int32[])``: the columns from the left,
    ``(BLANK, BLANK)`` after the last one; ``distance`` the number of edit columns.
  """
  x0 = jnp.asarray(x0, jnp.int32)
  x1 = jnp.asarray(x1, jnp.int32)
  d = levenshtein_table(x0, x1)
  width = x0.shape[0] + x1.shape[0]

  def cond(carry):
    return (carry[0] > 0) | (carry[1] > 0)

  def body(carry):
    i, j, c, z0, z1 = carry
    here = d[i, j]
    a, b = x0[jnp.maximum(i - 1, 0)], x1[jnp.maximum(j - 1, 0)]
    diag = (i > 0) & (j > 0) & (d[i - 1, j - 1] + (a != b).astype(jnp.int32) == here)
    delete = ~diag & (i > 0) & (d[jnp.maximum(i - 1, 0), j] + 1 == here)
    insert = ~diag & ~delete
    z0 = z0.at[c].set(jnp.where(insert, BLANK, a))
    z1 = z1.at[c].set(jnp.where(delete, BLANK, b))
    return (i - (diag | delete).astype(jnp.int32), j - (diag | insert).astype(jnp.int32),
            c + 1, z0, z1)

  blanks = jnp.full((width,), BLANK, jnp.int32)
  init = (jnp.asarray(n0, jnp.int32), jnp.asarray(n1, jnp.int32), jnp.int32(0), blanks, blanks)
  _, _, num_cols, z0_rev, z1_rev = jax.lax.while_loop(cond, body, init)
  src = num_cols - 1 - jnp.arange(width)          # the back-trace wrote the columns reversed
  take = lambda z: jnp.where(src >= 0, z[jnp.clip(src, 0, width - 1)], BLANK)  # noqa: E731
  return take(z0_rev), take(z1_rev), d[n0, n1]


align_batch = jax.vmap(align_with_blanks)
""":func:`align_with_blanks` over a batch: ``x0 [B, N0]``, ``n0 [B]``, ``x1 [B, N1]``,
``n1 [B]``."""


def remove_blanks(z, *, capacity: int, pad_id: int):
  """``(tokens int32[B, capacity], lengths int32[B])``: the non-blank entries of ``z [B, M]`` in
  order, padded with ``pad_id`` (entries past ``capacity`` are dropped; lengths are clipped)."""
  keep = z != BLANK
  dest = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, capacity)
  rows = jnp.arange(z.shape[0])[:, None]
  out = jnp.full((z.shape[0], capacity), pad_id, jnp.int32).at[rows, dest].set(z, mode="drop")
  return out, jnp.minimum(jnp.sum(keep, axis=1), capacity).astype(jnp.int32)
