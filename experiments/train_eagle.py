r"""Trains the EAGLE feature head on SmolLM2-135M-Instruct: a thin launcher.

    python experiments/train_eagle.py --config=configs/eagle.py --workdir=/tmp/eagle
    python experiments/train_eagle.py --config=configs/eagle.py --workdir=/tmp/eagle \
        --export_asset

The head (with its optimiser state: a rerun resumes) lands in ``<workdir>/checkpoints``;
``--export_asset`` also writes it alone, in bfloat16, to ``partext_jax/assets/eagle_smollm2``
(what ``bench_eagle.py`` loads by default).
"""

import functools

import jax

import common
from partext_jax.training import eagle

common.define_drafter_training_flags("EAGLE", "head")


def main(argv):
  common.no_arguments(argv)
  common.train_drafter(
      eagle.train_and_evaluate,
      summary=("valid", "valid_untrained", "draft_vocab_coverage", "train_positions",
               "seconds_data", "seconds_train", "head_params", "checkpoint"),
      what="head",
      export=functools.partial(eagle.export_head, destination=eagle.asset_directory()))


if __name__ == "__main__":
  jax.config.config_with_absl()
  common.run(main)
