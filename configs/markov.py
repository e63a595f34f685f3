"""Synthetic data with a known answer: sequences of a seeded random Markov chain.

The run prints the validation bound beside the exact entropy of the sequences (a model cannot
beat it) and the unigram entropy (a model ignoring context cannot beat that). About a minute on a
2-core CPU:

    python experiments/train.py --config=configs/markov.py --workdir=/tmp/markov

Starts from the defaults (``configs/default.py``); the text-only data fields (max_bytes,
validation_fraction, tokenizer, vocab_size) are ignored by the markov source.
"""

from partext_jax.training import config as config_lib


def get_config():
  """Returns the Markov-chain experiment config."""
  config = config_lib.default_config()
  # Data: 8192 training and 256 validation sequences of 64 states (num_states, concentration and
  # seed of the chain at their defaults).
  config.data.update(source="markov", seq_len=64, num_train_sequences=8192,
                     num_valid_sequences=256)
  # Model: two small blocks.
  config.model.update(d_model=64, num_layers=2, num_heads=2, mlp_dim=128)
  # Training: 400 steps; a wider, more repeated validation for a tight bound.
  config.train.update(num_steps=400, learning_rate=3e-3, warmup_steps=40, ema_decay=0.99,
                      eval_every=100, eval_batch_size=64, eval_batches=4, eval_time_samples=8)
  # Sampling: 64 tau-leaping steps.
  config.sample.update(num_steps=64)
  # Mesh: the default (every device on the data axis; batch 32 and eval batch 64 split over up
  # to 32 devices, if their count divides 32). At d_model=64, fsdp / tensor sharding would only
  # add traffic.
  return config
