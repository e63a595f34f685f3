r"""Speculative generation with SmolLM2-135M-Instruct and a chosen drafter, beside plain AR.

    python experiments/speculative.py --prompt "Repeat: the quick brown fox" \
        --drafter prompt_lookup --max_tokens 64 --temperature 0

Prints the text, mean tokens committed per target forward, and wall-clock tokens/s of the
speculative and the plain AR decode (second calls: compilation excluded).
"""

import time

from absl import app, flags
import jax
import numpy as np

from partext_jax import pretrained
from partext_jax.ar import sampling as ar
from partext_jax.ar import processors as lp
from partext_jax.ar.speculative import decode, drafters

DRAFTERS = ("prompt_lookup", "early_exit_chain", "early_exit_eagle")

_PROMPT = flags.DEFINE_string("prompt", "Repeat this sentence twice: the quick brown fox jumps "
                              "over the lazy dog.", "User message (chat template applied).")
_DRAFTER = flags.DEFINE_enum("drafter", "prompt_lookup", DRAFTERS, "Drafter.")
_MAX = flags.DEFINE_integer("max_tokens", 64, "Max new tokens.")
_TEMP = flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0 = greedy).")
_TOP_K = flags.DEFINE_integer("top_k", None, "Top-k filter.")
_TOP_P = flags.DEFINE_float("top_p", None, "Top-p filter.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_EXIT = flags.DEFINE_integer("exit_layers", 6, "Early-exit drafter depth (layers).")


def make_drafter(name, model, params, exit_layers):
  if name == "prompt_lookup":
    return drafters.PromptLookupDrafter(gamma=8), None
  mode = "chain" if name == "early_exit_chain" else "eagle"
  kw = dict(gamma=3) if mode == "chain" else dict(gamma=3, top_k=3, num_nodes=10)
  return drafters.early_exit_drafter(model, params, num_layers=exit_layers, mode=mode, **kw)


def run(prompt, drafter_name, max_tokens, temperature, top_k=None, top_p=None, seed=0,
        exit_layers=6, bundle=None):
  model, params, tok = bundle or pretrained.load_bundle()
  proc = lp.build(temperature=temperature, top_k=top_k, top_p=top_p)
  ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True))]
  d, dp = make_drafter(drafter_name, model, params, exit_layers)
  key = jax.random.key(seed)
  results = {}
  for label, fn in (
      ("speculative", lambda: decode.generate(key, model, params, ids, drafter=d,
                                              drafter_params=dp, max_new_tokens=max_tokens,
                                              processor=proc, eos_id=tok.eos_id)),
      ("plain AR", lambda: ar.generate(key, model, params, ids, max_new_tokens=max_tokens,
                                       processor=proc, eos_id=tok.eos_id))):
    jax.block_until_ready(fn())
    t = time.perf_counter()
    out, info = fn()
    jax.block_until_ready(out)
    results[label] = (out, info, time.perf_counter() - t)
  out, info, t_sp = results["speculative"]
  n = int(info.lengths[0])
  print(tok.decode(np.asarray(out[0, :n]).tolist()))
  print(f"speculative ({drafter_name}): {n} tokens, {info.accepted_per_call[0]:.2f} tokens per "
        f"target forward, {n / t_sp:.1f} tokens/s")
  out_ar, info_ar, t_ar = results["plain AR"]
  n_ar = int(info_ar.lengths[0])
  print(f"plain AR: {n_ar} tokens, {n_ar / t_ar:.1f} tokens/s")
  return results


def main(argv):
  del argv
  run(_PROMPT.value, _DRAFTER.value, _MAX.value, _TEMP.value, _TOP_K.value, _TOP_P.value,
      _SEED.value, _EXIT.value)


if __name__ == "__main__":
  app.run(main)
