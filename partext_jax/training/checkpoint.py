"""Checkpoints of the full train state, on orbax's ``CheckpointManager``.

Each step directory ``<workdir>/checkpoints/<step>/`` holds two items:

* ``state``: the :class:`TrainState` pytree (step, params, EMA params, optimiser state, rng key);
* ``metadata``: JSON (the experiment config, the tokenizer's JSON, anything else the caller adds).

Saves are atomic (orbax writes into a temporary directory and renames it when complete, so an
interrupted save never shows up as the latest step) and only the newest ``keep`` are kept.
Restoring is exact: the same arrays, dtypes and tree structure as were saved, never a cast.
Before reading, the target is compared with orbax's stored metadata (tree, shape and dtype of
every leaf): a mismatch (a different config) raises :class:`CheckpointError` naming the leaf,
the stored and requested shape/dtype, and the safe action (the original config or a new
workdir). Each save also records the SHA-256 of every file it wrote (``integrity.json`` in the
step directory); a restore re-hashes them first (one extra read of the files) and a changed or
missing file raises :class:`CheckpointError` naming it. Anything orbax raises while reading is
re-raised as :class:`CheckpointError` naming the directory.

:meth:`Checkpointer.restore_params` reads the parameters alone (inference needs no optimiser
state), from a training checkpoint or from a parameters-only export such as the committed Medusa
heads.

Example::

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=2)
    ckpt.save(state, metadata={"config": cfg.to_dict()})
    if ckpt.latest_step() is not None:
      state, metadata = ckpt.restore(abstract_state)
      params, metadata = ckpt.restore_params(abstract_params)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
from typing import Any

from etils import epath
import flax
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message names the directory."""


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly.

  ``rng`` is the run's base key (raw ``uint32[2]``); step ``k`` uses ``fold_in(rng, k)``, so the
  key never has to be advanced and a resumed run draws the same randomness. ``ema_params`` is
  ``{}`` for trainers without an EMA (the Medusa and planner heads).
  """

  step: jax.Array  # int32 scalar: number of completed optimiser steps.
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array


def abstract_like(tree):
  """``ShapeDtypeStruct`` tree of ``tree`` (a restore target that allocates nothing).

  Each leaf keeps its array's sharding (restoring onto the same mesh), and a leaf without one
  (a ``ShapeDtypeStruct`` from ``jax.eval_shape``) is placed on the first device, so a
  checkpoint written on a mesh restores on one device instead of failing with orbax's
  "topology mismatch".
  """

  def one(x):
    sharding = getattr(x, "sharding", None)
    if not isinstance(sharding, jax.sharding.Sharding):
      sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x), sharding=sharding)

  return jax.tree_util.tree_map(one, tree)


def _remove_unfinished_saves(directory: str) -> None:
  """Removes the temporary directories of saves that were killed mid-way, before a writer opens.

  orbax's own option (``cleanup_tmp_directories``) runs this clean-up in a background thread
  that it awaits only in ``save()``: a process that opened a writer and exited before its first
  save (a launcher stopping on a user error) printed that thread's traceback after its own
  one-line error. Here orbax's clean-up coroutine runs to completion before the open returns (in
  a thread of its own, as a notebook's thread already runs an event loop).
  """
  if jax.process_index() == 0 and os.path.isdir(directory):
    cleanup = ocp.path.step.temporary_paths.cleanup_temporary_paths(directory)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
      pool.submit(asyncio.run, cleanup).result()


class Checkpointer:
  """Saves and restores :class:`TrainState` plus JSON metadata under ``directory``.

  Args:
    directory: the checkpoint directory (created on open unless ``read_only``).
    keep: how many of the newest steps a writer keeps (>= 1); ignored when ``read_only``.
    read_only: open for reading only: nothing is created, pruned or cleaned up, and
      :meth:`save` raises. Readers use this so that opening the workdir of a run that is still
      training never removes the temporary directory of a save in progress.
  Raises:
    ValueError: ``keep`` < 1 for a writer.
    CheckpointError: orbax cannot open ``directory`` (the message names it).
  """

  def __init__(self, directory: str, *, keep: int | None = None, read_only: bool = False):
    if not read_only and (keep is None or keep < 1):
      raise ValueError(f"keep={keep} must be an integer >= 1 for a writable Checkpointer")
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    if not read_only:
      _remove_unfinished_saves(self.directory)
    options = ocp.CheckpointManagerOptions(
        # Not orbax's own read_only option, which logs a warning on every open; this class
        # refuses save() itself, and a reader neither creates, prunes nor cleans up.
        max_to_keep=None if read_only else keep, create=not read_only,
        enable_async_checkpointing=False, cleanup_tmp_directories=False)
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options, item_names=("state", "metadata"))
    except Exception as e:  # noqa: BLE001 - any failure to open is reported with the path.
      raise CheckpointError(f"cannot open checkpoint directory {self.directory!r}: {e}") from e

  def all_steps(self) -> list[int]:
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    self._manager.reload()
    return self._manager.latest_step()

  def step_directory(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, state: TrainState, *, metadata: dict[str, Any], force: bool = True) -> int:
    """Saves ``state`` at ``int(state.step)`` (atomically); returns the step.

    ``metadata`` must be JSON-serialisable. Raises :class:`CheckpointError` naming the directory
    if orbax fails to write.
    """
    if self.read_only:
      raise CheckpointError(f"cannot save into {self.directory!r}: opened read_only=True")
    step = int(jax.device_get(state.step))
    try:
      self._manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  metadata=ocp.args.JsonSave(metadata)),
          force=force)
      self._manager.wait_until_finished()
      if jax.process_index() == 0:
        _write_integrity(self.step_directory(step))
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"saving checkpoint step {step} under {self.directory!r} failed: "
                            f"{type(e).__name__}: {e}") from e
    return step

  def _latest_or(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
      if step is None:
        raise CheckpointError(f"no checkpoint found in {self.directory!r}")
    return step

  def _check_target(self, step: int, target: Any, *, partial: bool) -> None:
    """Verifies the step's files, then compares ``target`` (tree, shapes, dtypes) with the stored
    state's metadata."""
    path = self.step_directory(step)
    _verify_integrity(path)
    handler = ocp.PyTreeCheckpointHandler()  # Reads the tree metadata of the "state" item.
    try:
      stored = handler.metadata(epath.Path(path) / "state")
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"checkpoint at {path!r} has unreadable metadata: "
                            f"{type(e).__name__}: {_first_line(e)}") from e
    finally:
      handler.close()
    stored = getattr(stored, "tree", stored)
    stored_leaves = _leaves_by_path(stored)
    wanted = _leaves_by_path(target)
    advice = ("the checkpoint itself is fine: restore it with the config that wrote it (the one "
              "stored in its metadata) or train into a new workdir")
    missing = sorted(set(wanted) - set(stored_leaves))
    extra = [] if partial else sorted(set(stored_leaves) - set(wanted))
    if missing or extra:
      raise CheckpointError(
          f"checkpoint at {path!r} holds another tree than requested (missing leaves "
          f"{missing[:5]}, unexpected leaves {extra[:5]}): {advice}")
    for key, leaf in wanted.items():
      have = stored_leaves[key]
      have_shape, have_dtype = tuple(getattr(have, "shape", ())), getattr(have, "dtype", None)
      want_shape, want_dtype = tuple(jnp.shape(leaf)), jnp.dtype(jnp.result_type(leaf))
      if have_shape != want_shape or (have_dtype is not None
                                      and jnp.dtype(have_dtype) != want_dtype):
        raise CheckpointError(
            f"checkpoint at {path!r}: leaf {key} is stored as {have_dtype}{list(have_shape)} but "
            f"{want_dtype}{list(want_shape)} was requested (a different config; restores never "
            f"cast or reshape): {advice}")

  def _restore(self, step: int, what: str, **items) -> dict[str, Any]:
    """``manager.restore`` of ``items``; any failure (or a missing item) names the directory."""
    path = self.step_directory(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
      restored = {name: restored[name] for name in items}
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types; name the path.
      raise CheckpointError(
          f"checkpoint {what} at {path!r} is unreadable (truncated or corrupt?): "
          f"{type(e).__name__}: {_first_line(e)}. Restore an older step (step=..., "
          f"Checkpointer.all_steps() lists them) or train into a new workdir.") from e
    missing = [name for name, value in restored.items() if value is None]
    if missing:
      raise CheckpointError(f"checkpoint at {path!r} is incomplete (missing {missing})")
    return restored

  def restore(self, target: TrainState, *, step: int | None = None
              ) -> tuple[TrainState, dict[str, Any]]:
    """Restores ``step`` (default: the latest) into the structure of ``target``.

    Args:
      target: a :class:`TrainState` of arrays or ``ShapeDtypeStruct`` (see :func:`abstract_like`);
        the restored arrays take its shapes, dtypes and shardings.
      step: the step to read; default the latest.
    Returns:
      ``(state, metadata)``.
    Raises:
      CheckpointError: no checkpoint, an unreadable, corrupted (integrity) or incomplete one, or
        one whose tree, shapes or dtypes differ from ``target``'s (written by another config:
        the message names the leaf, stored vs requested); names the directory.
    """
    step = self._latest_or(step)
    self._check_target(step, target, partial=False)
    restored = self._restore(step, "state", state=ocp.args.StandardRestore(abstract_like(target)),
                             metadata=ocp.args.JsonRestore())
    state = restored["state"]
    if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(target):
      raise CheckpointError(f"checkpoint at {self.step_directory(step)!r} does not match the "
                            f"expected train state structure (was it written by a different "
                            f"config?)")
    return state, dict(restored["metadata"])

  def restore_params(self, target_params: Any, *, step: int | None = None
                     ) -> tuple[Any, dict[str, Any]]:
    """Only ``state.params`` (and the metadata): no optimiser state needs to be rebuilt.

    Reads a full training checkpoint and a parameters-only export alike (one whose other
    fields are empty). ``target_params``: the parameter tree of arrays or ``ShapeDtypeStruct``.
    Raises :class:`CheckpointError` (naming the directory) as :meth:`restore` does, also when a
    parameter's shape or dtype differs from the target's.
    """
    step = self._latest_or(step)
    target = {"params": abstract_like(target_params)}
    self._check_target(step, target, partial=True)
    restored = self._restore(
        step, "parameters",
        state=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True),
        metadata=ocp.args.JsonRestore())
    return restored["state"]["params"], dict(restored["metadata"])

  def restore_metadata(self, *, step: int | None = None) -> dict[str, Any]:
    """Only the JSON metadata (e.g. to rebuild the config and tokenizer before the state)."""
    step = self._latest_or(step)
    return dict(self._restore(step, "metadata", metadata=ocp.args.JsonRestore())["metadata"])

  def close(self) -> None:
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


