r"""Speculative decoding benchmark on CPU: each drafter vs our own plain AR decode, one run.

    python experiments/bench_speculative.py --out experiments/results/bench_speculative_cpu.md

For every prompt and drafter (SmolLM2-135M-Instruct target, batch 1, greedy, no EOS stop): wall
time of a full ``generate`` of ``--new_tokens`` tokens (best of ``--reps``, compilation excluded
by a warm-up call; the prefill is included, as in AR), tokens/s, the speed-up over
:func:`partext_jax.ar.sampling.generate` timed in the same process, mean tokens
committed per target forward (``lengths / target_calls``), whether the output is identical to AR
(it must be), and the drafter's extra memory (parameters not shared with the target + its caches).
"""

import platform
import sys
import time

from absl import app, flags
import jax
import numpy as np

import common
from partext_jax import pretrained
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import decode, drafters

_NEW = flags.DEFINE_integer("new_tokens", 64, "Tokens per generation.")
_REPS = flags.DEFINE_integer("reps", 2, "Timed repetitions (best kept).")
_DRAFTERS = flags.DEFINE_list(
    "drafters", ["prompt_lookup", "early_exit_chain", "early_exit_eagle"],
    "Drafters to time: prompt_lookup, early_exit_chain, early_exit_eagle (medusa: see README).")
_EXIT = flags.DEFINE_integer("exit_layers", 6, "Layers of the early-exit drafter.")
_PL_GAMMA = flags.DEFINE_integer("pl_gamma", 8, "Prompt lookup: drafted tokens per step.")
_PL_MIN = flags.DEFINE_integer(
    "pl_min_ngram", 2, "Prompt lookup: shortest n-gram to match (1 matches almost always and "
    "pays a full tree forward for mostly rejected drafts; with no match a step is ~1 AR step).")
_OUT = flags.DEFINE_string("out", None, "Write the markdown table here too.")

CODE = '''def moving_average(values, window):
    """Return the moving average of values over a sliding window."""
    if window <= 0:
        raise ValueError("window must be positive")
    result = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            result.append(total / window)
    return result'''

PROMPTS = {
    "code-rename (grounded)": "Rewrite this Python function, renaming the variable `total` to "
                              "`running_sum`. Output only the code.\n\n" + CODE,
    "repeat-text (grounded)": "Repeat the following paragraph word for word:\n\nThe printing "
                              "press, invented by Johannes Gutenberg around 1440, made books "
                              "cheaper and faster to produce. It spread literacy across Europe "
                              "and helped start the scientific revolution.",
    "open-ended": "Write a short paragraph about the history of the printing press.",
}


def make_drafter(name, model, params, exit_layers):
  if name == "prompt_lookup":
    return drafters.PromptLookupDrafter(gamma=_PL_GAMMA.value, max_ngram=3,
                                        min_ngram=_PL_MIN.value), None
  if name == "early_exit_chain":
    return drafters.early_exit_drafter(model, params, num_layers=exit_layers, mode="chain",
                                       gamma=3)
  if name == "early_exit_eagle":
    return drafters.early_exit_drafter(model, params, num_layers=exit_layers, mode="eagle",
                                       gamma=3, top_k=3, num_nodes=10)
  raise ValueError(f"drafter={name!r} is not one of prompt_lookup, early_exit_chain, "
                   "early_exit_eagle")


def extra_bytes(name, config, params, cache_len, exit_layers):
  if name == "prompt_lookup":
    return 0
  # Early exit shares the target's embedding and head; with stacked (scanned) layers its first
  # exit_layers layers are a slice, i.e. a copy. Its own KV cache has exit_layers layers.
  layer_bytes = sum(x.nbytes for x in jax.tree.leaves(params["layers"])) / config.num_layers
  copied = exit_layers * layer_bytes if config.scan_layers else 0
  per_slot = 2 * config.num_kv_heads * config.head_dim * 4
  return copied + exit_layers * (cache_len + 16) * per_slot


def _best(fn, reps):
  out = fn()
  jax.block_until_ready(out)
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    best = min(best, time.perf_counter() - t)
  return best, out


def main(argv):
  del argv
  bundle = pretrained.load_bundle()
  model, params, tok = bundle
  n = _NEW.value
  rows = []
  for pname, text in PROMPTS.items():
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": text}],
                                              add_generation_prompt=True))]
    t_ar, (ref, _) = _best(lambda: ar.generate(jax.random.key(0), model, params, ids,
                                               max_new_tokens=n, eos_id=None), _REPS.value)
    rows.append((pname, "AR (plain)", 1.0, n / t_ar, 1.0, True, 0))
    for dname in _DRAFTERS.value:
      d, dp = make_drafter(dname, model, params, _EXIT.value)
      t_sp, (out, info) = _best(lambda: decode.generate(
          jax.random.key(0), model, params, ids, drafter=d, drafter_params=dp,
          max_new_tokens=n, eos_id=None), _REPS.value)
      same = bool(np.array_equal(np.asarray(out), np.asarray(ref)))
      cache_len = len(ids[0]) + n + d.tree_size
      rows.append((pname, dname, float(info.accepted_per_call[0]), n / t_sp, t_ar / t_sp, same,
                   extra_bytes(dname, model.config, params, cache_len, _EXIT.value)))
      print(rows[-1], flush=True)
    print("AR text:", tok.decode(np.asarray(ref[0]).tolist())[:200].replace("\n", " | "))
  lines = [
      f"# Speculative decoding benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
      "",
      f"Command: `python {' '.join(sys.argv)}`",
      f"Machine: 2-core AMD EPYC CPU, no accelerator (shared with other jobs), Python "
      f"{platform.python_version()}, jax {jax.__version__}. Target SmolLM2-135M-Instruct f32, "
      f"batch 1, greedy, {n} new tokens, no EOS stop, best of {_REPS.value} after a warm-up. "
      f"Early exit = first {_EXIT.value} of 30 layers + final norm + tied head. Prompt lookup: "
      f"gamma={_PL_GAMMA.value}, n-grams {_PL_MIN.value}..3.",
      "",
      "| prompt | drafter | tokens / target forward | tokens/s | speed-up vs AR | "
      "identical to AR | extra memory |",
      "|---|---|---|---|---|---|---|",
  ]
  for p, d, acc, tps, sp, same, mem in rows:
    lines.append(f"| {p} | {d} | {acc:.2f} | {tps:.1f} | {sp:.2f}x | {same} | "
                 f"{mem / 2**20:.2f} MiB |")
  lines.append("| (any) | medusa heads | (hook: `partext_jax.ar.speculative.drafters.medusa`, not yet "
               "measured) | | | | |")
  table = "\n".join(lines)
  print(table)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  common.run(main)
