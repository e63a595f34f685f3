r"""Meshes, logical-axis rules and sharded execution of training and every sampler.

One model and one sampler serve a laptop and a pod: only the mesh changes
(``docs/algorithms.md#sharding``). A mesh has three named
axes (sizes multiply to the device count; ``-1`` fills in what is left)::

    data    batch rows (data parallelism)
    fsdp    batch rows too, and the "embed" dimension of every parameter (ZeRO-3 / FSDP)
    tensor  the "vocab", "mlp", "heads" and "kv_heads" dimensions (Megatron tensor parallelism)

Logical axis rules map the models' logical names (``partext_jax.models.layers``) to mesh axes:

==========  ====================  ==========  ==========
logical     mesh axes             logical     mesh axes
==========  ====================  ==========  ==========
batch       ("data", "fsdp")      embed       "fsdp"
length      replicated            mlp         "tensor"
vocab       "tensor"              heads       "tensor"
head_dim    replicated            kv_heads    "tensor"
==========  ====================  ==========  ==========

A parameter dimension whose size the mesh axes do not divide (e.g. 2 KV heads on ``tensor=4``,
or the denoiser's ``V + 1`` embedding rows) is replicated instead (:func:`param_specs` reports
which); the batch must divide (``data * fsdp``), else a ``ValueError``.

Axis types. ``jax.make_mesh`` defaults to *Explicit* axes in this JAX version, where every op's
output sharding is part of its type and ops whose sharding is ambiguous (an einsum contracting a
sharded dimension, a gather from a sharded table) raise unless annotated with ``out_sharding=``.
The models and samplers are plain, unannotated JAX, so this module builds **Auto** meshes: XLA's
sharding propagation (GSPMD / Shardy) derives every intermediate sharding from the shardings
of the jit inputs/outputs and of a few ``with_sharding_constraint`` calls (tokens and logits
batch-sharded, the KV cache ``(batch, kv_heads)``-sharded), and inserts the collectives. The
cost of Auto is that a poor propagation choice is silent (only slower), never a wrong value.

Randomness does not depend on the mesh. ``jax.random`` values are a function of the key and the
global shape, whatever the sharding (``jax_threefry_partitionable``, on by default, also keeps
their generation local to each device). The masked samplers additionally key row ``r`` of step
``i`` by ``fold_in(fold_in(key, i), r)`` with ``r`` the *global* row index, never the device's;
:func:`check_rng_is_mesh_independent` asserts the config.

Multi-host. Each process runs the same program (``jax.distributed.initialize`` first; see
:func:`initialize_distributed`). Inputs are passed as host values that every process holds in
full (the same prompts, the same parameters); :func:`put` builds the global array from each
process's addressable slices (``jax.make_array_from_callback``) and :func:`to_host` gathers a
result back (``process_allgather`` when it spans other processes).

Usage::

    from partext_jax import parallel
    from partext_jax.models import denoiser
    from partext_jax.masked.tau_leaping import tau_leaping

    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)          # 8 devices
    axes = denoiser.param_logical_axes(cfg)
    params = parallel.shard_params(params, axes, mesh)
    build = functools.partial(tau_leaping, mask_id=cfg.mask_id, num_steps=64)  # make once
    tokens, info = parallel.sample(build, jax.random.key(0), x_init, params=params,
                                   apply_fn=denoiser.DenoiserApply(cfg), mesh=mesh)

    model = llama.LlamaLM(llama.LlamaConfig.tiny())
    params = parallel.shard_params(params, llama.param_logical_axes(model.config), mesh)
    tokens, info = parallel.generate(key, model, params, prompts, mesh=mesh, max_new_tokens=16)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXIS_NAMES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes (a tuple: the dimension is split over their product; () keeps it
# replicated). "batch" and "length" are activation axes; the rest are the models' parameter axes.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", ()),
    ("vocab", ("tensor",)),
    ("embed", ("fsdp",)),
    ("mlp", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("head_dim", ()),
    ("layers", ()),
)


# --------------------------------------------------------------------------------------------
# Meshes.


def resolve_mesh_shape(num_devices: int, *, data: int = -1, fsdp: int = 1, tensor: int = 1
                       ) -> tuple[int, int, int]:
  """``(data, fsdp, tensor)`` with a ``-1`` replaced so that the product is ``num_devices``.

  At most one axis may be ``-1``; sizes must be ``>= 1`` otherwise, and their product must equal
  ``num_devices`` (with a ``-1``: divide it); a ``ValueError`` says which rule fails.
  """
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  for name, v in sizes.items():
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or (v < 1 and v != -1):
      raise ValueError(f"mesh axis {name}={v!r} must be an int >= 1 or -1 (fill in)")
  auto = [n for n, v in sizes.items() if v == -1]
  if len(auto) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {auto} (data={data}, fsdp={fsdp}, "
                     f"tensor={tensor})")
  fixed = math.prod(v for v in sizes.values() if v != -1)
  if auto:
    if num_devices % fixed:
      raise ValueError(f"mesh data={data}, fsdp={fsdp}, tensor={tensor}: the fixed axes "
                       f"(product {fixed}) do not divide the {num_devices} devices")
    sizes[auto[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"mesh data={data}, fsdp={fsdp}, tensor={tensor} has {fixed} devices but "
                     f"{num_devices} are available; make the product {num_devices} or set one "
                     f"axis to -1")
  return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(*, data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[Any] | None = None) -> Mesh:
  """A ``(data, fsdp, tensor)`` mesh with **Auto** axis types over ``devices`` (default: all).

  ``jax.make_mesh`` orders devices for the physical topology (ICI rings on TPU); across processes
  ``jax.devices()`` lists every process's devices, so the same call on each host builds the same
  global mesh.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(len(devices), data=data, fsdp=fsdp, tensor=tensor)
  return jax.make_mesh(shape, AXIS_NAMES, axis_types=(AxisType.Auto,) * len(AXIS_NAMES),
                       devices=devices)


