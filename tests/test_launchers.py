"""End-to-end smoke test: the three launchers in subprocesses on the tiny config."""

import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(script, *args):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(REPO, "experiments", script), *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _run(script, *args):
  proc = _launch(script, *args)
  assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  # Launchers log at WARNING by default (common.run): no absl/orbax INFO lines, no backend probe.
  assert not re.search(r"^(I\d{4} |INFO)", proc.stderr, re.M), proc.stderr[-3000:]
  assert "Unable to initialize backend" not in proc.stderr
  return proc.stdout


def _assert_user_error(proc, script, *messages):
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
  assert lines[0].startswith(f"{script}: error: "), lines[0]
  assert all(m in lines[0] for m in messages), (messages, lines[0])
  assert "Traceback" not in proc.stderr and "cannot schedule new futures" not in proc.stderr


def test_train_sample_evaluate(tmp_path):
  workdir = str(tmp_path / "tiny")
  out = _run("train.py", "--config=configs/tiny.py", f"--workdir={workdir}",
             "--config.train.num_steps=12", "--config.train.checkpoint_every=6")
  assert "validation NELBO bound" in out and "unigram entropy" in out
  assert "===== sample 0 =====" in out and "===== sample 1 =====" in out
  assert out.rindex("===== sample ") < out.index("step 12: validation NELBO bound")  # Last block.
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

  # Issue 17: user errors end in one line naming the cause (no traceback), before sampling.
  for args, messages in [
      # Case 4: a prompt longer than the samples is refused, never cut.
      ([f"--prompt={'x' * 3000}"], ["prompt has 3000 tokens but samples are seq_len=32 tokens"]),
      # Case 6: another config's shapes: the leaf, stored vs requested, and a safe action.
      (["--config=configs/tiny.py", "--config.model.d_model=48"],
       ["leaf params/", "is stored as float32[", "but float32[", "48", "was requested",
        "with the config that wrote it", "new workdir"]),
  ]:
    _assert_user_error(_launch("sample.py", f"--workdir={workdir}", *args), "sample.py",
                       *messages)
  os.makedirs(tmp_path / "empty" / "checkpoints")  # Case 7: an empty checkpoints/ directory.
  _assert_user_error(_launch("sample.py", f"--workdir={tmp_path / 'empty'}"), "sample.py",
                     "no checkpoint in")

  out = _run("evaluate.py", f"--workdir={workdir}", "--num_time_samples=2")
  metrics = json.loads(out[out.index("{"):])
  assert metrics["step"] == 12
  assert 0 < metrics["bits_per_token"] < 20 and metrics["bits_per_char"] > 0
