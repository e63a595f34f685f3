"""The contract every generation family builds on: model protocols, the sampler shape, checks.

Model protocols (one per family; the math of each family is in ``docs/algorithms.md``)
--------------------------------------------------------------------------------------
* **Masked diffusion** -- :data:`DenoiseFn`: any JAX callable
  ``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float[B, L, V]``.
  The MASK id is passed to the sampler separately (``mask_id=``) and is never emitted. Either
  the model's output covers only the ``V`` real tokens and ``mask_id >= V`` (usually ``V``: the
  project's own denoisers), or -- real diffusion LMs such as LLaDA and Dream, whose MASK id lies
  inside their vocabulary -- ``mask_id`` is in ``[0, V)``. Then every sampler sets the logits of
  the MASK id, and of the ids in an optional ``exclude_ids`` attribute of the model adapter
  (other never-generate ids, e.g. a tokenizer's padding rows; for a ``jax.tree_util.Partial``,
  an attribute of its function), to ``-inf`` before any draw, confidence or entropy: "the real
  tokens" are then the ``V`` ids less these. This is done once, for every sampler, in
  :func:`partext_jax.masked.driver.assemble_sampler`
  (``docs/algorithms.md#notation-and-model-protocols``, ``#real-diffusion-lms-llada-dream``).
  The optional cached variant :data:`CachedDenoiseFn` ``kv_denoise_fn(tokens, t, positions,
  context) -> (logits, kv)`` serves the block caches.
* **Autoregressive** -- :class:`CausalLM`: a hashable callable
  ``model(params, tokens int32[B, T], positions int32[B, T], attn_mask, cache, write_slots
  int32[B], *, logits_at=None, return_hidden=False) -> LMOutput(logits, cache, hidden)`` with
  ``init_cache(batch, max_len)`` and optionally ``context_length``, ``vocab_size``, ``eos_id``,
  ``pad_id`` (:class:`partext_jax.models.llama.LlamaLM`,
  :class:`partext_jax.testing.function_lm.FunctionLM`). The block's K/V go to cache slots
  ``write_slots[b] + t``; ``attn_mask`` is ``bool[B, T, max_len]`` (see
  :func:`partext_jax.models.attention.causal_cache_mask`) or a structured
  :class:`partext_jax.models.attention.CacheBlockMask` (a model without use for its structure
  expands it with :func:`partext_jax.models.attention.resolve_mask`). The cache is the model's
  own pytree (:class:`partext_jax.models.attention.KVCache` for Llama); speculative decoding also
  needs ``cache.compact(src, dst)``, the LM drafter ``cache.max_len``
  (``docs/algorithms.md#autoregressive-sampling-and-logits-processors``). Drafters of
  speculative decoding follow :class:`partext_jax.ar.speculative.drafters.Drafter`:
  ``draft(rng_key, params, state, ctx, *, processor) -> (state, Draft)``
  (``docs/algorithms.md#drafters``).

Samplers (after BlackJAX's ``SamplingAlgorithm``)
-------------------------------------------------
A sampler constructor closes over the model and its hyper-parameters and returns a
:class:`SamplingAlgorithm` of pure functions: ``init(x_init) -> state``,
``step(rng_key, state) -> (state, info)`` and ``sample(rng_key, x_init) -> (tokens, info)``,
the last compiled once per shape. PRNG keys are explicit and always the first argument.

Checks
------
The ``checked_*`` helpers raise a ``TypeError`` / ``ValueError`` that names the argument and the
valid values; every sampler runs them on its hyper-parameters before anything is compiled.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
"""``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float[B, L, V]``."""

CachedDenoiseFn = Callable[..., tuple[jax.Array, Any]]
"""``kv_denoise_fn(tokens int32[B, T], t float32[B], positions int32[B, T], context)
-> (logits [B, T, V], kv)``; ``context`` is ``None`` (full pass) or ``(kv, ranges)``."""


class LMOutput(NamedTuple):
  """What a :class:`CausalLM` call returns.

  Attributes:
    logits: ``float32[B, T or K, V]`` (``K`` positions when ``logits_at`` is given).
    cache: the updated cache (``None`` when called without one).
    hidden: the final hidden states (the LM head's input) ``[B, T or K, E]`` when
      ``return_hidden=True``, else ``None``.
  """
  logits: jax.Array
  cache: Any = None
  hidden: Any = None


class CausalLM(Protocol):
  """The autoregressive model protocol (see the module docstring): returns :class:`LMOutput`
  with ``logits float32[B, T or K, V]`` (``K`` columns when ``logits_at int[B, K]`` is given),
  the updated cache, and the final hidden states when ``return_hidden``."""

  def __call__(self, params, tokens, positions, attn_mask, cache, write_slots, *,
               logits_at=None, return_hidden: bool = False) -> LMOutput:
    ...

  def init_cache(self, batch: int, max_len: int, dtype=None) -> Any:
    ...


class SamplingAlgorithm(NamedTuple):
  """``init(x_init) -> state``, ``step(rng_key, state) -> (state, info)``,
  ``sample(rng_key, x_init) -> (tokens, info)``: pure functions closed over model and
  hyper-parameters."""
  init: Callable[[jax.Array], Any]
  step: Callable[[jax.Array, Any], tuple[Any, Any]]
  sample: Callable[[jax.Array, jax.Array], tuple[jax.Array, Any]]


# --------------------------------------------------------------------------------------------
# Argument checks (raise before compilation, naming the argument and the valid values).


def checked_int(name: str, value, *, minimum: int, hint: str = "") -> int:
  """``value`` as a Python int ``>= minimum``; a clear error naming ``name`` otherwise."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an int >= {minimum}{hint}, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name}={value} must be >= {minimum}{hint}")
  return int(value)


