r"""Trains a masked-diffusion denoiser: a thin launcher around ``mdm.train_and_evaluate``.

    python experiments/train.py --config=configs/default.py --workdir=/tmp/stdlib
    python experiments/train.py --config=configs/tiny.py --workdir=/tmp/tiny \
        --config.train.num_steps=40

The device mesh is the config's ``mesh`` section, e.g. ``--config.mesh.data=2
--config.mesh.fsdp=2 --config.mesh.tensor=2`` on 8 devices (default: all devices on ``data``).
Multi-host: start the same command on every host with ``--coordinator_address=host0:1234
--num_processes=N --process_id=i`` (``jax.distributed.initialize``).

Re-running with the same workdir resumes from the latest checkpoint (exactly: same data order
and randomness), or only re-evaluates and samples when the run has finished.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

import common
from partext_jax.training import mdm

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples.")
config_flags.DEFINE_config_file(
    "config", None, "File path to the training configuration.", lock_config=True)
common.define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.no_arguments(argv)
  common.initialize_distributed()
  logging.info("JAX devices: %s", jax.devices())
  logging.info("workdir: %s", FLAGS.workdir)
  mdm.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  jax.config.config_with_absl()
  common.run(main)
