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

from absl import app
from absl import flags
import jax

import common
from partext_jax import parallel
from partext_jax.training import runs

FLAGS = flags.FLAGS

common.define_trained_run_flags()
flags.DEFINE_integer("num_samples", None, "Samples to draw (default: config.sample).")
flags.DEFINE_integer("num_steps", None, "Tau-leaping steps (default: config.sample).")
flags.DEFINE_integer("seed", 0, "Sampler seed.")
flags.DEFINE_string("prompt", None, "Optional text kept fixed at the start of every sample.")
flags.DEFINE_list("mesh", None, "Sample on a DATA,FSDP,TENSOR device mesh, e.g. 2,2,2 (-1: the "
                  "devices left); default: one device.")
common.define_distributed_flags()
common.check_flag("num_samples", lambda n: n >= 1, "must be >= 1")
common.check_flag("num_steps", lambda n: n >= 1, "must be >= 1")


def main(argv):
  common.no_arguments(argv)
  mesh = None
  if common.initialize_distributed() or FLAGS.mesh:
    mesh = common.mesh_from_flag(FLAGS.mesh)
    print(f"# mesh: {parallel.describe(mesh)}", flush=True)
  texts = runs.sample_texts(FLAGS.workdir, config=FLAGS.config, num_samples=FLAGS.num_samples,
                            num_steps=FLAGS.num_steps, seed=FLAGS.seed, prompt=FLAGS.prompt,
                            mesh=mesh)
  if jax.process_index() == 0:
    for i, text in enumerate(texts):
      print(f"===== sample {i} =====\n{text}", flush=True)


if __name__ == "__main__":
  jax.config.config_with_absl()
  common.run(main)
