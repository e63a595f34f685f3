r"""Chat with SmolLM2-135M-Instruct (or any llama GGUF) on CPU, streaming tokens as they come.

    python experiments/chat.py --prompt "What is the capital of France?"
    python experiments/chat.py --prompt "Tell me a story" --temperature 0.7 --top_p 0.9 --seed 3

Prints the reply, then the prompt length, the number of new tokens, and the decode speed
(tokens/s between the first and the last streamed token: compilation and prefill excluded) beside
the wall time of the whole call.
"""

import sys
import time

from absl import app, flags
import jax

import common
from partext_jax import pretrained
from partext_jax.ar import sampling as ar

_PROMPT = flags.DEFINE_string("prompt", "What is the capital of France?", "User prompt.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Maximum number of generated tokens.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1.0 = off).")
_CHAT = flags.DEFINE_bool("chat", True, "Wrap the prompt in the model's chat template.")
_SYSTEM = flags.DEFINE_string("system", None, "Optional system message (with --chat).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_GGUF = flags.DEFINE_string("gguf", None, "GGUF file (default: the embedded SmolLM2-135M).")
_STREAM = flags.DEFINE_bool("stream", True, "Print tokens while they are generated.")
# Checked while flags are parsed, before the model loads.
common.check_flag("temperature", lambda t: 0 <= t < float("inf"), "must be finite and >= 0")
common.check_flag("top_p", lambda p: 0 < p <= 1, "must lie in (0, 1] (1.0 = off)")
common.check_flag("top_k", lambda k: k >= 0, "must be >= 0 (0 = off)")
common.check_flag("max_new_tokens", lambda n: n >= 1, "must be >= 1")


def main(argv):
  del argv
  t0 = time.perf_counter()
  bundle = pretrained.load_bundle(_GGUF.value)
  print(f"loaded {_GGUF.value or pretrained.smollm2_path()} in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr)
  tok = bundle.tokenizer
  stamps, pieces, shown = [], [], [""]

  def on_token(step, tokens, done):
    del step
    stamps.append(time.perf_counter())
    if _STREAM.value and not bool(done[0]):
      pieces.append(int(tokens[0]))
      text = tok.decode(pieces)
      # Print only the new characters (a multi-byte character may span several tokens).
      print(text[len(shown[0]):], end="", flush=True)
      shown[0] = text

  out = ar.generate_text(bundle, [_PROMPT.value], rng_key=jax.random.key(_SEED.value),
                         max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value,
                         top_k=_TOP_K.value or None, top_p=_TOP_P.value, chat=_CHAT.value,
                         system=_SYSTEM.value, stream_callback=on_token)
  jax.effects_barrier()
  if _STREAM.value:
    print()
  else:
    print(out.texts[0])
  n = int(out.info.lengths[0])
  decode_tps = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
  print(f"[{int(out.info.prompt_lengths[0])} prompt tokens, {n} new tokens; decode "
        f"{decode_tps:.1f} tokens/s; whole call {out.seconds:.2f} s incl. compilation]",
        file=sys.stderr)


if __name__ == "__main__":
  common.run(main)
