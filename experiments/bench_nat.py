r"""One-shot (CTC, GLAT) and edit-based (Levenshtein) generation vs our AR peer, on one machine.

    python experiments/bench_nat.py --out=experiments/results/bench_nat_cpu.md \
        --workdir=workdir/bench_nat            # full size: hours on a shared 2-core CPU

    # What experiments/results/bench_nat_cpu.md holds: one run per task (each a few minutes
    # on a loaded 2-core CPU), appended to one file.
    S="--num_steps=150 --batch_size=32 --learning_rate=3e-3 --warmup_steps=20 --d_model=64 \
       --mlp_dim=128 --layers=1 --num_valid=256 --out=experiments/results/bench_nat_cpu.md"
    python experiments/bench_nat.py --tasks=copy $S
    python experiments/bench_nat.py --tasks=reverse $S --append
    python experiments/bench_nat.py --tasks=sort $S --append
    python experiments/bench_nat.py --tasks=distill $S --append --distill_steps=150 \
        --num_prompts=512 --repeats=1 --workdir=workdir/bench_nat

For every task (copy of length 16, reverse and sort of lengths 1-16 over 8 symbols, and the
SmolLM2 distillation) every model kind is trained from scratch with the same budget (steps,
batch, optimiser, width, ``2 --layers`` layers in all: encoder + decoder for the NAT models, a
causal stack for the AR peer) and evaluated on the same held-out pairs:

* **exact match**: the whole output equals the target (the teacher's continuation for distill);
* **forwards / seq**: model calls per sequence (CTC: 1; Levenshtein: 3 decoder passes per
  iteration until nothing changes, the encoder pass not counted; AR: one per generated token,
  EOS included);
* **decode ms / seq**: the median wall time of decoding one batch of ``--decode_batch`` held-out
  sources (compiled beforehand), per sequence; **vs AR**: the AR peer's time over the model's;
* distill only: **gen-PPL** under SmolLM2 and the mean unigram **entropy** of the outputs
  (``partext_jax.evaluation``), the teacher's own in its row.
"""

import os
import sys

from absl import app
from absl import flags
import numpy as np

import common
from partext_jax.nat import config as nat_config
from partext_jax.nat import trainer
from partext_jax.nat.protocols import Output, Source

FLAGS = flags.FLAGS
flags.DEFINE_list("tasks", ["copy", "reverse", "sort", "distill"], "Tasks to run.")
flags.DEFINE_list("models", ["ar", "ctc", "glat", "levenshtein"], "Model kinds (ar first: the "
                  "reference of the speed ratio).")
flags.DEFINE_integer("num_steps", 2000, "Training steps of every model on a toy task.")
flags.DEFINE_integer("distill_steps", 3000, "Training steps on distill.")
flags.DEFINE_integer("batch_size", 64, "Pairs per training step.")
flags.DEFINE_float("learning_rate", 1e-3, "Peak AdamW learning rate of every model.")
flags.DEFINE_integer("warmup_steps", 100, "Warmup steps of every model.")
flags.DEFINE_integer("d_model", 128, "Width of every model.")
flags.DEFINE_integer("mlp_dim", 256, "SwiGLU hidden width of every model.")
flags.DEFINE_integer("layers", 2, "Encoder and decoder layers of the NAT models (the AR peer: "
                     "twice as many causal layers).")
flags.DEFINE_integer("num_valid", 512, "Held-out pairs of a toy task.")
flags.DEFINE_integer("num_prompts", 4096, "Distill: prompts given to SmolLM2 (10% held out).")
flags.DEFINE_integer("decode_batch", 256, "Sources per timed decoding call.")
flags.DEFINE_integer("repeats", 3, "Timed decoding calls (the median is kept).")
flags.DEFINE_string("workdir", "workdir/bench_nat", "Cache of the distillation teacher data.")
flags.DEFINE_string("out", None, "Also write the report here.")
flags.DEFINE_bool("append", False, "Append the report to --out (a later run's tasks) instead of "
                  "overwriting it.")

TOY = {"copy": dict(min_length=16, max_length=16), "reverse": dict(min_length=1, max_length=16),
       "sort": dict(min_length=1, max_length=16)}


def experiment_config(task: str, kind: str):
  config = nat_config.default_config()
  config.task.name = task
  config.task.update(TOY.get(task, {}), num_valid=FLAGS.num_valid)
  config.model.update(kind=kind, d_model=FLAGS.d_model, mlp_dim=FLAGS.mlp_dim,
                      num_encoder_layers=FLAGS.layers, num_decoder_layers=FLAGS.layers)
  if task == "distill":  # prompts of <= 16 tokens, continuations of 16
    config.task.num_prompts = FLAGS.num_prompts
    config.model.upsampling = 3
  config.train.num_steps = FLAGS.distill_steps if task == "distill" else FLAGS.num_steps
  config.train.update(batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
                      warmup_steps=min(FLAGS.warmup_steps, config.train.num_steps),
                      eval_every=config.train.num_steps,
                      checkpoint_every=config.train.num_steps, log_every=100,
                      progress_bar=False)
  return nat_config.parse_config(config)


