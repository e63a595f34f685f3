"""Sharded runs: masked samplers and autoregressive generation on a device mesh.

:func:`sample` runs any masked sampler with the model's activations and the batch split over the
mesh (:class:`MeshDenoiser`); :func:`generate` runs :func:`partext_jax.ar.sampling.generate` with
the KV cache pinned to the mesh (:class:`MeshLM`). Results do not depend on the mesh
(``docs/algorithms.md#sharding``). Meshes and placement are in :mod:`partext_jax.parallel.mesh`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from partext_jax.ar import processors as lp
from partext_jax.ar import sampling as ar
from partext_jax.models.attention import KVCache
from partext_jax.parallel.mesh import (DEFAULT_RULES, batch_sharding, check_batch,
                                       check_rng_is_mesh_independent, logical_to_spec,
                                       normalize_rules, put, replicated, shard_batch, to_host)


# --------------------------------------------------------------------------------------------
# Models that keep their activations / caches on the mesh.


def _constrain(x, sharding):
  return jax.lax.with_sharding_constraint(x, sharding)


@dataclasses.dataclass(frozen=True)
class MeshDenoiser:
  """Hashable ``(params, tokens, t) -> logits`` that pins tokens and logits to batch sharding.

  Wrap a denoiser apply function (e.g. :class:`partext_jax.models.denoiser.DenoiserApply`) so the
  samplers' loop carry and the model's input and output stay split over the batch axes (the
  parameters stay where :func:`shard_params` put them; XLA moves activations between them).
  """

  apply_fn: Callable
  mesh: Mesh
  rules: tuple = DEFAULT_RULES

  def __call__(self, params, tokens, t):
    tokens = _constrain(tokens, batch_sharding(self.mesh, 2, rules=self.rules))
    logits = self.apply_fn(params, tokens, t)
    return _constrain(logits, batch_sharding(self.mesh, logits.ndim, rules=self.rules))


@dataclasses.dataclass(frozen=True)
class MeshLM:
  """A :class:`~partext_jax.base.CausalLM` whose KV cache lives on the mesh.

  The :class:`~partext_jax.models.attention.KVCache` ``[layers, B, kv_heads, S, head_dim]`` is
  placed by its logical axes (``KVCache.LOGICAL_AXES``): rows with the batch, heads with the K/V
  projections that write them -- when it is created and after every call, so the decode loop's
  carry never changes layout.
  """

  model: Any
  mesh: Mesh
  rules: tuple = DEFAULT_RULES

  def _cache_sharding(self, shape) -> NamedSharding:
    spec = logical_to_spec(KVCache.LOGICAL_AXES, shape, self.mesh, rules=self.rules)
    return NamedSharding(self.mesh, spec)

  def _pin_cache(self, cache: KVCache) -> KVCache:
    if not isinstance(cache, KVCache):
      raise TypeError(f"MeshLM places a KVCache [layers, B, kv_heads, S, head_dim]; the model's "
                      f"cache is a {type(cache).__name__}")
    return KVCache(*(_constrain(x, self._cache_sharding(x.shape)) for x in cache))

  def __call__(self, params, tokens, positions, attn_mask, cache, write_slots, **kwargs):
    tokens = _constrain(tokens, batch_sharding(self.mesh, 2, rules=self.rules))
    out = self.model(params, tokens, positions, attn_mask, cache, write_slots, **kwargs)
    return out._replace(cache=self._pin_cache(out.cache))

  def init_cache(self, batch: int, max_len: int, dtype=None):
    return self._pin_cache(self.model.init_cache(batch, max_len, dtype))

  def __getattr__(self, name):  # config, context_length, eos_id, pad_id, init, ...
    if name in ("model", "mesh", "rules"):
      raise AttributeError(name)
    return getattr(self.model, name)


# --------------------------------------------------------------------------------------------
# Running samplers on a mesh.


@functools.lru_cache(maxsize=None)
def _masked_jit(out_tokens: NamedSharding):
  def run(rng_key, x_init, params, *, build, apply_fn):
    return build(jax.tree_util.Partial(apply_fn, params)).sample(rng_key, x_init)
  return jax.jit(run, static_argnames=("build", "apply_fn"), out_shardings=(out_tokens, None))


def sample(build: Callable, rng_key, x_init, *, params, apply_fn: Callable, mesh: Mesh,
           rules=DEFAULT_RULES):
  """Runs a masked sampler on ``mesh``: ``(tokens int32[B, L], info)``, tokens batch-sharded.

  Args:
    build: ``denoise_fn -> MaskedSampler``, e.g. ``functools.partial(tau_leaping, mask_id=V,
      num_steps=64)``. It is a static jit argument: keep one object to reuse the compilation.
    rng_key: the sampler's key (replicated: every row's key is derived from it and its global
      row index, so results do not depend on the mesh).
    x_init: ``int32[B, L]`` host value (the same on every process); ``B`` must divide over the
      batch axes.
    params: the model's parameters, placed with :func:`shard_params` (arrays placed otherwise
      are used where they are).
    apply_fn: hashable ``(params, tokens, t) -> logits`` (``DenoiserApply(cfg)``); wrapped in
      :class:`MeshDenoiser`.
    mesh: the device mesh.
    rules: logical-axis rules (default :data:`~partext_jax.parallel.mesh.DEFAULT_RULES`).

  The sampler's own input checks run on the host value before anything is compiled.

  Raises:
    ValueError: ``x_init`` not ``[batch, length]``, a batch that does not divide over the batch
      axes, or the sampler's own input errors; TypeError: those of the sampler.
  """
  check_rng_is_mesh_independent()
  shape = np.shape(x_init)
  if len(shape) != 2:
    raise ValueError(f"x_init must have shape [batch, length], got {shape}")
  check_batch(shape[0], mesh, rules=rules, name="x_init batch")
  model = MeshDenoiser(apply_fn, mesh, normalize_rules(rules))
  # Host-side validation by the sampler itself (dtype, ids, mask_id, hyper-parameters).
  build(jax.tree_util.Partial(model, params)).init(jnp.asarray(to_host(x_init)))
  x = shard_batch(x_init, mesh, rules=rules)
  key = put(rng_key, replicated(mesh))
  return _masked_jit(batch_sharding(mesh, 2, rules=rules))(key, x, params, build=build,
                                                           apply_fn=model)


@functools.lru_cache(maxsize=None)
def _generate_jit(out_tokens: NamedSharding):
  return jax.jit(ar.generate_impl, static_argnames=ar.STATIC_ARGNAMES,
                 out_shardings=(out_tokens, None))


def generate(rng_key, model, params, prompts, *, mesh: Mesh, max_new_tokens: int,
             processor: Callable | None = None, eos_id="model", pad_id: int | None = None,
             padding: str = "left", min_bucket: int = 16, rules=DEFAULT_RULES):
  """:func:`partext_jax.ar.sampling.generate` on ``mesh``.

  ``rng_key``, ``model``, ``params``, ``prompts``, ``max_new_tokens``, ``processor``,
  ``eos_id``, ``pad_id``, ``padding`` and ``min_bucket`` mean what they mean there; ``rules``
  are the logical-axis rules (default :data:`~partext_jax.parallel.mesh.DEFAULT_RULES`).

  Prompts are checked and padded on the host exactly as ``generate`` does
  (:func:`partext_jax.ar.sampling.prepare_batch`), rows split over the batch axes, parameters as
  placed by :func:`shard_params`, and the KV cache pinned by :class:`MeshLM`.
  Returns ``(tokens int32[B, N] batch-sharded, GenerateInfo)``. Raises ``ValueError`` /
  ``TypeError`` for ``generate``'s bad arguments or a batch that does not divide over the mesh.
  """
  check_rng_is_mesh_independent()
  processor = lp.greedy() if processor is None else processor
  batch = ar.prepare_batch(model, prompts, max_new_tokens=max_new_tokens, processor=processor,
                           eos_id=eos_id, pad_id=pad_id, padding=padding, min_bucket=min_bucket)
  check_batch(batch.tokens.shape[0], mesh, rules=rules, name="prompts batch")
  fn = _generate_jit(batch_sharding(mesh, 2, rules=rules))
  return fn(put(rng_key, replicated(mesh)), params, shard_batch(batch.tokens, mesh, rules=rules),
            shard_batch(batch.lengths, mesh, rules=rules),
            model=MeshLM(model, mesh, normalize_rules(rules)),
            max_new_tokens=int(max_new_tokens), processor=processor,
            eos_ids=batch.eos_ids, pad_id=batch.pad_id, padding=padding, stream_callback=None)
