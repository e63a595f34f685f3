r"""Benchmark: MDM training tokens/s and tau-leaping sampling tokens/s, in one run.

Sampling is measured side by side with and without the MDLM output cache (exact for the
time-independent default denoiser), at several step counts; each row reports the denoiser calls
(NFE) so the cache's saving is visible. Times are wall-clock after one compilation, median of
``--repeats``.

    python experiments/bench_mdm.py --config=configs/default.py --out=experiments/results/bench_mdm_cpu.md

The sampler is already jit-compiled once per shape; timings exclude that first compilation.
"""

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

import common
from partext_jax.models import denoiser
from partext_jax.masked.tau_leaping import tau_leaping
from partext_jax.training import core, datasets, mdm
from partext_jax.training.config import parse_config

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", lock_config=True)
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 10, "Timed training steps.")
_SAMPLE_GRID = flags.DEFINE_list(
    "sample_grid", ["16x16", "16x64", "16x256", "1x512"],
    "BATCHxSTEPS sampling cases. The output cache saves calls only when a step can change no "
    "token of the batch, i.e. when steps outnumber the masked positions (the 1x512 case).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats per sampling row (median).")
_OUT = flags.DEFINE_string("out", None, "Also write the markdown table here.")


def main(argv):
  del argv
  cfg = parse_config(_CONFIG.value)
  data = datasets.build_dataset(cfg.data, workdir=None)
  model_cfg = cfg.model.denoiser_config(vocab_size=data.vocab_size, max_len=cfg.data.seq_len)
  optimizer = core.make_optimizer(cfg.train, cfg.train.num_steps)
  state = mdm.init_train_state(jax.random.PRNGKey(0), model_cfg, optimizer)
  step = mdm.make_train_step(model_cfg, optimizer, schedule=cfg.diffusion.masking_schedule(),
                             antithetic=cfg.diffusion.antithetic, ema_decay=cfg.train.ema_decay)
  bsz, seq = cfg.train.batch_size, cfg.data.seq_len
  batches = [jnp.asarray(data.train[(i * bsz) % (len(data.train) - bsz):][:bsz])
             for i in range(_TRAIN_STEPS.value + 1)]
  state, _ = step(state, batches[0], jax.random.PRNGKey(1))  # compile
  jax.block_until_ready(state)

  def train():
    nonlocal state
    for i, batch in enumerate(batches[1:]):
      state, metrics = step(state, batch, jax.random.PRNGKey(i))
    return metrics

  train_s = common.time_call(train, repeats=1).median / _TRAIN_STEPS.value
  rows = [("train step", bsz, "-", "-", f"{train_s:.3f}", f"{bsz * seq / train_s:,.0f}")]

  denoise_fn = denoiser.make_denoise_fn(model_cfg, state.ema_params)
  for case in _SAMPLE_GRID.value:
    batch, n = map(int, case.lower().split("x"))
    x_init = jnp.full((batch, seq), model_cfg.mask_id, jnp.int32)
    for cache in (False, True):
      sampler = tau_leaping(denoise_fn, mask_id=model_cfg.mask_id, num_steps=n,
                            schedule=cfg.diffusion.masking_schedule(), cache_outputs=cache)
      timing = common.time_call(lambda: sampler.sample(jax.random.PRNGKey(0), x_init),
                                repeats=_REPEATS.value)
      nfe = int(np.asarray(timing.output[1].nfe).sum())
      rows.append((f"tau-leaping{' + output cache' if cache else ''}", batch, n, nfe,
                   f"{timing.median:.3f}", f"{x_init.size / timing.median:,.0f}"))

  params = denoiser.count_params(state.params)
  common.write_report(
      f"MDM benchmark: {common.machine()}; model {params / 1e6:.2f} M params, seq_len {seq}, "
      f"vocab {data.vocab_size}\n\n"
      + common.markdown_table(["what", "batch", "steps", "NFE", "seconds", "tokens/s"], rows),
      _OUT.value)


if __name__ == "__main__":
  common.run(main)
