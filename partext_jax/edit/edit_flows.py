r"""Edit Flows: a continuous-time Markov chain over insert / delete / substitute edits.

Havasi et al. 2025, "Edit Flows: Flow Matching with Edit Operations"
(``docs/algorithms.md#edit-flows``). A sequence ``x`` (``tokens int32[N]`` right-padded with
``PAD = V`` after ``length`` real tokens ``0 .. V - 1``, ``N`` the static capacity) moves at rates

* ``insert[g, v]``: insert ``v`` into gap ``g`` (before position ``g``; gap ``length`` is after
  the last token), ``g = 0 .. length``;
* ``delete[i]``: delete position ``i < length``;
* ``substitute[i, v]``: replace position ``i`` by ``v != x_i`` (the entry ``v = x_i`` is
  ignored),

given by a model ``rate_fn(tokens int32[B, N], lengths int32[B], t float32[B]) -> EditRates``
(:data:`RateFn`) from ``t = 0`` (a draw of the source ``p0``) to ``t = 1`` (the target ``p1``).

**Training** (the conditional path). A pair ``(x0, x1) ~ p0 x p1`` is aligned with blanks
(:func:`partext_jax.edit.alignment.align_with_blanks`) into columns ``(z0, z1)``; at time ``t``
each column independently holds ``z1`` with probability ``kappa_t = t`` (else ``z0``), and
``x_t`` is ``z_t`` without blanks. An unfinished column (``z_t != z1``) fires at rate
``kappa'_t / (1 - kappa_t) = 1 / (1 - t)``, performing the edit it stands for on ``x_t``
(:func:`pending_edits`). The marginal rates ``u_t(e | x) = E[sum of the rates of the columns
standing for e | x_t = x]`` carry ``p_t`` from ``p0`` to ``p1``; the model regresses them with
the Bregman (Poisson) flow-matching loss (:func:`bregman_loss`)

    L = E_{t, (x0, x1), z_t} [ sum_e u^theta_t(e | x_t)
                               - sum_{columns m unfinished} 1 / (1 - t) log u^theta_t(e_m | x_t) ],

minimised exactly by the marginal rates.

**Sampling** (tau-leaping, :func:`edit_flows`). ``num_steps`` steps of ``h = 1 / num_steps`` at
``t_k = k h``: every gap independently receives at most one insertion (``v`` with probability
``h insert[g, v]``), every position independently is deleted (``h delete[i]``), substituted by
``v`` (``h substitute[i, v]``) or kept; probabilities above 1 in total are normalised (the
reference's clamp). All edits of a step apply at once to the sequence of the step's start, so
the length changes by up to ``length + 1`` per step; a sequence that would outgrow the capacity
``N`` is cut at ``N`` (``info.overflow``). The error is ``O(h)`` in distribution.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.base import (SamplingAlgorithm, checked_callable, checked_int, model_jit,
                              validate_key)
from partext_jax.edit.alignment import BLANK, remove_blanks
from partext_jax.nat.protocols import Output

NONE, INSERT, DELETE, SUBSTITUTE = 0, 1, 2, 3
"""Edit kinds of :func:`pending_edits`."""


class EditRates(NamedTuple):
  """Rates (per unit time, ``>= 0``) of every edit of a batch of sequences of capacity ``N``.

  Attributes:
    insert: ``float32[B, N + 1, V]`` insert ``v`` into gap ``g``.
    delete: ``float32[B, N]`` delete position ``i``.
    substitute: ``float32[B, N, V]`` replace position ``i`` by ``v``.
  """
  insert: jax.Array
  delete: jax.Array
  substitute: jax.Array

  def flat(self) -> jax.Array:
    """``float32[B, E]`` with ``E = (N + 1) V + N + N V``, in :func:`flat_edit_index` order."""
    b = self.delete.shape[0]
    return jnp.concatenate([self.insert.reshape(b, -1), self.delete,
                            self.substitute.reshape(b, -1)], axis=1)

  @classmethod
  def from_flat(cls, flat, capacity: int, vocab_size: int) -> "EditRates":
    """The inverse of :meth:`flat` for ``flat float32[B, E]``."""
    b, n, v = flat.shape[0], capacity, vocab_size
    ins, rest = flat[:, :(n + 1) * v], flat[:, (n + 1) * v:]
    return cls(ins.reshape(b, n + 1, v), rest[:, :n], rest[:, n:].reshape(b, n, v))


RateFn = Callable[[jax.Array, jax.Array, jax.Array], EditRates]
"""``rate_fn(tokens int32[B, N], lengths int32[B], t float32[B]) -> EditRates``."""


def num_edits(capacity: int, vocab_size: int) -> int:
  """``E``: the number of edits of a sequence of capacity ``N`` (``(N + 1) V + N + N V``)."""
  return (capacity + 1) * vocab_size + capacity + capacity * vocab_size


def flat_edit_index(kind, pos, token, *, capacity: int, vocab_size: int):
  """Index of an edit in :meth:`EditRates.flat` (``0`` for ``kind == NONE``; arrays broadcast):
  insert ``pos V + token``; delete ``(N + 1) V + pos``; substitute ``(N + 1) V + N + pos V +
  token``."""
  n, v = capacity, vocab_size
  token = jnp.clip(token, 0, v - 1)
  return jnp.select([kind == INSERT, kind == DELETE, kind == SUBSTITUTE],
                    [pos * v + token, (n + 1) * v + pos, (n + 1) * v + n + pos * v + token], 0)


def valid_rates(rates: EditRates, tokens, lengths) -> EditRates:
  """``rates`` with every edit that does not exist set to 0: gaps past ``length``, positions
  past ``length - 1``, and substituting a token by itself."""
  n, v = rates.delete.shape[1], rates.insert.shape[-1]
  gaps = (jnp.arange(n + 1)[None, :] <= lengths[:, None])[..., None]
  pos = jnp.arange(n)[None, :] < lengths[:, None]
  same = jax.nn.one_hot(tokens, v, dtype=bool)
  return EditRates(jnp.where(gaps, rates.insert, 0.0), jnp.where(pos, rates.delete, 0.0),
                   jnp.where(pos[..., None] & ~same, rates.substitute, 0.0))


# --------------------------------------------------------------------------------------------
# The conditional path (training and the exact rates).


def pending_edits(z_t, z1):
  """The edit each column stands for on ``x_t = z_t`` without blanks (``[..., M]`` columns).

  Returns ``(kind, pos, token)`` (``int32[..., M]``): ``kind`` is :data:`NONE` for a finished
  column (``z_t == z1``), :data:`INSERT` of ``token = z1`` into gap ``pos`` when ``z_t`` is
  blank, :data:`DELETE` of position ``pos`` when ``z1`` is blank, else :data:`SUBSTITUTE` of
  position ``pos`` by ``z1``; ``pos`` counts the non-blank columns of ``z_t`` before the column.
  """
  nonblank = (z_t != BLANK).astype(jnp.int32)
  pos = jnp.cumsum(nonblank, axis=-1) - nonblank
  kind = jnp.where(z_t == z1, NONE, jnp.where(
      z_t == BLANK, INSERT, jnp.where(z1 == BLANK, DELETE, SUBSTITUTE)))
  return kind.astype(jnp.int32), pos.astype(jnp.int32), z1


def sample_path(rng_key, z0, z1, t, *, capacity: int, vocab_size: int):
  """A draw of the conditional path at times ``t float32[B]``: each column of ``z0, z1 [B, M]``
  holds ``z1`` with probability ``kappa_t = t``. Returns ``(z_t int32[B, M], tokens int32[B,
  capacity], lengths int32[B])``, ``tokens`` = ``z_t`` without blanks padded with ``V``."""
  switched = jax.random.uniform(rng_key, z0.shape) < t[:, None]
  z_t = jnp.where(switched, z1, z0)
  tokens, lengths = remove_blanks(z_t, capacity=capacity, pad_id=vocab_size)
  return z_t, tokens, lengths


def bregman_loss(rates: EditRates, tokens, lengths, z_t, z1, t, *, eps: float = 1e-8):
  """Edit Flows' Bregman flow-matching loss per row, ``float32[B]`` (module docstring).

  Args:
    rates: the model's :class:`EditRates` at ``(tokens, lengths, t)``.
    tokens, lengths: ``x_t`` (``int32[B, N]``, ``int32[B]``), the blanks of ``z_t`` removed.
    z_t, z1: ``int32[B, M]`` the path's columns at ``t`` and at ``t = 1``.
    t: ``float32[B]`` in ``[0, 1)``.

  Returns:
    ``sum_e u(e | x_t) - 1 / (1 - t) sum_{m unfinished} log u(e_m | x_t)``.
  """
  n, v = rates.delete.shape[1], rates.insert.shape[-1]
  flat = valid_rates(rates, tokens, lengths).flat()
  kind, pos, token = pending_edits(z_t, z1)
  idx = flat_edit_index(kind, pos, token, capacity=n, vocab_size=v)
  logs = jnp.log(jnp.take_along_axis(flat, idx, axis=1) + eps)
  target = jnp.sum(jnp.where(kind != NONE, logs, 0.0), axis=1)
  return jnp.sum(flat, axis=1) - target / (1.0 - t)


# --------------------------------------------------------------------------------------------
# Sampling.


class EditState(NamedTuple):
  """Carried state: ``tokens int32[B, N]`` (``PAD = V`` after ``lengths``), ``lengths
  int32[B]``, ``step int32[]``."""
  tokens: jax.Array
  lengths: jax.Array
  step: jax.Array


class EditInfo(NamedTuple):
  """Per step (``sample`` stacks them on a leading ``[num_steps]`` axis): ``nfe int32[]`` (one
  rate call for the batch); ``insertions``, ``deletions``, ``substitutions`` ``int32[B]``;
  ``overflow bool[B]`` (the step's result exceeded the capacity and was cut)."""
  nfe: jax.Array
  insertions: jax.Array
  deletions: jax.Array
  substitutions: jax.Array
  overflow: jax.Array


def _categorical(key, probs):
  """One draw per row of ``probs [..., K]`` (non-negative, summing to <= 1): class ``K`` is
  "nothing" with the rest of the mass; totals above 1 are normalised."""
  total = jnp.sum(probs, axis=-1, keepdims=True)
  probs = probs / jnp.maximum(total, 1.0)
  rest = jnp.clip(1.0 - jnp.sum(probs, axis=-1, keepdims=True), 0.0, 1.0)
  full = jnp.concatenate([probs, rest], axis=-1)
  logp = jnp.where(full > 0, jnp.log(jnp.where(full > 0, full, 1.0)), -jnp.inf)
  return jax.random.categorical(key, logp, axis=-1)


def leap(rng_key, tokens, lengths, rates: EditRates, h):
  """One tau-leaping step of size ``h`` for a batch (module docstring).

  Row ``r`` draws from ``fold_in(rng_key, r)`` (pass the step's key). Returns ``(tokens,
  lengths, (insertions, deletions, substitutions, overflow))``.
  """
  b, n = tokens.shape
  v = rates.insert.shape[-1]
  rates = valid_rates(rates, tokens, lengths)

  def row(key, x, ins, dele, sub):
    k_ins, k_pos = jax.random.split(key)
    ins_choice = _categorical(k_ins, h * ins)                             # [N + 1], V = none
    pos_choice = _categorical(k_pos, h * jnp.concatenate([dele[:, None], sub], axis=1))
    return ins_choice, pos_choice                                         # [N], 0 = delete

  keys = jax.vmap(lambda r: jax.random.fold_in(rng_key, r))(jnp.arange(b))
  ins_choice, pos_choice = jax.vmap(row)(keys, tokens, rates.insert, rates.delete,
                                         rates.substitute)
  valid = jnp.arange(n)[None, :] < lengths[:, None]
  inserted = jnp.where(ins_choice < v, ins_choice, BLANK)
  deleted = valid & (pos_choice == 0)
  substituted = valid & (pos_choice >= 1) & (pos_choice <= v)
  kept = jnp.where(substituted, pos_choice - 1, tokens)
  kept = jnp.where(valid & ~deleted, kept, BLANK)
  # Interleave gap g's insertion before position g: [ins_0, x_0, ins_1, x_1, .., ins_N].
  z = jnp.stack([inserted[:, :n], kept], axis=2).reshape(b, 2 * n)
  z = jnp.concatenate([z, inserted[:, n:]], axis=1)
  new_tokens, new_lengths = remove_blanks(z, capacity=n, pad_id=v)
  count = lambda m: jnp.sum(m, axis=1, dtype=jnp.int32)  # noqa: E731
  overflow = jnp.sum(z != BLANK, axis=1) > n
  return new_tokens, new_lengths, (count(inserted != BLANK), count(deleted), count(substituted),
                                   overflow)


def build_kernel(rate_fn: RateFn, num_steps: int):
  """The pure ``step(rng_key, state) -> (state, info)`` of :func:`edit_flows`."""
  h = 1.0 / num_steps

  def step(rng_key, state: EditState):
    b = state.tokens.shape[0]
    t = jnp.full((b,), state.step, jnp.float32) * h
    rates = rate_fn(state.tokens, state.lengths, t)
    rates = EditRates(*(jnp.asarray(r, jnp.float32) for r in rates))
    key = jax.random.fold_in(rng_key, state.step)
    tokens, lengths, (ins, dele, sub, over) = leap(key, state.tokens, state.lengths, rates, h)
    info = EditInfo(jnp.int32(1), ins, dele, sub, over)
    return EditState(tokens, lengths, state.step + 1), info

  return step


def init_state(x_init) -> EditState:
  """The state before step 0 from ``x_init = (tokens int32[B, N], lengths int32[B])``."""
  tokens, lengths = x_init
  return EditState(jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32),
                   jnp.zeros((), jnp.int32))


