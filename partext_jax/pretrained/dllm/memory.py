"""Memory plan per device of a diffusion LM on a mesh, by ``jax.eval_shape`` (no FLOPs, no
devices): what an 8B model needs before anyone tries to load it.

For a spec, a ``(data, fsdp, tensor)`` mesh and a batch of ``[B, L]`` tokens, every array's global
shape comes from abstract evaluation (the parameters from ``init_params``, the Fast-dLLM cache and
the logits from one full cached pass, :meth:`partext_jax.pretrained.dllm.model.DiffusionLM.cached`)
and its per-device share from the logical-axis rules (:mod:`partext_jax.parallel.mesh`): bytes /
product of the mesh axes its dimensions are split over (a dimension they do not divide stays
replicated). One layer's attention scores ``float32[B, heads, L, L]`` stand for the transient
peak. XLA's own temporaries and fragmentation are not modelled: the plan is a lower bound.
``docs/algorithms.md#real-diffusion-lms-llada-dream``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh

from partext_jax import parallel
from partext_jax.models import llama
from partext_jax.pretrained.dllm.model import DiffusionLM
from partext_jax.pretrained.dllm.spec import DLLMSpec

# The two meshes of the 8-device plan: "(8,)" = FSDP over 8 devices, "(4, 2)" = FSDP 4 x TP 2.
MESHES_8 = {"(8,)": (1, 8, 1), "(4, 2)": (1, 4, 2)}
GIB = 2.0**30


class MemoryPlan(NamedTuple):
  """Bytes per device of each part (see the module docstring)."""
  mesh: str
  params: int
  kv_cache: int
  logits: int
  attention: int

  @property
  def total(self) -> int:
    return self.params + self.kv_cache + self.logits + self.attention


def _per_device(struct, names, mesh, rules) -> int:
  spec = parallel.logical_to_spec(names, struct.shape, mesh, rules=rules)
  return parallel.expected_bytes_per_device([struct], [spec], mesh)


def memory_plan(spec: DLLMSpec, mesh_sizes: tuple[int, int, int], *, batch: int = 1,
                length: int = 1024, label: str | None = None,
                rules=parallel.DEFAULT_RULES) -> MemoryPlan:
  """The :class:`MemoryPlan` of ``spec`` (its ``config.dtype``) on a ``(data, fsdp, tensor)``
  mesh of sizes ``mesh_sizes`` for ``int32[batch, length]`` tokens, parameters placed by
  ``rules``; ``label`` names the row. Raises ``ValueError`` for bad mesh sizes."""
  mesh = AbstractMesh(tuple(int(s) for s in mesh_sizes), parallel.AXIS_NAMES)
  config = spec.config
  dtype = config.compute_dtype
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype),
                        jax.eval_shape(lambda: llama.init_params(jax.random.key(0), config)))
  param_bytes = parallel.expected_bytes_per_device(
      params, parallel.param_specs(llama.param_logical_axes(config), params, mesh, rules=rules),
      mesh)
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  t = jax.ShapeDtypeStruct((batch,), jnp.float32)
  logits, cache = jax.eval_shape(lambda p, x, s: DiffusionLM(spec).cached(
      p, x, s, jnp.broadcast_to(jnp.arange(length), x.shape), None), params, tokens, t)
  kv_names = (None, "batch", "kv_heads", "length", "head_dim")   # KVCache [L, B, G, S, D]
  kv = sum(_per_device(x, kv_names, mesh, rules) for x in cache.kv)
  scores = jax.ShapeDtypeStruct((batch, config.num_heads, length, length), jnp.float32)
  return MemoryPlan(
      mesh=label or parallel.describe(mesh), params=param_bytes, kv_cache=kv,
      logits=_per_device(logits, ("batch", "length", None), mesh, rules),
      attention=_per_device(scores, ("batch", "heads", None, None), mesh, rules))


def format_memory_plan(plans, *, title: str) -> str:
  """A markdown table (GiB per device) of the :class:`MemoryPlan` rows ``plans``, under the
  heading text ``title``."""
  lines = [title, "", "| mesh | parameters | KV cache | logits (f32) | attention scores (1 layer)"
           " | total |", "|---|---|---|---|---|---|"]
  for p in plans:
    cells = (p.params, p.kv_cache, p.logits, p.attention, p.total)
    lines.append(f"| {p.mesh} | " + " | ".join(f"{c / GIB:.3f} GiB ({c:,} B)" for c in cells)
                 + " |")
  return "\n".join(lines)


def plan_8_devices(spec: DLLMSpec, *, batch: int = 1, length: int = 1024) -> list[MemoryPlan]:
  """The plans of ``spec`` on the ``(8,)`` and ``(4, 2)`` meshes (:data:`MESHES_8`) for
  ``int32[batch, length]`` tokens (:func:`memory_plan`)."""
  describe = lambda sizes: parallel.describe(AbstractMesh(sizes, parallel.AXIS_NAMES))
  return [memory_plan(spec, sizes, batch=batch, length=length,
                      label=f"{label}: {describe(sizes)}") for label, sizes in MESHES_8.items()]
