"""Timing of one cell: a method beside its autoregressive reference in the same process.

Wall time (best of the repeats), CPU seconds of the timed calls (every thread) and resident
memory: once everything is loaded (before any compilation) and its peak during the timed calls
only (the high-water mark is reset after compilation, ``/proc/self/clear_refs``). Part of the
measurement code whose digest keys the cache (``paradigms.cache``).
"""

from __future__ import annotations

import resource
import time
from typing import Callable, NamedTuple


def peak_reset() -> bool:
  """Resets this process's resident-memory high-water mark; False where Linux refuses."""
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")
    return True
  except OSError:
    return False


def peak_mb() -> float:
  """Peak resident memory since the last reset (``VmHWM``; else ``ru_maxrss``), MiB."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
  except (OSError, StopIteration):
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _resident_mb() -> float:
  """Current resident memory (``VmRSS``), MiB; 0 where ``/proc`` is absent."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
  except (OSError, StopIteration):
    return 0.0


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


class Side(NamedTuple):
  """One side of a cell: summed best wall seconds, CPU seconds of those calls, peak MiB, the
  output of every call (one per prompt) and the resident MiB before anything was compiled."""

  seconds: float
  cpu_seconds: float
  peak_rss_mb: float
  outputs: list
  loaded_rss_mb: float


def _block(x):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.map(lambda v: v.block_until_ready() if hasattr(v, "block_until_ready") else v,
                      x)


def side_by_side(method: list[Callable], reference: list[Callable], repeats: int, *,
                 warm_all: bool = False) -> tuple[Side, Side]:
  """Times ``method[i]()`` and ``reference[i]()`` (one callable per prompt), alternating.

  The first callable of each list (every one with ``warm_all``: shapes that differ per
  prompt) runs once untimed first (compilation, warm-up). Then, ``repeats`` times, each
  prompt's reference and method calls run back to back; per prompt the best call is kept and
  the seconds are summed over prompts. The memory high-water mark is reset before each timed
  call, so the peak is that of generation, not of compilation or loading; the resident memory
  before the first compilation (runtime + every loaded weight) is kept too.
  """
  loaded = _resident_mb()
  for fn in [*reference, *method] if warm_all else [reference[0], method[0]]:
    _block(fn())
  sides = []
  best = {id(fn): (float("inf"), 0.0, None) for fn in [*method, *reference]}
  peaks = {"method": 0.0, "reference": 0.0}
  for _ in range(repeats):
    for ref, fn in zip(reference, method):
      for which, call in (("reference", ref), ("method", fn)):
        peak_reset()
        cpu, start = _cpu_seconds(), time.perf_counter()
        out = _block(call())
        seconds = time.perf_counter() - start
        peaks[which] = max(peaks[which], peak_mb())
        if seconds < best[id(call)][0]:
          best[id(call)] = (seconds, _cpu_seconds() - cpu, out)
  for which, fns in (("method", method), ("reference", reference)):
    picked = [best[id(fn)] for fn in fns]
    sides.append(Side(sum(p[0] for p in picked), sum(p[1] for p in picked), peaks[which],
                      [p[2] for p in picked], loaded))
  return sides[0], sides[1]
