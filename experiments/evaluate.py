r"""Prints the validation NELBO bound of a trained run (EMA parameters).

    python experiments/evaluate.py --workdir=/tmp/tiny --num_time_samples=8

The model, data and tokenizer come from the latest checkpoint in ``--workdir``; ``--config``
(optional) replaces the stored config.
"""

import json
import os
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from partext_jax.training import runs as sampling  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory of a trained run (holds checkpoints/).")
config_flags.DEFINE_config_file(
    "config", None, "Optional config file; default: the config stored in the checkpoint.",
    lock_config=True)
flags.DEFINE_integer("num_batches", None, "Validation batches (default: config.train).")
flags.DEFINE_integer("num_time_samples", None,
                     "Monte-Carlo draws per batch (default: config.train).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  metrics = sampling.evaluate_run(
      FLAGS.workdir, config=FLAGS.config, num_batches=FLAGS.num_batches,
      num_time_samples=FLAGS.num_time_samples)
  print(json.dumps(metrics, indent=2), flush=True)


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
