r"""Trains Medusa heads on SmolLM2-135M-Instruct: a thin launcher around ``train_and_evaluate``.

    python experiments/train_medusa.py --config=configs/medusa.py --workdir=/tmp/medusa
    python experiments/train_medusa.py --config=configs/medusa.py --workdir=/tmp/medusa \
        --config.num_epochs=2 --export_asset

The heads (with their optimiser state: a rerun resumes) land in ``<workdir>/checkpoints``;
``--export_asset`` also writes the heads alone to ``partext_jax/assets/medusa_smollm2`` (what
``bench_medusa.py`` loads by default).
"""

import json

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

import common
from partext_jax.training import medusa

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for the data cache, checkpoints and report.")
flags.DEFINE_bool("export_asset", False, "Also save the heads as the package's committed asset.")
config_flags.DEFINE_config_file(
    "config", None, "File path to the Medusa training configuration.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.no_arguments(argv)
  report = medusa.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print(medusa.format_report(report))
  print(json.dumps({k: report[k] for k in ("train_positions", "seconds_data", "seconds_train",
                                           "head_params", "checkpoint")}, indent=1))
  if FLAGS.export_asset:
    dest = medusa.export_heads(report, medusa.asset_directory(), command=(
        "python experiments/train_medusa.py --config=configs/medusa.py --workdir=<dir> "
        "--export_asset"))
    print(f"exported the heads to {dest}")


if __name__ == "__main__":
  jax.config.config_with_absl()
  common.run(main)