def run_task(task: str, judge) -> list[list]:
  rows, ar_ms = [], None
  data = trainer.build_data(experiment_config(task, "ctc"), FLAGS.workdir)
  valid = data.valid
  take = np.arange(FLAGS.decode_batch) % len(valid.source_lengths)
  source = Source(np.asarray(valid.source)[take], np.asarray(valid.source_lengths)[take])
  if task == "distill":
    from partext_jax.nat import distill  # pylint: disable=import-outside-toplevel
    teacher = distill.generation_quality(data, Output(valid.target, valid.target_lengths),
                                         judge=judge)
    rows.append([task, "teacher (SmolLM2)", "", "", "", "", "", "",
                 f"{teacher['gen_ppl']:.1f}", f"{teacher['entropy']:.2f}"])
  for kind in FLAGS.models:
    exp = experiment_config(task, kind)
    result = trainer.train_and_evaluate(exp, None, data=data)
    m = result.metrics
    timing = common.time_call(lambda: result.family.decode(result.params, source),  # noqa
                              repeats=FLAGS.repeats)
    ms = 1000 * timing.median / FLAGS.decode_batch
    ar_ms = ms if kind == "ar" else ar_ms
    row = [task, kind, exp.train.num_steps, f"{m['train_seconds']:.0f}",
           f"{m['exact_match']:.3f}", f"{m['forwards_per_sequence']:.2f}", f"{ms:.3f}",
           f"{ar_ms / ms:.1f}x" if ar_ms else ""]
    if task == "distill":
      from partext_jax.nat import distill  # pylint: disable=import-outside-toplevel
      output, _ = trainer.decode_all(result.family, result.params, valid)
      quality = distill.generation_quality(data, output, judge=judge)
      row += [f"{quality['gen_ppl']:.1f}", f"{quality['entropy']:.2f}"]
    else:
      row += ["", ""]
    rows.append(row)
    print(common.markdown_table(HEADER, [row]), flush=True)
  return rows


TITLE = "# NAT benchmark: one-shot CTC / GLAT, Levenshtein Transformer, AR peer\n\n"
HEADER = ["task", "model", "steps", "train s", "exact match", "forwards / seq",
          "decode ms / seq", "vs AR", "gen-PPL", "entropy"]


def main(argv):
  common.no_arguments(argv)
  for task in FLAGS.tasks:
    if task not in nat_config.TASKS:
      raise app.UsageError(f"--tasks: {task!r} is not one of {nat_config.TASKS}")
  judge = None
  if "distill" in FLAGS.tasks:
    from partext_jax import evaluation  # pylint: disable=import-outside-toplevel
    judge = evaluation.Judge.load()
  rows = [row for task in FLAGS.tasks for row in run_task(task, judge)]
  train = experiment_config(FLAGS.tasks[0], "ctc").train
  section = (
      f"## {', '.join(FLAGS.tasks)}\n\n"
      f"`python experiments/bench_nat.py {' '.join(sys.argv[1:])}`\n\n"
      f"Machine: {common.machine()}.\n\n"
      f"Every model: width {FLAGS.d_model}, {nat_config.ModelConfig().num_heads} heads, SwiGLU "
      f"{FLAGS.mlp_dim}; {FLAGS.layers} + {FLAGS.layers} encoder-decoder layers (the AR peer: a "
      f"{2 * FLAGS.layers}-layer causal Llama); AdamW {train.learning_rate} with "
      f"{train.warmup_steps} warmup steps and cosine decay, batch {FLAGS.batch_size}; CTC / GLAT "
      f"upsampling 2 (3 on distill), GLAT ratio {train.glancing_start} -> {train.glancing_end}; "
      f"Levenshtein step cap {train.max_iterations}. Decoding is greedy / argmax, batch "
      f"{FLAGS.decode_batch}, median of {FLAGS.repeats} calls after a warm-up; 'train s' is the "
      f"training steps' wall time, the step's compilation included (a shared machine: other "
      f"jobs ran too).\n\n"
      + common.markdown_table(HEADER, rows) + "\n")
  if FLAGS.append and FLAGS.out and os.path.exists(FLAGS.out):
    with open(FLAGS.out, encoding="utf-8") as f:
      section = f.read().rstrip("\n") + "\n\n" + section
  else:
    section = TITLE + section
  common.write_report(section, FLAGS.out)

if __name__ == "__main__":
  common.run(main)
