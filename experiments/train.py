r"""Trains a masked-diffusion denoiser: a thin launcher around ``train_and_evaluate``.

    python experiments/train.py --config=configs/default.py --workdir=/tmp/stdlib
    python experiments/train.py --config=configs/tiny.py --workdir=/tmp/tiny \
        --config.train.num_steps=40

Re-running with the same workdir resumes from the latest checkpoint (exactly: same data order
and randomness), or only re-evaluates and samples when the run has finished.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from partext_jax.training import trainer  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples.")
config_flags.DEFINE_config_file(
    "config", None, "File path to the training configuration.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  logging.info("JAX devices: %s", jax.devices())
  logging.info("workdir: %s", FLAGS.workdir)
  trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
