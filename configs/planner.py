"""The P2 planner head on a trained denoiser (seconds to minutes on a CPU).

    python experiments/train_planner.py --config=configs/planner.py --workdir=workdir/default \
        --planner_workdir=workdir/planner

The fields, their meaning and these defaults are
``partext_jax.training.planner.PlannerTrainConfig``'s (unknown keys fail loudly); override any
on the command line, e.g. ``--config.num_steps=100``.
"""

from partext_jax.training import config as config_lib
from partext_jax.training import planner


def get_config():
  """Returns the planner-head training config (300 steps of 32 windows)."""
  return config_lib.to_config_dict(planner.PlannerTrainConfig())
