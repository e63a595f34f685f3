"""End-to-end smoke test of experiments/chat.py on the embedded SmolLM2 model."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_chat_launcher_answers_and_reports_speed():
  proc = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "chat.py"),
       "--prompt=What is the capital of France?", "--max_new_tokens=12", "--nostream"],
      capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "Paris" in proc.stdout  # greedy SmolLM2-135M-Instruct knows this one
  assert "tokens/s" in proc.stderr and "new tokens" in proc.stderr
