"""The README's code runs as written.

* :func:`test_readme_tour_example_runs`: the first block (the self-contained tour) prints the
  total variation it claims, at full size.
* :func:`test_every_python_block_runs_in_order`: every ```python block, in order, in one shared
  namespace, in a subprocess (``tests/readme_runner.py``) with this environment:

  - ``JAX_PLATFORMS=cpu``;
  - ``XLA_FLAGS=--xla_force_host_platform_device_count=8``: the sharding example's 8 devices;
  - ``PARTEXT_README_TINY=1``: README blocks may read it to shrink sizes (e.g. samples, steps);
  - working directory: a temporary one holding a tiny trained run at ``workdir/default``
    (``configs/tiny.py``, 4 steps), the path the README loads.

  Only the embedded model files (SmolLM2 GGUF, Medusa heads) are needed: nothing is downloaded.
  Commands that need files that cannot exist offline belong in ```bash / ```text blocks.
"""

import contextlib
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
README = REPO / "README.md"
sys.path.insert(0, str(REPO / "tests"))
from readme_runner import python_blocks  # pylint: disable=wrong-import-position


def test_readme_tour_example_runs():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
  tour = blocks[0]
  assert "tau_leaping" in tour and "exact_denoiser" in tour
  out = io.StringIO()
  scope: dict = {}
  with contextlib.redirect_stdout(out):
    exec(compile(tour, "README.md", "exec"), scope)  # pylint: disable=exec-used
  tv = float(out.getvalue().split()[-1])
  # 10k samples over 27 outcomes: E[TV] <= 0.5 sqrt(26 / 1e4) = 0.026; the joint is far from uniform.
  assert tv < 0.05, tv
  assert scope["tokens"].shape == (10_000, 3)
  assert scope["state"].tokens.shape == (4, 3)


def _env(**extra):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu", **extra)
  return env


def test_runner_reports_failures_per_block(tmp_path):
  """The runner itself: a failing block is reported and the next one still runs."""
  readme = tmp_path / "README.md"
  readme.write_text("```python\nx = 1\n```\n```bash\nnot python\n```\n```python\ny = x + z\n```\n"
                    "```python\nprint(x + 1)\n```\n")
  subprocess.run([sys.executable, str(REPO / "tests" / "readme_runner.py"), str(readme),
                  str(tmp_path / "r.json")], env=_env(), check=True, timeout=120)
  report = json.loads((tmp_path / "r.json").read_text())
  assert [r["ok"] for r in report] == [True, False, True]
  assert report[1]["error"] == "NameError: name 'z' is not defined"
  assert report[2]["stdout"] == "2\n"


@pytest.mark.slow
def test_every_python_block_runs_in_order(tmp_path):
  assert python_blocks(README.read_text(encoding="utf-8"))
  workdir = tmp_path / "workdir" / "default"
  subprocess.run([sys.executable, str(REPO / "experiments" / "train.py"),
                  f"--config={REPO / 'configs' / 'tiny.py'}", f"--workdir={workdir}",
                  "--config.train.num_steps=4", "--config.train.checkpoint_every=4",
                  "--config.train.eval_every=4"],
                 cwd=tmp_path, env=_env(), check=True, capture_output=True, timeout=600)
  report_path = tmp_path / "readme_report.json"
  proc = subprocess.run(
      [sys.executable, str(REPO / "tests" / "readme_runner.py"), str(README), str(report_path)],
      cwd=tmp_path, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8",
                             PARTEXT_README_TINY="1"),
      capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(report_path.read_text())
  failed = [f"block {r['block']} ({r['first_line']}): {r['error']}" for r in report if not r["ok"]]
  assert not failed, "README python blocks that fail:\n" + "\n".join(failed)
