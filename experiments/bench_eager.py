r"""Compiled samplers vs eager reference loops (the way the PyTorch references run), in one run.

Same trained MDM, same rule, same NFE. Three ways to run each rule:

* **eager**: a Python loop, the model and the rule dispatched op by op
  (:mod:`partext_jax.testing.eager`);
* **eager loop + jit model**: the model call compiled, the loop and the rule still eager;
* **ours**: the whole sampler compiled (``lax`` loop under ``jax.jit``).

Greedy LLaDA top-k is deterministic, so the table also reports the fraction of tokens on which
the three agree. On the trained model it is not 100%: from an all-MASK start every position has
the same confidence up to float rounding, so which positions go first is decided by rounding,
which differs between a fused compiled graph and op-by-op execution. On models without such ties
the loops agree token for token (``tests/test_eager_reference.py``).

    python experiments/bench_eager.py --workdir=workdir/default --out=experiments/results/bench_eager_cpu.md
"""

import datetime
import os
import platform
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import common
from partext_jax.models.denoiser import make_denoise_fn
from partext_jax.masked.adaptive import confidence
from partext_jax.masked.tau_leaping import tau_leaping
from partext_jax.testing import eager
from partext_jax.training.runs import load_run

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained MDM run.", required=True)
_BATCHES = flags.DEFINE_list("batch", ["1", "16"], "Batch sizes.")
_STEPS = flags.DEFINE_integer("steps", 64, "Steps (= NFE) per sample.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls (best reported) after a warm-up.")
_OUT = flags.DEFINE_string("out", None, "Also write the markdown table here.")


def _best(fn, repeats):
  out = fn()  # warm-up (compiles what can be compiled)
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  return min(times), out


def main(argv):
  del argv
  run = load_run(_WORKDIR.value)
  cfg, seq, n = run.model_config, run.config.data.seq_len, _STEPS.value
  denoise_fn = make_denoise_fn(cfg, run.state.ema_params)
  raw_fn = lambda x, t: denoise_fn(x, t)  # noqa: E731  (a plain callable for the eager loops)
  rng = jax.random.PRNGKey(0)
  rows = []
  for batch in map(int, _BATCHES.value):
    x = jnp.full((batch, seq), cfg.mask_id, jnp.int32)
    llada = confidence(denoise_fn, mask_id=cfg.mask_id, rule="topk", num_steps=n,
                       proxy="max_prob", temperature=0.0)
    mdlm = tau_leaping(denoise_fn, mask_id=cfg.mask_id, num_steps=n)
    cases = [
        ("LLaDA top-k (greedy)", "eager",
         lambda: eager.llada_topk_eager(raw_fn, x, mask_id=cfg.mask_id, num_steps=n)[0]),
        ("LLaDA top-k (greedy)", "eager loop + jit model",
         lambda: eager.llada_topk_eager(raw_fn, x, mask_id=cfg.mask_id, num_steps=n,
                                        jit_model=True)[0]),
        ("LLaDA top-k (greedy)", "ours (compiled)", lambda: llada.sample(rng, x)[0]),
        ("MDLM ancestral", "eager",
         lambda: eager.mdlm_ancestral_eager(rng, raw_fn, x, mask_id=cfg.mask_id,
                                            num_steps=n)[0]),
        ("MDLM ancestral", "eager loop + jit model",
         lambda: eager.mdlm_ancestral_eager(rng, raw_fn, x, mask_id=cfg.mask_id, num_steps=n,
                                            jit_model=True)[0]),
        ("MDLM ancestral", "ours (compiled)", lambda: mdlm.sample(rng, x)[0]),
    ]
    outputs = {}
    for rule, how, fn in cases:
      secs, tokens = _best(fn, _REPEATS.value)
      outputs[(rule, how)] = np.asarray(tokens)
      rows.append((rule, how, batch, secs))
      print(f"{rule:>22} | {how:>24} | batch {batch:3d} | {secs * 1e3 / batch:9.1f} ms/sample",
            flush=True)
    ref = outputs[("LLaDA top-k (greedy)", "ours (compiled)")]
    for how in ("eager", "eager loop + jit model"):
      agree = float(np.mean(outputs[("LLaDA top-k (greedy)", how)] == ref))
      rows.append((f"LLaDA tokens equal to ours: {how}", f"{agree:.1%}", batch, None))

  lines = [f"Compiled samplers vs eager reference loops on the trained MDM at `{_WORKDIR.value}` "
           f"(step {run.step}, length {seq}); {n} steps = NFE; best of {_REPEATS.value} after a "
           f"warm-up; {datetime.date.today()}, {platform.machine()} CPU x {os.cpu_count()}, "
           f"jax {jax.__version__}.", "",
           "| rule | how | batch | ms / sample | speed-up of ours |", "|---|---|---|---|---|"]
  ours = {(r, b): s for r, h, b, s in rows if h == "ours (compiled)"}
  for rule, how, batch, secs in rows:
    if secs is None:
      lines.append(f"| {rule} | {how} | {batch} | | |")
      continue
    lines.append(f"| {rule} | {how} | {batch} | {secs * 1e3 / batch:.1f} | "
                 f"{secs / ours[(rule, batch)]:.1f}x |")
  table = "\n".join(lines) + "\n"
  print(table)
  if _OUT.value:
    with open(_OUT.value, "w", encoding="utf-8") as f:
      f.write(table)


if __name__ == "__main__":
  common.run(main)
