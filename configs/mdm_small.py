"""The shipped masked-diffusion checkpoint: the main job's data, a larger denoiser trained longer.

    python experiments/train.py --config=configs/mdm_small.py --workdir=workdir/mdm_small

Starts from configs/default.py (every field documented there): the same corpus, tokenizer and
sequence length (so its validation bound is directly comparable with the 10-minute model's), a
5.6M-parameter denoiser (d_model 256, 6 blocks) with residual dropout, 3000 steps.
"""

import pathlib
import runpy


def get_config():
  """Returns the shipped-checkpoint config."""
  config = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))["get_config"]()
  config.model.update(d_model=256, num_layers=6, num_heads=4, mlp_dim=768, dropout_rate=0.1)
  config.train.update(num_steps=3000, learning_rate=1e-3, warmup_steps=150, ema_decay=0.999,
                      log_every=20, eval_every=500, checkpoint_every=100, keep_checkpoints=2)
  return config
