"""What a comparison reports: quality scores, the Markdown table and page, the plot.

Quality is scored in the parent process with one judge for every cell (:func:`score`:
generative perplexity under SmolLM2-135M-Instruct and unigram entropy, ``partext_jax.evaluation``).
The table groups the rows by paradigm as the survey's Table 3 (:func:`table`), the page adds the
command, machine, settings and column definitions (:func:`report`), the plot shows speed-up
against quality (:func:`plot`). Nothing here is part of a cell's cache key: the scores are
computed once, when a cell is measured, and stored with it, so a change to :func:`score` reaches
the cells measured after it (a fresh ``--out_dir`` rescores every cell).
"""

# pylint: disable=import-outside-toplevel
# The evaluation judge and matplotlib are imported where they are used: the launcher imports
# this module in every cell's subprocess too, which needs neither.

from __future__ import annotations

import dataclasses
import datetime
import functools
import json

import numpy as np

import common
from paradigms.cells import Cell, PARADIGMS, Settings
from paradigms.measure import SMOLLM2


@functools.lru_cache(maxsize=1)
def _judge():
  from partext_jax import evaluation
  return evaluation.Judge.load()


def score(payload: dict) -> list[dict]:
  """The payload's rows with gen-PPL (SmolLM2) and unigram entropy added where it has text."""
  from partext_jax import evaluation
  rows = []
  for entry in payload["rows"]:
    row = dict(entry["row"])
    if entry.get("texts"):
      ppl = evaluation.generative_perplexity(entry["texts"], judge=_judge(), batch_size=4)
      kept = [ids for ids in entry["token_ids"]
              if any(i not in entry["ignore_ids"] for i in ids)]
      row["quality"] = {**row.get("quality", {}), "gen_ppl": ppl.ppl,
                        "entropy": evaluation.unigram_entropy(
                            kept, ignore_ids=entry["ignore_ids"]) if kept else 0.0}
    rows.append(row)
  return rows


def _ratio(a, b, digits=2) -> str:
  return f"{a / b:.{digits}f}x" if a and b else "-"


def _quality(q: dict) -> str:
  parts = []
  if q.get("gen_ppl") is not None:
    parts.append(f"PPL {q['gen_ppl']:.1f}")
  if q.get("entropy") is not None:
    parts.append(f"H {q['entropy']:.2f}")
  if q.get("exact_match") is not None:
    parts.append(f"EM {q['exact_match']:.2f}")
  if q.get("tv") is not None:
    parts.append(f"TV {q['tv']:.3f}, length TV {q['length_tv']:.3f} (bound "
                 f"{q['tv_sample_bound']:.3f})")
  if q.get("edits_per_sequence") is not None:
    parts.append(f"{q['edits_per_sequence']:.2f} edits / seq")
  return ", ".join(parts) or "-"


def table(rows: list[dict]) -> str:
  """Markdown, grouped by paradigm (one heading row per paradigm, the survey's Table 3).

  Memory ratio: resident memory once everything is loaded, SmolLM2 rows against the greedy-AR
  cell (the extra weights of drafters, heads); other rows share their reference's weights.
  """
  alone = next((r.get("loaded_rss_mb") for r in rows
                if r.get("cell") == "ar" and r.get("seconds")), None)
  header = ["paradigm / method", "model", "tokens / forward", "speed-up vs AR (wall)",
            "memory MiB: loaded / peak (loaded vs AR)", "computation: CPU s (vs AR)", "quality",
            "note"]
  body = []
  order = ("Autoregressive baseline",) + PARADIGMS
  for paradigm in sorted({r["paradigm"] for r in rows},
                         key=lambda p: order.index(p) if p in order else len(order)):
    body.append([f"**{paradigm}**"] + [""] * (len(header) - 1))
    for r in (r for r in rows if r["paradigm"] == paradigm):
      if r.get("seconds") is None:
        body.append([r["method"], r.get("model") or "-", "-", "-", "-", "-", "-", r["note"]])
        continue
      peak, loaded = r.get("peak_rss_mb"), r.get("loaded_rss_mb")
      versus = f" ({_ratio(loaded, alone)})" if r.get("model") == SMOLLM2 and alone else ""
      memory = f"{loaded:.0f} / {peak:.0f}{versus}" if loaded and peak else (
          f"- / {peak:.0f}" if peak else "-")
      per_forward = r.get("tokens_per_forward")
      body.append([
          r["method"], r.get("model") or "-", "-" if per_forward is None else f"{per_forward:.2f}",
          _ratio(r.get("ar_seconds"), r["seconds"]),
          memory,
          (f"{r['cpu_seconds']:.3g} ({_ratio(r['cpu_seconds'], r.get('ar_cpu_seconds'))})"
           if r.get("cpu_seconds") else "-"),
          _quality(r.get("quality") or {}), r.get("note") or ""])
  return common.markdown_table(header, body)