def _sample_impl(rng_key, tokens, lengths, *, rate_fn, num_steps):
  step = build_kernel(rate_fn, num_steps)
  state, info = jax.lax.scan(lambda s, _: step(rng_key, s), init_state((tokens, lengths)),
                             None, length=num_steps)
  return Output(state.tokens, state.lengths), info


jitted_sample = model_jit(_sample_impl, static_argnames=("num_steps",),
                          model_argnames=("rate_fn",))
"""The whole trajectory, compiled once per (shapes, ``num_steps``, model)."""


def check_x_init(x_init, vocab_size: int | None = None) -> Output:
  """``x_init`` as an :class:`~partext_jax.nat.protocols.Output` ``(tokens int32[B, N], lengths
  int32[B])``; ``TypeError`` / ``ValueError`` (before compiling) for non-integer arrays, wrong
  ranks or batch sizes, or (concrete inputs) lengths outside ``[0, N]`` and tokens outside
  ``[0, V)`` before ``lengths``."""
  if not (isinstance(x_init, tuple) and len(x_init) == 2):
    raise TypeError(f"x_init must be (tokens int32[B, N], lengths int32[B]), got "
                    f"{type(x_init).__name__}")
  tokens, lengths = x_init
  for name, value, rank in (("x_init tokens", tokens, 2), ("x_init lengths", lengths, 1)):
    dtype = getattr(value, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
      raise TypeError(f"{name} must be an integer array, got dtype={dtype}")
    if np.ndim(value) != rank:
      raise ValueError(f"{name} must have rank {rank}, got shape={np.shape(value)}")
  if np.shape(lengths)[0] != np.shape(tokens)[0]:
    raise ValueError(f"x_init lengths {np.shape(lengths)} do not match tokens "
                     f"{np.shape(tokens)}")
  if not isinstance(lengths, jax.core.Tracer):
    lens, toks = np.asarray(lengths), np.asarray(tokens)
    n = toks.shape[1]
    if lens.size and (lens.min() < 0 or lens.max() > n):
      raise ValueError(f"x_init lengths must lie in [0, {n}] (the capacity), got "
                       f"[{lens.min()}, {lens.max()}]")
    real = np.arange(n)[None, :] < lens[:, None]
    if vocab_size is not None and np.any(real & ((toks < 0) | (toks >= vocab_size))):
      raise ValueError(f"x_init tokens before lengths must lie in [0, {vocab_size})")
  return Output(jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32))


