r"""Fast, exact reductions over the vocabulary axis: argmax, Gumbel-max draws, the nucleus set.

Every sampler of the library takes these over ``V`` at every position and step, so they are
written for what XLA does well (vectorised elementwise passes and plain reductions) and each
returns *exactly* what its obvious formulation returns (``docs/algorithms.md#vocabulary-ops``):

* :func:`argmax` -- ``max``, then the lowest index equal to it: the same indices as
  ``jnp.argmax`` (first index on ties, NaN counted as the maximum), but vectorised. XLA:CPU
  lowers ``jnp.argmax`` to a ``(value, index)`` reduce that does not vectorise (about 6x slower
  on ``[128, 1024]``) and that pulls any elementwise producer, such as Gumbel noise, into its
  scalar loop.
* :func:`categorical` -- Gumbel-max with :func:`argmax`: the same draws, bit for bit, as
  ``jax.random.categorical`` (same key, same noise).
* :func:`gumbel_noise` -- standard Gumbel noise with the precision of JAX's ``"high"`` mode
  (``g`` up to ~32) from half the random-bit work: one threefry block gives both 32-bit words
  it produces, where ``jax.random.gumbel`` (partitionable threefry) spends a block per word.
* :func:`grouped_categorical` -- a draw from ``softmax(logits)`` in two Gumbel-max stages (a
  group of ``G`` consecutive tokens by its mass, then a token inside it): the same law as
  :func:`categorical` from ``~2 sqrt(V)`` Gumbels per row instead of ``V``.
* :func:`nucleus_mask` -- the top-p set without a sort. A float sort over the vocabulary is the
  slowest thing a sampler can do on XLA:CPU (``[128, 1024]``: ~17 ms, a model call of the default
  MDM is ~5 ms); the set is found by a 32-step search for the threshold logit instead (32
  vectorised masked sums), with ties at the threshold resolved in index order exactly as a
  stable descending sort would. Two rules: ``"inclusive"`` (keep a token when the mass up to and
  *including* it is ``<= top_p``, always keeping the top token: MDLM / ReMDM) and
  ``"exclusive"`` (keep it when the mass strictly *before* it is ``< top_p``: Holtzman et al.
  2020, as in Hugging Face).

Example::

    tokens = argmax(logits)                               # int32[B, L]
    tokens = grouped_categorical(key, logits)             # int32[B, L] ~ softmax(logits)
    keep = nucleus_mask(logits, 0.9, rule="inclusive")    # bool[B, L, V]
    tokens = categorical(key, jnp.where(keep, logits, -jnp.inf))
"""

from __future__ import annotations

import math

import jax
import jax.extend.random  # noqa: F401  (jax.extend.random.threefry_2x32)
import jax.numpy as jnp
import numpy as np

NUCLEUS_RULES = ("inclusive", "exclusive")


def argmax(x, axis: int = -1):
  """Index of the maximum along ``axis``, as ``jnp.argmax`` but vectorised on CPU.

  ``max`` along ``axis``, then the lowest index holding it: on ties the first index (as
  ``jnp.argmax``); an all ``-inf`` row gives 0; NaN counts as larger than everything, so a row
  holding NaN gives its first NaN (``jnp.argmax``'s policy too). Same indices as
  ``jnp.argmax`` on every input (``tests/test_ops.py``).

  Args:
    x: any real or boolean array with a non-empty ``axis``.
    axis: the reduced axis.

  Returns:
    ``int32`` array of ``x``'s shape without ``axis``.

  Raises:
    ValueError: ``axis`` has size 0.
  """
  x = jnp.asarray(x)
  axis = axis % x.ndim
  size = x.shape[axis]
  if size == 0:
    raise ValueError(f"argmax over an empty axis (x.shape={x.shape}, axis={axis})")
  top = jnp.max(x, axis=axis, keepdims=True)
  hit = x == top
  if jnp.issubdtype(x.dtype, jnp.inexact):
    hit = hit | jnp.isnan(x)        # NaN == NaN is False: a NaN maximum is found this way
  index = jax.lax.broadcasted_iota(jnp.int32, x.shape, axis)
  return jnp.min(jnp.where(hit, index, size), axis=axis)


