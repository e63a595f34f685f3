"""Every launcher in ``experiments/`` rejects a bad flag in one line, before loading anything.

Issue 17, case 8: a bad flag value must fail while flags are parsed (``common.run``), not after a
model load and not as a traceback.
"""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, "experiments")
LAUNCHERS = sorted(f for f in os.listdir(EXPERIMENTS) if f.endswith(".py") and f != "common.py")


def _run(script, *args):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(EXPERIMENTS, script), *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


def _assert_one_line_error(proc, script, *needles):
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  assert proc.stdout == "", proc.stdout[-2000:]  # Nothing ran: no model, no output.
  assert len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith(f"{script}: error: "), lines[0]
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])


def test_every_launcher_is_covered():
  assert len(LAUNCHERS) >= 20 and "chat.py" in LAUNCHERS and "sweep_samplers.py" in LAUNCHERS


@pytest.mark.parametrize("script", LAUNCHERS)
def test_unknown_flag_is_one_line(script):
  _assert_one_line_error(_run(script, "--no_such_flag=1"), script,
                         "Unknown command line flag 'no_such_flag'")


@pytest.mark.parametrize("script,flag,message", [
    ("chat.py", "--temperature=-1", "flag --temperature=-1.0: must be finite and >= 0"),
    ("chat.py", "--top_p=0", "flag --top_p=0.0: must lie in (0, 1]"),
    ("chat.py", "--top_k=-2", "flag --top_k=-2: must be >= 0"),
    ("sample.py", "--num_steps=0", "flag --num_steps=0: must be >= 1"),
])
def test_bad_flag_value_fails_before_loading(script, flag, message):
  args = [flag] + (["--workdir=/nonexistent/run"] if script == "sample.py" else [])
  _assert_one_line_error(_run(script, *args), script, message)
