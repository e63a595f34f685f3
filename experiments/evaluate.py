r"""Prints the validation NELBO bound of a trained run (EMA parameters) as JSON.

    python experiments/evaluate.py --workdir=/tmp/tiny --num_time_samples=8

The model, data and tokenizer come from the latest checkpoint in ``--workdir``; ``--config``
(optional) replaces the stored config. The estimate is the trainer's own (same batches and
Monte-Carlo keys as its final evaluation, unless the counts are changed here).
"""

import json

from absl import app
from absl import flags
import jax

import common
from partext_jax.training import runs

FLAGS = flags.FLAGS

common.define_trained_run_flags()
flags.DEFINE_integer("num_batches", None, "Validation batches (default: config.train).")
flags.DEFINE_integer("num_time_samples", None,
                     "Monte-Carlo draws per batch (default: config.train).")


def main(argv):
  common.no_arguments(argv)
  metrics = runs.evaluate_run(FLAGS.workdir, config=FLAGS.config, num_batches=FLAGS.num_batches,
                              num_time_samples=FLAGS.num_time_samples)
  print(json.dumps(metrics, indent=2), flush=True)


if __name__ == "__main__":
  jax.config.config_with_absl()
  common.run(main)
