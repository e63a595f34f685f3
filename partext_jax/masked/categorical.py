"""Categorical draws for masked diffusion that do not under-sample rare tokens.

The math and the choices are in ``docs/algorithms.md#exact-categorical-draws``. A
masked-diffusion step (``docs/algorithms.md#tau-leaping``) draws, at every masked position, from the
``V + 1``-way categorical

    P(token v) = p_unmask * p_theta(v),   v in [0, V)
    P(MASK)    = 1 - p_unmask

where ``p_unmask = (alpha_s - alpha_t) / (1 - alpha_t)`` is small (``1/T`` for the linear
schedule with ``T`` steps) and ``p_theta`` is a long-tailed softmax over the real tokens.

Why float32 Gumbel-max over ``[V tokens + MASK]`` is biased
------------------------------------------------------------
Gumbel-max draws ``argmax_v (log P(v) + g_v)`` with ``g = -log(-log(u))``, ``u ~ U(0, 1)``.
In float32, JAX's default ("low" mode) uniform takes values on the grid ``k * 2**-23``, so
``-log(u) >= 2**-23`` and ``g <= 15.94``; the upper tail of ``g`` is also coarsely quantised
just below that cap.  A category wins against the MASK only through that upper tail: with
``P(MASK) ~ 1`` a category of probability ``r`` needs ``g_v - g_MASK > log(1/r)``, which is
truncated once ``r`` is below ~1e-6.  Exact computation over the float32 grid (JAX 0.10,
two-way draw, relative frequency of a category of probability ``r`` w.r.t. the truth):

    r:        1e-4    1e-5    1e-6    3e-7    1e-7    3e-8    < 1.4e-9
    ratio:    0.999   0.994   0.94    0.81    0.52    0.08    0 (never drawn)

For one step at ``T = 1000`` (so ``p_unmask = 1e-3``) with a Zipf ``p_theta`` over
``V = 2000`` tokens, the per-token probabilities of the tail are ~1e-7, and the same computation
gives 0.90x the expected number of unmasks and a tail mass (tokens of rank >= 1128, true mass
0.070) of 0.034 among the unmasked tokens (a 24-bit uniform, as in PyTorch, gives about 0.935x
and 0.046). The effect compounds over steps: the sampler both unmasks too slowly and loses
diversity (lower unigram entropy, a falsely "better" generative perplexity).

Two cures are offered, chosen by name with ``precision`` (:data:`PRECISIONS`), the argument
every sampler with a float64 mode takes:

* ``precision="float32"`` -- :func:`two_stage_draw` (the default): first a Bernoulli
  ``unmask ~ B(p_unmask)``,
  then a categorical over the ``V`` real tokens only. The two stages factorise the same
  ``V + 1``-way distribution exactly. The Bernoulli is resolved to ``2**-46`` (two 23-bit
  uniforms; :func:`bernoulli_fine`): a single float32 uniform would round ``p_unmask`` up to
  the ``2**-23`` grid, e.g. 1% off for the cosine schedule's first step at ``N = 1024``
  (``p = 1.2e-6``) and 60% off at ``N = 4096`` (``p = 7.4e-8``). The categorical uses JAX's
  "high" Gumbel mode (two 23-bit uniforms, ``g`` up to ~32): only tokens whose probability
  *among the real tokens* is below ~1e-14 are affected.
* ``precision="float64"`` -- :func:`float64_draw`: the one-stage ``V + 1``-way Gumbel-max in
  float64 (what MDLM / ReMDM do, with ``g`` up to ~36). Needs ``jax_enable_x64``; without it JAX
  would silently compute in float32, so :func:`require_x64` raises instead.

Example::

    unmask, tokens = two_stage_draw(key, logits, p_unmask)          # bool[B, L], int32[B, L]
    x = jnp.where(is_masked & unmask, tokens, x)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax import ops
from partext_jax.base import checked_choice

PRECISIONS = ("float32", "float64")


def x64_enabled() -> bool:
  """Whether float64 arrays are available (respects ``jax.enable_x64`` contexts)."""
  return jax.dtypes.canonicalize_dtype(np.float64) == np.float64


def require_x64(what: str = "precision='float64'") -> None:
  """Raises ``RuntimeError`` when ``jax_enable_x64`` is off (JAX would silently use float32)."""
  if not x64_enabled():
    raise RuntimeError(
        f"{what} needs 64-bit floats, but jax_enable_x64 is off, so JAX would silently compute "
        "in float32 (which under-samples rare tokens). Enable it before creating arrays, e.g. "
        "`jax.config.update('jax_enable_x64', True)` at program start or the environment variable "
        "JAX_ENABLE_X64=1, or use precision='float32' (the exact two-stage draw).")


def require_precision(precision: str, what: str) -> None:
  """Checks ``precision`` against :data:`PRECISIONS` and, for ``"float64"``, that
  ``jax_enable_x64`` is on (``ValueError`` / ``RuntimeError``; ``what`` names the caller)."""
  checked_choice("precision", precision, PRECISIONS)
  if precision == "float64":
    require_x64(f"{what}(precision='float64')")


def bernoulli_fine(rng_key, p, shape):
  """``bool[shape]``, ``P(True) = p`` up to ``2**-46`` absolute (``p`` in ``[0, 1]``, float32).

  With ``j`` and ``u`` independent, ``j`` uniform on ``{0, .., 2**23 - 1}`` and ``u ~ U[0, 1)``,
  and ``p 2**23 = k + f`` (``k`` integer, ``0 <= f < 1``; exact in float32), the event
  ``j < k or (j == k and u < f)`` has probability ``(k + P(u < f)) / 2**23 = p`` up to the
  ``2**-23`` grid of ``u`` scaled by ``2**-23``.
  """
  p = jnp.broadcast_to(jnp.asarray(p, jnp.float32), shape)
  scaled = p * np.float32(2.0**23)           # exact: multiplication by a power of two
  k = jnp.floor(scaled)
  f = scaled - k                             # exact (Sterbenz)
  key_hi, key_lo = jax.random.split(rng_key)
  j = jnp.floor(jax.random.uniform(key_hi, shape, jnp.float32) * np.float32(2.0**23))
  u = jax.random.uniform(key_lo, shape, jnp.float32)
  return (j < k) | ((j == k) & (u < f))


def draw_tokens(rng_key, logits, positions):
  """``int32[...]``: a draw from ``softmax(logits)`` at each position, by Gumbel-max with "high"
  noise (two 23-bit uniforms; :func:`partext_jax.ops.categorical`).

  ``logits float[..., V]``, ``positions int32[...]`` (the position index of each row of
  ``logits``). Position ``i`` draws from its own key ``fold_in(rng_key, i)``, so its token
  depends only on (key, position, logits there): the same whether every position is drawn or
  only the few that need one (:func:`draw_tokens_at`).
  """
  flat_positions = jnp.ravel(positions)
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng_key, flat_positions)
  flat_logits = logits.reshape((flat_positions.shape[0], logits.shape[-1]))
  tokens = jax.vmap(lambda k, z: ops.categorical(k, z, mode="high"))(keys, flat_logits)
  return tokens.reshape(jnp.shape(positions))


def two_stage_draw(rng_key, logits, unmask_prob, *, temperature: float = 1.0):
  """Bernoulli "unmask?" then a categorical over the ``V`` real tokens, at every position.

  Args:
    rng_key: a PRNG key (a row's key in the samplers).
    logits: ``float[..., V]`` denoiser logits over the real tokens (never the MASK).
    unmask_prob: probability of unmasking, broadcastable to ``logits.shape[:-1]``.
    temperature: ``p_theta = softmax(logits / temperature)``; must be > 0.

  Returns:
    ``(unmask bool[...], tokens int32[...])``; ``tokens`` ~ ``p_theta`` independently of
    ``unmask`` and is meaningful only where ``unmask`` is True. With ``rng_key`` split into
    ``(event key, token key)``, ``unmask`` comes from :func:`bernoulli_fine` on the event key and
    the token at flat position ``i`` (row-major over ``logits.shape[:-1]``) from
    ``fold_in(token key, i)``: the tokens of :func:`unmask_draw`, which draws only where needed.
  """
  batch_shape = logits.shape[:-1]
  key_unmask, key_token = jax.random.split(rng_key)
  unmask = bernoulli_fine(key_unmask, unmask_prob, batch_shape)
  positions = jnp.arange(math.prod(batch_shape), dtype=jnp.int32).reshape(batch_shape)
  scaled = logits.astype(jnp.float32) / temperature
  return unmask, draw_tokens(key_token, scaled, positions)


def bucket_sizes(length: int) -> tuple[int, ...]:
  """The static position counts :func:`at_positions` compiles: 0, 4, 8, 16, ... and
  ``length`` (e.g. ``(0, 4, 8, 16, 32, 64, 128)`` for 128)."""
  sizes, k = [0], 4
  while k < length:
    sizes.append(k)
    k *= 2
  return tuple(sizes) + (length,)


def at_positions(fn, where, *arrays):
  """``fn`` evaluated only at the positions ``where`` holds, scattered back (zeros elsewhere).

  Static shapes: ``fn`` is compiled for each count of :func:`bucket_sizes` and a ``lax.switch``
  runs the smallest one that holds the largest count of any row (a batch-level choice; inside
  ``vmap`` every branch runs). Each row's first ``k`` positions of ``where`` (by index) are
  gathered; padding slots repeat position ``L - 1`` and are dropped. Which branch runs changes
  nothing but the cost when ``fn`` is position-wise (its output at a position depends on that
  position only, like :func:`draw_tokens`).

  Args:
    fn: ``fn(positions int32[B, k], *gathered) -> pytree of [B, k, ...]`` with ``gathered`` the
      ``arrays`` at those positions.
    where: ``bool[B, L]``.
    *arrays: ``[B, L, ...]`` arrays.

  Returns:
    ``fn``'s pytree with every leaf ``[B, L, ...]``: its values at the positions of ``where``,
    zeros elsewhere.
  """
  b, length = where.shape
  sizes = bucket_sizes(length)

  def gathered_spec(k):
    return (jax.ShapeDtypeStruct((b, k), jnp.int32),) + tuple(
        jax.ShapeDtypeStruct((b, k) + a.shape[2:], a.dtype) for a in arrays)

  out_spec = jax.eval_shape(fn, *gathered_spec(1))
  zeros = jax.tree.map(lambda s: jnp.zeros((b, length) + s.shape[2:], s.dtype), out_spec)

  def branch(k):
    if k == 0:
      return lambda: zeros

    def run():
      slots = jax.vmap(lambda w: jnp.nonzero(w, size=k, fill_value=length)[0])(where)
      positions = jnp.minimum(slots, length - 1).astype(jnp.int32)
      gathered = [jnp.take_along_axis(a, positions.reshape((b, k) + (1,) * (a.ndim - 2)), axis=1)
                  for a in arrays]
      out = fn(positions, *gathered)
      rows = jnp.arange(b)[:, None]
      return jax.tree.map(lambda z, o: z.at[rows, slots].set(o, mode="drop"), zeros, out)

    return run

  needed = jnp.max(jnp.sum(where, axis=1, dtype=jnp.int32))
  index = jnp.searchsorted(jnp.asarray(sizes, jnp.int32), needed)
  return jax.lax.switch(index, [branch(k) for k in sizes])


def draw_tokens_at(token_keys, logits, where, *, logits_fn=None):
  """``int32[B, L]``: :func:`draw_tokens` at the positions ``where`` holds (0 elsewhere), with
  the categorical over ``V`` computed only there (:func:`at_positions`).

  ``token_keys`` is ``key[B]`` (a row's token key), ``logits`` ``float[B, L, V]``, ``where``
  ``bool[B, L]``; ``logits_fn`` (e.g. temperature and a nucleus filter) maps the gathered
  ``[B, k, V]`` logits to the logits drawn from and must act on each position alone. The tokens
  are those of drawing at every position and keeping the ones ``where`` holds.
  """
  logits_fn = logits_fn or (lambda z: z)
  return at_positions(
      lambda positions, z: jax.vmap(draw_tokens)(token_keys, logits_fn(z), positions),
      where, logits)


def categorical_float64(rng_key, logits, *, axis: int = -1):
  """Gumbel-max categorical draw computed in float64 (requires ``jax_enable_x64``)."""
  require_x64("categorical_float64")
  logits = jnp.asarray(logits, jnp.float64)
  gumbel = jax.random.gumbel(rng_key, logits.shape, jnp.float64)
  return ops.argmax(logits + gumbel, axis=axis)


def float64_draw(rng_key, logits, unmask_prob, *, temperature: float = 1.0):
  """One-stage ``V + 1``-way draw over ``[p_unmask * p_theta, 1 - p_unmask]`` in float64.

  Same signature and outputs as :func:`two_stage_draw`. Raises ``RuntimeError`` when
  ``jax_enable_x64`` is off.
  """
  require_x64("float64_draw")
  batch_shape = logits.shape[:-1]
  p = jnp.broadcast_to(jnp.asarray(unmask_prob), batch_shape).astype(jnp.float64)
  log_p_theta = jax.nn.log_softmax(logits.astype(jnp.float64) / temperature, axis=-1)
  # log(0) = -inf is fine: p = 0 never unmasks, p = 1 always does.
  log_tokens = log_p_theta + jnp.log(p)[..., None]
  log_mask = jnp.log1p(-p)[..., None]
  index = categorical_float64(rng_key, jnp.concatenate([log_tokens, log_mask], axis=-1))
  vocab_size = logits.shape[-1]
  unmask = index < vocab_size
  return unmask, jnp.where(unmask, index, 0).astype(jnp.int32)


def unmask_draw(row_keys, logits, unmask_prob, *, where=None, precision: str = "float32",
                temperature: float = 1.0, logits_fn=None):
  """One masked-diffusion step's draws for a batch: unmask events, and tokens where needed.

  ``precision="float32"``: :func:`two_stage_draw` row by row, but the categorical over ``V`` is
  computed only at the positions where the event happened and ``where`` holds (typically the
  masked ones: ``~L / N`` per row and step), by :func:`draw_tokens_at`; the events and those
  tokens are exactly :func:`two_stage_draw`'s. ``precision="float64"``: :func:`float64_draw`
  row by row (its one-stage draw decides the event and the token together, over all positions).

  Args:
    row_keys: ``key[B]``, one per row.
    logits: ``float[B, L, V]`` over the real tokens.
    unmask_prob: ``float32[B, L]`` (or broadcastable) event probabilities.
    where: ``bool[B, L]``: positions whose token is used when the event happens (``None``:
      every position).
    precision: ``"float32"`` or ``"float64"`` (:data:`PRECISIONS`; ``ValueError`` otherwise).
    temperature: ``p_theta = softmax(logits_fn(logits) / temperature)``, ``> 0``.
    logits_fn: optional map of logits ``[..., V] -> [..., V]`` acting on each position alone
      (ReMDM's nucleus filter), applied after the temperature.

  Returns:
    ``(event bool[B, L], tokens int32[B, L])``; ``tokens`` is meaningful where ``event & where``.
  """
  checked_choice("precision", precision, PRECISIONS)
  b, length = logits.shape[:2]
  p = jnp.broadcast_to(jnp.asarray(unmask_prob, jnp.float32), (b, length))
  if precision == "float64":
    if logits_fn is not None:       # filtered in float32, then drawn in float64
      logits, temperature = logits_fn(logits.astype(jnp.float32) / temperature), 1.0
    draw = functools.partial(float64_draw, temperature=temperature)
    return jax.vmap(draw)(row_keys, logits, p)
  scale = lambda z: z.astype(jnp.float32) / temperature
  transform = scale if logits_fn is None else (lambda z: logits_fn(scale(z)))
  event_keys, token_keys = jax.vmap(jax.random.split, out_axes=1)(row_keys)
  event = jax.vmap(lambda k, q: bernoulli_fine(k, q, q.shape))(event_keys, p)
  needed = event if where is None else event & where
  return event, draw_tokens_at(token_keys, logits, needed, logits_fn=transform)
