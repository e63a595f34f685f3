"""The shape every masked-diffusion sampler shares (after BlackJAX's ``SamplingAlgorithm``).

A sampler module exposes a constructor that closes over the model callable and the
hyper-parameters and returns a :class:`MaskedSampler`:

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

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


class MaskedSampler(NamedTuple):
  init: Callable[[jax.Array], Any]
  step: Callable[[jax.Array, Any], tuple[Any, Any]]
  sample: Callable[[jax.Array, jax.Array], tuple[jax.Array, Any]]


def model_jit(fn, *, static_argnames: tuple[str, ...]):
  """``jax.jit`` for a sampler entry point with a keyword argument ``denoise_fn``.

  A ``jax.tree_util.Partial`` model is passed as a traced pytree (its arrays are arguments; its
  function, which must be hashable, is part of the cache key); any other callable is static.
  """
  dynamic = jax.jit(fn, static_argnames=static_argnames)
  static = jax.jit(fn, static_argnames=tuple(static_argnames) + ("denoise_fn",))

  def call(*args, denoise_fn, **kwargs):
    target = dynamic if isinstance(denoise_fn, jax.tree_util.Partial) else static
    return target(*args, denoise_fn=denoise_fn, **kwargs)

  call.dynamic, call.static = dynamic, static
  return call


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
