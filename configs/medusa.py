"""Medusa heads for SmolLM2-135M-Instruct, self-distilled and trained on a 2-core CPU (~10 min wall on a shared machine).

    python experiments/train_medusa.py --config=configs/medusa.py --workdir=/tmp/medusa

The first run greedily answers ``num_prompts`` chat prompts with the frozen model and caches the
final hidden states in the workdir (``medusa_data_<hash>.npz``); later runs with the same data
fields reuse them. Every field maps 1:1 onto ``medusa_training.MedusaTrainConfig`` (unknown keys
fail loudly).
"""

import ml_collections


def get_config():
  """Returns the Medusa training config."""
  config = ml_collections.ConfigDict()
  # K, the number of Medusa heads; head k guesses the token k places after the target's next one.
  config.num_heads = 4
  # Residual SiLU blocks per head (Medusa uses 1).
  config.num_layers = 1
  # Chat prompts answered by the frozen model (half general topics, half stdlib functions).
  config.num_prompts = 128
  # Longest greedy answer per prompt (stops earlier at EOS); answers are the training targets.
  config.max_new_tokens = 128
  # Prompts answered per batched greedy generate call.
  config.gen_batch_size = 32
  # Fraction of prompts (by a stable hash of the prompt text) held out for validation.
  config.validation_fraction = 0.125
  # Answer positions (hidden states) per optimiser step.
  config.batch_size = 256
  # Passes over the training positions.
  config.num_epochs = 3
  # Peak AdamW learning rate (linear warmup, cosine decay to 10%).
  config.learning_rate = 1e-3
  # Linear warmup steps.
  config.warmup_steps = 20
  # AdamW decoupled weight decay.
  config.weight_decay = 0.0
  # Loss weight of head k is head_decay ** (k - 1) (later heads are harder; Medusa uses 0.8).
  config.head_decay = 0.8
  # k of the reported top-k validation accuracy.
  config.topk_eval = 4
  # Seed of the data order (the heads start at zero, independent of it).
  config.seed = 0
  # Show tqdm progress bars.
  config.progress_bar = True
  return config
