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

**SoT** (greedy; 20 questions, :data:`QUESTIONS`): per question, Skeleton-of-Thought (every
question) and the routed form (:func:`partext_jax.ar.sot.route`) against plain AR (up to
``--answer_tokens`` tokens, stopping at EOS): format compliance (at least ``min_points``
points parsed), sequential target forwards, wall time (each configuration warmed up on the same
shapes first), and generative perplexity of the answers under SmolLM2 itself
(:mod:`partext_jax.evaluation`; lower is not better when answers get shorter or repetitive: the
unigram entropy is printed beside it). Batch 1: the questions one at a time; batch 8: the first
eight at once.
"""

import dataclasses
import sys
import time

from absl import app, flags
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
_ANSWER = flags.DEFINE_integer("answer_tokens", 256, "SoT: plain-AR answer budget.")
_SKIP = flags.DEFINE_list("skip", [], "Parts to skip: mtp, sot.")
_OUT = flags.DEFINE_string("out", None, "Write the markdown report here too.")

# Held out from the MTP training prompts (partext_jax.training.medusa.build_prompts).
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
    valid = meta.get("valid") or {}
    notes.append(f"{kind}: depth {cfg.depth}, {cfg.num_params / 1e6:.2f} M parameters "
                 f"({4 * cfg.num_params / 2**20:.1f} MiB f32), validation top-1 of the drafts "
                 + ", ".join(f"{valid.get(f'pred{k}_top1', float('nan')):.2f}"
                             for k in range(1, cfg.depth + 1))
                 + f", teacher-forced chain length {valid.get('chain_accept_len', float('nan')):.2f}")
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


def bench_sot(bundle, reps: int, answer_tokens: int):
  model, params, tok = bundle
  config = sot.SoTConfig(answer_tokens=answer_tokens)
  judge = evaluation.Judge.from_bundle(bundle)
  stop = sot.stop_ids(tok)

  def plain(questions):
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]))
           for q in questions]
    out, info = ar.generate(jax.random.key(0), model, params, ids, max_new_tokens=answer_tokens,
                            eos_id=stop)
    return [tok.decode(r) for r in ar.trim(out, info)], int(info.num_steps)

  jitted = ar._generate_jit  # pylint: disable=protected-access
  per_q = []
  for q in QUESTIONS:
    t_ar, (ar_text, ar_steps) = _time(lambda: plain([q]), reps, jitted)
    t_sot, res = _time(lambda: sot.generate(bundle, [q], config=config), reps, jitted)
    # The routed form runs exactly one of the two (greedy, same budgets): no separate run.
    use_sot = sot.route(q)
    per_q.append(dict(q=q, ar=ar_text[0], ar_steps=ar_steps, t_ar=t_ar, sot=res.answers[0],
                      mode=res.modes[0], points=len(res.points[0]),
                      sot_steps=res.info.forward_passes, seq_steps=res.info.sequential_fill_passes,
                      t_sot=t_sot, routed_mode="sot" if use_sot else "ar",
                      routed=res.answers[0] if use_sot else ar_text[0],
                      routed_steps=res.info.forward_passes if use_sot else ar_steps,
                      t_routed=t_sot if use_sot else t_ar))
    print({k: v for k, v in per_q[-1].items() if k not in ("ar", "sot", "routed")}, flush=True)
  # Batch 8: the first eight questions at once.
  batch_q = QUESTIONS[:8]
  t_ar8, (ar8, ar8_steps) = _time(lambda: plain(batch_q), reps, jitted)
  t_sot8, res8 = _time(lambda: sot.generate(bundle, batch_q, config=config), reps, jitted)

  def ppl(texts):
    s = evaluation.generative_perplexity(texts, judge=judge)
    ent = evaluation.unigram_entropy([tok.encode(t) for t in texts if t])
    return f"{s.ppl:.1f}", f"{ent:.2f}"

  compliant = [r for r in per_q if r["mode"] == "sot"]
  routed_sot = [r for r in per_q if r["routed_mode"] == "sot"]
  rows = []
  for label, key, steps, secs, texts in (
      ("AR (plain)", "ar", "ar_steps", "t_ar", [r["ar"] for r in per_q]),
      ("SoT (every question)", "sot", "sot_steps", "t_sot", [r["sot"] for r in per_q]),
      ("SoT-R (routed)", "routed", "routed_steps", "t_routed", [r["routed"] for r in per_q])):
    del key
    t = sum(r[secs] for r in per_q)
    t_ar = sum(r["t_ar"] for r in per_q)
    rows.append((1, label, f"{np.mean([r[steps] for r in per_q]):.0f}",
                 f"{t / len(per_q):.2f}", f"{t_ar / t:.2f}x", *ppl(texts),
                 f"{np.mean([len(tok.encode(x)) for x in texts]):.0f}"))
  rows.append((8, "AR (plain)", ar8_steps, f"{t_ar8:.2f}", "1.00x", *ppl(ar8),
               f"{np.mean([len(tok.encode(x)) for x in ar8]):.0f}"))
  rows.append((8, "SoT (every question)", res8.info.forward_passes, f"{t_sot8:.2f}",
               f"{t_ar8 / t_sot8:.2f}x", *ppl(res8.answers),
               f"{np.mean([len(tok.encode(x)) for x in res8.answers]):.0f}"))
  table = common.markdown_table(
      ["batch", "decoder", "sequential target forwards", "seconds / call", "speed-up vs AR",
       "gen-PPL (SmolLM2)", "unigram entropy", "answer tokens"], rows)
  detail = common.markdown_table(
      ["question", "router", "SoT path", "points", "forwards SoT / sequential fill / AR",
       "seconds SoT / AR"],
      [(r["q"], "SoT" if r["routed_mode"] == "sot" else "AR", r["mode"], r["points"],
        f"{r['sot_steps']} / {r['seq_steps']} / {r['ar_steps']}",
        f"{r['t_sot']:.1f} / {r['t_ar']:.1f}") for r in per_q])
  summary = (f"Format compliance (>= {config.min_points} numbered points parsed from the "
             f"skeleton): {len(compliant)}/{len(per_q)} questions. The router sent "
             f"{len(routed_sot)}/{len(per_q)} questions to SoT "
             f"({sum(r['mode'] == 'sot' for r in routed_sot)} of them compliant); "
             f"batch 8 (first eight questions): {res8.modes.count('sot')}/8 compliant, fill "
             f"batch of {res8.info.batch_rows} rows.")
  example = per_q[0]
  return table, detail, summary, example


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
    table, detail, summary, example = bench_sot(bundle, _REPS.value, _ANSWER.value)
    parts += ["## Skeleton-of-Thought", "",
              f"20 questions; plain AR answers up to {_ANSWER.value} tokens (EOS stop); SoT: "
              "skeleton <= 48 tokens, up to 5 points of <= 48 tokens each. " + summary, "",
              table, "", "Per question (batch 1):", "", detail, "",
              f"Example ({example['q']}):", "", "```", example["sot"], "```", ""]
  common.write_report("\n".join(parts), _OUT.value)


if __name__ == "__main__":
  app.run(main)
