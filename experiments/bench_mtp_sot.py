r"""Multi-token prediction and Skeleton-of-Thought vs our plain AR decode, SmolLM2, CPU, one run.

    python experiments/bench_mtp_sot.py --out experiments/results/bench_mtp_sot_cpu.md

**MTP** (greedy, ``--new_tokens`` tokens, no EOS stop; batch 1 over each of ``--prompts_b1``
prompts and batch 8 over eight prompts): wall time of a full ``generate`` (best of ``--reps``
calls that did not compile; prefill included, as for AR), tokens per target forward
(``lengths / target_calls``, mean over rows), the speed-up over
:func:`partext_jax.ar.sampling.generate` of the bare trunk timed in the same process, and
whether the tokens equal AR's (they must). Predictors: the committed assets
``partext_jax/assets/mtp_smollm2_{gloeckle,deepseek}`` (``experiments/train_mtp.py``), used with
their full depth and with depth 1.

**SoT** (greedy; 20 questions, :data:`QUESTIONS`): Skeleton-of-Thought on every question and
the routed form (:func:`partext_jax.ar.sot.route`) against plain AR (up to ``--answer_tokens``
tokens, stopping at EOS). Format compliance (at least ``min_points`` points parsed), each
question's sequential target forwards and the generative perplexity of the answers under
SmolLM2 itself (:mod:`partext_jax.evaluation`; lower is not better when answers get shorter or
repetitive: the unigram entropy is printed beside it) come from one batched call over the 20
questions per decoder (a greedy row does not depend on its batch). Wall clock: batch 1 over the
first ``--timed_questions`` questions one at a time, batch 8 over the first eight at once (best
of ``--reps`` calls that compiled nothing).
"""

import dataclasses
import sys
import time

from absl import flags
import jax
import numpy as np

import common
from partext_jax import evaluation, pretrained
from partext_jax.ar import sampling as ar
from partext_jax.ar import sot
from partext_jax.ar.speculative import decode
from partext_jax.ar.speculative.drafters import mtp as mtp_drafter
from partext_jax.models import mtp
from partext_jax.training import mtp as mt

_NEW = flags.DEFINE_integer("new_tokens", 64, "MTP: tokens per generation.")
_REPS = flags.DEFINE_integer("reps", 1, "Timed calls that compile nothing (best kept).")
_PROMPTS_B1 = flags.DEFINE_integer("prompts_b1", 3, "MTP: prompts timed one at a time.")
_ANSWER = flags.DEFINE_integer("answer_tokens", 160, "SoT: plain-AR answer budget.")
_TIMED = flags.DEFINE_integer("timed_questions", 4, "SoT: questions timed one at a time.")
_SKIP = flags.DEFINE_list("skip", [], "Parts to skip: mtp, sot.")
_OUT = flags.DEFINE_string("out", None, "Write the markdown report here too.")

# Held out from the MTP training prompts (partext_jax.training.distill.build_prompts).
MTP_PROMPTS = [
    "Write a short paragraph about the history of the printing press.",
    "How do I make a cup of green tea? Give step-by-step instructions.",
    "Write a Python function that checks whether a string is a palindrome.",
    "What are three good habits for staying healthy?",
    "Explain what a black hole is to a child.",
    "Give me a recipe for pancakes.",
    "What is the difference between weather and climate?",
    "Summarise the plot of Romeo and Juliet in a few sentences.",
]

# The SoT paper's categories: knowledge / generic / common-sense / counterfactual / roleplay
# (where SoT helps) and math / coding / writing / fermi (where it does not).
QUESTIONS = [
    "What are some tips for saving money?",
    "How can I improve my sleep?",
    "What are the main causes of climate change?",
    "How do I prepare for a job interview?",
    "Why is the ocean salty?",
    "What are the benefits of learning to play a musical instrument?",
    "How can a small town attract more tourists?",
    "What should I pack for a beach trip?",
    "Describe the life cycle of a butterfly.",
    "What would happen if humans could breathe underwater?",
    "What are the pros and cons of working from home?",
    "How can I make my home more energy efficient?",
    "Explain how vaccines work.",
    "What are good ways to reduce stress?",
    "What is 17 times 23?",
    "Write a Python function that reverses a string.",
    "Write a haiku about autumn.",
    "What is the capital of Australia?",
    "How many piano tuners are there in Chicago?",
    "Translate 'good morning' into French.",
]


def _time(fn, reps, jitted):
  """Best of ``reps`` timed calls; the first call is timed too unless it compiled ``jitted``
  (then it only warms up)."""
  times, out = [], None
  for _ in range(reps + 2):  # a call that retraces every time would never qualify: stop
    size = jitted._cache_size()  # pylint: disable=protected-access
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    if jitted._cache_size() == size:  # pylint: disable=protected-access
      times.append(time.perf_counter() - start)
    if len(times) == reps:
      break
  if not times:
    raise RuntimeError("every timed call compiled: a retrace per call?")
  return min(times), out