def checked_optional_int(name: str, value, *, minimum: int = 1):
  """``None`` or :func:`checked_int`."""
  return None if value is None else checked_int(name, value, minimum=minimum)


def checked_float(name: str, value, *, lo=None, lo_open: bool = False, hi=None,
                  hi_open: bool = False, allow_none: bool = False, hint: str = ""):
  """``value`` as a finite Python float in the interval (``lo``/``hi`` bounds, open or closed);
  ``None`` passes when ``allow_none``. Raises ``TypeError`` / ``ValueError`` naming ``name``
  and the interval (followed by ``hint``)."""
  if value is None and allow_none:
    return None
  left = "(" if lo_open else "["
  right = ")" if hi_open or hi is None else "]"
  bounds = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
  if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
    raise TypeError(f"{name} must be a float in {bounds}{hint}, got {value!r}")
  value = float(value)
  ok = math.isfinite(value)
  if lo is not None:
    ok = ok and (value > lo if lo_open else value >= lo)
  if hi is not None:
    ok = ok and (value < hi if hi_open else value <= hi)
  if not ok:
    raise ValueError(f"{name}={value} must be a finite float in {bounds}{hint}")
  return value


def checked_float_fields(instance, bounds: dict, *, prefix: str = "") -> None:
  """In a frozen dataclass's ``__post_init__``: every field named in ``bounds`` (field name ->
  :func:`checked_float` keyword arguments) is checked and stored as a Python float; errors name
  it as ``prefix + field``."""
  for field, kwargs in bounds.items():
    value = checked_float(prefix + field, getattr(instance, field), **kwargs)
    object.__setattr__(instance, field, value)


def checked_choice(name: str, value, choices: Sequence, *, hint: str = ""):
  """``value`` if it is one of ``choices``; a ``ValueError`` listing them otherwise."""
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {tuple(choices)}{hint}")
  return value


