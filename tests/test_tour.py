"""The tour (experiments/tour.py --quick, the README's first command in CI form) end to end."""

import json
import re
import subprocess
import sys
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_tour_quick(tmp_path):
  """One run of the tour, checked three ways (one test, so that pytest-xdist never runs the tour
  twice, once per worker)."""
  workdir = tmp_path / "tour"
  proc = subprocess.run([sys.executable, "experiments/tour.py", "--quick", f"--workdir={workdir}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  tour = proc, workdir, json.loads((workdir / "summary.json").read_text())
  _every_decoder_reproduces_greedy_ar_and_says_so(tour)
  _masked_samplers_fill_the_infill_and_outputs_are_written(tour)
  _no_info_log_lines(tour)


def _every_decoder_reproduces_greedy_ar_and_says_so(tour):
  proc, _, summary = tour
  decoders = sorted({r["decoder"] for r in summary["decoders"]} - {"greedy AR"})
  assert decoders == sorted(summary["decoder_names"])  # Every entry of tour.DECODERS ran.
  assert {"prompt lookup", "early exit, chain", "early exit, EAGLE tree",
          "Medusa heads"} <= set(decoders)
  assert all(r["identical"] for r in summary["decoders"])
  said = re.findall(r"^(.+): identical to greedy AR: (\w+)$", proc.stdout, re.MULTILINE)
  assert sorted(said) == [(d, "yes") for d in decoders]
  for r in summary["decoders"]:
    assert r["tokens"] > 0 and r["seconds"] > 0
    assert 1.0 <= r["per_forward"] <= r["tokens"]  # At least one token per target forward.


def _masked_samplers_fill_the_infill_and_outputs_are_written(tour):
  proc, workdir, summary = tour
  rows = {r["sampler"]: r for r in summary["masked"]}
  assert len(rows) == 5
  for r in rows.values():
    assert r["nfe"] >= 1 and r["gen_ppl"] > 1 and r["entropy"] > 0
    assert r["infill"].strip()  # Every MASK was replaced by text.
  assert rows["tau-leaping"]["nfe"] <= 16  # --quick: 16 steps (noise removal shares the last).
  png = (workdir / "unmasking_order.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
  for name in ("decoders.md", "masked.md"):
    table = (workdir / name).read_text().splitlines()
    assert len({len(line) for line in table}) == 1  # Aligned columns.
  assert summary["checkpoint"]["name"] == "mdm_small"
  assert "Summary" in proc.stdout and str(workdir) in proc.stdout


def _no_info_log_lines(tour):
  proc, _, _ = tour
  noise = [line for line in (proc.stdout + proc.stderr).splitlines()
           if re.match(r"^I\d{4} ", line) or "Unable to initialize backend" in line
           or line.startswith("INFO")]
  assert not noise, noise[:5]
