r"""Trains a non-autoregressive model (or the AR peer) on a task and prints what it generates.

    python experiments/nat.py --task=copy --model=ctc                      # ~1 min on a CPU
    python experiments/nat.py --task=reverse --model=glat --workdir=workdir/nat_reverse
    python experiments/nat.py --task=sort --model=levenshtein --config.train.num_steps=2000
    python experiments/nat.py --task=distill --model=glat --workdir=workdir/nat_distill

``--task`` (copy | reverse | sort | distill) and ``--model`` (ctc | glat | levenshtein | ar) set
``config.task.name`` / ``config.model.kind`` of ``--config`` (default ``configs/nat.py``); any
field can be overridden, e.g. ``--config.model.upsampling=3``. With ``--workdir`` the run is
checkpointed there (a rerun resumes; a finished run only evaluates) and ``distill`` caches
SmolLM2's greedy continuations (the teacher data) there; ``distill`` needs it.
"""

import os

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

import common
from partext_jax.nat import config as nat_config
from partext_jax.nat import trainer
from partext_jax.nat.protocols import Output

FLAGS = flags.FLAGS
HERE = os.path.dirname(os.path.abspath(__file__))

config_flags.DEFINE_config_file(
    "config", os.path.join(HERE, "..", "configs", "nat.py"), "NAT experiment config file.",
    lock_config=True)
flags.DEFINE_enum("task", None, list(nat_config.TASKS), "Task (overrides config.task.name).")
flags.DEFINE_enum("model", None, list(nat_config.MODEL_KINDS),
                  "Model kind (overrides config.model.kind).")
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and the distillation cache.")
flags.DEFINE_integer("num_examples", 5, "Held-out examples printed.")


def main(argv):
  common.no_arguments(argv)
  config = FLAGS.config
  if FLAGS.task is not None:
    config.task.name = FLAGS.task
  if FLAGS.model is not None:
    config.model.kind = FLAGS.model
  result = trainer.train_and_evaluate(config, FLAGS.workdir)
  m, data = result.metrics, result.data
  output, _ = trainer.decode_all(result.family, result.params, data.valid)
  print(f"{result.family.kind} on {data.name}: exact match {m['exact_match']:.4f} on "
        f"{m['num_examples']} held-out pairs, length match {m['length_match']:.4f}, "
        f"{m['forwards_per_sequence']:.2f} forwards per sequence, "
        f"{m['train_seconds']:.0f} s of training")
  if data.name == "distill":
    from partext_jax.nat import distill  # pylint: disable=import-outside-toplevel
    quality = distill.generation_quality(data, output)
    teacher = distill.generation_quality(data, Output(data.valid.target, data.valid.target_lengths))
    print(f"gen-PPL (SmolLM2) {quality['gen_ppl']:.1f} (teacher {teacher['gen_ppl']:.1f}), "
          f"unigram entropy {quality['entropy']:.2f} (teacher {teacher['entropy']:.2f}) nats")
  for i in range(min(FLAGS.num_examples, len(output.lengths))):
    n, m_ = int(data.valid.source_lengths[i]), int(data.valid.target_lengths[i])
    print(f"source: {data.text(data.valid.source[i, :n])}\n"
          f"target: {data.text(data.valid.target[i, :m_])}\n"
          f"output: {data.text(output.tokens[i, :int(output.lengths[i])])}\n")


if __name__ == "__main__":
  jax.config.config_with_absl()
  common.run(main)
