"""MTP predictors on a Markov chain under its exact one-hot trunk (about a minute on a CPU).

    python experiments/train_mtp.py --config=configs/mtp_markov.py --workdir=/tmp/mtp_markov
    python experiments/train_mtp.py --config=configs/mtp_markov.py --workdir=/tmp/mtp_markov_g \
        --config.kind=gloeckle

The trunk is ``partext_jax.training.mtp.OneHotMarkovLM`` (next-token law exactly ``P``); the
report compares the learned conditionals with the analytic ones (``P^{k+1}`` for Gloeckle head
``k + 1``, ``P`` for every DeepSeek module). Every field is ``MTPTrainConfig``'s.
"""

from ml_collections import config_dict


def get_config():
  """Returns the Markov-chain MTP config (DeepSeek modules, depth 2)."""
  c = config_dict.ConfigDict()
  # Predictors (blocks shaped by the Markov trunk: width V, 2 heads of 8, SwiGLU 4 V).
  c.kind = "deepseek"  # or "gloeckle".
  c.depth = 2  # D predictors.
  c.mlp_dim = 0  # 0: the trunk's (4 V).
  # Data: a seeded random chain (configs/markov.py's), 1024 sequences of 64 states.
  c.data = "markov"
  c.markov_seed = 0  # seed of the chain (and, + 1, of its sequences).
  c.num_states = 8  # V.
  c.concentration = 0.3  # Dirichlet concentration of P's rows.
  c.num_sequences = 1024
  c.seq_len = 64
  c.validation_fraction = 0.125  # the last sequences are held out.
  # SmolLM2 fields (unused with data="markov").
  c.num_prompts = 128
  c.max_new_tokens = 128
  c.gen_batch_size = 32
  # Optimisation: full-batch-like steps with a large constant-ish learning rate, no clipping.
  c.learning_rate = 3e-2
  c.warmup_steps = 10
  c.end_learning_rate_ratio = 0.01
  c.weight_decay = 0.0
  c.b1 = 0.9
  c.b2 = 0.98
  c.grad_clip_norm = 0.0
  c.batch_size = 128  # sequences per step.
  c.num_epochs = 60  # 7 steps per epoch: 420 steps.
  c.seed = 0
  c.progress_bar = True
  return c
