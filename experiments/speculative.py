r"""Parallel decoding with SmolLM2-135M-Instruct beside plain AR: a drafter, Lookahead or Jacobi.

    python experiments/speculative.py --prompt "Repeat: the quick brown fox" \
        --drafter prompt_lookup --max_tokens 64 --temperature 0
    python experiments/speculative.py --drafter lookahead --window 5 --ngram 4 --pool_size 5
    python experiments/speculative.py --drafter early_exit_chain --rule block --temperature 1
    python experiments/speculative.py --decoder jacobi --block_size 8

Prints the text, mean tokens committed per target forward, and wall-clock tokens/s of the chosen
decoder and the plain AR decode (second calls: compilation excluded). ``--rule`` picks the
verification rule of draft-and-verify decoding (default: the drafter's; ``block`` = block
verification, chain drafters only). Jacobi decoding is greedy (``--temperature 0``).
"""

import time

from absl import app, flags
import jax
import numpy as np

import common
from partext_jax import pretrained
from partext_jax.ar import jacobi
from partext_jax.ar import processors as lp
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import decode, drafters, verify

DECODERS = ("speculative", "jacobi")
DRAFTERS = ("prompt_lookup", "early_exit_chain", "early_exit_eagle", "lookahead")

_PROMPT = flags.DEFINE_string("prompt", "Repeat this sentence twice: the quick brown fox jumps "
                              "over the lazy dog.", "User message (chat template applied).")
_DECODER = flags.DEFINE_enum("decoder", "speculative", DECODERS,
                             "speculative: draft-and-verify with --drafter; jacobi: Jacobi "
                             "decoding (greedy).")
_DRAFTER = flags.DEFINE_enum("drafter", "prompt_lookup", DRAFTERS, "Drafter.")
_RULE = flags.DEFINE_enum("rule", None, verify.RULES,
                          "Verification rule (default: the drafter's; block = block "
                          "verification of chains).")
_MAX = flags.DEFINE_integer("max_tokens", 64, "Max new tokens.")
_TEMP = flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0 = greedy).")
_TOP_K = flags.DEFINE_integer("top_k", None, "Top-k filter.")
_TOP_P = flags.DEFINE_float("top_p", None, "Top-p filter.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_EXIT = flags.DEFINE_integer("exit_layers", 6, "Early-exit drafter depth (layers).")
_BLOCK = flags.DEFINE_integer("block_size", 8, "Jacobi decoding: tokens per block.")
_WINDOW = flags.DEFINE_integer("window", 5, "Lookahead: Jacobi window width W.")
_NGRAM = flags.DEFINE_integer("ngram", 4, "Lookahead: n-gram size N.")
_POOL = flags.DEFINE_integer("pool_size", 5, "Lookahead: n-grams kept and verified per key G.")


def make_drafter(name, model, params, exit_layers, *, window=5, ngram=4, pool_size=5):
  if name == "prompt_lookup":
    return drafters.PromptLookupDrafter(gamma=8), None
  if name == "lookahead":
    return drafters.LookaheadDrafter(vocab_size=model.config.vocab_size, window=window,
                                     ngram=ngram, pool_size=pool_size), None
  mode = "chain" if name == "early_exit_chain" else "eagle"
  kw = dict(gamma=3) if mode == "chain" else dict(gamma=3, top_k=3, num_nodes=10)
  return drafters.early_exit_drafter(model, params, num_layers=exit_layers, mode=mode, **kw)


def run(prompt, drafter_name, max_tokens, temperature, top_k=None, top_p=None, seed=0,
        exit_layers=6, bundle=None, *, decoder="speculative", rule=None, block_size=8, window=5,
        ngram=4, pool_size=5):
  model, params, tok = bundle or pretrained.load_bundle()
  proc = lp.build(temperature=temperature, top_k=top_k, top_p=top_p)
  ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True))]
  key = jax.random.key(seed)
  if decoder == "jacobi":
    if not lp.is_greedy(proc):
      raise app.UsageError("--decoder=jacobi is greedy: use --temperature=0")
    label = f"Jacobi (n={block_size})"
    main_fn = lambda: jacobi.generate(model, params, ids, block_size=block_size,
                                      max_new_tokens=max_tokens, eos_id=tok.eos_id)
  else:
    d, dp = make_drafter(drafter_name, model, params, exit_layers, window=window, ngram=ngram,
                         pool_size=pool_size)
    label = f"speculative ({drafter_name}, rule={rule or 'default'})"
    main_fn = lambda: decode.generate(key, model, params, ids, drafter=d, drafter_params=dp,
                                      max_new_tokens=max_tokens, processor=proc, rule=rule,
                                      eos_id=tok.eos_id)
  results = {}
  for name, fn in ((label, main_fn),
                   ("plain AR", lambda: ar.generate(key, model, params, ids,
                                                    max_new_tokens=max_tokens, processor=proc,
                                                    eos_id=tok.eos_id))):
    jax.block_until_ready(fn())
    t = time.perf_counter()
    out, info = fn()
    jax.block_until_ready(out)
    results[name] = (out, info, time.perf_counter() - t)
  out, info, t_main = results[label]
  n = int(info.lengths[0])
  per_call = n / max(int(np.asarray(getattr(info, "target_calls", info.lengths))[0]), 1)
  print(tok.decode(np.asarray(out[0, :n]).tolist()))
  print(f"{label}: {n} tokens, {per_call:.2f} tokens per target forward, "
        f"{n / t_main:.1f} tokens/s")
  out_ar, info_ar, t_ar = results["plain AR"]
  n_ar = int(info_ar.lengths[0])
  print(f"plain AR: {n_ar} tokens, {n_ar / t_ar:.1f} tokens/s")
  return results


def main(argv):
  del argv
  run(_PROMPT.value, _DRAFTER.value, _MAX.value, _TEMP.value, _TOP_K.value, _TOP_P.value,
      _SEED.value, _EXIT.value, decoder=_DECODER.value, rule=_RULE.value,
      block_size=_BLOCK.value, window=_WINDOW.value, ngram=_NGRAM.value, pool_size=_POOL.value)


if __name__ == "__main__":
  common.run(main)
