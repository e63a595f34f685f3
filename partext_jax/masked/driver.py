"""The shared driver of the masked-diffusion samplers: assembly, input checks, loops, keys.

A sampler module exposes a constructor that closes over the model callable and the
hyper-parameters and returns a :class:`MaskedSampler` (:class:`partext_jax.base.SamplingAlgorithm`):

* ``init(x_init) -> state``: ``x_init`` is ``int32[B, L]``; ``mask_id`` marks positions to
  generate, every other position is a prompt / infilling constraint and never changes.
* ``step(rng_key, state) -> (state, info)``: one pure step (for custom loops and trajectories).
* ``sample(rng_key, x_init) -> (tokens, info)``: every step in one ``lax`` loop, jit-compiled once.

The model is any JAX callable ``denoise_fn(tokens int32[B, L], t float32[B]) -> logits
float32[B, L, V]`` over the ``V`` real tokens; the MASK id is given separately and is never a
valid output (SUBS parameterisation: the sampler, not the model, enforces carry-over).

Parameters: a plain closure over arrays is fine for toys, but ``jit`` then embeds those arrays
in the compiled program as constants and a new closure recompiles. Wrap real models as
``jax.tree_util.Partial(apply_fn, params)`` (what ``models.denoiser.make_denoise_fn`` returns):
samplers pass such a model to ``jit`` as a pytree, so parameters are traced arguments and new
parameters of the same shapes reuse the compiled sampler.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.base import DenoiseFn, SamplingAlgorithm, validate_key

MaskedSampler = SamplingAlgorithm


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
  """``t_i = t_min + ((N - i) / N)(1 - t_min)`` in float32 (``i`` may be traced).

  ``t_0 = 1``, ``t_N = t_min``: exact at both ends and without cancellation near ``t_min``
  (``docs/algorithms.md#tau-leaping``).
  """
  frac = jnp.asarray(num_steps - i, jnp.float32) / num_steps
  return (t_min + frac * (1.0 - t_min)).astype(jnp.float32)


def call_at_time(denoise_fn, tokens, t):
  """``denoise_fn(tokens, t)`` in float32 with the scalar time ``t`` broadcast to ``[B]``."""
  b = tokens.shape[0]
  return denoise_fn(tokens, jnp.full((b,), t, jnp.float32)).astype(jnp.float32)


def scan_sample(build_kernel: Callable, init_state: Callable, num_steps: int):
  """``sample_impl(rng_key, x_init, *, denoise_fn, config, vocab_size, **models)``: every step in
  one ``lax.scan`` of ``num_steps(config)`` steps, returning ``(tokens, stacked info)``.

  ``build_kernel(denoise_fn, config, vocab_size, **models)`` is the pure step and
  ``init_state(x_init, config, vocab_size)`` the initial state. Pass the result to
  :func:`partext_jax.base.model_jit`.
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


def assemble_sampler(denoise_fn: DenoiseFn, mask_id: int, *,
                     kernel: Callable[[int], Callable],
                     init_state: Callable[[jax.Array, int], Any],
                     sample: Callable[[jax.Array, jax.Array, int], tuple[jax.Array, Any]],
                     check_shape: Callable[[int, int, int], None] | None = None,
                     check_input: Callable[[jax.Array, int], None] | None = None
                     ) -> MaskedSampler:
  """The :class:`MaskedSampler` every masked sampler returns, with its input checks.

  Each hook receives the vocabulary size ``V`` found by abstract evaluation of ``denoise_fn``:
  ``kernel(V)`` is the pure step function, ``init_state(x_init, V)`` the initial state,
  ``sample(rng_key, x_init, V)`` the jitted whole loop. All checks run before compilation:
  ``x_init`` dtype/rank/values, the key, ``mask_id`` outside the vocabulary, then the optional
  ``check_shape(B, L, V)`` (once per shape) and ``check_input(x_init, V)`` (every call).
  """

  @functools.lru_cache(maxsize=None)
  def vocab_size_for(b: int, l: int) -> int:
    vocab_size = vocab_size_of(denoise_fn, jax.ShapeDtypeStruct((b, l), jnp.int32))
    validate_mask_id(mask_id, vocab_size)
    if check_shape is not None:
      check_shape(b, l, vocab_size)
    return vocab_size

  def checked_vocab_size(x_init) -> int:
    validate_x_init(x_init)
    vocab_size = vocab_size_for(*x_init.shape)
    validate_token_values(x_init, vocab_size, mask_id)
    if check_input is not None:
      check_input(x_init, vocab_size)
    return vocab_size

  def init_fn(x_init):
    return init_state(x_init, checked_vocab_size(x_init))

  def step_fn(rng_key, state):
    return kernel(vocab_size_for(*state.tokens.shape))(rng_key, state)

  def sample_fn(rng_key, x_init):
    validate_key(rng_key)
    return sample(rng_key, x_init, checked_vocab_size(x_init))

  return MaskedSampler(init=init_fn, step=step_fn, sample=sample_fn)


def validate_x_init(x_init, *, name: str = "x_init") -> None:
  """Static checks on the initial tokens, raised before any compilation."""
  dtype = getattr(x_init, "dtype", None)
  shape = getattr(x_init, "shape", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"{name} must be an integer array of token ids, got dtype={dtype}")
  if len(shape) != 2:
    raise ValueError(f"{name} must have shape [batch, length], got shape={shape}")


def vocab_size_of(denoise_fn: DenoiseFn, x_init) -> int:
  """``V`` from the model's output shape, by abstract evaluation (no FLOPs)."""
  b, l = x_init.shape
  out = jax.eval_shape(denoise_fn, jax.ShapeDtypeStruct((b, l), jnp.int32),
                       jax.ShapeDtypeStruct((b,), jnp.float32))
  if len(out.shape) != 3 or out.shape[:2] != (b, l):
    raise ValueError(
        f"denoise_fn must map tokens[{b}, {l}] to logits[{b}, {l}, V]; it returned {out.shape}")
  return out.shape[-1]


def validate_mask_id(mask_id: int, vocab_size: int) -> None:
  if not isinstance(mask_id, int) or mask_id < vocab_size:
    raise ValueError(
        f"mask_id={mask_id!r} lies inside the model's vocabulary [0, {vocab_size}); the MASK id "
        f"must be an int >= V (usually exactly V={vocab_size})")


def run_blockwise_loop(step, rng_key, state, buffers, *, num_steps: int, mask_id: int,
                       in_window, record_trajectory: bool):
  """``while_loop`` driver shared by the block-decoding samplers.

  Calls ``step(rng_key, state) -> (state, info)`` while some position of the generation window
  (``in_window bool[L]``) is MASK and fewer than ``num_steps`` steps ran, writing step ``i``'s
  info into row ``i`` of the preallocated ``buffers``. With ``record_trajectory`` the rows after
  the last step repeat the final tokens. Returns ``(tokens, info)``.
  """

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
