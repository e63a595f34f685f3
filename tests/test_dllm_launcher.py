"""Smoke test of experiments/dllm.py on the embedded tiny random LLaDA / Dream checkpoints."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(REPO, "experiments", "dllm.py"), *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_default_tiny_llada_prints_text_nfe_and_speed():
  proc = _run("--gen_length=8", "--block_length=4", "--num_samples=2", "--timed_runs=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "===== sample 0 =====" in proc.stdout and "===== sample 1 =====" in proc.stdout
  assert "[confidence: NFE 8 " in proc.stdout          # top-k, one token per step
  assert "tokens/s" in proc.stdout
  assert "tiny random llada checkpoint" in proc.stderr


def test_dream_with_the_dual_cache_and_the_eos_penalty():
  proc = _run("--tiny_arch=dream", "--sampler=block_cache", "--cache=dual", "--gen_length=8",
              "--block_length=4", "--hparams=rule=threshold,threshold=0.5", "--eos_penalty=3",
              "--timed_runs=0", "--nochat")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[block_cache: NFE " in proc.stdout and "incl. compilation" in proc.stdout


def test_bad_flags_fail_before_loading():
  proc = _run("--sampler=tau_leaping", "--hparams=threshold=0.3")
  assert proc.returncode != 0
  assert "'threshold' is not a hyper-parameter of sampler 'tau_leaping'" in proc.stderr
  assert "# loaded" not in proc.stderr and "# tiny random" not in proc.stderr
  proc = _run("--sampler=remdm", "--hparams=strategy=sideways")
  assert proc.returncode != 0 and "strategy='sideways' is not one of" in proc.stderr
  proc = _run("--checkpoint=/nonexistent/llada")
  assert proc.returncode != 0 and "does not exist" in proc.stderr


def test_memory_plan(tmp_path):
  out = tmp_path / "plan.md"
  proc = _run("--memory_plan", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = out.read_text()
  assert "8,015,581,184 parameters" in text
  assert "| (8,): data=1 x fsdp=8 x tensor=1 |" in text and "| (4, 2): " in text