def categorical(rng_key, logits, axis: int = -1, *, mode: str | None = None):
  """A draw from ``softmax(logits)`` along ``axis`` by Gumbel-max: ``argmax(logits + g)``.

  The same noise (``jax.random.gumbel(rng_key, logits.shape, logits.dtype, mode=mode)``) and the
  same indices as ``jax.random.categorical(rng_key, logits, axis, mode=mode)``, so the same
  draws bit for bit, with the vectorised :func:`argmax`. ``mode="high"`` (two 23-bit uniforms per
  float32 Gumbel) keeps tokens of probability down to ~1e-14 at their rate
  (``docs/algorithms.md#exact-categorical-draws``).

  Args:
    rng_key: a PRNG key.
    logits: ``float[..., V, ...]`` unnormalised log-probabilities (``-inf``: never drawn).
    axis: the category axis.
    mode: ``None`` / ``"low"`` / ``"high"`` (``jax.random.gumbel``'s).

  Returns:
    ``int32`` indices, ``logits``' shape without ``axis``.
  """
  logits = jnp.asarray(logits)
  noise = jax.random.gumbel(rng_key, logits.shape, logits.dtype, mode=mode)
  return argmax(logits + noise, axis=axis)


_ONE_BITS = np.uint32(0x3F800000)      # float32 1.0


def _unit_uniform(bits):
  """``float32`` on the grid ``k 2**-23`` in ``[0, 1)`` from the top 23 bits of ``uint32`` words
  (the construction of ``jax.random.uniform``)."""
  mantissa = jax.lax.shift_right_logical(bits, np.uint32(9)) | _ONE_BITS
  return jax.lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1.0)


def gumbel_from_uniforms(high, low):
  """``float32`` standard Gumbel values from two independent ``U[0, 1)`` arrays on the ``2**-23``
  grid, by JAX's ``"high"``-mode transform: ``x = high`` when ``high >= 1/2``, else
  ``high + 2**-23 low + tiny`` (so ``x`` near 0 is resolved to ``2**-46``), and
  ``g = -log(-log1p(-x))``, i.e. ``g = -log(-log u)`` with ``u = 1 - x``. ``g`` reaches ~32 (the
  ``"low"`` mode stops at ``23 ln 2 ~ 15.9``; ``docs/algorithms.md#exact-categorical-draws``)."""
  tiny = np.float32(np.finfo(np.float32).tiny)
  x = jnp.where(high >= 0.5, high, high + np.float32(2.0**-23) * low + tiny)
  return -jnp.log(-jnp.log1p(-x))


def gumbel_noise(rng_key, shape, dtype=jnp.float32):
  """Standard Gumbel noise of JAX's ``"high"`` precision, from half the threefry work.

  ``jax.random.gumbel(key, shape, mode="high")`` needs two 32-bit words per value and, with
  partitionable threefry (JAX's default), computes one threefry block per word although a block
  yields two. Here one block per value gives both words (``jax.extend.random.threefry_2x32``
  over the counters ``0 .. 2n - 1``; the two halves are the ``high`` and ``low`` uniforms of
  :func:`gumbel_from_uniforms`): the same law and precision as the ``"high"`` mode, a different
  stream, ~2-5x faster on XLA:CPU (``docs/algorithms.md#vocabulary-ops``). Keys of another
  PRNG implementation (``rbg``), and ``dtype`` other than float32, fall back to
  ``jax.random.gumbel(..., mode="high")``.

  Args:
    rng_key: a PRNG key (typed or raw ``uint32[2]``).
    shape: the output shape (at most ``2**31`` values).
    dtype: float dtype of the output.

  Returns:
    ``dtype[shape]`` standard Gumbel noise.

  Raises:
    ValueError: more than ``2**31`` values.
  """
  shape = tuple(shape)
  n = int(np.prod(shape, dtype=np.int64))
  if n > 2**31:
    raise ValueError(f"gumbel_noise: shape {shape} has {n} values, more than 2**31")
  typed = jax.dtypes.issubdtype(jnp.asarray(rng_key).dtype, jax.dtypes.prng_key)
  impl = str(jax.random.key_impl(rng_key)) if typed else "threefry2x32"
  if jnp.dtype(dtype) != jnp.float32 or impl != "threefry2x32":
    return jax.random.gumbel(rng_key, shape, dtype, mode="high")
  key_words = jax.random.key_data(rng_key) if typed else jnp.asarray(rng_key, jnp.uint32)
  bits = jax.extend.random.threefry_2x32(key_words, jnp.arange(2 * n, dtype=jnp.uint32))
  high = _unit_uniform(bits[:n]).reshape(shape)
  low = _unit_uniform(bits[n:]).reshape(shape)
  return gumbel_from_uniforms(high, low)


