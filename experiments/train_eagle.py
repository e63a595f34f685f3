r"""Trains the EAGLE feature head on SmolLM2-135M-Instruct: a thin launcher.

    python experiments/train_eagle.py --config=configs/eagle.py --workdir=/tmp/eagle
    python experiments/train_eagle.py --config=configs/eagle.py --workdir=/tmp/eagle \
        --export_asset

The head (with its optimiser state: a rerun resumes) lands in ``<workdir>/checkpoints``;
``--export_asset`` also writes it alone, in bfloat16, to ``partext_jax/assets/eagle_smollm2``
(what ``bench_eagle.py`` loads by default).
"""

import json

from absl import flags
import jax
from ml_collections import config_flags

import common
from partext_jax.training import eagle

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for the data cache, checkpoints and report.")
flags.DEFINE_bool("export_asset", False, "Also save the head as the package's committed asset.")
config_flags.DEFINE_config_file(
    "config", None, "File path to the EAGLE training configuration.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.no_arguments(argv)
  report = eagle.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print(json.dumps({k: report[k] for k in ("valid", "valid_untrained", "draft_vocab_coverage",
                                           "train_positions", "seconds_data", "seconds_train",
                                           "head_params", "checkpoint")}, indent=1))
  if FLAGS.export_asset:
    dest = eagle.export_head(report, eagle.asset_directory(), command=(
        "python experiments/train_eagle.py --config=configs/eagle.py --workdir=<dir> "
        "--export_asset"))
    print(f"exported the head to {dest}")


if __name__ == "__main__":
  jax.config.config_with_absl()
  common.run(main)
