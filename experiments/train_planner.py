r"""Trains the P2 planner head on a trained MDM (frozen) and prints its held-out metrics.

    python experiments/train_planner.py --workdir=workdir/default --planner_workdir=workdir/planner
    python experiments/sweep_samplers.py --workdir=workdir/default --planner_workdir=workdir/planner

The head is saved under ``<planner_workdir>/planner`` (orbax, atomic).
"""

from absl import app
from absl import flags

from partext_jax.training import planner
from partext_jax.training.runs import load_run

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained MDM run (experiments/train.py).",
                               required=True)
_PLANNER_WORKDIR = flags.DEFINE_string("planner_workdir", None, "Where the head is saved.",
                                       required=True)
_STEPS = flags.DEFINE_integer("steps", 300, "Optimiser steps.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Data windows per step.")
_LR = flags.DEFINE_float("learning_rate", 3e-3, "AdamW peak learning rate (cosine decay).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")


def main(argv):
  del argv
  cfg = planner.PlannerTrainConfig(steps=_STEPS.value, batch_size=_BATCH.value,
                                   learning_rate=_LR.value, seed=_SEED.value)
  run = load_run(_WORKDIR.value)
  _, metrics = planner.train_planner(run, cfg, workdir=_PLANNER_WORKDIR.value)
  print(f"held-out filled tokens: {metrics['num_tokens']}, correct: {metrics['correct_rate']:.3f}")
  print(f"BCE {metrics['bce']:.4f} nats (base rate {metrics['base_rate_bce']:.4f}); "
        f"accuracy {metrics['accuracy']:.3f}")
  print(f"ROC AUC: planner head {metrics['auc']:.3f} vs self-planning score "
        f"{metrics['self_planning_auc']:.3f}")


if __name__ == "__main__":
  app.run(main)
