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

import functools

import jax

import common
from partext_jax.training import config as config_lib
from partext_jax.training import diffusion_drafter

common.define_drafter_training_flags(
    "diffusion drafter", "drafter",
    default_config=config_lib.to_config_dict(diffusion_drafter.DiffusionDrafterTrainConfig()))


def main(argv):
  common.no_arguments(argv)
  common.train_drafter(
      diffusion_drafter.train_and_evaluate,
      summary=("valid", "valid_untrained", "draft_vocab_coverage", "train_windows",
               "seconds_data", "seconds_train", "params", "checkpoint"),
      what="drafter",
      export=functools.partial(diffusion_drafter.export_drafter,
                               destination=diffusion_drafter.asset_directory()))


if __name__ == "__main__":
  jax.config.config_with_absl()
  common.run(main)
