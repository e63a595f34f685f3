"""Medusa heads for SmolLM2-135M-Instruct, self-distilled and trained on a 2-core CPU (~10 min).

    python experiments/train_medusa.py --config=configs/medusa.py --workdir=/tmp/medusa

The first run greedily answers ``num_prompts`` chat prompts with the frozen model and caches the
final hidden states in the workdir (``medusa_data_<hash>.npz``); later runs with the same data
fields reuse them. The fields, their meaning and these defaults are
``partext_jax.training.medusa.MedusaTrainConfig``'s (unknown keys fail loudly); override any on
the command line, e.g. ``--config.num_epochs=2``.
"""

from partext_jax.training import config as config_lib
from partext_jax.training import medusa


def get_config():
  """Returns the Medusa training config (4 heads, 128 prompts, 3 epochs)."""
  return config_lib.to_config_dict(medusa.MedusaTrainConfig())
