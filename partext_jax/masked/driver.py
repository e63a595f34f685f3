"""The shared driver of the masked-diffusion samplers: assembly, input checks, loops, keys.

What every sampler of :mod:`partext_jax.masked` shares
(``docs/algorithms.md#notation-and-model-protocols``,
``docs/algorithms.md#correctness-properties``): the per-row keys
(:func:`row_keys`), the time grid (:func:`time_grid`, :func:`step_times`), MDLM's final noise
removal (:func:`noise_removal`), the whole-trajectory loops (:func:`scan_sample` for a fixed
number of steps, :func:`run_blockwise_loop` until the window has no MASK) and the assembly of
the :class:`MaskedSampler` with its input checks (:func:`assemble_sampler`,
:func:`scan_sampler`). A new fixed-step sampler is a module with a frozen config, a
``build_kernel`` and an ``init_state``, closed by :func:`scan_sampler`.

A sampler module exposes a constructor that closes over the model callable and the
hyper-parameters and returns a :class:`MaskedSampler` (:class:`partext_jax.base.SamplingAlgorithm`):

* ``init(x_init) -> state``: ``x_init`` is ``int32[B, L]``; ``mask_id`` marks positions to
  generate, every other position is a prompt / infilling constraint and never changes.
* ``step(rng_key, state) -> (state, info)``: one pure step (for custom loops and trajectories).
* ``sample(rng_key, x_init) -> (tokens, info)``: every step in one ``lax`` loop, jit-compiled once.

The model is any JAX callable ``denoise_fn(tokens int32[B, L], t float32[B]) -> logits
float32[B, L, V]``; the MASK id is given separately and is never a valid output (SUBS
parameterisation: the sampler, not the model, enforces carry-over). The MASK id may lie inside
``[0, V)`` (real diffusion LMs, :mod:`partext_jax.base`): :func:`assemble_sampler` then hands
every hook the model with the logits of the never-generate ids (:func:`never_generate_ids`) set
to ``-inf`` (:func:`without_ids`), the one place every sampler goes through.

Parameters: a plain closure over arrays is fine for toys, but ``jit`` then embeds those arrays
in the compiled program as constants and a new closure recompiles. Wrap real models as
``jax.tree_util.Partial(apply_fn, params)`` (what ``models.denoiser.make_denoise_fn`` returns):
samplers pass such a model to ``jit`` as a pytree, so parameters are traced arguments and new
parameters of the same shapes reuse the compiled sampler.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax import ops
from partext_jax.base import (DenoiseFn, SamplingAlgorithm, checked_bool, checked_callable,
                              checked_choice, checked_int, model_jit, model_partial,
                              validate_key)
from partext_jax.masked import categorical

MaskedSampler = SamplingAlgorithm


def checked_mask_id(mask_id) -> int:
  """``mask_id`` as an int ``>= 0`` (``V``, or an id inside ``[0, V)`` that is then never
  emitted: :func:`never_generate_ids`)."""
  return checked_int("mask_id", mask_id, minimum=0, hint=" (usually V, the vocabulary size)")


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Base of the hyper-parameters of the fixed-step samplers (:func:`scan_sampler`).

  Frozen and hashable (a static jit argument). On construction it checks the fields every such
  sampler has -- ``mask_id``, ``num_steps >= 1``, ``precision`` (one of
  :data:`partext_jax.masked.categorical.PRECISIONS`) -- and every ``bool`` field, then calls
  :meth:`check` for the subclass's own fields. Errors name the argument and its valid values.
  """
  mask_id: int
  num_steps: int
  precision: str = "float32"
  record_trajectory: bool = False

  def __post_init__(self):
    self._set("mask_id", checked_mask_id(self.mask_id))
    self._set("num_steps", checked_int("num_steps", self.num_steps, minimum=1))
    checked_choice("precision", self.precision, categorical.PRECISIONS)
    for field in dataclasses.fields(self):
      if field.type in ("bool", bool):
        checked_bool(field.name, getattr(self, field.name))
    self.check()

  def check(self) -> None:
    """Checks the subclass's own fields (normalising them with ``_set``); raises ``TypeError`` /
    ``ValueError`` naming the argument."""

  def _set(self, name: str, value) -> None:
    object.__setattr__(self, name, value)


