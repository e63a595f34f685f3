r"""Trains Medusa heads on SmolLM2-135M-Instruct: a thin launcher around ``train_and_evaluate``.

    python experiments/train_medusa.py --config=configs/medusa.py --workdir=/tmp/medusa
    python experiments/train_medusa.py --config=configs/medusa.py --workdir=/tmp/medusa \
        --config.num_epochs=2 --export_asset

The heads (with their optimiser state: a rerun resumes) land in ``<workdir>/checkpoints``;
``--export_asset`` also writes the heads alone to ``partext_jax/assets/medusa_smollm2`` (what
``bench_medusa.py`` loads by default).
"""

import functools

import jax

import common
from partext_jax.training import medusa

common.define_drafter_training_flags("Medusa", "heads")


def main(argv):
  common.no_arguments(argv)
  common.train_drafter(
      medusa.train_and_evaluate, format_report=medusa.format_report,
      summary=("train_positions", "seconds_data", "seconds_train", "head_params", "checkpoint"),
      what="heads",
      export=functools.partial(medusa.export_heads, destination=medusa.asset_directory()))


if __name__ == "__main__":
  jax.config.config_with_absl()
  common.run(main)