def bench_mtp(bundle, reps: int, new_tokens: int, prompts_b1: int):
  model, params, tok = bundle
  base = model.config
  ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}]))
         for p in MTP_PROMPTS]
  decoders = []
  notes = []
  for kind in mtp.MTP_KINDS:
    cfg, mparams, meta = mt.load_params(mt.asset_directory(kind))
    valid = {k: f"{v:.2f}" for k, v in (meta.get("valid") or {}).items()}
    notes.append(
        f"{kind}: depth {cfg.depth} (trained with depth {meta.get('trained_depth', cfg.depth)}), "
        f"{cfg.num_params / 1e6:.2f} M parameters stored in {meta.get('param_dtype', 'float32')}, "
        "teacher-forced validation top-1 of the drafts (float32) "
        + ", ".join(valid.get(f"pred{k}_top1", "?") for k in range(1, cfg.depth + 1)))
    for depth in sorted({cfg.depth, 1}, reverse=True):
      sub = {f"layers_{k}": mparams[f"layers_{k}"] for k in range(depth)}
      c = dataclasses.replace(cfg, depth=depth)
      decoders.append((f"{kind} MTP chain, depth {depth}", mtp.MTPModel(model, c),
                       {"trunk": params, "mtp": sub}, mtp_drafter.MTPDrafter(c, base)))
  dparams = mtp_drafter.drafter_params(params, base_config=base)
  rows = []
  for batch, groups in ((1, [[i] for i in range(prompts_b1)]), (8, [list(range(8))])):
    for group in groups:
      prompts = [ids[i] for i in group]
      t_ar, (ref, _) = _time(lambda: ar.generate(jax.random.key(0), model, params, prompts,
                                                 max_new_tokens=new_tokens, eos_id=None), reps,
                             ar._generate_jit)  # pylint: disable=protected-access
      rows.append((batch, group, "AR (plain)", 1.0, t_ar, t_ar, True))
      print(rows[-1], flush=True)
      for name, target, tparams, drafter in decoders:
        t_sp, (out, info) = _time(lambda: decode.generate(
            jax.random.key(0), target, tparams, prompts, drafter=drafter, drafter_params=dparams,
            max_new_tokens=new_tokens, eos_id=None), reps,
            decode._generate_jit)  # pylint: disable=protected-access
        same = bool(np.array_equal(np.asarray(out), np.asarray(ref)))
        rows.append((batch, group, name, float(np.mean(info.accepted_per_call)), t_sp, t_ar,
                     same))
        print(rows[-1], flush=True)
  # Batch 1: mean over the prompts; speed-up = total AR time / total time.
  table = []
  for batch in (1, 8):
    for name in ["AR (plain)"] + [d[0] for d in decoders]:
      sel = [r for r in rows if r[0] == batch and r[2] == name]
      t = sum(r[4] for r in sel)
      t_ar = sum(r[5] for r in sel)
      n_tok = new_tokens * batch * len(sel)
      table.append((batch, name, f"{np.mean([r[3] for r in sel]):.2f}",
                    f"{t / len(sel):.2f}", f"{n_tok / t:.1f}", f"{t_ar / t:.2f}x",
                    all(r[6] for r in sel)))
  text = common.markdown_table(
      ["batch", "decoder", "tokens / target forward", "seconds / generate", "tokens/s",
       "speed-up vs AR", "identical to AR"], table)
  return text, notes