def row_keys(rng_key, step, batch_size: int):
  """``key[B]``: row ``r`` of step ``i`` draws from ``fold_in(fold_in(rng_key, i), r)``.

  A row's randomness depends only on (key, step, row index): a row gives the same sample alone
  (at index 0) as inside a bigger batch, whatever the other rows hold, and on any device mesh.
  ``step`` may be traced, or an ``int32[B]`` of per-row step indices.
  """
  step = jnp.broadcast_to(jnp.asarray(step, jnp.int32), (batch_size,))
  return jax.vmap(lambda r, s: jax.random.fold_in(jax.random.fold_in(rng_key, s), r))(
      jnp.arange(batch_size), step)


def time_grid(num_steps: int, t_min: float, i):
  """``t_i = 1 - (i / N)(1 - t_min)`` as ``float32`` (``i`` may be traced, any shape).

  Evaluated as ``t_min + ((N - i) / N)(1 - t_min)``: ``t_0 = 1``, ``t_N = t_min`` exactly, and
  no cancellation near ``t_min`` (``docs/algorithms.md#tau-leaping``).
  """
  frac = jnp.asarray(num_steps - i, jnp.float32) / num_steps
  return (t_min + frac * (1.0 - t_min)).astype(jnp.float32)


def step_times(num_steps: int, t_min: float, i):
  """``(t, s, is_last)`` of step ``i`` (``int32[]``, may be traced) on :func:`time_grid`.

  Step ``i`` goes from ``t = t_i`` to ``s = t_{i+1}``; steps past the grid (nothing is masked
  any more) reuse the last step's times. ``is_last`` is ``bool[]``, ``i == N - 1``.
  """
  i_grid = jnp.minimum(i, num_steps - 1)
  return (time_grid(num_steps, t_min, i_grid), time_grid(num_steps, t_min, i_grid + 1),
          i == num_steps - 1)


def call_at_time(denoise_fn, tokens, t):
  """``denoise_fn(tokens, t)`` in float32 with the scalar time ``t`` broadcast to ``[B]``."""
  b = tokens.shape[0]
  return denoise_fn(tokens, jnp.full((b,), t, jnp.float32)).astype(jnp.float32)


def noise_removal(denoise_fn, tokens, s, logits, *, mask_id: int, is_last, stale):
  """MDLM's final step: on the last step, positions still masked take ``argmax p_theta(. | x, s)``.

  Args:
    denoise_fn: the model.
    tokens: ``int32[B, L]`` after the step's stochastic update.
    s: ``float32[]`` the step's end time (``t_min`` on the last step).
    logits: ``float32[B, L, V]`` the step's logits.
    is_last: ``bool[]``, the step is the last of the grid (nothing happens otherwise).
    stale: ``bool[]``, ``logits`` were not computed on ``tokens``; the model is then called again
      (only when some position is left to fill).

  Returns:
    ``(tokens, filled bool[B, L], logits, nfe int32[])``: the filled tokens, the positions
    filled, the logits they were read from, and the extra model calls (0 or 1).
    ``docs/algorithms.md#tau-leaping`` (end of trajectory).
  """
  filled = (tokens == mask_id) & is_last
  recompute = jnp.any(filled) & stale
  logits = jax.lax.cond(recompute, lambda: call_at_time(denoise_fn, tokens, s), lambda: logits)
  greedy = ops.argmax(logits)
  return jnp.where(filled, greedy, tokens), filled, logits, recompute.astype(jnp.int32)


def scan_sample(build_kernel: Callable, init_state: Callable,
                num_steps: Callable[[Any], int] = lambda config: config.num_steps):
  """``sample_impl(rng_key, x_init, *, denoise_fn, config, vocab_size, **models)``: every step in
  one ``lax.scan`` of ``num_steps(config)`` steps, returning ``(tokens, stacked info)``.

  ``build_kernel(denoise_fn, config, vocab_size, **models)`` is the pure step and
  ``init_state(x_init, config, vocab_size)`` the initial state. Pass the result to
  :func:`partext_jax.base.model_jit` once, at module level, so that every sampler built with
  equal hyper-parameters shares the compiled program.
  """

  def sample_impl(rng_key, x_init, *, denoise_fn, config, vocab_size, **models):
    step = build_kernel(denoise_fn, config, vocab_size, **models)
    state = init_state(x_init, config, vocab_size)
    state, info = jax.lax.scan(lambda st, _: step(rng_key, st), state, None,
                               length=num_steps(config))
    return state.tokens, info

  return sample_impl