def mesh_from_config(mesh_cfg, *, devices: Sequence[Any] | None = None) -> Mesh:
  """:func:`make_mesh` over ``devices`` (default: all) from ``mesh_cfg``: anything with ``data``,
  ``fsdp``, ``tensor`` attributes (e.g. a config's ``mesh`` section)."""
  return make_mesh(data=mesh_cfg.data, fsdp=mesh_cfg.fsdp, tensor=mesh_cfg.tensor,
                   devices=devices)


def mesh_shape(mesh) -> dict[str, int]:
  """``{axis name: size}`` of ``mesh`` (a ``Mesh`` or ``AbstractMesh``)."""
  return dict(mesh.shape)


def describe(mesh: Mesh) -> str:
  """A one-line description of ``mesh``: ``"data=2 x fsdp=2 x tensor=2 (8 devices, 1 process)"``."""
  axes = " x ".join(f"{k}={v}" for k, v in mesh_shape(mesh).items())
  if not isinstance(mesh, Mesh):  # AbstractMesh: no devices.
    return axes
  procs = len({d.process_index for d in mesh.devices.flat})
  return f"{axes} ({mesh.devices.size} devices, {procs} process{'es' if procs > 1 else ''})"


def initialize_distributed(*, coordinator_address: str, num_processes: int, process_id: int,
                           local_device_ids: Sequence[int] | None = None) -> None:
  """``jax.distributed.initialize`` (must run before any other JAX call in the process).

  ``coordinator_address`` is ``host:port`` of process 0, ``num_processes`` the process count,
  ``process_id`` this process's index in ``[0, num_processes)`` and ``local_device_ids`` the
  devices this process uses (default: all of its devices).

  On CPU the cross-process collectives go through gloo (``jax_cpu_collectives_implementation``),
  set here explicitly. On TPU pods / SLURM, ``jax.distributed.initialize()`` with no arguments
  detects the cluster instead.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=local_device_ids)


def check_rng_is_mesh_independent() -> None:
  """Raises if ``jax_threefry_partitionable`` is off.

  Values would still not depend on the mesh, but generating a sharded array of random bits would
  need the whole array on every device (an all-gather of the counter space): keep the default.
  """
  if not jax.config.jax_threefry_partitionable:
    raise ValueError("jax_threefry_partitionable is False: random bits of a sharded array are "
                     "then generated unsharded on every device. Set it to True (the default).")


# --------------------------------------------------------------------------------------------
# Logical axes -> PartitionSpec.


def normalize_rules(rules) -> tuple[tuple[str, tuple[str, ...]], ...]:
  """``rules`` (a dict or ``(logical name, mesh axes)`` pairs) as a hashable tuple of
  ``(logical name, mesh axes tuple)``."""
  return tuple(_rules_dict(rules).items())


def _rules_dict(rules) -> dict[str, tuple[str, ...]]:
  out = {}
  for name, axes in (rules.items() if isinstance(rules, Mapping) else rules):
    axes = (axes,) if isinstance(axes, str) else tuple(() if axes is None else axes)
    out[name] = axes
  return out


def _mesh_axes_for(name, rules: dict[str, tuple[str, ...]], mesh: Mesh) -> tuple[str, ...]:
  if name is None:
    return ()
  if name not in rules:
    raise ValueError(f"unknown logical axis {name!r}; the rules know {sorted(rules)} (pass "
                     f"rules= with an entry for it)")
  axes = rules[name]
  for a in axes:
    if a not in mesh.axis_names:
      raise ValueError(f"rule {name!r} -> {axes} names mesh axis {a!r}, not one of "
                       f"{mesh.axis_names}")
  return axes


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int] | None, mesh: Mesh, *,
                    rules=DEFAULT_RULES) -> P:
  """The mesh ``PartitionSpec`` of one array with logical axis names ``logical`` on ``mesh``,
  mapped by ``rules`` (default :data:`DEFAULT_RULES`).

  With ``shape`` given, a dimension the mesh axes do not divide is replicated instead; a mesh
  axis is used at most once per array (a later dimension asking for it is replicated). Size-1
  mesh axes are dropped (they shard nothing).
  """
  rules = _rules_dict(rules)
  sizes = mesh_shape(mesh)
  used: set[str] = set()
  out = []
  for d, name in enumerate(logical):
    axes = tuple(a for a in _mesh_axes_for(name, rules, mesh) if sizes[a] > 1 and a not in used)
    if shape is not None and axes and shape[d] % math.prod(sizes[a] for a in axes):
      axes = ()
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*out)


def _is_spec(x) -> bool:
  return isinstance(x, P)


def param_specs(param_axes, params, mesh: Mesh, *, rules=DEFAULT_RULES):
  """Tree of mesh ``PartitionSpec`` for ``params`` (arrays or ``ShapeDtypeStruct``).

  ``param_axes`` is the models' ``param_logical_axes(config)`` tree (``PartitionSpec`` leaves of
  logical names); ``rules`` map logical names to mesh axes (default :data:`DEFAULT_RULES`).
  Raises ``ValueError`` on an unknown logical axis or a tree mismatch.
  """
  try:
    return jax.tree_util.tree_map(
        lambda spec, x: logical_to_spec(tuple(spec), np.shape(x), mesh, rules=rules),
        param_axes, params, is_leaf=_is_spec)
  except ValueError as e:
    if "unknown logical axis" in str(e) or "names mesh axis" in str(e):
      raise
    raise ValueError(f"param_axes and params have different structures: {e}") from e


def param_shardings(param_axes, params, mesh: Mesh, *, rules=DEFAULT_RULES):
  """Tree of ``NamedSharding`` on ``mesh`` for ``params`` (see :func:`param_specs` for
  ``param_axes`` and ``rules``)."""
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s),
                                param_specs(param_axes, params, mesh, rules=rules),
                                is_leaf=_is_spec)


def batch_axes(mesh: Mesh, *, rules=DEFAULT_RULES) -> tuple[str, ...]:
  """Axes of ``mesh`` the batch is split over by ``rules`` (default :data:`DEFAULT_RULES`; size-1
  axes dropped)."""
  sizes = mesh_shape(mesh)
  return tuple(a for a in _mesh_axes_for("batch", _rules_dict(rules), mesh) if sizes[a] > 1)


def batch_spec(mesh: Mesh, ndim: int, *, rules=DEFAULT_RULES) -> P:
  """The ``PartitionSpec`` of an ``ndim``-dimensional batch array on ``mesh``: the leading (batch)
  dimension split over the batch axes of ``rules`` (:func:`batch_axes`), the others replicated.
  """
  axes = batch_axes(mesh, rules=rules)
  return P(axes if axes else None, *([None] * (ndim - 1)))


def batch_sharding(mesh: Mesh, ndim: int = 2, *, rules=DEFAULT_RULES) -> NamedSharding:
  """A ``NamedSharding`` on ``mesh`` for ``ndim``-dimensional batches: rows split over the batch
  axes of ``rules`` (:func:`batch_axes`), every other dimension replicated."""
  return NamedSharding(mesh, batch_spec(mesh, ndim, rules=rules))


def replicated(mesh: Mesh) -> NamedSharding:
  """A ``NamedSharding`` that replicates an array on every device of ``mesh``."""
  return NamedSharding(mesh, P())


def check_batch(batch_size: int, mesh: Mesh, *, rules=DEFAULT_RULES, name: str = "batch") -> None:
  """Checks that ``batch_size`` rows split evenly over the batch axes of ``mesh`` under ``rules``.

  Raises:
    ValueError: naming ``name`` (what the batch is), the size and the axes, if they do not.
  """
  axes = batch_axes(mesh, rules=rules)
  n = math.prod(mesh_shape(mesh)[a] for a in axes)
  if batch_size % n:
    raise ValueError(f"{name} size {batch_size} is not divisible by the batch mesh axes {axes} "
                     f"(product {n}) of mesh {describe(mesh)}; use a batch that is a multiple of "
                     f"{n} or a smaller data/fsdp axis")


# --------------------------------------------------------------------------------------------
# Placing values on the mesh and getting them back.


def put(x, sharding: NamedSharding):
  """``x`` (host value or array, the same full value on every process) as a global array placed
  by ``sharding``.

  Single process: ``jax.device_put``. Several processes: each builds its addressable shards from
  its own full copy (``jax.make_array_from_callback``), so nothing crosses hosts. PRNG key arrays
  travel as their raw ``uint32`` data.
  """
  if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    impl = jax.random.key_impl(x)
    data = put(jax.random.key_data(x), NamedSharding(sharding.mesh, P()))
    return jax.random.wrap_key_data(data, impl=impl)
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return jax.device_put(x, sharding)  # Already global: a reshard, run by every process.
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_tree(tree, shardings):
  """:func:`put` leaf by leaf (``shardings``: a tree of ``NamedSharding`` matching ``tree``)."""
  return jax.tree_util.tree_map(put, tree, shardings)


def shard_params(params, param_axes, mesh: Mesh, *, rules=DEFAULT_RULES):
  """``params`` placed on ``mesh`` by the logical ``rules`` (see :func:`param_specs` for
  ``param_axes``)."""
  return put_tree(params, param_shardings(param_axes, params, mesh, rules=rules))


def shard_batch(x, mesh: Mesh, *, rules=DEFAULT_RULES):
  """Rows of ``x`` (``[B, ...]``) split over the batch axes of ``mesh`` under ``rules``.

  Raises:
    ValueError: if ``x`` is a scalar or ``B`` does not split evenly (:func:`check_batch`).
  """
  shape = np.shape(x)
  if not shape:
    raise ValueError("shard_batch needs an array with a leading batch dimension, got a scalar")
  check_batch(shape[0], mesh, rules=rules)
  return put(x, batch_sharding(mesh, len(shape), rules=rules))


def to_host(x) -> np.ndarray:
  """The global array ``x`` as numpy, gathered from every process when it spans several."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def bytes_per_device(tree) -> dict[Any, int]:
  """Bytes of ``tree``'s addressable shards held by each local device."""
  out: dict[Any, int] = {}
  for leaf in jax.tree_util.tree_leaves(tree):
    for shard in leaf.addressable_shards:
      out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
  return out


def expected_bytes_per_device(params, specs, mesh: Mesh) -> int:
  """``sum_leaf nbytes(leaf) / prod(mesh sizes of its sharded dims)``: the ideal bytes per device
  of ``params`` placed by ``specs`` (the tree of :func:`param_specs`) on ``mesh``."""
  sizes = mesh_shape(mesh)
  total = 0
  for x, spec in zip(jax.tree_util.tree_leaves(params),
                     jax.tree_util.tree_leaves(specs, is_leaf=_is_spec)):
    split = 1
    for entry in spec:
      for a in (() if entry is None else (entry,) if isinstance(entry, str) else entry):
        split *= sizes[a]
    total += x.size * jnp.dtype(x.dtype).itemsize // split
  return total


