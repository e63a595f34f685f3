r"""Trains Medusa heads on SmolLM2-135M-Instruct: a thin launcher around ``train_and_evaluate``.

    python experiments/train_medusa.py --config=configs/medusa.py --workdir=/tmp/medusa
    python experiments/train_medusa.py --config=configs/medusa.py --workdir=/tmp/medusa \
        --config.num_epochs=2 --export_asset

The heads land in ``<workdir>/checkpoints``; ``--export_asset`` also writes them to
``partext_jax/assets/medusa_smollm2`` (what ``bench_medusa.py`` loads by default).
"""

import json
import os
import shutil
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from partext_jax.training import medusa as medusa_training  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for the data cache, checkpoints and report.")
flags.DEFINE_bool("export_asset", False, "Also save the heads as the package's committed asset.")
config_flags.DEFINE_config_file(
    "config", None, "File path to the Medusa training configuration.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  report = medusa_training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print(medusa_training.format_report(report))
  print(json.dumps({k: report[k] for k in ("train_positions", "seconds_data", "seconds_train",
                                           "head_params", "checkpoint")}, indent=1))
  if FLAGS.export_asset:
    mcfg, params, meta = medusa_training.load_heads(os.path.join(FLAGS.workdir, "checkpoints"))
    dest = medusa_training.asset_directory()
    if os.path.isdir(dest):
      shutil.rmtree(dest)
    medusa_training.save_heads(dest, params, mcfg, step=0, metadata={
        "train_config": meta.get("train_config"), "valid": report["valid"],
        "command": "python experiments/train_medusa.py --config=configs/medusa.py "
                   "--workdir=<dir> --export_asset"})
    print(f"exported the heads to {dest}")


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