def default_group_size(vocab_size: int) -> int:
  """The power of two nearest ``sqrt(vocab_size)`` (32 for ``V = 1024``, 256 for ``V = 49152``):
  it minimises the Gumbels of :func:`grouped_categorical` (``V / G + G``)."""
  return 1 << max(0, round(0.5 * math.log2(max(vocab_size, 1))))


def grouped_categorical(rng_key, logits, *, group_size: int | None = None):
  r"""A draw from ``softmax(logits)`` over the last axis by two Gumbel-max stages.

  The ``V`` tokens are cut into ``ceil(V / G)`` groups of ``G`` consecutive indices (the last
  one padded with ``-inf``). With ``M_j = logsumexp(logits[group j])``:

      j ~ Categorical(softmax(M))            # Gumbel-max over the groups
      i ~ Categorical(softmax(logits[group j]))   # Gumbel-max inside group j
      token = j G + i

  ``P(token) = (e^{M_j} / sum_k e^{M_k}) (e^{z_token} / e^{M_j}) = softmax(z)_token``: the law
  of :func:`categorical`, from ``V / G + G`` Gumbels per row instead of ``V`` (plus one
  ``exp`` per logit for the group masses); a different stream, so not the same draws. Each
  stage is a Gumbel-max over probabilities at least the drawn token's, with
  :func:`gumbel_noise`'s ``"high"`` precision, so no token of probability above ~1e-14 loses
  rate; the float32 group masses add a relative error of at most ~``G 2**-24`` to a group's
  probability (``docs/algorithms.md#vocabulary-ops``). An all ``-inf`` row gives 0, like
  :func:`categorical`; ``-inf`` tokens are never drawn otherwise.

  Args:
    rng_key: a PRNG key (split into the group and the in-group key).
    logits: ``float[..., V]`` unnormalised log-probabilities (NaN not supported).
    group_size: ``G`` >= 1 (default :func:`default_group_size` of ``V``).

  Returns:
    ``int32[...]``: ``logits``' shape without the last axis.

  Raises:
    ValueError: ``group_size`` < 1 or an empty last axis.
  """
  logits = jnp.asarray(logits)
  v = logits.shape[-1]
  if v == 0:
    raise ValueError(f"grouped_categorical over an empty axis (logits.shape={logits.shape})")
  g = default_group_size(v) if group_size is None else int(group_size)
  if g < 1:
    raise ValueError(f"group_size must be >= 1, got {group_size}")
  g = min(g, v)
  num_groups = -(-v // g)
  lead = logits.shape[:-1]
  padded = jnp.pad(logits, [(0, 0)] * len(lead) + [(0, num_groups * g - v)],
                   constant_values=-jnp.inf)
  grouped = padded.reshape(lead + (num_groups, g))
  masses = jax.nn.logsumexp(grouped, axis=-1)                        # [..., num_groups]
  key_group, key_token = jax.random.split(rng_key)
  group = argmax(masses + gumbel_noise(key_group, masses.shape, masses.dtype))
  inside = jnp.take_along_axis(grouped, group[..., None, None], axis=-2)[..., 0, :]
  token = argmax(inside + gumbel_noise(key_token, inside.shape, inside.dtype))
  return (group * g + token).astype(jnp.int32)


def _order_keys(logits):
  """``uint32`` keys whose order is the float order of ``logits`` (float32; ``-0`` and ``+0``
  share a key, as they compare equal)."""
  z = jnp.where(logits == 0, jnp.float32(0.0), logits.astype(jnp.float32))
  bits = jax.lax.bitcast_convert_type(z, jnp.uint32)
  negative = bits >> 31 == 1
  return jnp.where(negative, ~bits, bits | np.uint32(1 << 31))


def nucleus_mask(logits, top_p, *, rule: str):
  """The nucleus (top-p) set of ``softmax(logits)`` along the last axis, without sorting.

  With the tokens in *stable* descending order of ``logits`` (ties by lower index) and ``S_j``
  the mass of the first ``j + 1`` of them:

  * ``rule="inclusive"``: keep token ``j`` iff ``S_j <= top_p``, and always the top one (MDLM /
    ReMDM's rule: it drops the token that crosses ``top_p``);
  * ``rule="exclusive"``: keep token ``j`` iff ``S_j - p_j < top_p`` (Holtzman et al. 2020;
    Hugging Face's ``TopPLogitsWarper``: it keeps the crossing token).

  Either set is a prefix of that order, so it is ``{z > z*}`` plus the first ``c`` tokens (by
  index) of the tie group ``{z = z*}``. The threshold ``z*`` is the largest logit with
  ``mass(z >= z*) > top_p`` (``>=`` for ``"exclusive"``), found by building its order key bit by
  bit (32 vectorised masked sums); the tie group is then ranked by a cumulative count (skipped
  unless some row has a tie at its threshold). The masses are float32 sums in another order
  than a sorted cumulative sum, so the two can differ only for a row whose cumulative mass at
  the cut lies within float32 rounding of ``top_p`` (where the sorted formulation depends on its
  own summation order as much); ``tests/test_ops.py`` checks equality with the sorted reference on
  randomised inputs with ties, ``-inf`` and ``top_p`` at 0 and 1.

  Args:
    logits: ``float[..., V]`` (``-inf`` allowed; rows without a finite logit keep everything,
      harmlessly, as every logit stays ``-inf``). NaN logits are not supported.
    top_p: the mass, a Python float or a ``float32`` scalar (traced allowed) in ``[0, 1]``;
      ``top_p >= 1`` keeps every token (the filter is off; a sorted cumulative sum can exceed 1
      by rounding and drop tail tokens there).
    rule: ``"inclusive"`` or ``"exclusive"`` (:data:`NUCLEUS_RULES`).

  Returns:
    ``bool[..., V]``, True where the token is kept.

  Raises:
    ValueError: ``rule`` not in :data:`NUCLEUS_RULES`.
  """
  if rule not in NUCLEUS_RULES:
    raise ValueError(f"rule={rule!r} is not one of {NUCLEUS_RULES}")
  logits = jnp.asarray(logits, jnp.float32)
  top_p = jnp.asarray(top_p, jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  keys = _order_keys(logits)

  def beyond(threshold):                         # mass(key >= threshold) passes top_p
    mass = jnp.sum(jnp.where(keys >= threshold, probs, 0.0), axis=-1, keepdims=True)
    return mass > top_p if rule == "inclusive" else mass >= top_p

  def add_bit(bit, threshold):
    candidate = threshold | (np.uint32(1) << (31 - bit).astype(jnp.uint32))
    return jnp.where(beyond(candidate), candidate, threshold)

  threshold = jax.lax.fori_loop(0, 32, add_bit, jnp.zeros(logits.shape[:-1] + (1,), jnp.uint32))
  # Every key is >= 0; if even all the mass does not pass top_p, every token is kept.
  found = beyond(jnp.zeros_like(threshold))
  above = keys > threshold
  tie = keys == threshold
  mass_above = jnp.sum(jnp.where(above, probs, 0.0), axis=-1, keepdims=True)
  tie_prob = jnp.max(jnp.where(tie, probs, 0.0), axis=-1, keepdims=True)

  def keep_tied(rank):                           # rank: 1-based index order inside the tie group
    if rule == "inclusive":
      return mass_above + rank * tie_prob <= top_p
    return mass_above + (rank - 1) * tie_prob < top_p

  many_tied = jnp.sum(tie, axis=-1, keepdims=True) > 1
  tie_keep = jax.lax.cond(
      jnp.any(many_tied & found),
      lambda: tie & keep_tied(jnp.cumsum(tie, axis=-1, dtype=jnp.int32).astype(jnp.float32)),
      lambda: tie & keep_tied(jnp.float32(1.0)))
  keep = jnp.where(found & (top_p < 1), above | tie_keep, True)
  if rule == "inclusive":                        # the top token survives any top_p
    top = argmax(logits)[..., None]
    keep = keep | (jax.lax.broadcasted_iota(jnp.int32, keep.shape, keep.ndim - 1) == top)
  return keep