def edit_flows(rate_fn: RateFn, *, num_steps: int, vocab_size: int | None = None
               ) -> SamplingAlgorithm:
  """Builds the Edit Flows tau-leaping sampler (Havasi et al. 2025,
  ``docs/algorithms.md#edit-flows``).

  Args:
    rate_fn: ``rate_fn(tokens int32[B, N], lengths int32[B], t float32[B]) -> EditRates`` (a
      closure, or a ``jax.tree_util.Partial`` whose parameters are traced), e.g.
      :func:`partext_jax.edit.exact.exact_rate_fn` or
      :func:`partext_jax.edit.model.make_rate_fn`.
    num_steps: ``>= 1`` tau-leaping steps over ``[0, 1]`` (step size ``1 / num_steps``).
    vocab_size: optional ``V`` for checking ``x_init``'s tokens.

  Returns:
    :class:`~partext_jax.base.SamplingAlgorithm`: ``init(x_init) -> EditState``, ``step(key,
    state) -> (state, EditInfo)`` (uses ``fold_in(key, state.step)``: pass the same key every
    step), ``sample(key, x_init) -> (Output(tokens int32[B, N], lengths int32[B]), EditInfo
    stacked on [num_steps])``; ``x_init = (tokens, lengths)`` a draw of the source ``p0``
    (e.g. empty rows), ``N`` the capacity of the output.

  Raises:
    TypeError / ValueError: a non-callable ``rate_fn``, ``num_steps < 1``, a bad ``x_init``
      (before compiling).
  """
  checked_callable("rate_fn", rate_fn)
  num_steps = checked_int("num_steps", num_steps, minimum=1, hint=" (tau-leaping steps)")
  if vocab_size is not None:
    checked_int("vocab_size", vocab_size, minimum=1)

  def init(x_init) -> EditState:
    return init_state(check_x_init(x_init, vocab_size))

  def step(rng_key, state):
    return build_kernel(rate_fn, num_steps)(rng_key, state)

  def sample(rng_key, x_init) -> tuple[Output, Any]:
    validate_key(rng_key)
    tokens, lengths = check_x_init(x_init, vocab_size)
    return jitted_sample(rng_key, tokens, lengths, rate_fn=rate_fn, num_steps=num_steps)

  return SamplingAlgorithm(init, step, sample)
