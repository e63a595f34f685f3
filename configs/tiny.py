"""A seconds-long run for tests and CI: a small slice of the stdlib corpus, a tiny denoiser.

    python experiments/train.py --config=configs/tiny.py --workdir=/tmp/tiny

Starts from the defaults (``configs/default.py``) and changes only sizes.
"""

from partext_jax.training import config as config_lib


def get_config():
  """Returns the tiny experiment config."""
  config = config_lib.default_config()
  # Data: 300 kB of stdlib source, character-level, short sequences.
  config.data.update(max_bytes=300_000, validation_fraction=0.1, tokenizer="char",
                     vocab_size=128, seq_len=32)
  # Model: one narrow block.
  config.model.update(d_model=32, num_layers=1, num_heads=2, mlp_dim=64)
  # Training: 20 steps, logging / evaluating / checkpointing often enough for the tests to see it.
  config.train.update(batch_size=8, num_steps=20, learning_rate=3e-3, warmup_steps=5,
                      ema_decay=0.99, log_every=5, eval_every=10, eval_batch_size=8,
                      eval_batches=2, eval_time_samples=2, checkpoint_every=10,
                      progress_bar=False)
  # Sampling: two short samples.
  config.sample.update(num_samples=2, num_steps=8)
  # Mesh: the default (every device on the data axis). Batch sizes of 8 split over 1, 2, 4 or 8
  # devices; e.g. --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2 on 8.
  return config
