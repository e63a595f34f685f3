"""The main job: a masked-diffusion LM on the Python standard library's source, on a CPU.

Needs no download (the stdlib is on every machine). About 10 minutes on a 2-core CPU; it ends by
printing the validation bound beside the unigram entropy of the training tokens, and samples:

    python experiments/train.py --config=configs/default.py --workdir=/tmp/stdlib

The main job is the config dataclasses' defaults: every section and field, its meaning and its
value are in ``partext_jax/training/config.py`` (one documented dataclass per section:
DataConfig, ModelConfig, DiffusionConfig, TrainConfig, SampleConfig, MeshConfig). Print them
with ``python -c "from configs import default; print(default.get_config())"``; override any on
the command line, e.g. ``--config.train.num_steps=100 --config.mesh.data=2``.
"""

from partext_jax.training import config as config_lib


def get_config():
  """Returns the default (stdlib corpus, byte-level BPE, 800 steps) experiment config."""
  return config_lib.default_config()