def bench_sot(bundle, reps: int, answer_tokens: int, timed: int):
  model, params, tok = bundle
  config = sot.SoTConfig(answer_tokens=answer_tokens)
  judge = evaluation.Judge.from_bundle(bundle)
  jitted = ar._generate_jit  # pylint: disable=protected-access

  def plain(questions):
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]))
           for q in questions]
    out, info = ar.generate(jax.random.key(0), model, params, ids, max_new_tokens=answer_tokens,
                            eos_id=sot.stop_ids(tok))
    return [tok.decode(r) for r in ar.trim(out, info)], np.asarray(info.lengths).tolist()

  # Quality, compliance and forward counts: all 20 questions in one batched call each (greedy
  # rows do not depend on their batch: tests/test_sot.py).
  ar_text, ar_len = plain(QUESTIONS)
  res = sot.generate(bundle, QUESTIONS, config=config)
  routed = [sot.route(q) for q in QUESTIONS]
  fwd_sot = [res.info.question_forwards(i) for i in range(len(QUESTIONS))]
  fwd_routed = [f if r else a for f, a, r in zip(fwd_sot, ar_len, routed)]
  text_routed = [t if r else a for t, a, r in zip(res.answers, ar_text, routed)]

  def quality(texts):
    s = evaluation.generative_perplexity(texts, judge=judge)
    ent = evaluation.unigram_entropy([tok.encode(t) for t in texts if t])
    return (f"{s.ppl:.1f}", f"{ent:.2f}", f"{np.mean([len(tok.encode(t)) for t in texts]):.0f}")

  compliant = [m == "sot" for m in res.modes]
  quality_rows = [
      ("AR (plain)", "-", f"{np.mean(ar_len):.0f}", *quality(ar_text)),
      ("SoT (every question)", f"{sum(compliant)}/{len(QUESTIONS)}", f"{np.mean(fwd_sot):.0f}",
       *quality(res.answers)),
      ("SoT-R (routed)", f"{sum(c and r for c, r in zip(compliant, routed))}/{sum(routed)}",
       f"{np.mean(fwd_routed):.0f}", *quality(text_routed))]
  quality_table = common.markdown_table(
      ["decoder (20 questions)", "format compliance", "sequential forwards / question",
       "gen-PPL (SmolLM2)", "unigram entropy", "answer tokens"], quality_rows)
  detail = common.markdown_table(
      ["question", "router", "SoT path", "points", "forwards SoT / sequential fill / AR"],
      [(q, "SoT" if r else "AR", m, len(pts),
        f"{f} / {(res.info.skeleton_lengths[i] or 0) + sum(res.info.point_lengths[i])} / {a}")
       for i, (q, r, m, pts, f, a) in enumerate(zip(QUESTIONS, routed, res.modes, res.points,
                                                     fwd_sot, ar_len))])

  # Wall clock: the first ``timed`` questions one at a time, then the first eight at once.
  rows = []
  for batch, groups in ((1, [[q] for q in QUESTIONS[:timed]]), (8, [QUESTIONS[:8]])):
    t_ar = t_sot = t_routed = 0.0
    for group in groups:
      a, _ = _time(lambda: plain(group), reps, jitted)
      b, _ = _time(lambda: sot.generate(bundle, group, config=config), reps, jitted)
      t_ar, t_sot = t_ar + a, t_sot + b
      if batch == 1:  # greedy and the same budgets: the routed form runs one of the two
        t_routed += b if sot.route(group[0]) else a
    n = len(groups)
    rows.append((batch, "AR (plain)", f"{t_ar / n:.2f}", "1.00x"))
    rows.append((batch, "SoT (every question)", f"{t_sot / n:.2f}", f"{t_ar / t_sot:.2f}x"))
    if batch == 1:
      rows.append((batch, "SoT-R (routed)", f"{t_routed / n:.2f}", f"{t_ar / t_routed:.2f}x"))
  time_table = common.markdown_table(["batch", "decoder", "seconds / call", "speed-up vs AR"],
                                     rows)
  summary = (f"Format compliance (>= {config.min_points} numbered points parsed from the "
             f"skeleton): {sum(compliant)}/{len(QUESTIONS)} questions; the others fell back to "
             f"plain AR after their skeleton. The router sent {sum(routed)}/{len(QUESTIONS)} "
             f"questions to SoT. Fill batch of the 20 questions: {res.info.batch_rows} rows.")
  example = (QUESTIONS[0], res.answers[0])
  return quality_table, time_table, detail, summary, example


def main(argv):
  common.no_arguments(argv)
  started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
  bundle = pretrained.load_bundle()
  parts = [f"# Multi-token prediction and Skeleton-of-Thought on CPU ({started})", "",
           "Command: `python experiments/bench_mtp_sot.py " + " ".join(sys.argv[1:]) + "`", "",
           f"Machine: {common.machine()}. Target SmolLM2-135M-Instruct f32, greedy; wall times "
           f"are the best of {_REPS.value} calls that compiled nothing.", ""]
  if "mtp" not in _SKIP.value:
    table, notes = bench_mtp(bundle, _REPS.value, _NEW.value, _PROMPTS_B1.value)
    parts += ["## Multi-token prediction (self-speculative, lossless)", "",
              f"{_NEW.value} new tokens, no EOS stop; batch 1: mean over the first "
              f"{_PROMPTS_B1.value} prompts one at a time; batch 8: eight prompts at once. "
              "Predictors: " + "; ".join(notes) + ".", "", table, ""]
  if "sot" not in _SKIP.value:
    quality, timing, detail, summary, (q, answer) = bench_sot(bundle, _REPS.value, _ANSWER.value,
                                                              _TIMED.value)
    parts += ["## Skeleton-of-Thought", "",
              f"Greedy. Plain AR answers up to {_ANSWER.value} tokens (EOS stop); SoT: skeleton "
              "<= 48 tokens, up to 5 points of <= 48 tokens each (EOS or line break). "
              + summary, "",
              "Quality and sequential target forwards (each question's count alone: skeleton + "
              "longest point, or + its plain answer after a fallback), all 20 questions:", "",
              quality, "",
              f"Wall clock: batch 1 = mean over the first {_TIMED.value} questions one at a time; "
              "batch 8 = the first eight at once.", "", timing, "", "Per question:", "", detail,
              "", f"Example ({q}):", "", "```", answer, "```", ""]
  common.write_report("\n".join(parts), _OUT.value)


if __name__ == "__main__":
  common.run(main)
