"""Issue 17, case 1: the sampler sweep keys its cache by the run, writes into the workdir by
default, and never reuses another model's cells or touches the tracked results."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACKED = os.path.join(REPO, "experiments", "results", "sweep_samplers")


def _run(script, *args):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, os.path.join(REPO, "experiments", script), *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc


def _digests(directory):
  return {name: hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()
          for name in sorted(os.listdir(directory))}


def _cells(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_second_model_computes_its_own_cells(tmp_path):
  tracked_before = _digests(TRACKED)
  runs = {}
  for name, extra in (("a", []), ("b", ["--config.model.d_model=48"])):
    runs[name] = str(tmp_path / name)
    _run("train.py", "--config=configs/tiny.py", f"--workdir={runs[name]}",
         "--config.train.num_steps=2", "--config.train.checkpoint_every=2",
         "--config.train.eval_every=2", *extra)
  sweep = ["--only=^tau-leaping$", "--nfe=2", "--remdm_nfe=2", "--num_samples=2", "--repeats=1"]

  first = _run("sweep_samplers.py", f"--workdir={runs['a']}", *sweep)
  cells_path = os.path.join(runs["a"], "sweep_samplers", "cells.jsonl")  # The default out_dir.
  rows_a = _cells(cells_path)
  assert sorted((r["sampler"], r["knob"]) for r in rows_a) == [("data", 0), ("tau-leaping", 2)]
  assert "sweep cells" in first.stderr  # The progress bar.
  assert os.path.exists(os.path.join(runs["a"], "sweep_samplers", "table.md"))

  # Another model, sharing the same out_dir: it computes its own cells, keyed apart.
  second = _run("sweep_samplers.py", f"--workdir={runs['b']}",
                f"--out_dir={os.path.dirname(cells_path)}", *sweep)
  rows = _cells(cells_path)
  assert len(rows) == 4
  assert {r["run"] for r in rows[:2]} != {r["run"] for r in rows[2:]}
  assert len({r["run"] for r in rows[2:]}) == 1
  assert "tau-leaping" in second.stdout.split("| sampler |")[0]  # Computed, not reused.
  table = open(os.path.join(os.path.dirname(cells_path), "table.md"), encoding="utf-8").read()
  assert runs["b"] in table and "d=48" in table and table.count("| tau-leaping |") == 1

  # The first model again: everything cached, nothing appended.
  _run("sweep_samplers.py", f"--workdir={runs['a']}", *sweep)
  assert len(_cells(cells_path)) == 4
  assert _digests(TRACKED) == tracked_before
