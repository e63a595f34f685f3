"""Connectionist temporal classification: likelihood, best alignment and collapse.

Graves et al. 2006 (CTC), used as the training objective of one-shot non-autoregressive
translation by Libovicky & Helcl 2018; ``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing``.

An *alignment* ``a = (a_1 .. a_T)`` is a sequence over the ``V`` real tokens plus a blank
``b`` (here always ``blank_id = V``, the logits' last column). ``collapse(a)`` merges runs of
equal symbols and then drops blanks (``a a b a c c -> a a c``). For logits ``[T, V + 1]`` and a
target ``y`` of length ``U``,

    log p(y | x) = log sum_{a : collapse(a) = y} prod_t softmax(logits_t)[a_t]

which :func:`log_likelihood` computes with ``optax.ctc_loss`` (the forward algorithm). A target
is reachable only if ``T >= U + r(y)``, ``r(y)`` the number of adjacent equal pairs of ``y``
(each needs a blank between its two tokens): :func:`check_lengths` raises otherwise.
:func:`best_alignment` is the Viterbi alignment ``argmax_{collapse(a) = y} p(a)`` (the max-product
version of the same recursion) and :func:`collapse` turns any alignment into tokens: with
``argmax`` per position it is one-shot CTC decoding (:func:`greedy_decode`).

Shapes: a batch is padded on the right; ``lengths int32[B]`` says how many positions of each row
are real. Outputs are padded with ``pad_id`` after each row's length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _paddings(lengths, size: int) -> jax.Array:
  """``float32[B, size]``: 1.0 at positions ``>= lengths`` (optax's padding convention)."""
  return (jnp.arange(size)[None, :] >= jnp.asarray(lengths)[:, None]).astype(jnp.float32)


def log_likelihood(logits, logit_lengths, labels, label_lengths, *, blank_id: int) -> jax.Array:
  """``log p(labels | logits)`` per row, summed over every alignment (``optax.ctc_loss``).

  Args:
    logits: ``float[B, T, V + 1]`` unnormalised scores (log-softmaxed here).
    logit_lengths: ``int32[B]`` valid positions of each row (``<= T``).
    labels: ``int32[B, U]`` target tokens in ``[0, V + 1)`` minus ``blank_id``, right-padded.
    label_lengths: ``int32[B]`` valid labels of each row.
    blank_id: the blank's column (``V`` in this package).
  Returns:
    ``float32[B]``. An unreachable target gets about ``-1e5`` (optax's ``log_epsilon``) rather
    than ``-inf``.
  """
  logits = jnp.asarray(logits, jnp.float32)
  return -optax.ctc_loss(logits, _paddings(logit_lengths, logits.shape[1]), labels,
                         _paddings(label_lengths, labels.shape[1]), blank_id=blank_id)


def collapse(alignment, lengths, *, blank_id: int, pad_id: int | None = None):
  """Merges repeated symbols, then drops blanks: ``(tokens int32[B, T], out_lengths int32[B])``.

  Args:
    alignment: ``int32[B, T]`` symbols (blank included); positions ``>= lengths`` are ignored.
    lengths: ``int32[B]``.
    blank_id: the blank symbol.
    pad_id: written after each row's output (default ``blank_id``).
  """
  alignment = jnp.asarray(alignment, jnp.int32)
  b, t = alignment.shape
  pad_id = blank_id if pad_id is None else pad_id
  valid = jnp.arange(t)[None, :] < jnp.asarray(lengths)[:, None]
  previous = jnp.concatenate([jnp.full((b, 1), -1, jnp.int32), alignment[:, :-1]], axis=1)
  keep = valid & (alignment != blank_id) & (alignment != previous)
  dest = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, t)  # t: out of bounds, dropped
  rows = jnp.arange(b)[:, None]
  tokens = jnp.full((b, t), pad_id, jnp.int32).at[rows, dest].set(alignment, mode="drop")
  return tokens, jnp.sum(keep, axis=1).astype(jnp.int32)


def greedy_decode(logits, lengths, *, blank_id: int, pad_id: int | None = None):
  """One-shot CTC decoding: ``collapse(argmax_v logits[:, t, v])`` (see :func:`collapse`)."""
  return collapse(jnp.argmax(logits, axis=-1).astype(jnp.int32), lengths, blank_id=blank_id,
                  pad_id=pad_id)


def _extended(labels, label_lengths, blank_id: int):
  """``z int32[B, 2U + 1]``: ``b y_1 b y_2 .. y_U b``; ``can_skip bool[B, 2U + 1]``: state ``s``
  may be entered from ``s - 2`` (``z_s`` a label different from ``z_{s-2}``)."""
  b, u = labels.shape
  z = jnp.full((b, 2 * u + 1), blank_id, jnp.int32).at[:, 1::2].set(labels)
  prev2 = jnp.concatenate([jnp.full((b, 2), blank_id, jnp.int32), z[:, :-2]], axis=1)
  can_skip = (z != blank_id) & (z != prev2)
  return z, can_skip


