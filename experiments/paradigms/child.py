"""The subprocess of one cell: the parent starts the launcher with ``--child`` and reads back
the JSON payload the child writes.

A fresh process per cell keeps every measurement apart (memory high-water marks, compiled
programs, imported modules). The payload holds the cell's rows (with the decoded texts and token
ids for the parent's quality scoring unless ``--timing_only``), the repository files the process
imported and their digest (the cell's code version, ``paradigms.cache``). The launcher and this
package are left out of those files: the measuring modules are keyed by the measurement digest
instead, and the rest of the package (cells, cache, report) does not change what a cell measures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile

from paradigms import EXPERIMENTS
from paradigms import LAUNCHER
from paradigms import REPO
from paradigms.cache import files_digest
from paradigms.cells import Cell, Settings
from paradigms.measure import MEASURES
from paradigms.timing import peak_mb, peak_reset

PACKAGE = os.path.dirname(os.path.abspath(__file__))


def imported_files() -> list[str]:
  """Repository ``.py`` files imported by this process, the launcher and this package
  excepted: part of a cell's code version."""
  files = set()
  for module in list(sys.modules.values()):
    path = os.path.abspath(getattr(module, "__file__", None) or "")
    if (path.startswith(REPO + os.sep) and path.endswith(".py") and path != LAUNCHER
        and not path.startswith(PACKAGE + os.sep)):
      files.add(os.path.relpath(path, REPO))
  return sorted(files)


def write_cell(cell: Cell, settings: Settings, out: str, *, timing_only: bool) -> None:
  """Runs ``cell`` in this process (the child) and writes its payload to ``out`` as JSON."""
  measure, _ = MEASURES[cell.kind]
  import jax  # pylint: disable=import-outside-toplevel,unused-import
  runtime = peak_mb()  # resident set of Python + jax before any model is loaded
  results = measure(settings, **cell.kwargs)
  files = imported_files()
  payload = {"rows": [], "files": files, "files_digest": files_digest(files),
             "peak_reset": peak_reset()}
  for m in results:
    entry = {"row": {**m.row, "runtime_rss_mb": runtime}}
    if not timing_only and m.texts is not None:
      entry.update(texts=m.texts, token_ids=m.token_ids, ignore_ids=list(m.ignore_ids))
    payload["rows"].append(entry)
  with open(out, "w", encoding="utf-8") as f:
    json.dump(payload, f)


def run_child(cell: Cell, settings: Settings, *, timing_only: bool, timeout: float) -> dict:
  """Runs ``cell`` in a fresh Python process (the launcher with ``--child``); returns its
  payload.

  Raises:
    RuntimeError: the process failed, wrote nothing or ran past ``timeout`` seconds.
  """
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "cell.json")
    command = [sys.executable, LAUNCHER, f"--child={cell.name}",
               f"--child_settings={json.dumps(dataclasses.asdict(settings))}",
               f"--child_out={out}"] + (["--timing_only"] if timing_only else [])
    # The cells compile the same SmolLM2 / MDM programs again and again, one process each:
    # jax's persistent compilation cache shares the executables (compilation is never timed,
    # so only the run's wall time changes). Cells run one at a time, so no file lock is needed.
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
        tempfile.gettempdir(), f"partext-jax-compare-xla-cache-{os.getuid()}"))
    try:
      proc = subprocess.run(command, cwd=EXPERIMENTS, capture_output=True, text=True, env=env,
                            timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
      raise RuntimeError(f"stopped after {timeout} s") from e
    if proc.returncode != 0 or not os.path.exists(out):
      tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
      raise RuntimeError(f"exit {proc.returncode}: {tail[0][:200]}")
    with open(out, encoding="utf-8") as f:
      return json.load(f)
