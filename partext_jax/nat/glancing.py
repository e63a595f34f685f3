"""Glancing sampling (GLAT): how many reference tokens the second pass sees, and where.

Qian et al. 2021 (GLAT); ``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing``. After a first
decoder pass predicts ``y_hat``, the number of reference tokens revealed to the second pass is

    k = ceil(f * d),        d = Hamming(y_hat, y_ref)  over the row's valid positions

and the ``k`` positions are drawn uniformly without replacement among the valid positions. On a
CTC model ``y_ref`` is the Viterbi alignment of the target under the first pass
(:func:`partext_jax.nat.ctc.best_alignment`): position ``t`` compares the argmax symbol with the
aligned symbol (blank included), as in GLAT's CTC variant.

``f`` (the glancing ratio) is annealed linearly during training (:func:`ratio_at`): GLAT uses
0.5 -> 0.3.

``ceil`` in float32: ``f`` is rarely exact in binary (``0.3f * 10 = 3.0000001``), so ``k`` is
computed as ``ceil(f d (1 - 2^-20))``: the slack absorbs the rounding of the product, and
:func:`num_revealed` equals ``math.ceil(f * d)`` of the decimal ``f`` whenever ``f`` has at most
two decimals and ``d <= 4096`` (an integer ``f d`` is pulled below itself by at most ``2^-8``, a
fractional part is ``>= 0.01``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from partext_jax.base import checked_float, checked_int

SLACK = 1.0 - 2.0**-20  # Absorbs float32 rounding of f * d before the ceiling.


def hamming(prediction, reference, lengths) -> jax.Array:
  """``int32[B]``: positions ``t < lengths`` where ``prediction`` and ``reference`` differ."""
  valid = jnp.arange(prediction.shape[1])[None, :] < jnp.asarray(lengths)[:, None]
  return jnp.sum(valid & (prediction != reference), axis=1).astype(jnp.int32)


def num_revealed(distance, ratio) -> jax.Array:
  """``int32[B]``: ``ceil(ratio * distance)`` (float32 with the rounding slack of the module
  docstring). ``ratio`` may be traced (annealed); ``distance`` ``int32[B]``."""
  k = jnp.ceil(jnp.asarray(ratio, jnp.float32) * distance.astype(jnp.float32) * SLACK)
  return jnp.maximum(k, 0).astype(jnp.int32)


def glancing_mask(rng_key, distance, lengths, *, ratio, size: int) -> jax.Array:
  """``bool[B, size]``: exactly ``ceil(ratio * distance[b])`` positions of row ``b``, uniformly
  without replacement among ``t < lengths[b]``.

  Args:
    rng_key: one PRNG key; row ``b`` draws from ``fold_in(rng_key, b)``.
    distance: ``int32[B]`` Hamming distances (``<= lengths``).
    lengths: ``int32[B]`` valid positions per row.
    ratio: ``f`` in ``[0, 1]`` (float or traced float32).
    size: the padded length.
  """
  b = distance.shape[0]
  k = jnp.minimum(num_revealed(distance, ratio), lengths)
  keys = jax.vmap(lambda r: jax.random.fold_in(rng_key, r))(jnp.arange(b))
  scores = jax.vmap(lambda key: jax.random.uniform(key, (size,)))(keys)
  valid = jnp.arange(size)[None, :] < jnp.asarray(lengths)[:, None]
  scores = jnp.where(valid, scores, 2.0)  # padding sorts last
  rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
  return valid & (rank < k[:, None])


def ratio_at(step, *, start: float, end: float, num_steps: int) -> jax.Array:
  """The annealed glancing ratio: ``start`` at step 0, linearly to ``end`` at ``num_steps``
  (float32; ``step`` may be traced)."""
  start = checked_float("glancing start ratio", start, lo=0.0, hi=1.0)
  end = checked_float("glancing end ratio", end, lo=0.0, hi=1.0)
  num_steps = checked_int("num_steps", num_steps, minimum=1)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / num_steps, 0.0, 1.0)
  return (start + (end - start) * frac).astype(jnp.float32)