def plot(rows: list[dict], path: str) -> None:
  """Speed-up over AR (x, log) against quality: gen-PPL for text (left), exact match for tasks
  with an answer (right); one colour per paradigm. Rows of random-weight models are left out
  (their quality means nothing); labels of points with the same quality (lossless decoders all
  reproduce greedy AR) are stacked below them."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  from matplotlib import ticker

  fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6.5))
  colors = dict(zip(("Autoregressive baseline",) + PARADIGMS, plt.cm.tab10(np.arange(8))))
  points = {left: [], right: []}
  for r in rows:
    q = r.get("quality") or {}
    if not (r.get("seconds") and r.get("ar_seconds")) or "random" in (r.get("model") or ""):
      continue
    ax, value = (left, q["gen_ppl"]) if q.get("gen_ppl") is not None else (
        right, q.get("exact_match"))
    if value is not None:
      points[ax].append((r["ar_seconds"] / r["seconds"], value, r))
  for ax, pts in points.items():
    stacked = {}
    for speed, value, r in sorted(pts, key=lambda p: p[0]):
      ax.scatter(speed, value, color=colors.get(r["paradigm"], "k"), s=40, label=r["paradigm"],
                 edgecolor="k", linewidth=0.5, zorder=3)
      k = stacked[round(value, 6)] = stacked.get(round(value, 6), -1) + 1
      ax.annotate(r["method"], (speed, value), fontsize=6, textcoords="offset points",
                  xytext=(4, 4) if k == 0 else (4, -4 - 8 * k),
                  arrowprops=None if k == 0 else dict(arrowstyle="-", lw=0.3, color="grey"))
    ax.set_xscale("log")
    speeds = [p[0] for p in pts] or [1.0]
    ax.set_xlim(min(min(speeds), 1.0) / 1.3, max(max(speeds), 1.0) * 3.0)  # room for labels
    ax.xaxis.set_major_locator(ticker.FixedLocator([0.25, 0.5, 1, 2, 4, 8, 16, 32]))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("wall-clock speed-up over the AR reference (same run, loaded CPU)")
    ax.grid(alpha=0.3)
    unique = dict(zip(*reversed(ax.get_legend_handles_labels())))
    if unique:
      ax.legend(unique.values(), unique.keys(), fontsize=7,
                loc="lower right" if ax is left else "center right")
  left.set_yscale("log")
  left.set_ylabel("generative perplexity under SmolLM2 (lower is better)")
  right.set_ylabel("exact match (higher is better)")
  right.set_ylim(-0.05, 1.1)
  left.set_title("text (quality: gen-PPL; random-weight rows left out)")
  right.set_title("tasks with an answer (quality: exact match)")
  fig.suptitle("Parallel generation paradigms: speed against quality, one machine, one run")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(rows: list[dict], settings: Settings, counts: dict, command: str,
           loads: list[float]) -> str:
  """The Markdown page: command, machine, settings, column definitions and :func:`table`.
  ``loads``: the 1-minute load average recorded as each cell finished (where known)."""
  s = settings
  now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
  base = [r["runtime_rss_mb"] for r in rows if r.get("runtime_rss_mb")]
  runtime = f"{min(base):.0f}-{max(base):.0f} MiB before any model is loaded" if base else "-"
  return "\n".join([
      "# Parallel-generation paradigms side by side", "",
      f"Command: `{command}`", "",
      f"Machine: {common.machine()}. Written {now} UTC. The CPU is shared with other "
      "engineers' jobs: wall-clock ratios were measured under load (each against its AR "
      f"reference run back to back in the same process, best of {s.repeats}; the load average "
      "above is the one when this page was written"
      + (f", {min(loads):.1f}-{max(loads):.1f} as the cells finished" if loads else "")
      + "); the greedy-AR row times AR against itself, so its ratio shows the noise of one "
      "comparison. Tokens per forward and exact match do not depend on load.", "",
      f"Settings: {json.dumps(dataclasses.asdict(s))}. Cells this run: {counts['computed']} "
      f"computed, {counts['cached']} from the cache, {counts['retimed']} retimed, "
      f"{counts['unmeasured']} not measured.", "",
      "Columns: **tokens / forward** = committed tokens per call of the generating model "
      "(target forward, denoiser call or decoder pass). **Speed-up** = AR reference wall time "
      "/ method wall time. **Memory** = resident set once every weight is loaded (before any "
      "compilation) / peak resident set during the timed calls (after compilation; it also "
      "holds the compiled programs of both the method and its AR reference and memory the "
      "allocator kept from compiling, so read its differences with care); both include the "
      f"Python + jax runtime ({runtime}). The ratio compares the loaded figure of SmolLM2 "
      "rows with the greedy-AR cell's (drafter / head weights); the other rows share their "
      "reference's weights. **Computation** "
      "= CPU seconds (all threads) of the timed calls, ratio to AR's. **Quality**: PPL = "
      "generative perplexity under SmolLM2-135M-Instruct, H = mean unigram entropy per sample "
      "(nats, the model's own tokens), EM = exact match. AR reference per family: greedy (or "
      "T = 1) SmolLM2 on the same prompts; for masked models the same denoiser unmasking one "
      "position per call left to right; for NAT an AR peer of the same size and training.",
      "", table(rows), ""])


def unmeasured(cell: Cell, why: str) -> dict:
  """The table row of a cell that was not measured (``why`` is its note)."""
  return dict(paradigm=cell.paradigm, method=cell.method, model=None, tokens_per_forward=None,
              seconds=None, ar_seconds=None, peak_rss_mb=None, quality={}, note=why)
