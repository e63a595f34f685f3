r"""Medusa speculative decoding vs our plain AR ``generate`` on CPU, in one run.

    python experiments/bench_medusa.py --out experiments/results/bench_medusa_cpu.md
    python experiments/bench_medusa.py --heads /tmp/medusa/checkpoints --trees chain2,chain4

For every prompt (SmolLM2-135M-Instruct target, batch 1, greedy, no EOS stop) and Medusa tree:
wall time of a full ``generate`` of ``--new_tokens`` tokens (best of ``--reps``; compilation
excluded by a warm-up call; prefill included, as for AR), tokens/s, speed-up over
:func:`partext_jax.ar.sampling.generate` timed in the same process, mean tokens
committed per target forward, and whether the output is identical to AR (it must be). The extra
memory is the heads' parameters (the LM head is the target's own, shared).

Heads: ``--heads`` (an orbax directory written by ``experiments/train_medusa.py``), by default the
committed asset ``partext_jax/assets/medusa_smollm2``.
"""

import os
import platform
import sys
import time

from absl import app, flags
import jax
import numpy as np

import common
from partext_jax import pretrained
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import decode
from partext_jax.ar.speculative.drafters import medusa as medusa_drafter
from partext_jax.models import medusa as medusa_heads
from partext_jax.training import medusa as mt

_HEADS = flags.DEFINE_string("heads", None, "Checkpoint directory of the heads (default: asset).")
_NEW = flags.DEFINE_integer("new_tokens", 64, "Tokens per generation.")
_REPS = flags.DEFINE_integer("reps", 2, "Timed repetitions (best kept).")
_TREES = flags.DEFINE_list("trees", ["chain1", "chain2", "chain4", "small", "default"],
                           f"Trees to time: chain<d> or one of {sorted(['small', 'default'])}.")
_OUT = flags.DEFINE_string("out", None, "Write the markdown table here too.")

# Root + 7: two extra siblings at depth 1, one at depth 2, then the top-1 path to depth 4.
SMALL_CHOICES = ((0,), (1,), (2,), (0, 0), (1, 0), (0, 0, 0), (0, 0, 0, 0))

# Held out from training (the training prompts are built from fixed templates in medusa_training;
# none of these strings is among them).
PROMPTS = {
    "open-ended": "Write a short paragraph about the history of the printing press.",
    "how-to": "How do I make a cup of green tea? Give step-by-step instructions.",
    "code": "Write a Python function that checks whether a string is a palindrome.",
}


def tree_choices(name: str):
  if name.startswith("chain") and name[5:].isdigit():
    return medusa_drafter.chain_choices(int(name[5:]))
  if name == "small":
    return SMALL_CHOICES
  if name == "default":
    return medusa_drafter.DEFAULT_CHOICES
  raise ValueError(f"tree={name!r} is not chain<d>, 'small' or 'default'")


def _best(fn, reps):
  timing = common.time_call(fn, repeats=reps)
  return timing.best, timing.output


def main(argv):
  del argv
  heads_dir = _HEADS.value or mt.asset_directory()
  mcfg, heads, meta = mt.load_heads(heads_dir)
  model, params, tok = pretrained.load_bundle()
  dparams = medusa_drafter.drafter_params(heads, params, base_config=model.config)
  n = _NEW.value
  rows = []
  for pname, text in PROMPTS.items():
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))]
    t_ar, (ref, _) = _best(lambda: ar.generate(jax.random.key(0), model, params, ids,
                                               max_new_tokens=n, eos_id=None), _REPS.value)
    rows.append((pname, "AR (plain)", 1, 1.0, n / t_ar, 1.0, True))
    print(rows[-1], flush=True)
    for tname in _TREES.value:
      drafter = medusa_drafter.MedusaDrafter(mcfg, model.config, choices=tree_choices(tname))
      t_sp, (out, info) = _best(lambda: decode.generate(
          jax.random.key(0), model, params, ids, drafter=drafter, drafter_params=dparams,
          max_new_tokens=n, eos_id=None), _REPS.value)
      same = bool(np.array_equal(np.asarray(out), np.asarray(ref)))
      rows.append((pname, f"medusa {tname}", drafter.tree_size, float(info.accepted_per_call[0]),
                   n / t_sp, t_ar / t_sp, same))
      print(rows[-1], flush=True)
    print("AR text:", tok.decode(np.asarray(ref[0]).tolist())[:160].replace("\n", " | "))
  head_mib = mcfg.num_params * 4 / 2**20
  valid = meta.get("valid") or {}
  lines = [
      f"# Medusa speculative decoding benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
      "",
      "Command: `python experiments/bench_medusa.py " + " ".join(sys.argv[1:]) + "`",
      "",
      f"Machine: 2-core AMD EPYC CPU, no accelerator (shared with other jobs: load average "
      f"{os.getloadavg()[0]:.1f}), Python {platform.python_version()}, jax {jax.__version__}. "
      f"Target SmolLM2-135M-Instruct f32, batch 1, greedy, {n} new tokens, no EOS stop, best of "
      f"{_REPS.value} after a warm-up. Heads: `{os.path.relpath(heads_dir)}` ({mcfg.num_heads} "
      f"heads x {mcfg.num_layers} residual block, {mcfg.num_params / 1e6:.2f} M parameters = "
      f"{head_mib:.2f} MiB extra memory, f32; the LM head is the target's). Validation top-1 of "
      f"heads 1..{mcfg.num_heads}: "
      + ", ".join(f"{valid.get(f'head{h}_top1', float('nan')):.2f}"
                  for h in range(1, mcfg.num_heads + 1)) + ".",
      "",
  ]
  table = [(p, d, t, f"{acc:.2f}", f"{tps:.1f}", f"{sp:.2f}x", same)
           for p, d, t, acc, tps, sp, same in rows]
  common.write_report("\n".join(lines) + "\n" + common.markdown_table(
      ["prompt", "decoder", "tree nodes", "tokens / target forward", "tokens/s",
       "speed-up vs AR", "identical to AR"], table), _OUT.value)


if __name__ == "__main__":
  common.run(main)
