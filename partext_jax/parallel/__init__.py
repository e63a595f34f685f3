r"""Device meshes, logical-axis sharding rules, sharded runs and multi-host start.

One model and one sampler serve a laptop and a pod: only the mesh changes
(``docs/algorithms.md#sharding``).

* :mod:`~partext_jax.parallel.mesh` -- ``(data, fsdp, tensor)`` meshes, the logical-axis rules
  that place every parameter, host-to-mesh placement (multi-host included), memory per device.
* :mod:`~partext_jax.parallel.runs` -- any masked sampler (:func:`sample`) and autoregressive
  generation (:func:`generate`) on a mesh.

Usage::

    from partext_jax import parallel
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)          # 8 devices
    params = parallel.shard_params(params, denoiser.param_logical_axes(cfg), mesh)
    tokens, info = parallel.sample(build, jax.random.key(0), x_init, params=params,
                                   apply_fn=denoiser.DenoiserApply(cfg), mesh=mesh)
"""

from partext_jax.parallel.mesh import (AXIS_NAMES, DEFAULT_RULES, batch_axes, batch_sharding,
                                       batch_spec, bytes_per_device, check_batch,
                                       check_rng_is_mesh_independent, describe,
                                       expected_bytes_per_device, initialize_distributed,
                                       logical_to_spec, make_mesh, mesh_from_config, mesh_shape,
                                       normalize_rules, param_shardings, param_specs, put,
                                       put_tree, replicated, resolve_mesh_shape, shard_batch,
                                       shard_params, to_host)
from partext_jax.parallel.runs import MeshDenoiser, MeshLM, generate, sample

__all__ = [
    "AXIS_NAMES", "DEFAULT_RULES", "MeshDenoiser", "MeshLM", "batch_axes", "batch_sharding",
    "batch_spec", "bytes_per_device", "check_batch", "check_rng_is_mesh_independent", "describe",
    "expected_bytes_per_device", "generate", "initialize_distributed", "logical_to_spec",
    "make_mesh", "mesh_from_config", "mesh_shape", "normalize_rules", "param_shardings",
    "param_specs", "put", "put_tree", "replicated", "resolve_mesh_shape", "sample", "shard_batch",
    "shard_params", "to_host",
]
