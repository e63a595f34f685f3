"""EAGLE feature head for SmolLM2-135M-Instruct, trained on a shared 2-core CPU (~26 min).

    python experiments/train_eagle.py --config=configs/eagle.py --workdir=/tmp/eagle

The first run greedily answers ``num_prompts`` chat prompts with the frozen model (the first of
the Medusa heads' prompts: a subset of their data, 64 x 96 against 128 x 128 tokens), adds
``corpus_rows`` chunks of the standard library, and caches the target's features and greedy labels in the workdir
(``eagle_data_<hash>.npz``); later runs reuse them, and a rerun resumes training from the last
checkpoint. Fields are ``partext_jax.training.eagle.EagleTrainConfig``'s (unknown keys fail
loudly); override any on the command line, e.g. ``--config.num_steps=120``.
"""

from partext_jax.training import config as config_lib
from partext_jax.training import eagle


def get_config():
  """Returns the EAGLE head training config (commented field by field)."""
  return config_lib.to_config_dict(eagle.EagleTrainConfig(
      # Optimiser (AdamW, linear warmup then cosine decay to 10% of the peak).
      learning_rate=5e-4,       # peak learning rate
      warmup_steps=10,          # linear warmup steps
      weight_decay=0.0,         # no decoupled weight decay (a small head, little data)
      b2=0.999,                 # Adam beta2
      grad_clip_norm=0.5,       # global gradient-norm clip (EAGLE clips at 0.5)
      # Data (cached by these fields).
      num_prompts=64,           # chat prompts answered greedily by the target (self-distillation)
      max_new_tokens=96,        # longest greedy answer per prompt
      gen_batch_size=32,        # prompts per batched greedy generate call
      corpus_rows=8,            # extra rows of standard-library text (the embedded corpus)
      seq_len=160,              # tokens per row (prompt + answer, truncated / padded)
      validation_fraction=0.125,  # prompts held out by a stable hash (Medusa's split)
      # Head and loss.
      draft_vocab_size=4096,    # most frequent training tokens the head may propose
      unroll_steps=2,           # passes: 1 = EAGLE-1; 2 also trains on its own guessed features
      token_loss_weight=0.1,    # w_p: CE weight next to the feature SmoothL1 (EAGLE-1: 0.1)
      # Loop.
      batch_size=8,             # rows per optimiser step
      num_steps=40,             # optimiser steps (the CPU budget: ~20-30 s per step here)
      checkpoint_every=5,       # steps between checkpoints (a rerun resumes from the last)
      eval_depth=5,             # chain depth of the estimated accepted length
      seed=0,                   # data order
      progress_bar=True,        # tqdm bars
  ))