def best_alignment(logits, logit_lengths, labels, label_lengths, *, blank_id: int):
  """The Viterbi alignment of ``labels``: ``(alignment int32[B, T], log_prob float32[B])``.

  ``alignment`` maximises ``sum_t log softmax(logits_t)[a_t]`` over the alignments that collapse
  to the row's labels; positions ``>= logit_lengths`` hold ``blank_id``. Ties go to staying in
  the same extended state, then to the previous one. An unreachable target (``T < U + r(y)``)
  gives ``log_prob = -inf`` and a meaningless alignment. ``max`` recursion in a ``lax.scan``
  over ``T`` and a reverse scan for the back-pointers.
  """
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  b, t, _ = logp.shape
  z, can_skip = _extended(jnp.asarray(labels, jnp.int32), label_lengths, blank_id)
  s_len = z.shape[1]
  emit = jnp.take_along_axis(logp, jnp.broadcast_to(z[:, None, :], (b, t, s_len)), axis=2)
  neg = jnp.float32(-jnp.inf)
  logit_lengths = jnp.asarray(logit_lengths, jnp.int32)
  start = jnp.where(jnp.arange(s_len)[None, :] < 2, emit[:, 0], neg)

  def forward(delta, inputs):
    emit_t, step = inputs
    stay = delta
    one = jnp.concatenate([jnp.full((b, 1), neg), delta[:, :-1]], axis=1)
    two = jnp.where(can_skip, jnp.concatenate([jnp.full((b, 2), neg), delta[:, :-2]], axis=1),
                    neg)
    options = jnp.stack([stay, one, two], axis=-1)
    pointer = jnp.argmax(options, axis=-1).astype(jnp.int32)
    new = jnp.max(options, axis=-1) + emit_t
    active = (step < logit_lengths)[:, None]  # frozen after the row's last position
    return jnp.where(active, new, delta), jnp.where(active, pointer, 0)

  steps = jnp.arange(1, t)
  delta, pointers = jax.lax.scan(forward, start, (jnp.swapaxes(emit[:, 1:], 0, 1), steps))
  label_lengths = jnp.asarray(label_lengths, jnp.int32)
  last, before = 2 * label_lengths, 2 * label_lengths - 1
  score_last = jnp.take_along_axis(delta, last[:, None], axis=1)[:, 0]
  score_before = jnp.where(
      before >= 0, jnp.take_along_axis(delta, jnp.maximum(before, 0)[:, None], axis=1)[:, 0], neg)
  state = jnp.where(score_before > score_last, before, last)
  log_prob = jnp.maximum(score_last, score_before)

  def backward(s, pointer_t):
    return s - jnp.take_along_axis(pointer_t, s[:, None], axis=1)[:, 0], s

  first, states = jax.lax.scan(backward, state, pointers, reverse=True)
  states = jnp.concatenate([first[None], states], axis=0).T  # [B, T]
  alignment = jnp.take_along_axis(z, states, axis=1)
  alignment = jnp.where(jnp.arange(t)[None, :] < logit_lengths[:, None], alignment, blank_id)
  return alignment, log_prob


def required_length(target, length: int) -> int:
  """``U + r(y)``: the fewest alignment positions that can produce ``target[:length]``."""
  y = np.asarray(target)[:length]
  return int(length + np.sum(y[1:] == y[:-1]))


def check_lengths(source_lengths, targets, target_lengths, *, upsampling: int) -> None:
  """Raises ``ValueError`` if a target cannot be produced from its upsampled source.

  Row ``i`` has ``T_i = upsampling * source_lengths[i]`` decoder positions and needs
  ``T_i >= U_i + r(y_i)`` (:func:`required_length`). Host-side (numpy), run on data before
  anything is compiled; the message names the first offending row.
  """
  src = np.asarray(source_lengths)
  tgt_len = np.asarray(target_lengths)
  targets = np.asarray(targets)
  slots = upsampling * src
  for i in range(len(src)):
    need = required_length(targets[i], int(tgt_len[i]))
    if need > slots[i]:
      longer = ("longer than" if tgt_len[i] > slots[i] else
                "with adjacent repeats needing more positions than")
      raise ValueError(
          f"target {i} ({int(tgt_len[i])} tokens, needing {need} CTC positions) is {longer} "
          f"the upsampled input: upsampling={upsampling} x source length {int(src[i])} = "
          f"{int(slots[i])} positions; raise upsampling to >= {-(-need // max(int(src[i]), 1))}"
          f" or drop the example")
