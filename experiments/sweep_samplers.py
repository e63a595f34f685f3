r"""Samplers x NFE on the project's trained MDM: generative perplexity, entropy, wall-clock.

Every masked-diffusion sampler of ``partext_jax.samplers`` draws ``--num_samples`` unconditional
sequences from the same trained denoiser at several budgets of denoiser calls (NFE). For each cell
we report the NFE actually spent, the generative perplexity of the decoded text under
SmolLM2-135M-Instruct (``partext_jax.evaluation``), the unigram entropy of the samples (nats, in
the MDM's own tokens; low values expose repetition) and the wall-clock seconds per sample
(compiled, best of ``--repeats`` calls after a warm-up call). The first row scores held-out data windows the same way: the
target the samplers aim at.

    python experiments/train.py --config=configs/default.py --workdir=workdir/default
    python experiments/sweep_samplers.py --workdir=workdir/default  # -> <workdir>/sweep_samplers

Cells are cached in ``<out_dir>/cells.jsonl`` (default ``<workdir>/sweep_samplers``), each keyed
by everything it depends on (:func:`run_key`: the checkpoint directory and step, the run's config,
the planner's, the number of samples, the seed), so a rerun only computes its own missing cells
(``--only`` is a regex on sampler names) and never reuses another model's; the table
(``table.md``) and ``quality_vs_nfe.png`` show only the current run's cells. A progress bar
counts the cells left.

Sampling temperature is 1 everywhere except the row marked greedy, so the rows differ only in
*which* positions are decoded and *how many* per step (ReMDM rows: also remasking, with the
reference's nucleus ``top_p = 0.9``; "MDLM + top-p" is ReMDM with ``eta = 0``, their baseline).
Adaptive rules (threshold, factor, EB) choose their own NFE: their knob is swept instead.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

import common
from partext_jax import diffusion, evaluation
from partext_jax.models.denoiser import make_denoise_fn
from partext_jax.masked.adaptive import confidence
from partext_jax.masked.adaptive import eb_sampler
from partext_jax.masked.p2 import p2
from partext_jax.masked.remdm import remdm
from partext_jax.masked.tau_leaping import tau_leaping
from partext_jax.training import checkpoint as checkpoint_lib
from partext_jax.training import datasets
from partext_jax.training import planner as planner_lib
from partext_jax.training.runs import load_run

_WORKDIR = flags.DEFINE_string("workdir", None, "Trained MDM run (experiments/train.py).",
                               required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None,
                               "Where cells.jsonl, table.md and quality_vs_nfe.png go (default: "
                               "<workdir>/sweep_samplers).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 16, "Samples per cell (one batch).")
_NFE = flags.DEFINE_list("nfe", ["16", "32", "64", "128"], "Step budgets for fixed-NFE samplers.")
_REMDM_NFE = flags.DEFINE_list("remdm_nfe", ["32", "64", "128", "256"],
                               "Step budgets for ReMDM (it is meant to use steps >= length).")
_ONLY = flags.DEFINE_string("only", None, "Regex: compute only samplers whose name matches.")
_PLANNER = flags.DEFINE_string("planner_workdir", None,
                               "A trained P2 planner head (experiments/train_planner.py); adds "
                               "the 'P2 + trained planner' rows.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed shared by every cell.")
_RETIME = flags.DEFINE_bool("retime", False,
                             "Re-measure only the wall-clock column of every cached cell (run it "
                             "on an otherwise idle machine); quality columns are kept.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per cell (the best is reported).")
_JUDGE_BATCH = flags.DEFINE_integer("judge_batch", 16, "SmolLM2 scoring batch size.")


def catalog(denoise_fn, mask_id, schedule, nfe, remdm_nfe, planner=None):
  """``[(name, knob, sampler)]``: every cell of the sweep."""
  cells = []
  for n in nfe:
    cells.append(("tau-leaping", n, tau_leaping(denoise_fn, mask_id=mask_id, num_steps=n,
                                                schedule=schedule)))
    for proxy in ("max_prob", "margin", "neg_entropy"):
      cells.append((f"top-k {proxy}", n, confidence(
          denoise_fn, mask_id=mask_id, rule="topk", num_steps=n, proxy=proxy, temperature=1.0)))
    cells.append(("top-k max_prob greedy", n, confidence(
        denoise_fn, mask_id=mask_id, rule="topk", num_steps=n, proxy="max_prob",
        temperature=0.0)))
    cells.append(("P2 self-planning", n, p2(denoise_fn, mask_id=mask_id, num_steps=n)))
    # Raw logits at decoded positions are untrained (module docstring of models/planner.py);
    # with the SUBS carry-over every held token scores 0 and is never remasked.
    cells.append(("P2 self-planning (SUBS)", n, p2(
        diffusion.with_carry_over(denoise_fn, mask_id=mask_id), mask_id=mask_id, num_steps=n)))
    if planner is not None:
      # The planner's backbone is the frozen denoiser run on the proposal: P2 counts it as NFE.
      cells.append(("P2 + trained planner", n // 2, p2(denoise_fn, mask_id=mask_id,
                                                        num_steps=n // 2, planner=planner)))
  for threshold in (0.5, 0.2, 0.1, 0.05, 0.02):
    cells.append(("threshold", threshold, confidence(
        denoise_fn, mask_id=mask_id, rule="threshold", threshold=threshold, temperature=1.0)))
  for factor in (4.0, 16.0, 64.0, 256.0):
    cells.append(("factor", factor, confidence(
        denoise_fn, mask_id=mask_id, rule="factor", factor=factor, temperature=1.0)))
  for gamma in (1.0, 10.0, 30.0, 100.0, 300.0):
    cells.append(("EB", gamma, eb_sampler(denoise_fn, mask_id=mask_id, gamma=gamma,
                                          temperature=1.0)))
  for n in remdm_nfe:
    cells.append(("MDLM + top-p", n, remdm(denoise_fn, mask_id=mask_id, num_steps=n,
                                           strategy="cap", eta=0.0, schedule=schedule,
                                           top_p=0.9)))
    for strategy in ("cap", "rescale", "conf", "loop"):
      cells.append((f"ReMDM {strategy}", n, remdm(denoise_fn, mask_id=mask_id, num_steps=n,
                                                  strategy=strategy, schedule=schedule,
                                                  top_p=0.9)))
  return cells


def _run_cell(sampler, rng, x_init, repeats):
  tokens, info = sampler.sample(rng, x_init)  # compile + warm up
  jax.block_until_ready(tokens)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    tokens, info = sampler.sample(rng, x_init)
    jax.block_until_ready(tokens)
    times.append(time.perf_counter() - start)
  return np.asarray(tokens), int(np.asarray(info.nfe).sum()), min(times)


def run_key(run, *, workdir, num_samples, seed, planner=None) -> str:
  """A digest of everything a cell depends on besides (sampler, knob): the run's checkpoint
  directory, step and config, the planner's checkpoint (directory and latest step), the number
  of samples and the seed."""
  what = {"checkpoints": os.path.abspath(os.path.join(workdir, "checkpoints")), "step": run.step,
          "config": run.config.to_dict(), "num_samples": num_samples, "seed": seed,
          "planner": planner}
  return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _planner_checkpoint(workdir):
  """``(directory, latest step)`` of a planner run (part of the cells' key)."""
  directory = os.path.abspath(os.path.join(workdir, planner_lib.CHECKPOINT_DIR))
  with checkpoint_lib.Checkpointer(directory, read_only=True) as ckpt:
    return directory, ckpt.latest_step()


def _read_cells(path, key):
  """The cached cells of run ``key`` (rows of other runs, or without a key, are ignored)."""
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {(r["sampler"], r["knob"]): r for r in rows if r.get("run") == key}


def _fmt_knob(name, knob):
  return {"threshold": f"tau={knob}", "factor": f"f={knob}", "EB": f"gamma={knob}"}.get(
      name, f"{knob} steps")


def render(cells, out_dir, header):
  rows = sorted(cells.values(), key=lambda r: (r["order"], r["nfe"]))
  lines = [header, "",
           "| sampler | setting | NFE | gen. PPL (SmolLM2) | entropy (nats) | s / sample |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['sampler']} | {_fmt_knob(r['sampler'], r['knob'])} | {r['nfe']} | "
                 f"{r['ppl']:.1f} ± {r['ppl_se']:.1f} | {r['entropy']:.2f} | "
                 f"{r['secs_per_sample'] * 1e3:.1f} ms |")
  table = "\n".join(lines) + "\n"
  with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as f:
    f.write(table)
  _plot(rows, os.path.join(out_dir, "quality_vs_nfe.png"))
  return table


def _plot(rows, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, (ax_ppl, ax_ent) = plt.subplots(1, 2, figsize=(13, 5))
  data_row = next((r for r in rows if r["sampler"] == "data"), None)
  names = [n for n in dict.fromkeys(r["sampler"] for r in rows) if n != "data"]
  colors = plt.cm.tab20(np.linspace(0, 1, max(len(names), 2)))
  for name, color in zip(names, colors):
    pts = sorted((r["nfe"], r["ppl"], r["entropy"]) for r in rows if r["sampler"] == name)
    x = [p[0] for p in pts]
    style = "--" if name.startswith(("ReMDM", "MDLM")) else "-"
    ax_ppl.plot(x, [p[1] for p in pts], style, marker="o", ms=3, label=name, color=color)
    ax_ent.plot(x, [p[2] for p in pts], style, marker="o", ms=3, label=name, color=color)
  if data_row is not None:
    ax_ppl.axhline(data_row["ppl"], color="k", lw=1, ls=":", label="held-out data")
    ax_ent.axhline(data_row["entropy"], color="k", lw=1, ls=":", label="held-out data")
  for ax, label in ((ax_ppl, "generative perplexity (SmolLM2), lower is better"),
                    (ax_ent, "unigram entropy per sample (nats)")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("NFE (denoiser calls)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  ax_ppl.set_yscale("log")
  ax_ent.legend(fontsize=7, ncol=2)
  fig.suptitle("Masked-diffusion samplers on the project's trained MDM")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _stats(texts, token_rows, judge, mask_id):
  ppl = evaluation.generative_perplexity(texts, judge=judge, batch_size=_JUDGE_BATCH.value)
  # Standard error of the pooled NLL from the per-sample spread, mapped through exp (delta method).
  se = ppl.ppl * float(np.std(ppl.per_sample_nll, ddof=1) / np.sqrt(len(texts)))
  return dict(ppl=ppl.ppl, ppl_se=se, nll=ppl.nll_per_token,
              entropy=evaluation.unigram_entropy(token_rows, ignore_ids=[mask_id]))


def _last_eval(path):
  """The last ``eval/*`` record of the run's metrics log, or None."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    evals = [r for r in map(json.loads, filter(str.strip, f)) if "eval/bits_per_token" in r]
  return evals[-1] if evals else None


def main(argv):
  del argv
  out_dir = _OUT_DIR.value or os.path.join(_WORKDIR.value, "sweep_samplers")
  os.makedirs(out_dir, exist_ok=True)
  cells_path = os.path.join(out_dir, "cells.jsonl")
  run = load_run(_WORKDIR.value)
  mask_id, seq = run.model_config.mask_id, run.config.data.seq_len
  denoise_fn = make_denoise_fn(run.model_config, run.state.ema_params)
  planner = None
  if _PLANNER.value:
    planner = planner_lib.load_planner(_PLANNER.value, run)
  key = run_key(run, workdir=_WORKDIR.value, num_samples=_NUM_SAMPLES.value, seed=_SEED.value,
                planner=_PLANNER.value and _planner_checkpoint(_PLANNER.value))
  cells = _read_cells(cells_path, key)
  judge = evaluation.Judge.load()
  n = _NUM_SAMPLES.value
  x_init = jnp.full((n, seq), mask_id, jnp.int32)
  rng = jax.random.PRNGKey(_SEED.value)
  only = re.compile(_ONLY.value) if _ONLY.value else None

  def record(row):
    row = {**row, "run": key}
    cells[(row["sampler"], row["knob"])] = row
    with open(cells_path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
    print(f"{row['sampler']:>24} {_fmt_knob(row['sampler'], row['knob']):>12}  NFE {row['nfe']:4d}"
          f"  PPL {row['ppl']:8.1f}  H {row['entropy']:.2f}  {row['secs_per_sample']*1e3:.1f} ms",
          flush=True)

  if ("data", 0) not in cells:
    data = datasets.build_dataset(run.config.data, workdir=None,
                                  tokenizer_json=run.metadata["tokenizer"])
    valid = np.asarray(data.valid).reshape(-1, seq)
    windows = valid[np.linspace(0, len(valid) - 1, n).astype(int)]  # spread over the split
    record(dict(sampler="data", knob=0, order=-1, nfe=0, secs_per_sample=0.0,
                **_stats([run.decode(w) for w in windows], windows, judge, mask_id)))
  nfe = [int(v) for v in _NFE.value]
  remdm_nfe = [int(v) for v in _REMDM_NFE.value]
  todo = catalog(denoise_fn, mask_id, run.config.diffusion.masking_schedule(), nfe, remdm_nfe,
                 planner)
  order = {name: i for i, name in enumerate(dict.fromkeys(c[0] for c in todo))}
  missing = [(name, knob, sampler) for name, knob, sampler in todo
             if (name, knob) not in cells and not (only and not only.search(name))]
  for name, knob, sampler in tqdm.tqdm(missing, desc="sweep cells", unit="cell"):
    tokens, used, secs = _run_cell(sampler, rng, x_init, _REPEATS.value)
    record(dict(sampler=name, knob=knob, order=order[name], nfe=used,
                secs_per_sample=secs / n,
                **_stats([run.decode(t) for t in tokens], tokens, judge, mask_id)))
  if _RETIME.value:
    for name, knob, sampler in todo:
      if (name, knob) in cells and not (only and not only.search(name)):
        _, _, secs = _run_cell(sampler, rng, x_init, _REPEATS.value)
        cells[(name, knob)]["secs_per_sample"] = secs / n
        print(f"retimed {name} {knob}: {secs / n * 1e3:.1f} ms / sample", flush=True)
    for row in cells.values():  # Appended: the newest row of a cell wins when read back.
      record(row)
  for key in cells:  # Row order follows the catalog even for cells computed by earlier runs.
    cells[key]["order"] = order.get(key[0], -1)
  bound = _last_eval(os.path.join(_WORKDIR.value, "metrics.jsonl"))
  header = (f"Samplers x NFE on the trained MDM at `{_WORKDIR.value}` (step {run.step}; "
            f"{run.model_config.num_layers} layers, d={run.model_config.d_model}, vocab "
            f"{run.model_config.vocab_size}, length {seq}); {n} samples per cell, seed "
            f"{_SEED.value}; {datetime.date.today()}, {platform.machine()} CPU x "
            f"{os.cpu_count()}, jax {jax.__version__}. PPL ± is the delta-method standard error "
            f"from the per-sample spread." + (
                f" The MDM's own validation bound: {bound['eval/bits_per_token']:.2f} bits/token"
                f" (perplexity <= {bound['eval/perplexity_bound']:.0f} in its own tokens)."
                if bound else ""))
  print(render(cells, out_dir, header))


if __name__ == "__main__":
  common.run(main)