def checked_bool(name: str, value) -> bool:
  """``value`` if it is ``True`` or ``False`` (not a truthy stand-in)."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be True or False, got {value!r}")
  return bool(value)


def checked_hashable(name: str, value):
  """``value`` if hashable (static jit arguments must be): else a ``TypeError``."""
  try:
    hash(value)
  except TypeError as e:
    raise TypeError(f"{name}={value!r} must be hashable (e.g. a frozen dataclass)") from e
  return value


def checked_callable(name: str, value):
  """Returns ``value`` if it is callable.

  Raises:
    TypeError: naming ``name`` (the argument), if ``value`` is not callable.
  """
  if not callable(value):
    raise TypeError(f"{name} must be callable, got {value!r}")
  return value


def validate_key(rng_key) -> None:
  """``rng_key`` must be one PRNG key (new-style ``jax.random.key`` or raw ``PRNGKey``)."""
  dtype = getattr(rng_key, "dtype", None)
  shape = getattr(rng_key, "shape", None)
  if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
    if shape != ():
      raise ValueError(f"rng_key must be a single PRNG key, got a key array of shape={shape}")
    return
  if dtype != jnp.uint32 or shape is None or len(shape) != 1:
    raise TypeError(f"rng_key must be a single PRNG key (jax.random.key(0)), got dtype={dtype}, "
                    f"shape={shape}")


def resolve_special_ids(model, *, eos_id="model", pad_id=None) -> tuple[tuple[int, ...], int]:
  """``(eos_ids, pad_id)`` of an autoregressive run.

  ``eos_id``: an id, a sequence of ids, ``None`` (never stop early) or ``"model"`` (the
  model's ``eos_id`` attribute, if any). ``pad_id``: an id, or ``None`` for the model's
  ``pad_id`` attribute, else 0.
  """
  if isinstance(eos_id, str):
    if eos_id != "model":
      raise ValueError(f"eos_id={eos_id!r}: pass an int, a sequence of ints, None or 'model'")
    eos_id = getattr(model, "eos_id", None)
  if eos_id is None:
    eos_ids = ()
  elif isinstance(eos_id, (int, np.integer)):
    eos_ids = (int(eos_id),)
  else:
    try:
      eos_ids = tuple(int(i) for i in eos_id)
    except TypeError as e:
      raise TypeError(f"eos_id must be None, an int or a sequence of ints, got {eos_id!r}") from e
  if pad_id is None:
    pad_id = getattr(model, "pad_id", None)
  pad_id = 0 if pad_id is None else checked_int("pad_id", pad_id, minimum=0)
  return eos_ids, pad_id


def vocab_size_of_lm(model) -> int | None:
  """The vocabulary size a :class:`CausalLM` declares (``config.vocab_size`` or
  ``vocab_size``), or ``None``."""
  v = getattr(getattr(model, "config", None), "vocab_size", None)
  return v if v is not None else getattr(model, "vocab_size", None)


# --------------------------------------------------------------------------------------------
# Compilation.


def model_jit(fn, *, static_argnames: tuple[str, ...],
              model_argnames: tuple[str, ...] = ("denoise_fn",)):
  """``jax.jit`` for a sampler entry point whose keyword arguments ``model_argnames`` are models.

  Each model that is a ``jax.tree_util.Partial`` is passed as a traced pytree (its arrays are
  arguments; its function, which must be hashable, is part of the cache key): new parameters
  of the same shapes reuse the compiled program. Any other callable is static (a closure over
  arrays embeds them as constants; a new closure recompiles). ``call.jits[flags]`` is the jitted
  function for one tuple of "is a Partial" flags (``call.dynamic`` is the all-Partial one).
  """
  jits = {}
  for flags in itertools.product((False, True), repeat=len(model_argnames)):
    static = tuple(static_argnames) + tuple(
        name for name, dynamic in zip(model_argnames, flags) if not dynamic)
    jits[flags] = jax.jit(fn, static_argnames=static)

  def call(*args, **kwargs):
    flags = tuple(isinstance(kwargs[name], jax.tree_util.Partial) for name in model_argnames)
    return jits[flags](*args, **kwargs)

  call.jits = jits
  call.dynamic = jits[(True,) * len(model_argnames)]
  return call


def model_partial(func, model, *args):
  """``func(model, *args, ...)`` as a new model, keeping ``model``'s parameters traced.

  A ``jax.tree_util.Partial`` ``model`` gives a ``Partial`` (``func`` must be a module-level
  function: :func:`model_jit` passes it as a pytree, so new parameters of the same shapes reuse
  the compiled program); any other callable gives a ``functools.partial`` (static, like the
  closure it is).
  """
  if isinstance(model, jax.tree_util.Partial):
    return jax.tree_util.Partial(func, model, *args)
  return functools.partial(func, model, *args)