def validate_token_values(x_init, vocab_size: int, mask_id: int) -> None:
  """Token-range check on concrete inputs (skipped under tracing)."""
  if isinstance(x_init, jax.core.Tracer):
    return
  x = np.asarray(x_init)
  bad = (x < 0) | ((x >= vocab_size) & (x != mask_id))
  if bad.any():
    raise ValueError(
        f"x_init holds token ids outside [0, {vocab_size}) that are not mask_id={mask_id}: "
        f"{np.unique(x[bad])[:10].tolist()}")


def assemble_sampler(model: Callable, mask_id: int, *,
                     kernel: Callable[[Callable, int], Callable],
                     init_state: Callable[[jax.Array, int], Any],
                     sample: Callable[[jax.Array, jax.Array, Callable, int],
                                      tuple[jax.Array, Any]],
                     as_denoise_fn: Callable[[Callable], DenoiseFn] | None = None,
                     check_shape: Callable[[int, int, int], None] | None = None,
                     check_input: Callable[[jax.Array, int], None] | None = None,
                     precision: str = "float32", name: str = "sampler") -> MaskedSampler:
  """The :class:`MaskedSampler` every masked sampler returns, with its input checks.

  ``model`` is the sampler's model (``denoise_fn``, or the cached ``kv_denoise_fn`` with
  ``as_denoise_fn(model)`` its plain ``(tokens, t) -> logits`` view). Each hook receives the
  vocabulary size ``V`` found by abstract evaluation: ``kernel(model, V)`` is the pure step
  function, ``init_state(x_init, V)`` the initial state, ``sample(rng_key, x_init, model, V)``
  the jitted whole loop, where ``model`` is :func:`without_ids` of the model: the logits of
  :func:`never_generate_ids` inside ``[0, V)`` (the MASK id, the model's ``exclude_ids``) are
  ``-inf``, so no sampler can emit them (the model itself when all of them are ``>= V``). All
  checks run before compilation: the model callable and, for ``precision="float64"``,
  ``jax_enable_x64`` on (now and at every call: ``RuntimeError`` naming ``name``); then per call
  ``x_init`` dtype/rank/values, the key, ``mask_id`` against the output width ``V``
  (:func:`check_mask_width`), the optional ``check_shape(B, L, V)`` (once per shape) and
  ``check_input(x_init, V)``; ``sample`` also rejects a plain ``denoise_fn`` whose logits on
  ``x_init`` at ``t = 1`` are not finite (:func:`check_finite_logits`; not a cached model).
  """
  checked_callable("kv_denoise_fn" if as_denoise_fn else "denoise_fn", model)
  categorical.require_precision(precision, name)
  denoise_fn = model if as_denoise_fn is None else as_denoise_fn(model)
  ids = never_generate_ids(model, mask_id)
  model_for = functools.lru_cache(maxsize=None)(lambda v: without_ids(model, ids, v))

  @functools.lru_cache(maxsize=None)
  def vocab_size_for(b: int, l: int) -> int:
    vocab_size = vocab_size_of(denoise_fn, jax.ShapeDtypeStruct((b, l), jnp.int32))
    check_mask_width(mask_id, vocab_size)
    if check_shape is not None:
      check_shape(b, l, vocab_size)
    return vocab_size

  def checked_vocab_size(x_init) -> int:
    categorical.require_precision(precision, name)
    validate_x_init(x_init)
    vocab_size = vocab_size_for(*x_init.shape)
    validate_token_values(x_init, vocab_size, mask_id)
    if check_input is not None:
      check_input(x_init, vocab_size)
    return vocab_size

  def init_fn(x_init):
    return init_state(x_init, checked_vocab_size(x_init))

  def step_fn(rng_key, state):
    categorical.require_precision(precision, name)
    vocab_size = vocab_size_for(*state.tokens.shape)
    return kernel(model_for(vocab_size), vocab_size)(rng_key, state)

  def sample_fn(rng_key, x_init):
    validate_key(rng_key)
    vocab_size = checked_vocab_size(x_init)
    if as_denoise_fn is None:  # A cached kv_denoise_fn is not checked (its view needs a cache).
      check_finite_logits(denoise_fn, x_init)
    return sample(rng_key, x_init, model_for(vocab_size), vocab_size)

  return MaskedSampler(init=init_fn, step=step_fn, sample=sample_fn)


