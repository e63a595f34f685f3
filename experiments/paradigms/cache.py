"""The cache of measured cells: one JSON line per measured (or retimed) cell.

A cell is reused only while both of these still hold:

* **its key** is sha256 over the cell (name, paradigm, method, kind, args), the values of the
  ``Settings`` fields its kind uses (``paradigms.measure.MEASURES``) and the *measurement
  digest*: sha256 over the paths and sources of the measuring modules (:data:`MEASURING`:
  ``paradigms/timing.py`` and ``paradigms/measure.py``). Adding a cell or editing the report,
  the plot, the cache or the launcher leaves the measured cells valid; editing a cell's own
  fields remeasures that cell, editing how cells are measured remeasures every one of them.
* **its files**: the repository files the cell's subprocess imported (the library modules and
  ``experiments/`` helpers such as ``tour.py``; the launcher and this package are left out,
  ``paradigms.child``), whose digest is stored with the entry and checked again on reuse, so a
  change to the code a cell ran remeasures that cell alone. Checkpoints and assets are not
  hashed.

The newest line of a key wins (``--retime`` appends a line with new timings and the old
quality). The quality scores (``paradigms.report.score``, run in the parent) are stored with the
entry and are not part of the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from paradigms import REPO
from paradigms.cells import Cell, Settings
from paradigms.measure import MEASURES

NAME = "compare_paradigms_cells.jsonl"
#: The measuring modules (repository paths) whose digest is part of every key.
MEASURING = ("experiments/paradigms/timing.py", "experiments/paradigms/measure.py")
#: Row fields that ``--retime`` measures again (the rest, quality included, are kept).
TIMING_FIELDS = ("seconds", "ar_seconds", "peak_rss_mb", "ar_peak_rss_mb", "loaded_rss_mb",
                 "cpu_seconds", "ar_cpu_seconds", "tokens_per_forward")


def files_digest(files) -> str | None:
  """sha256 over the files' paths (relative to the repository) and contents; ``None`` if one
  no longer exists."""
  h = hashlib.sha256()
  for rel in files:
    path = os.path.join(REPO, rel)
    if not os.path.exists(path):
      return None
    h.update(rel.encode())
    with open(path, "rb") as f:
      h.update(f.read())
  return h.hexdigest()[:16]


def measurement_digest() -> str:
  """The digest of the measuring modules (:data:`MEASURING`)."""
  return files_digest(MEASURING)


def cell_key(cell: Cell, settings: Settings, measurement: str) -> str:
  """The cache key: the cell, the settings its kind uses and the measurement digest."""
  _, used = MEASURES[cell.kind]
  what = {"cell": dataclasses.asdict(cell), "settings": {k: getattr(settings, k) for k in used},
          "measurement": measurement}
  return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_cache(path: str) -> dict[str, dict]:
  """``key -> entry`` (the newest line per key), keeping only entries whose imported files
  still have the digest they had when the cell was measured."""
  if not os.path.exists(path):
    return {}
  entries = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        entry = json.loads(line)
        entries[entry["key"]] = entry
  return {k: e for k, e in entries.items() if files_digest(e["files"]) == e["files_digest"]}


def append_cache(path: str, entry: dict) -> None:
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(entry) + "\n")


def retimed(entry: dict, payload: dict) -> dict:
  """``entry`` with the :data:`TIMING_FIELDS` of its rows taken from a ``--timing_only``
  child's ``payload`` (quality and notes kept)."""
  fresh = [e["row"] for e in payload["rows"]]
  return dict(entry, rows=[{**old, **{k: new.get(k) for k in TIMING_FIELDS}}
                           for old, new in zip(entry["rows"], fresh)])