INTEGRITY_FILE = "integrity.json"


def _leaves_by_path(tree) -> dict[str, Any]:
  """``{"params/w": leaf}``: paths spelled alike for dataclass fields, dict keys and indices."""
  def name(entry):
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)
  return {"/".join(name(e) for e in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _hash_files(step_dir: str) -> dict[str, str]:
  """SHA-256 of every file under ``step_dir`` (relative paths), the integrity file excluded."""
  digests = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      full = os.path.join(root, name)
      rel = os.path.relpath(full, step_dir)
      if rel == INTEGRITY_FILE:
        continue
      sha = hashlib.sha256()
      with open(full, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          sha.update(chunk)
      digests[rel] = sha.hexdigest()
  return digests


def _write_integrity(step_dir: str) -> None:
  with open(os.path.join(step_dir, INTEGRITY_FILE), "w", encoding="utf-8") as f:
    json.dump({"sha256": _hash_files(step_dir)}, f, indent=0, sort_keys=True)


def _verify_integrity(step_dir: str) -> None:
  """Re-hashes the files recorded at save time (steps saved without a record are not checked)."""
  record = os.path.join(step_dir, INTEGRITY_FILE)
  if not os.path.exists(record):
    return
  with open(record, encoding="utf-8") as f:
    expected = json.load(f)["sha256"]
  actual = _hash_files(step_dir)
  for rel, digest in sorted(expected.items()):
    if actual.get(rel) != digest:
      state = "is missing" if rel not in actual else "has changed since it was saved"
      raise CheckpointError(
          f"checkpoint file {os.path.join(step_dir, rel)!r} {state} (SHA-256 differs from "
          f"{INTEGRITY_FILE}): this step is corrupt; restore an older step (step=..., "
          f"Checkpointer.all_steps() lists them) or retrain into a new workdir")


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else "(no message)"
