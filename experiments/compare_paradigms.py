r"""Every parallel-generation paradigm of the library measured side by side, in one table.

    python experiments/compare_paradigms.py                     # every cell (cached ones reused)
    python experiments/compare_paradigms.py --quick --out_dir=/tmp/cmp   # CI-sized
    python experiments/compare_paradigms.py --cells=ar,prompt-lookup,mdm-tau-leaping
    python experiments/compare_paradigms.py --retime            # re-measure timings only

The survey's six paradigms (draft-and-verify, decomposition-and-fill, multiple-token prediction,
one-shot generation, masked generation, edit-based refinement) plus the hybrids, each as one or
more **cells** of ``paradigms.cells.CELLS`` (``--cells`` takes their names). A cell runs in a fresh
subprocess and measures one method beside its autoregressive reference, alternating the two
(compilation excluded: one untimed call per compiled shape first), so every wall-clock ratio
compares back-to-back runs on the same loaded machine:

* **tokens / forward**: committed tokens per call of the generating model (per target forward
  for draft-and-verify; per denoiser call, NFE, for masked samplers; per decoder pass for NAT);
* **speed-up**: the AR reference's wall time over the method's (best of ``--repeats``);
* **memory**: the subprocess's resident memory once every weight is loaded (before any
  compilation; compared with the greedy-AR cell's for SmolLM2 rows: the drafter's weights) and
  its peak during the timed calls only (the high-water mark is reset after compilation,
  ``/proc/self/clear_refs``). Both include the Python + jax runtime; the peak also holds the
  compiled programs of the method and its reference and what the allocator kept from
  compiling. (Alternative considered: XLA's ``memory_analysis`` of a compiled step is exact
  but exists only for single jitted steps, which SoT, NAT decoding and the Python-driven loops
  are not.)
* **computation**: CPU seconds (user + system, every thread) of the timed calls, over AR's;
* **quality**: generative perplexity of the decoded text under SmolLM2-135M-Instruct and the
  unigram entropy of the samples (``partext_jax.evaluation``), computed in this process with one
  judge for every cell; exact match against the reference where the task has an answer (greedy
  lossless decoders: against greedy AR token for token; NAT: the copy task's targets).

The AR reference of each family: greedy (or T = 1) SmolLM2 decoding of the same prompts for
the decoders and SoT; the same masked denoiser decoding left to right one token per call
(semi-autoregressive blocks of one) for masked diffusion; an AR peer of the same size trained
with the same budget for the NAT cells. Families whose models live on other branches (the
diffusion drafter and APD; Edit Flows and token editing) are cells that call the module's
``comparison_rows(quick) -> list[dict]`` when it is present and otherwise say why they are not
measured.

Outputs in ``--out_dir`` (default ``experiments/results``): ``compare_paradigms.md`` (the table,
grouped by paradigm as the survey's Table 3, with machine, date and command) and
``compare_paradigms.png`` (speed-up against quality). Cells are cached in
``compare_paradigms_cells.jsonl``, keyed by the cell, the settings it uses and the code that
measures it (the measuring modules ``paradigms/timing.py`` and ``paradigms/measure.py``, plus
the digest of every repository file the cell imported, checked again on reuse; checkpoints and
assets are not hashed; ``paradigms/cache.py`` says how): a rerun computes only missing or stale
cells; ``--retime`` re-measures the timing and memory columns of the selected cells and keeps
their quality. Cells that fail or time out are reported as not measured and are not cached.

This file is the launcher (flags, the driver, the ``--child`` entry of a cell's subprocess);
the comparison lives in the package ``experiments/paradigms/``: ``cells`` (settings and the
cell list), ``timing`` and ``measure`` (how a cell is measured), ``child`` (the subprocess),
``cache`` (keys and the JSONL cache), ``report`` (quality scores, table, plot, page).
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags
from tqdm import tqdm

import common
from paradigms import EXPERIMENTS
from paradigms import cache
from paradigms import cells
from paradigms import child
from paradigms import measure
from paradigms import report

_CELLS = flags.DEFINE_list("cells", None, "Cells to run (default: all); see --helpfull.")
_QUICK = flags.DEFINE_bool("quick", False, "CI-sized settings: one prompt, a few tokens.")
_RETIME = flags.DEFINE_bool("retime", False, "Re-measure timing and memory of the selected "
                            "cached cells (quality kept).")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(EXPERIMENTS, "results"),
                               "Where the table, the plot and the cache go.")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed calls per side (best kept; default 2, "
                                "quick 1).")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", None, "SmolLM2 tokens per prompt (default 32; "
                                   "quick 8).")
_PROMPTS = flags.DEFINE_integer("prompts", None, "SmolLM2 prompts, batch 1 each (default 3; "
                                "quick 1).")
_CELL_TIMEOUT = flags.DEFINE_integer("cell_timeout", 1200, "Seconds before a cell is stopped.")
# Internal: the subprocess of one cell.
_CHILD = flags.DEFINE_string("child", None, "(internal) run this one cell and exit.")
_CHILD_SETTINGS = flags.DEFINE_string("child_settings", None, "(internal) settings JSON.")
_CHILD_OUT = flags.DEFINE_string("child_out", None, "(internal) where the child writes JSON.")
_TIMING_ONLY = flags.DEFINE_bool("timing_only", False, "(internal) skip the quality outputs.")


def _known_cells(names) -> bool:
  try:
    cells.checked_cells(names)
  except ValueError as e:
    raise flags.ValidationError(str(e)) from e
  return True


flags.register_validator("cells", _known_cells)  # checked while parsing: one line, exit 2


def child_main() -> None:
  """Runs one cell (``--child``) and writes its rows, outputs and code files as JSON."""
  # tour.py (imported by the measuring functions) defines flags of the same names; this
  # process has read its own already.
  for name in ("quick", "new_tokens"):
    delattr(flags.FLAGS, name)
  child.write_cell(cells.CELLS[_CHILD.value], cells.Settings(**json.loads(_CHILD_SETTINGS.value)),
                   _CHILD_OUT.value, timing_only=_TIMING_ONLY.value)


def main(argv):
  common.no_arguments(argv)
  if _CHILD.value:
    child_main()
    return
  selected = cells.checked_cells(_CELLS.value)
  settings = cells.Settings.sized(_QUICK.value, repeats=_REPEATS.value,
                                  new_tokens=_NEW_TOKENS.value, prompts=_PROMPTS.value)
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  cache_path = os.path.join(_OUT_DIR.value, cache.NAME)
  cached = cache.read_cache(cache_path)
  measurement = cache.measurement_digest()
  counts = dict(computed=0, cached=0, retimed=0, unmeasured=0)
  rows, loads = [], []
  for cell in tqdm(selected, desc="cells", unit="cell"):
    why = measure.missing_external(cell)
    if why:
      counts["unmeasured"] += 1
      rows.append(report.unmeasured(cell, why))
      continue
    key = cache.cell_key(cell, settings, measurement)
    entry = cached.get(key)
    try:
      if entry is None:
        payload = child.run_child(cell, settings, timing_only=False,
                                  timeout=_CELL_TIMEOUT.value)
        entry = dict(key=key, cell=cell.name, files=payload["files"],
                     files_digest=payload["files_digest"], rows=report.score(payload),
                     load_average=os.getloadavg()[0])
        counts["computed"] += 1
        cache.append_cache(cache_path, entry)
      elif _RETIME.value:
        payload = child.run_child(cell, settings, timing_only=True, timeout=_CELL_TIMEOUT.value)
        entry = dict(cache.retimed(entry, payload), load_average=os.getloadavg()[0])
        counts["retimed"] += 1
        cache.append_cache(cache_path, entry)
      else:
        counts["cached"] += 1
    except RuntimeError as e:
      counts["unmeasured"] += 1
      rows.append(report.unmeasured(cell, f"not measured: {e}"))
      continue
    loads.append(entry.get("load_average"))
    for r in entry["rows"]:
      # comparison_rows() of other modules name their own paradigm; file them under the table's.
      paradigm = cells.ROW_PARADIGMS.get(r.get("paradigm"), r.get("paradigm") or cell.paradigm)
      rows.append({"method": cell.method, **r, "paradigm": paradigm, "cell": cell.name})
  command = "python experiments/compare_paradigms.py " + " ".join(sys.argv[1:])
  text = report.report(rows, settings, counts, command.strip(),
                       [l for l in loads if l is not None])
  with open(os.path.join(_OUT_DIR.value, "compare_paradigms.md"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  report.plot(rows, os.path.join(_OUT_DIR.value, "compare_paradigms.png"))
  print(text)
  print(f"cells: {counts['computed']} computed, {counts['cached']} cached, "
        f"{counts['retimed']} retimed, {counts['unmeasured']} not measured", flush=True)


if __name__ == "__main__":
  common.run(main)
