r"""Draws tau-leaping samples from a trained run and prints them as text.

    python experiments/sample.py --workdir=/tmp/tiny --num_samples=4 --num_steps=64 \
        --prompt="def "
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/sample.py \
        --workdir=/tmp/tiny --num_samples=8 --mesh=2,2,2     # on a data x fsdp x tensor mesh

The model, data and tokenizer come from the latest checkpoint in ``--workdir``; ``--config``
(optional) replaces the stored config, e.g. to change the ``sample`` section. With ``--mesh``
the parameters are sharded by the logical-axis rules (``partext_jax.parallel``) and the rows
split over the data/fsdp axes; the samples are the same as on one device. Multi-host: add
``--coordinator_address=host0:1234 --num_processes=N --process_id=i`` on every host.
"""

import os
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from partext_jax import parallel  # noqa: E402
from partext_jax.training import runs as sampling  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory of a trained run (holds checkpoints/).")
config_flags.DEFINE_config_file(
    "config", None, "Optional config file; default: the config stored in the checkpoint.",
    lock_config=True)
flags.DEFINE_integer("num_samples", None, "Samples to draw (default: config.sample).")
flags.DEFINE_integer("num_steps", None, "Tau-leaping steps (default: config.sample).")
flags.DEFINE_integer("seed", 0, "Sampler seed.")
flags.DEFINE_string("prompt", None, "Optional text kept fixed at the start of every sample.")
flags.DEFINE_list("mesh", None, "Sample on a DATA,FSDP,TENSOR device mesh, e.g. 2,2,2 (-1: the "
                  "devices left); default: one device.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0; set to run multi-process (jax.distributed).")
flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process run.")
flags.DEFINE_integer("process_id", 0, "This process's index in a multi-process run.")
flags.mark_flags_as_required(["workdir"])


def _mesh_samples():
  """Like ``sampling.sample_texts``, with the parameters and rows on ``--mesh``."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import functools  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from partext_jax.models import denoiser  # pylint: disable=g-import-not-at-top
  from partext_jax.masked.tau_leaping import tau_leaping  # pylint: disable=g-import-not-at-top

  if len(FLAGS.mesh) != 3:
    raise app.UsageError(f"--mesh needs three sizes DATA,FSDP,TENSOR, got {FLAGS.mesh}")
  data, fsdp, tensor = (int(v) for v in FLAGS.mesh)
  mesh = parallel.make_mesh(data=data, fsdp=fsdp, tensor=tensor)
  run = sampling.load_run(FLAGS.workdir, config=FLAGS.config)
  scfg = run.config.sample
  scfg = dataclasses.replace(scfg, num_samples=FLAGS.num_samples or scfg.num_samples,
                             num_steps=FLAGS.num_steps or scfg.num_steps)
  model_cfg = run.model_config
  x_init = np.full((scfg.num_samples, run.config.data.seq_len), model_cfg.mask_id, np.int32)
  if FLAGS.prompt:
    if run.encode is None:
      raise ValueError(f"data.source={run.config.data.source!r} has no tokenizer for a prompt")
    ids = np.asarray(run.encode(FLAGS.prompt), np.int32)[:x_init.shape[1]]
    x_init[:, :len(ids)] = ids
  params = parallel.shard_params(jax.device_get(run.state.ema_params),
                                 denoiser.param_logical_axes(model_cfg), mesh)
  build = functools.partial(
      tau_leaping, mask_id=model_cfg.mask_id, num_steps=scfg.num_steps,
      schedule=run.config.diffusion.masking_schedule(), method=scfg.method,
      temperature=scfg.temperature, noise_removal=scfg.noise_removal)
  tokens, _ = parallel.sample(build, jax.random.PRNGKey(FLAGS.seed), x_init, params=params,
                              apply_fn=denoiser.DenoiserApply(model_cfg), mesh=mesh)
  print(f"# mesh: {parallel.describe(mesh)}", flush=True)
  return [run.decode(row) for row in parallel.to_host(tokens)]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  if FLAGS.coordinator_address:
    parallel.initialize_distributed(coordinator_address=FLAGS.coordinator_address,
                                    num_processes=FLAGS.num_processes,
                                    process_id=FLAGS.process_id)
  if FLAGS.mesh or FLAGS.coordinator_address:
    if not FLAGS.mesh:
      FLAGS.mesh = ["-1", "1", "1"]
    texts = _mesh_samples()
  else:
    texts = sampling.sample_texts(
        FLAGS.workdir, config=FLAGS.config, num_samples=FLAGS.num_samples,
        num_steps=FLAGS.num_steps, seed=FLAGS.seed, prompt=FLAGS.prompt)
  if jax.process_index() == 0:
    for i, text in enumerate(texts):
      print(f"===== sample {i} =====\n{text}", flush=True)


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
