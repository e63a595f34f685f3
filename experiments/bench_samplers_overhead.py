r"""Benchmark: what the masked-diffusion samplers cost on top of the model they drive.

On the default MDM config (random parameters; ``L = 128``, ``V = 1024``), at each batch size:

* **model**: one jitted ``denoise_fn(x, t)`` call on a half-masked batch;
* per sampler, its whole ``sample`` call divided by the steps it ran: the **step** time with the
  model, and the **sampler** time with the model replaced by a stub that returns fixed logits
  (logits of the real model on a half-masked batch, passed as an argument so nothing is
  constant-folded): what the sampler itself costs per step, excluding the model.

Every callable is compiled first, then timed in ``--rounds`` round-robin rounds (so load on a
shared machine hits all of them alike); each cell is the best call over all rounds.

    python experiments/bench_samplers_overhead.py \
        --out=experiments/results/bench_samplers_overhead_cpu.md

Targets (``issue 15``): sampler time <= 20% of the model call for tau-leaping, confidence, EB and
P2; ReMDM's step <= 1.3x tau-leaping's.
"""

from __future__ import annotations

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

import common
from partext_jax import masked
from partext_jax.models import denoiser
from partext_jax.training.config import parse_config

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", lock_config=True)
_BATCHES = flags.DEFINE_list("batches", ["1", "16"], "Batch sizes.")
_NUM_STEPS = flags.DEFINE_integer(
    "num_steps", 64, "Steps of the fixed-step samplers (tau-leaping, top-k, P2, ReMDM).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Round-robin timing rounds (best call is kept).")
_SAMPLERS = flags.DEFINE_list("samplers", None, "Subset of sampler rows to run (default: all).")
_OUT = flags.DEFINE_string("out", None, "Also write the markdown table here.")


def sampler_specs(num_steps: int):
  """``name -> (registry entry, keyword arguments)`` of the benchmarked samplers."""
  return {
      "tau-leaping": ("tau_leaping", dict(num_steps=num_steps)),
      "confidence top-k": ("confidence", dict(rule="topk", num_steps=num_steps)),
      "confidence top-k, temperature 1": ("confidence", dict(rule="topk", num_steps=num_steps,
                                                             temperature=1.0)),
      "confidence threshold 0.9": ("confidence", dict(rule="threshold", threshold=0.9)),
      "EB (gamma 0.1)": ("eb", dict(gamma=0.1)),
      "P2": ("p2", dict(num_steps=num_steps)),
      "ReMDM cap top_p 0.9": ("remdm", dict(num_steps=num_steps, top_p=0.9)),
  }


def fixed_logits(logits, tokens, t):
  """A stub model: the same ``logits`` whatever the input (a ``Partial``'s function)."""
  del tokens, t
  return logits


def steps_run(info) -> int:
  """Loop steps a ``sample`` call ran: steps that called the model (the while-loop samplers stop
  when the window is decoded, and their later rows read ``nfe = 0``)."""
  return int(np.sum(np.asarray(info.nfe) > 0))


def best_of_rounds(fns: dict, rounds: int) -> dict:
  """``name -> best seconds`` over ``rounds`` round-robin rounds of :func:`common.time_call`
  (each round: one warm-up call and one timed call per function), plus the last outputs."""
  best, outputs = {}, {}
  for _ in range(rounds):
    for name, fn in fns.items():
      timing = common.time_call(fn, repeats=1)
      best[name] = min(best.get(name, np.inf), timing.best)
      outputs[name] = timing.output
  return best, outputs


def main(argv):
  common.no_arguments(argv)
  cfg = parse_config(_CONFIG.value)
  model_cfg = cfg.model.denoiser_config(vocab_size=cfg.data.vocab_size, max_len=cfg.data.seq_len)
  params = denoiser.init_params(jax.random.PRNGKey(0), model_cfg)
  denoise_fn = denoiser.make_denoise_fn(model_cfg, params)
  seq, mask_id = cfg.data.seq_len, model_cfg.mask_id
  specs = sampler_specs(_NUM_STEPS.value)
  names = _SAMPLERS.value or list(specs)
  unknown = sorted(set(names) - set(specs))
  if unknown:
    raise app.UsageError(f"--samplers: unknown {unknown}; choose from {list(specs)}")

  rows = []
  for batch in map(int, _BATCHES.value):
    x_init = jnp.full((batch, seq), mask_id, jnp.int32)
    random_tokens = jax.random.randint(jax.random.PRNGKey(1), (batch, seq), 0,
                                       model_cfg.vocab_size)
    half = jnp.where(jnp.arange(seq) % 2 == 0, mask_id, random_tokens)
    t_half = jnp.full((batch,), 0.5, jnp.float32)
    model_call = jax.jit(lambda fn, x, t: fn(x, t))
    stub = jax.tree_util.Partial(fixed_logits, model_call(denoise_fn, half, t_half))
    fns = {"model": lambda: model_call(denoise_fn, half, t_half)}
    for name in names:
      entry, kwargs = specs[name]
      for model, tag in ((denoise_fn, "step"), (stub, "sampler")):
        sampler = masked.SAMPLERS[entry](model, mask_id=mask_id, **kwargs)
        fns[(name, tag)] = (lambda s=sampler: s.sample(jax.random.PRNGKey(2), x_init))
    best, outputs = best_of_rounds(fns, _ROUNDS.value)
    model_ms = best["model"] * 1e3
    rows.append(("model alone", batch, "-", f"{model_ms:.2f}", "-", "-", "-"))
    tau_step = None
    for name in names:
      step_ms = best[(name, "step")] * 1e3 / steps_run(outputs[(name, "step")][1])
      own_ms = best[(name, "sampler")] * 1e3 / steps_run(outputs[(name, "sampler")][1])
      if name == "tau-leaping":
        tau_step = step_ms
      ratio = f"{step_ms / tau_step:.2f}" if tau_step else "-"
      rows.append((name, batch, steps_run(outputs[(name, "step")][1]), f"{step_ms:.2f}",
                   f"{own_ms:.2f}", f"{100 * own_ms / model_ms:.0f}%", ratio))

  common.write_report(
      f"Masked-sampler overhead: {common.machine()}\n\n"
      f"Default MDM config, random parameters ({denoiser.count_params(params) / 1e6:.2f} M), "
      f"L = {seq}, V = {model_cfg.vocab_size}, {_NUM_STEPS.value} steps for the fixed-step "
      f"samplers; times in ms, best of {_ROUNDS.value} round-robin rounds. 'step' = a sample "
      "call / steps run; 'sampler' = the same with a stub model returning fixed logits (the "
      "sampler's own cost per step).\n\n"
      + common.markdown_table(
          ["what", "batch", "steps", "step ms", "sampler ms (stub model)",
           "sampler / model", "step / tau-leaping step"], rows),
      _OUT.value)


if __name__ == "__main__":
  common.run(main)
