r"""One-shot (CTC, GLAT) and edit-based (Levenshtein) generation vs our AR peer, on one machine.

    python experiments/bench_nat.py --out=experiments/results/bench_nat_cpu.md \
        --workdir=workdir/bench_nat            # distill's teacher cache; about an hour on 2 cores

For every task (copy of length 16, reverse and sort of lengths 1-16 over 8 symbols, and the
SmolLM2 distillation) every model kind is trained from scratch with the same budget (steps,
batch, optimiser, width 128, 4 layers in all: 2 + 2 for the encoder-decoders, 4 for the causal
AR peer) and evaluated on the same held-out pairs:

* **exact match**: the whole output equals the target (the teacher's continuation for distill);
* **forwards / seq**: model calls per sequence (CTC: 1; Levenshtein: 3 decoder passes per
  iteration until nothing changes, the encoder pass not counted; AR: one per generated token,
  EOS included);
* **decode ms / seq**: the median wall time of decoding one batch of ``--decode_batch`` held-out
  sources (compiled beforehand), per sequence; **vs AR**: the AR peer's time over the model's;
* distill only: **gen-PPL** under SmolLM2 and the mean unigram **entropy** of the outputs
  (``partext_jax.evaluation``), the teacher's own in its row.
"""

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
flags.DEFINE_integer("decode_batch", 256, "Sources per timed decoding call.")
flags.DEFINE_integer("repeats", 3, "Timed decoding calls (the median is kept).")
flags.DEFINE_string("workdir", "workdir/bench_nat", "Cache of the distillation teacher data.")
flags.DEFINE_string("out", None, "Also write the report here.")

TOY = {"copy": dict(min_length=16, max_length=16), "reverse": dict(min_length=1, max_length=16),
       "sort": dict(min_length=1, max_length=16)}


def experiment_config(task: str, kind: str):
  config = nat_config.default_config()
  config.task.name = task
  config.task.update(TOY.get(task, {}))
  config.model.kind = kind
  if task == "distill":  # 4096 prompts of 4-16 tokens, continuations of 16
    config.task.num_prompts = 4096
    config.model.upsampling = 3
  config.train.num_steps = FLAGS.distill_steps if task == "distill" else FLAGS.num_steps
  config.train.update(batch_size=FLAGS.batch_size, eval_every=config.train.num_steps,
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
  d = nat_config.ModelConfig()
  text = (
      f"# NAT benchmark: one-shot CTC / GLAT, Levenshtein Transformer, AR peer\n\n"
      f"`python experiments/bench_nat.py --num_steps={FLAGS.num_steps} "
      f"--distill_steps={FLAGS.distill_steps} --batch_size={FLAGS.batch_size}`\n\n"
      f"Machine: {common.machine()}.\n\n"
      f"Every model: width {d.d_model}, {d.num_heads} heads, SwiGLU {d.mlp_dim}, 4 layers "
      f"({d.num_encoder_layers} + {d.num_decoder_layers} encoder-decoder; the AR peer a 4-layer "
      f"causal Llama), AdamW {nat_config.TrainConfig().learning_rate} with warmup and cosine "
      f"decay, batch {FLAGS.batch_size}; CTC / GLAT upsampling 2 (3 on distill); Levenshtein "
      f"step cap {nat_config.TrainConfig().max_iterations}. Decoding is greedy / argmax, "
      f"batch {FLAGS.decode_batch}, median of {FLAGS.repeats} calls after a warm-up; "
      f"'train s' is the steps' wall time (a shared machine: other jobs ran too).\n\n"
      + common.markdown_table(HEADER, rows))
  common.write_report(text, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
