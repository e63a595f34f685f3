r"""Trains the masked-diffusion drafter of SmolLM2-135M-Instruct: a thin launcher.

    nice -n 10 python experiments/train_diffusion_drafter.py --workdir=/tmp/dd
    python experiments/train_diffusion_drafter.py --workdir=/tmp/dd --config.num_steps=600 \
        --export_asset

The configuration is :class:`partext_jax.training.diffusion_drafter.DiffusionDrafterTrainConfig`
(defaults; override any field with ``--config.<field>=...``). The first run answers the chat
prompts greedily with SmolLM2 and caches the data in the workdir; checkpoints (resumable) land in
``<workdir>/checkpoints``; ``--export_asset`` also writes the denoiser alone, in bfloat16, to
``partext_jax/assets/diffusion_drafter_smollm2`` (what ``bench_diffusion_drafter.py`` and
``load_drafter()`` read by default).
"""

import json
import sys

from absl import flags
import jax
from ml_collections import config_flags

import common
from partext_jax.training import config as config_lib
from partext_jax.training import diffusion_drafter

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for the data cache, checkpoints and report.")
flags.DEFINE_bool("export_asset", False, "Also save the drafter as the package's asset.")
config_flags.DEFINE_config_dict(
    "config", config_lib.to_config_dict(diffusion_drafter.DiffusionDrafterTrainConfig()),
    "Training configuration (override fields with --config.<field>=...).", lock_config=True)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  common.no_arguments(argv)
  report = diffusion_drafter.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print(json.dumps({k: report[k] for k in ("valid", "valid_untrained", "draft_vocab_coverage",
                                           "train_windows", "seconds_data", "seconds_train",
                                           "params", "checkpoint")}, indent=1))
  if FLAGS.export_asset:
    command = "python experiments/train_diffusion_drafter.py " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--workdir"))
    dest = diffusion_drafter.export_drafter(report, diffusion_drafter.asset_directory(),
                                            command=command)
    print(f"exported the drafter to {dest}")


if __name__ == "__main__":
  jax.config.config_with_absl()
  common.run(main)
