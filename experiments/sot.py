r"""Answers questions with Skeleton-of-Thought on SmolLM2-135M-Instruct (CPU).

    python experiments/sot.py --question="What are some tips for saving money?"
    python experiments/sot.py --question="Why is the sky blue?" --question="What is 17 times 23?" \
        --router

Prints, per question, the path taken (``sot``, ``fallback`` when no points parsed, ``ar`` when
the router chose plain decoding), the skeleton, the parsed points and the composed answer; then
the latency accounting: sequential target forwards (skeleton + longest point) against filling
the points one after another, and the wall time (compilation included on a first call).
"""

from absl import flags
import jax

import common
from partext_jax import pretrained
from partext_jax.ar import sot

_QUESTION = flags.DEFINE_multi_string("question", ["What are some tips for saving money?"],
                                      "A question (repeat the flag for a batch).")
_ROUTER = flags.DEFINE_bool("router", False, "Route each question to SoT or plain AR "
                            "(partext_jax.ar.sot.route); default: SoT for every question.")
_MAX_POINTS = flags.DEFINE_integer("max_points", 5, "Points kept from a skeleton.")
_POINT_TOKENS = flags.DEFINE_integer("point_tokens", 48, "Decode budget per point.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 = greedy.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed (temperature > 0).")
_GGUF = flags.DEFINE_string("gguf", None, "GGUF file (default: the embedded SmolLM2-135M).")


def main(argv):
  common.no_arguments(argv)
  bundle = pretrained.load_bundle(_GGUF.value)
  config = sot.SoTConfig(max_points=_MAX_POINTS.value, point_tokens=_POINT_TOKENS.value)
  res = sot.generate(bundle, _QUESTION.value, config=config,
                     router=sot.route if _ROUTER.value else None,
                     rng_key=jax.random.key(_SEED.value), temperature=_TEMPERATURE.value)
  for i, q in enumerate(_QUESTION.value):
    print(f"===== {q} [{res.modes[i]}]")
    if res.skeletons[i]:
      print(f"-- skeleton:\n{res.skeletons[i]}\n-- points: {res.points[i]}")
    print(f"-- answer:\n{res.answers[i]}\n")
  info = res.info
  print(f"target forwards: {info.forward_passes} (skeleton {info.skeleton_steps} + fill "
        f"{info.expansion_steps} + plain AR {info.answer_steps}); filling the points one after "
        f"another: {info.sequential_fill_passes}; fill batch of {info.batch_rows} rows; "
        f"{res.seconds:.1f} s")


if __name__ == "__main__":
  common.run(main)
