r"""Draws tau-leaping samples from a trained run and prints them as text.

    python experiments/sample.py --workdir=/tmp/tiny --num_samples=4 --num_steps=64 \
        --prompt="def "

The model, data and tokenizer come from the latest checkpoint in ``--workdir``; ``--config``
(optional) replaces the stored config, e.g. to change the ``sample`` section.
"""

import os
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from partext_jax.training import sampling  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory of a trained run (holds checkpoints/).")
config_flags.DEFINE_config_file(
    "config", None, "Optional config file; default: the config stored in the checkpoint.",
    lock_config=True)
flags.DEFINE_integer("num_samples", None, "Samples to draw (default: config.sample).")
flags.DEFINE_integer("num_steps", None, "Tau-leaping steps (default: config.sample).")
flags.DEFINE_integer("seed", 0, "Sampler seed.")
flags.DEFINE_string("prompt", None, "Optional text kept fixed at the start of every sample.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  texts = sampling.sample_texts(
      FLAGS.workdir, config=FLAGS.config, num_samples=FLAGS.num_samples,
      num_steps=FLAGS.num_steps, seed=FLAGS.seed, prompt=FLAGS.prompt)
  for i, text in enumerate(texts):
    print(f"===== sample {i} =====\n{text}", flush=True)


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