def scan_sampler(name: str, denoise_fn: DenoiseFn, config, *, build_kernel: Callable,
                 init_state: Callable, sample: Callable, models: dict | None = None,
                 check_shape: Callable[[int, int, int], None] | None = None) -> MaskedSampler:
  """:func:`assemble_sampler` for a fixed-step sampler built on :func:`scan_sample`.

  ``config`` is the sampler's :class:`StepConfig` (``name`` is used in error messages);
  ``build_kernel(denoise_fn, config, V, **models)`` and ``init_state(x_init, config, V)`` are the
  module's, ``sample`` its module-level ``model_jit(scan_sample(build_kernel, init_state))``;
  ``models`` are further models (e.g. P2's ``planner``) passed to both by keyword, with the same
  ids excluded as ``denoise_fn`` (:func:`assemble_sampler`).
  """
  ids = never_generate_ids(denoise_fn, config.mask_id)

  @functools.lru_cache(maxsize=None)
  def models_for(v: int) -> dict:
    return {k: None if m is None else without_ids(m, ids, v) for k, m in (models or {}).items()}

  return assemble_sampler(
      denoise_fn, config.mask_id,
      kernel=lambda m, v: build_kernel(m, config, v, **models_for(v)),
      init_state=lambda x, v: init_state(x, config, v),
      sample=lambda key, x, m, v: sample(key, x, denoise_fn=m, config=config, vocab_size=v,
                                         **models_for(v)),
      check_shape=check_shape, precision=config.precision, name=name)


def validate_x_init(x_init, *, name: str = "x_init") -> None:
  """Static checks on the initial tokens, raised before any compilation."""
  dtype = getattr(x_init, "dtype", None)
  shape = getattr(x_init, "shape", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"{name} must be an integer array of token ids, got dtype={dtype}")
  if len(shape) != 2:
    raise ValueError(f"{name} must have shape [batch, length], got shape={shape}")


def check_mask_width(mask_id: int, vocab_size: int) -> None:
  """``mask_id`` must be ``V`` (outside the vocabulary) or an id inside ``[0, V)``.

  A MASK id beyond ``V`` is never written by the model nor read back as a token (the sampler would
  return garbage without failing), so it raises ``ValueError`` saying what is expected.
  """
  if mask_id > vocab_size:
    raise ValueError(
        f"mask_id={mask_id} lies beyond the model's output width V={vocab_size} (logits[..., V]): "
        f"use mask_id={vocab_size} (a MASK id just outside the vocabulary) or the id inside "
        f"[0, {vocab_size}) the model reserves for MASK")


def _logits_at_t1(tokens, *, denoise_fn):
  logits = call_at_time(denoise_fn, tokens, 1.0)
  return jnp.isnan(logits).any() | (logits == jnp.inf).any()


_nonfinite_logits = model_jit(_logits_at_t1, static_argnames=())


def check_finite_logits(denoise_fn: DenoiseFn, x_init) -> None:
  """Raises ``FloatingPointError`` if ``denoise_fn(x_init, t=1)`` holds a NaN or ``+inf`` logit.

  One model call per ``sample`` call, checked on the host before the sampling loop: NaN
  logits would otherwise be sampled as id 0 everywhere, a plausible-looking wrong result.
  (``-inf`` is allowed: it is how a model rules tokens out.) The loop itself carries no check.
  Skipped under tracing (``sample`` called inside ``jit``, e.g. :func:`partext_jax.parallel.sample`,
  whose host-side ``init`` checks run first).
  """
  if isinstance(x_init, jax.core.Tracer):
    return
  bad = _nonfinite_logits(jnp.asarray(x_init, jnp.int32), denoise_fn=denoise_fn)
  if not isinstance(bad, jax.core.Tracer) and bool(bad):
    raise FloatingPointError(
        "denoise_fn returned non-finite logits (NaN or +inf) on x_init at t=1: the model or its "
        "parameters are broken (e.g. a diverged or corrupt checkpoint); nothing was sampled")


