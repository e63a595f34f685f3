r"""Trains the P2 planner head on a trained MDM (frozen) and prints its held-out metrics.

    python experiments/train_planner.py --config=configs/planner.py --workdir=workdir/default \
        --planner_workdir=workdir/planner
    python experiments/sweep_samplers.py --workdir=workdir/default --planner_workdir=workdir/planner

The head is checkpointed under ``<planner_workdir>/planner`` (orbax, atomic; a rerun resumes),
its log in ``<planner_workdir>/planner_metrics.jsonl``. Override any field of the config on the
command line, e.g. ``--config.num_steps=100``.
"""

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

import common
from partext_jax.training import planner
from partext_jax.training import runs

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Trained MDM run (experiments/train.py).")
flags.DEFINE_string("planner_workdir", None, "Where the head is saved.")
config_flags.DEFINE_config_file(
    "config", None, "File path to the planner training configuration.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir", "planner_workdir"])


def main(argv):
  common.no_arguments(argv)
  run = runs.load_run(FLAGS.workdir)
  _, metrics = planner.train_planner(run, planner.parse_config(FLAGS.config),
                                     workdir=FLAGS.planner_workdir)
  print(planner.format_report(metrics))


if __name__ == "__main__":
  jax.config.config_with_absl()
  common.run(main)
