"""Non-autoregressive experiments: one-shot CTC / GLAT, Levenshtein Transformer, the AR peer.

    python experiments/nat.py --task=copy --model=ctc
    python experiments/nat.py --config=configs/nat.py --task=sort --model=levenshtein \
        --config.train.num_steps=2000

The fields, their meaning and these defaults are those of
``partext_jax.nat.config.NATExperimentConfig`` (``TaskConfig``, ``ModelConfig``,
``TrainConfig``; unknown keys fail loudly). Defaults: copy of length 16 over 8 symbols, a
2 + 2-layer d=128 network with upsampling 2, 1000 steps of 64 pairs.
"""

from partext_jax.nat import config as nat_config


def get_config():
  """Returns the NAT experiment's config (every section at its default)."""
  return nat_config.default_config()
