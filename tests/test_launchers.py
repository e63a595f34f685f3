"""End-to-end smoke test: the three launchers in subprocesses on the tiny config."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, os.path.join(REPO, "experiments", script), *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


def test_train_sample_evaluate(tmp_path):
  workdir = str(tmp_path / "tiny")
  out = _run("train.py", "--config=configs/tiny.py", f"--workdir={workdir}",
             "--config.train.num_steps=12", "--config.train.checkpoint_every=6")
  assert "validation NELBO bound" in out and "unigram entropy" in out
  assert "===== sample 0 =====" in out and "===== sample 1 =====" in out
  for name in ("metrics.jsonl", "metrics.png", "samples.txt", "tokenizer.json", "config.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps == [6, 12]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert rows[-1]["step"] == 12 and "eval/bits_per_char" in rows[-1]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["train"]["num_steps"] == 12  # The command-line override was applied.

  out = _run("sample.py", f"--workdir={workdir}", "--num_samples=3", "--num_steps=4",
             "--prompt=def ")
  samples = out.split("===== sample ")[1:]
  assert len(samples) == 3
  for s in samples:  # The prompt is kept at the start of every sample.
    assert s.split("=====\n", 1)[1].startswith("def ")

  out = _run("evaluate.py", f"--workdir={workdir}", "--num_time_samples=2")
  metrics = json.loads(out[out.index("{"):])
  assert metrics["step"] == 12
  assert 0 < metrics["bits_per_token"] < 20 and metrics["bits_per_char"] > 0