def vocab_size_of(denoise_fn: DenoiseFn, x_init) -> int:
  """``V`` from the model's output shape, by abstract evaluation (no FLOPs)."""
  b, l = x_init.shape
  out = jax.eval_shape(denoise_fn, jax.ShapeDtypeStruct((b, l), jnp.int32),
                       jax.ShapeDtypeStruct((b,), jnp.float32))
  if len(out.shape) != 3 or out.shape[:2] != (b, l):
    raise ValueError(
        f"denoise_fn must map tokens[{b}, {l}] to logits[{b}, {l}, V]; it returned {out.shape}")
  return out.shape[-1]


def never_generate_ids(model, mask_id: int) -> tuple[int, ...]:
  """The ids no sampler may emit: ``mask_id`` and the model adapter's ``exclude_ids`` (an
  attribute of ``model``, or of its function for a ``jax.tree_util.Partial``), sorted.

  The convention of :mod:`partext_jax.base`: ids ``>= V`` (e.g. ``mask_id = V``) are outside the
  model's logits and need nothing; ids inside ``[0, V)`` are excluded by :func:`without_ids`.
  """
  holder = model.func if isinstance(model, jax.tree_util.Partial) else model
  extra = getattr(holder, "exclude_ids", ()) or ()
  return tuple(sorted({int(mask_id), *(int(i) for i in extra)}))


@dataclasses.dataclass(frozen=True)
class ExcludeIds:
  """Hashable ``(model, *args)``: ``model(*args)`` with the logits of ``ids`` set to ``-inf``
  (the logits are the output, or its first element when the model returns a tuple, as the
  cached ``kv_denoise_fn``). ``ids`` must lie in ``[0, V)``."""
  ids: tuple[int, ...]

  def __call__(self, model, *args):
    out = model(*args)
    if isinstance(out, tuple):
      return (self.exclude(out[0]),) + tuple(out[1:])
    return self.exclude(out)

  def exclude(self, logits):
    """``logits [..., V]`` with ``logits[..., ids] = -inf``."""
    return logits.at[..., jnp.asarray(self.ids, jnp.int32)].set(-jnp.inf)


def without_ids(model, ids, vocab_size: int):
  """``model`` whose logits at the ``ids`` inside ``[0, V)`` are ``-inf`` (``model`` itself when
  there are none). A ``jax.tree_util.Partial`` model gives a ``Partial`` (its parameters stay
  traced, :func:`partext_jax.base.model_partial`);
  ``docs/algorithms.md#real-diffusion-lms-llada-dream``."""
  inside = tuple(i for i in ids if i < vocab_size)
  return model_partial(ExcludeIds(inside), model) if inside else model


def run_blockwise_loop(step, rng_key, state, *, num_steps: int, mask_id: int, in_window,
                       record_trajectory: bool, fill: dict | None = None):
  """``while_loop`` driver shared by the block-decoding samplers.

  Calls ``step(rng_key, state) -> (state, info)`` while some position of the generation window
  (``in_window bool[L]``) is MASK and fewer than ``num_steps`` steps ran, writing step ``i``'s
  info into row ``i`` of buffers with a leading ``[num_steps]`` axis. Rows of steps that never
  ran hold zeros, or ``fill[field]`` for the info fields named in ``fill``; with
  ``record_trajectory`` their ``tokens`` repeat the final tokens. Returns ``(tokens, info)``.
  """
  fill = fill or {}
  spec = jax.eval_shape(step, rng_key, state)[1]
  buffers = type(spec)(**{
      field: None if leaf is None else jnp.full((num_steps,) + leaf.shape, fill.get(field, 0),
                                                leaf.dtype)
      for field, leaf in spec._asdict().items()})

  def cond(carry):
    st, _ = carry
    return (st.step < num_steps) & jnp.any((st.tokens == mask_id) & in_window)

  def body(carry):
    st, bufs = carry
    new, info = step(rng_key, st)
    bufs = jax.tree.map(lambda buf, v: buf.at[st.step].set(v), bufs, info)
    return new, bufs

  state, info = jax.lax.while_loop(cond, body, (state, buffers))
  if record_trajectory:
    done = jnp.arange(num_steps)[:, None, None] >= state.step
    info = info._replace(tokens=jnp.where(done, state.tokens[None], info.tokens))
  return state.tokens, info
