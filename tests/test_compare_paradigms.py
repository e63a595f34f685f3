"""experiments/compare_paradigms.py --quick on two cheap cells: the table and the plot are
written, a rerun computes nothing (the cache), unknown cell names are a clear error."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "experiments" / "compare_paradigms.py")
CHEAP = "dllm-low-confidence,dllm-fast-dllm"  # the tiny random LLaDA: seconds per cell


def _run(*args, check=True):
  proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  if check:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def _counts(stdout: str) -> dict[str, int]:
  match = re.search(r"^cells: (\d+) computed, (\d+) cached, (\d+) retimed, (\d+) not measured$",
                    stdout, re.MULTILINE)
  assert match, stdout[-2000:]
  return dict(zip(("computed", "cached", "retimed", "unmeasured"), map(int, match.groups())))


def _cache_lines(out_dir) -> list[dict]:
  with open(out_dir / "compare_paradigms_cells.jsonl", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("compare")
  proc = _run("--quick", f"--cells={CHEAP}", f"--out_dir={out_dir}")
  return proc, out_dir


def test_table_and_plot_are_written(first_run):
  proc, out_dir = first_run
  assert _counts(proc.stdout) == dict(computed=2, cached=0, retimed=0, unmeasured=0)
  table = (out_dir / "compare_paradigms.md").read_text()
  assert "Command: `python experiments/compare_paradigms.py --quick" in table
  assert "Machine: " in table and "under load" in table
  assert "| **Masked generation** |" in table
  body = [line for line in table.splitlines() if line.startswith("| ") and "tiny random" in line]
  assert len(body) == 2
  for line in body:
    cells = [c.strip() for c in line.strip("|").split("|")]
    per_forward, speed = float(cells[2]), float(cells[3].rstrip("x"))
    assert per_forward >= 1.0 and speed > 0  # blocks of 8 unmask >= 1 token per call
    assert "PPL" in cells[6] and "H " in cells[6]
  png = (out_dir / "compare_paradigms.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
  entries = _cache_lines(out_dir)
  assert [e["cell"] for e in entries] == CHEAP.split(",")
  for e in entries:
    row, = e["rows"]
    assert set(row) >= {"model", "tokens_per_forward", "seconds", "ar_seconds", "peak_rss_mb",
                        "quality", "note"}
    assert row["seconds"] > 0 and row["ar_seconds"] > 0 and row["peak_rss_mb"] > 0
    assert any(f.startswith("partext_jax/masked/") for f in e["files"])  # the code version


def test_second_run_computes_nothing(first_run):
  _, out_dir = first_run
  before = _cache_lines(out_dir)
  table_before = (out_dir / "compare_paradigms.md").read_text()
  proc = _run("--quick", f"--cells={CHEAP}", f"--out_dir={out_dir}")
  assert _counts(proc.stdout) == dict(computed=0, cached=2, retimed=0, unmeasured=0)
  assert _cache_lines(out_dir) == before  # nothing appended
  strip = lambda t: [l for l in t.splitlines() if not l.startswith(("Machine:", "Settings:"))]
  assert strip((out_dir / "compare_paradigms.md").read_text()) == strip(table_before)


def test_retime_remeasures_timings_and_keeps_quality(first_run):
  _, out_dir = first_run
  before = _cache_lines(out_dir)
  proc = _run("--quick", "--retime", "--cells=dllm-low-confidence", f"--out_dir={out_dir}")
  assert _counts(proc.stdout) == dict(computed=0, cached=0, retimed=1, unmeasured=0)
  after = _cache_lines(out_dir)
  assert len(after) == len(before) + 1  # the retimed entry is appended; the newest one wins
  old, = [e for e in before if e["cell"] == "dllm-low-confidence"]
  new = after[-1]
  assert new["key"] == old["key"] and new["cell"] == old["cell"]
  assert new["rows"][0]["quality"] == old["rows"][0]["quality"]
  assert new["rows"][0]["seconds"] > 0 and new["rows"][0]["note"] == old["rows"][0]["note"]


def test_unknown_cell_names_are_a_clear_error(tmp_path):
  proc = _run("--cells=ar,no-such-cell", f"--out_dir={tmp_path}", check=False)
  assert proc.returncode == 2 and proc.stdout == ""
  line, = proc.stderr.strip().splitlines()  # one line, while the flags are parsed
  assert line.startswith("compare_paradigms.py: error: flag --cells=")
  assert "unknown ['no-such-cell']; choose from [" in line
  assert "'prompt-lookup'" in line  # the valid names are listed
  assert not list(tmp_path.iterdir())  # rejected before any cell ran


def test_cache_key_follows_the_measuring_modules_only(tmp_path, monkeypatch):
  """Editing the report keeps every cached cell; editing how cells are measured changes the
  measurement digest (so every key)."""
  monkeypatch.syspath_prepend(str(ROOT / "experiments"))
  from paradigms import cache  # pylint: disable=import-outside-toplevel
  copy = tmp_path / "experiments" / "paradigms"
  copy.mkdir(parents=True)
  for name in ("timing.py", "measure.py", "report.py"):
    (copy / name).write_text((ROOT / "experiments" / "paradigms" / name).read_text())
  monkeypatch.setattr(cache, "REPO", str(tmp_path))
  before = cache.measurement_digest()
  assert before == cache.measurement_digest()
  with open(copy / "report.py", "a", encoding="utf-8") as f:
    f.write("\n# an edit of the report\n")
  assert cache.measurement_digest() == before
  with open(copy / "measure.py", "a", encoding="utf-8") as f:
    f.write("\n# an edit of the measurement\n")
  assert cache.measurement_digest() != before
