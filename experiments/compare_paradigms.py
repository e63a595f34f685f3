r"""Every parallel-generation paradigm of the library measured side by side, in one table.

    python experiments/compare_paradigms.py                     # every cell (cached ones reused)
    python experiments/compare_paradigms.py --quick --out_dir=/tmp/cmp   # CI-sized
    python experiments/compare_paradigms.py --cells=ar,prompt-lookup,mdm-tau-leaping
    python experiments/compare_paradigms.py --retime            # re-measure timings only

The survey's six paradigms (draft-and-verify, decomposition-and-fill, multiple-token prediction,
one-shot generation, masked generation, edit-based refinement) plus the hybrids, each as one or
more **cells** of :data:`CELLS` (``--cells`` takes their names). A cell runs in a fresh
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
measures it (this file's measurement section, plus the digest of every repository file the cell
imported, checked again on reuse; checkpoints and assets are not hashed): a rerun computes
only missing or stale cells; ``--retime`` re-measures the timing and memory columns of the
selected cells and keeps their quality. Cells that fail or time out are reported as not
measured and are not cached.
"""

# pylint: disable=import-outside-toplevel
# The measuring functions import what they use inside their bodies: a cell's code version is the
# set of repository files its subprocess imported, so it should import only its own family.

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, NamedTuple

from absl import app
from absl import flags
import numpy as np
from tqdm import tqdm

import common

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

_CELLS = flags.DEFINE_list("cells", None, "Cells to run (default: all); see --helpfull.")
_QUICK = flags.DEFINE_bool("quick", False, "CI-sized settings: one prompt, a few tokens.")
_RETIME = flags.DEFINE_bool("retime", False, "Re-measure timing and memory of the selected "
                            "cached cells (quality kept).")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(HERE, "results"),
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

CACHE_NAME = "compare_paradigms_cells.jsonl"
SEED = 0


@dataclasses.dataclass(frozen=True)
class Settings:
  """Sizes of one comparison (``--quick`` picks the small column)."""

  quick: bool = False
  prompts: int = 3          # SmolLM2 chat prompts (tour.PROMPTS), batch 1 each
  new_tokens: int = 32      # tokens per prompt, no EOS stop (every decoder does equal work)
  repeats: int = 2          # timed calls per side, best kept
  sot_questions: int = 2
  sot_tokens: int = 24      # skeleton and point budgets; plain AR answers 3x as many
  mdm_steps: int = 32       # steps of the fixed-step masked samplers
  mdm_samples: int = 4      # rows per masked sampler
  dllm_gen: int = 32        # generated positions of the tiny dLLM
  nat_steps: int = 150      # training steps of every NAT cell's models

  @classmethod
  def from_flags(cls) -> "Settings":
    small = dict(prompts=1, new_tokens=8, repeats=1, sot_questions=1, sot_tokens=8,
                 mdm_steps=8, mdm_samples=2, dllm_gen=16, nat_steps=10)
    chosen = cls(quick=True, **small) if _QUICK.value else cls()
    given = {"repeats": _REPEATS.value, "new_tokens": _NEW_TOKENS.value,
             "prompts": _PROMPTS.value}
    return dataclasses.replace(chosen, **{k: v for k, v in given.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class Cell:
  """One measured cell: ``kind`` names its measuring function in :data:`MEASURES`, ``args``
  its keywords (plain data: part of the cache key)."""

  name: str
  paradigm: str
  method: str
  kind: str
  args: tuple = ()

  @property
  def kwargs(self) -> dict:
    return dict(self.args)


# Paradigms in the survey's order (its Table 3), then the hybrids of its section 5.2.
DRAFT_VERIFY = "Draft-and-verify"
DECOMPOSE = "Decomposition-and-fill"
MTP = "Multiple-token prediction"
ONE_SHOT = "One-shot generation"
MASKED = "Masked generation"
EDIT = "Edit-based refinement"
HYBRID = "Hybrids (diffusion drafts for AR)"
PARADIGMS = (DRAFT_VERIFY, DECOMPOSE, MTP, ONE_SHOT, MASKED, EDIT, HYBRID)
# The paradigm names rows of experiments/{edit_flows,bench_diffusion_drafter}.py carry.
ROW_PARADIGMS = {"edit-based": EDIT, "masked + token editing": MASKED, "hybrid": HYBRID}


def _cells() -> list[Cell]:
  dec = lambda name, paradigm, method, **kw: Cell(name, paradigm, method, "decoder",
                                                  tuple(sorted(kw.items())))
  mdm = lambda name, sampler: Cell(name, MASKED, f"{sampler} (shipped MDM)", "mdm",
                                   (("sampler", sampler),))
  return [
      dec("ar", "Autoregressive baseline", "greedy AR", decoder="greedy AR"),
      dec("prompt-lookup", DRAFT_VERIFY, "chain, prompt lookup", decoder="prompt lookup"),
      dec("early-exit-chain", DRAFT_VERIFY, "chain, early exit (6 layers)",
          decoder="early exit, chain"),
      dec("early-exit-tree", DRAFT_VERIFY, "EAGLE-2 tree, early exit (6 layers)",
          decoder="early exit, EAGLE tree"),
      dec("eagle", DRAFT_VERIFY, "EAGLE tree, trained feature head", decoder="EAGLE head"),
      dec("lookahead", DRAFT_VERIFY, "Lookahead (W 5, N 4)", decoder="Lookahead (W 5, N 4)"),
      dec("jacobi", DRAFT_VERIFY, "Jacobi (block 8)", decoder="Jacobi (block 8)"),
      dec("token-wise-t1", DRAFT_VERIFY, "chain, early exit, token-wise verification, T=1",
          decoder="early exit, chain", temperature=1.0, rule="iid"),
      dec("block-verify-t1", DRAFT_VERIFY, "chain, early exit, block verification, T=1",
          decoder="early exit, chain", temperature=1.0, rule="block"),
      Cell("sot", DECOMPOSE, "Skeleton-of-Thought (short)", "sot"),
      dec("medusa", MTP, "Medusa heads, tree", decoder="Medusa heads"),
      dec("mtp-gloeckle", MTP, "MTP (Gloeckle) chain", decoder="MTP gloeckle"),
      dec("mtp-deepseek", MTP, "MTP (DeepSeek) chain", decoder="MTP deepseek"),
      Cell("nat-ctc", ONE_SHOT, "one-shot CTC NAT (copy task)", "nat", (("kind", "ctc"),)),
      mdm("mdm-tau-leaping", "tau-leaping"),
      mdm("mdm-confidence", "top-k confidence (max-prob)"),
      mdm("mdm-eb", "EB-sampler (gamma=30)"),
      mdm("mdm-remdm", "ReMDM (cap, top-p 0.9)"),
      mdm("mdm-p2", "P2 self-planning"),
      Cell("dllm-low-confidence", MASKED, "low-confidence remasking, blocks of 8 (LLaDA)",
           "dllm", (("sampler", "low-confidence"),)),
      Cell("dllm-fast-dllm", MASKED, "Fast-dLLM dual cache, threshold 0.9", "dllm",
           (("sampler", "fast-dllm"),)),
      Cell("nat-levenshtein", EDIT, "Levenshtein Transformer (copy task)", "nat",
           (("kind", "levenshtein"),)),
      Cell("edit-flows", EDIT, "Edit Flows / token editing", "external",
           (("modules", ("edit_flows", "bench_token_editing")),)),
      Cell("diffusion-drafter", HYBRID, "diffusion drafter + APD", "external",
           (("modules", ("bench_diffusion_drafter",)),)),
  ]


#: The cells, by the name ``--cells`` takes.
CELLS: dict[str, Cell] = {c.name: c for c in _cells()}


def _known_cells(names) -> bool:
  unknown = [n for n in names or () if n not in CELLS]
  if unknown:
    raise flags.ValidationError(f"unknown {unknown}; choose from {list(CELLS)}")
  return True


flags.register_validator("cells", _known_cells)  # checked while parsing: one line, exit 2

# --- measurement: begin --- (this section, up to its end line, is part of every cell's key)
MEASUREMENT_VERSION = 1

SMOLLM2 = "SmolLM2-135M-Instruct (f32)"


def _peak_reset() -> bool:
  """Resets this process's resident-memory high-water mark; False where Linux refuses."""
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _peak_mb() -> float:
  """Peak resident memory since the last reset (``VmHWM``; else ``ru_maxrss``), MiB."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
  except (OSError, StopIteration):
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _resident_mb() -> float:
  """Current resident memory (``VmRSS``), MiB; 0 where ``/proc`` is absent."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
  except (OSError, StopIteration):
    return 0.0


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


class Side(NamedTuple):
  """One side of a cell: summed best wall seconds, CPU seconds of those calls, peak MiB, the
  output of every call (one per prompt) and the resident MiB before anything was compiled."""

  seconds: float
  cpu_seconds: float
  peak_rss_mb: float
  outputs: list
  loaded_rss_mb: float


def _block(x):
  import jax
  return jax.tree.map(lambda v: v.block_until_ready() if hasattr(v, "block_until_ready") else v,
                      x)


def side_by_side(method: list[Callable], reference: list[Callable], repeats: int, *,
                 warm_all: bool = False) -> tuple[Side, Side]:
  """Times ``method[i]()`` and ``reference[i]()`` (one callable per prompt), alternating.

  The first callable of each list (every one with ``warm_all``: shapes that differ per
  prompt) runs once untimed first (compilation, warm-up). Then, ``repeats`` times, each
  prompt's reference and method calls run back to back; per prompt the best call is kept and
  the seconds are summed over prompts. The memory high-water mark is reset before each timed
  call, so the peak is that of generation, not of compilation or loading; the resident memory
  before the first compilation (runtime + every loaded weight) is kept too.
  """
  loaded = _resident_mb()
  for fn in [*reference, *method] if warm_all else [reference[0], method[0]]:
    _block(fn())
  sides = []
  best = {id(fn): (float("inf"), 0.0, None) for fn in [*method, *reference]}
  peaks = {"method": 0.0, "reference": 0.0}
  for _ in range(repeats):
    for ref, fn in zip(reference, method):
      for which, call in (("reference", ref), ("method", fn)):
        _peak_reset()
        cpu, start = _cpu_seconds(), time.perf_counter()
        out = _block(call())
        seconds = time.perf_counter() - start
        peaks[which] = max(peaks[which], _peak_mb())
        if seconds < best[id(call)][0]:
          best[id(call)] = (seconds, _cpu_seconds() - cpu, out)
  for which, fns in (("method", method), ("reference", reference)):
    picked = [best[id(fn)] for fn in fns]
    sides.append(Side(sum(p[0] for p in picked), sum(p[1] for p in picked), peaks[which],
                      [p[2] for p in picked], loaded))
  return sides[0], sides[1]


class Measured(NamedTuple):
  """What a cell's subprocess returns per row: the row (table fields) and, for the parent's
  quality scoring, decoded ``texts`` and generated ``token_ids`` (in the model's tokenizer)."""

  row: dict
  texts: list | None = None
  token_ids: list | None = None
  ignore_ids: tuple = ()


def _row(method: Side, ref: Side, *, model: str, per_forward: float, note: str,
         exact_match: float | None = None) -> dict:
  quality = {} if exact_match is None else {"exact_match": exact_match}
  return dict(model=model, tokens_per_forward=per_forward, seconds=method.seconds,
              ar_seconds=ref.seconds, peak_rss_mb=method.peak_rss_mb,
              loaded_rss_mb=method.loaded_rss_mb,
              ar_peak_rss_mb=ref.peak_rss_mb, cpu_seconds=method.cpu_seconds,
              ar_cpu_seconds=ref.cpu_seconds, quality=quality, note=note)


def _extra_decoders() -> dict[str, Callable]:
  """Decoders of SmolLM2 beyond :data:`tour.DECODERS`: the trained EAGLE head and the two MTP
  assets (builders ``bundle -> generate`` as the tour's)."""
  import tour
  from partext_jax.ar.speculative.drafters import eagle as eagle_drafter
  from partext_jax.ar.speculative.drafters import mtp as mtp_drafter
  from partext_jax.models import mtp
  from partext_jax.training import eagle as eagle_training
  from partext_jax.training import mtp as mtp_training

  def eagle(bundle):
    config, head, vocab_ids, _ = eagle_training.load_head(eagle_training.asset_directory())
    return tour.speculative(
        bundle, eagle_drafter.EagleDrafter(config, bundle.model, mode="eagle", gamma=5, top_k=4,
                                           num_nodes=11),
        eagle_drafter.drafter_params(head, bundle.params, vocab_ids,
                                     base_config=bundle.model.config))

  def mtp_chain(kind, bundle):
    config, params, _ = mtp_training.load_params(mtp_training.asset_directory(kind))
    return tour.speculative(
        bundle, mtp_drafter.MTPDrafter(config, bundle.model.config),
        mtp_drafter.drafter_params(bundle.params, base_config=bundle.model.config),
        model=mtp.MTPModel(bundle.model, config), params={"trunk": bundle.params, "mtp": params})

  return {"EAGLE head": eagle, "MTP gloeckle": functools.partial(mtp_chain, "gloeckle"),
          "MTP deepseek": functools.partial(mtp_chain, "deepseek")}


def _chat_ids(tok, text: str) -> list[int]:
  return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))


def _until_eos(ids, eos: int) -> list[int]:
  ids = [int(t) for t in ids]
  return ids[:ids.index(eos)] if eos in ids else ids


def measure_decoder(settings: Settings, *, decoder: str, temperature: float = 0.0,
                    rule: str | None = None) -> list[Measured]:
  """A decoder of SmolLM2 (``tour.DECODERS`` or :func:`_extra_decoders`) beside AR at the same
  temperature, on the first ``settings.prompts`` tour prompts at batch 1, ``new_tokens`` tokens
  each without an EOS stop (quality is scored on the text up to the first EOS)."""
  import jax
  import tour
  from partext_jax import pretrained
  from partext_jax.ar import processors
  from partext_jax.ar import sampling as ar

  bundle = pretrained.load_bundle()
  tok = bundle.tokenizer
  prompts = [_chat_ids(tok, p) for p in list(tour.PROMPTS.values())[:settings.prompts]]
  kwargs = dict(max_new_tokens=settings.new_tokens, eos_id=None,
                min_bucket=max(len(p) for p in prompts))
  reference = functools.partial(ar.generate, jax.random.key(SEED), bundle.model, bundle.params,
                                processor=processors.build(temperature=temperature), **kwargs)
  if decoder == "greedy AR":
    generate = reference
  else:
    builders = {**tour.DECODERS, **_extra_decoders()}
    sampled = dict(temperature=temperature, rule=rule) if temperature else {}
    generate = functools.partial(builders[decoder](bundle), **kwargs, **sampled)
  method, ref = side_by_side([functools.partial(generate, [p]) for p in prompts],
                             [functools.partial(reference, [p]) for p in prompts],
                             settings.repeats)
  tokens = [np.asarray(out[0])[0, :int(np.asarray(out[1].lengths)[0])] for out in method.outputs]
  calls = sum(int(np.asarray(getattr(out[1], "target_calls", out[1].lengths))[0])
              for out in method.outputs)
  same = [np.array_equal(t, np.asarray(r[0])[0, :len(t)]) for t, r in zip(tokens, ref.outputs)]
  ids = [_until_eos(t, tok.eos_id) for t in tokens]
  note = (f"{len(prompts)} chat prompt(s) x {settings.new_tokens} tokens, batch 1, no EOS stop"
          + (f"; sampled at T={temperature:g} (AR reference too)" if temperature else
             "; exact match: tokens identical to greedy AR"))
  row = _row(method, ref, model=SMOLLM2, per_forward=sum(map(len, tokens)) / max(calls, 1),
             note=note, exact_match=None if temperature else float(np.mean(same)))
  return [Measured(row, [tok.decode(i) for i in ids], ids)]


SOT_QUESTIONS = ("What are some tips for saving money?", "How can I improve my sleep?")


def measure_sot(settings: Settings) -> list[Measured]:
  """Skeleton-of-Thought (every question through SoT) beside plain greedy AR answering with a
  budget of three points, one question at a time."""
  import jax
  from partext_jax import pretrained
  from partext_jax.ar import sampling as ar
  from partext_jax.ar import sot

  bundle = pretrained.load_bundle()
  tok = bundle.tokenizer
  n = settings.sot_tokens
  config = sot.SoTConfig(max_points=3, skeleton_tokens=n, point_tokens=n, answer_tokens=3 * n)
  questions = SOT_QUESTIONS[:settings.sot_questions]
  plain = lambda q: ar.generate(jax.random.key(SEED), bundle.model, bundle.params,
                                [_chat_ids(tok, q)], max_new_tokens=config.answer_tokens,
                                eos_id=sot.stop_ids(tok))
  method, ref = side_by_side([functools.partial(sot.generate, bundle, [q], config=config)
                              for q in questions],
                             [functools.partial(plain, q) for q in questions], settings.repeats,
                             warm_all=True)
  answers = [res.answers[0] for res in method.outputs]
  forwards = sum(res.info.question_forwards(0) for res in method.outputs)
  ids = [tok.encode(a) for a in answers]
  compliant = sum(res.modes[0] == "sot" for res in method.outputs)
  note = (f"{len(questions)} question(s), batch 1; skeleton and points <= {n} tokens, up to 3 "
          f"points; AR answers <= {config.answer_tokens} tokens (EOS stop); tokens / forward: "
          f"answer tokens over sequential forwards; {compliant}/{len(questions)} skeletons "
          "parsed")
  row = _row(method, ref, model=SMOLLM2, note=note,
             per_forward=sum(map(len, ids)) / max(forwards, 1))
  return [Measured(row, answers, ids)]


def _generated(tokens, start: int) -> list[list[int]]:
  return [[int(t) for t in row[start:]] for row in np.asarray(tokens)]


def _nfe(info) -> int:
  """Denoiser calls of one batched run (one call serves every row)."""
  nfe = np.asarray(info.nfe)
  return int(nfe.sum()) if nfe.ndim <= 1 else int(nfe.sum(axis=0).max())


def masked_side_by_side(sampler, denoise_fn, x_init, *, mask_id: int, gen_length: int,
                        temperature: float, repeats: int):
  """Times a masked ``sampler`` on ``x_init`` beside its AR reference: the same network
  decoding the last ``gen_length`` positions left to right, one per call (semi-autoregressive
  blocks of one). Returns ``(method Side, reference Side, tokens, NFE)``."""
  import jax
  from partext_jax import masked
  reference = masked.semi_ar(masked.confidence, denoise_fn, mask_id=mask_id, block_length=1,
                             gen_length=gen_length, rule="topk", num_steps=gen_length,
                             temperature=temperature)
  key = jax.random.key(SEED)
  method, ref = side_by_side([functools.partial(sampler.sample, key, x_init)],
                             [functools.partial(reference.sample, key, x_init)], repeats)
  tokens, info = method.outputs[0]
  return method, ref, tokens, _nfe(info)


def measure_mdm(settings: Settings, *, sampler: str) -> list[Measured]:
  """A sampler of ``tour.MASKED_SAMPLERS`` on the shipped MDM: ``mdm_samples`` continuations
  of the tour's Python prefix to the end of the 128-token window, temperature 1."""
  import jax.numpy as jnp
  import tour
  from partext_jax.models.denoiser import count_params, make_denoise_fn
  from partext_jax.training import runs

  run = runs.load_shipped("mdm_small")
  mask_id, seq = run.model_config.mask_id, run.config.data.seq_len
  prefix = np.asarray(run.encode(tour.INFILL_PREFIX), np.int32)
  gen = seq - len(prefix)
  row = np.concatenate([prefix, np.full(gen, mask_id, np.int32)])
  x_init = jnp.asarray(np.tile(row, (settings.mdm_samples, 1)))
  denoise_fn = make_denoise_fn(run.model_config, run.state.ema_params)
  built, _ = tour.MASKED_SAMPLERS[sampler](denoise_fn, mask_id,
                                           run.config.diffusion.masking_schedule(),
                                           settings.mdm_steps)
  method, ref, tokens, nfe = masked_side_by_side(built, denoise_fn, x_init, mask_id=mask_id,
                                                 gen_length=gen, temperature=1.0,
                                                 repeats=settings.repeats)
  note = (f"MDM {count_params(run.state.ema_params) / 1e6:.1f} M params (step {run.step}); "
          f"{settings.mdm_samples} rows continue a {len(prefix)}-token Python prefix by {gen} "
          f"tokens; NFE {nfe} (step budget {settings.mdm_steps}); AR reference: the same MDM "
          f"left to right, one token per call ({gen} calls)")
  out = _row(method, ref, model="shipped MDM (mdm_small)", per_forward=gen / max(nfe, 1),
             note=note)
  return [Measured(out, [run.decode(t) for t in np.asarray(tokens)],
                   _generated(tokens, len(prefix)), (mask_id,))]


DLLM_PROMPT = "Write a haiku about the sea."


def measure_dllm(settings: Settings, *, sampler: str) -> list[Measured]:
  """A sampler on the tiny random LLaDA (no real diffusion-LM weights ship with the package:
  the cell measures the sampler's cost, not text quality)."""
  from partext_jax import masked
  from partext_jax.pretrained import dllm

  with tempfile.TemporaryDirectory() as tmp:
    path = dllm.write_tiny_checkpoint(os.path.join(tmp, "tiny.gguf"), arch="llada", fmt="gguf")
    bundle = dllm.load_dllm(path)
  gen, block = settings.dllm_gen, 8
  ids = bundle.prompt_ids(DLLM_PROMPT)
  x_init = bundle.x_init(ids, gen_length=gen)
  common_args = dict(mask_id=bundle.mask_id, block_length=block, gen_length=gen)
  if sampler == "low-confidence":
    built = masked.semi_ar(masked.confidence, bundle.denoise_fn, rule="topk",
                           num_steps=gen // 2, temperature=0.0, **common_args)
  else:
    built = masked.SAMPLERS["block_cache"](bundle.kv_denoise_fn, cache="dual", rule="threshold",
                                           threshold=0.9, **common_args)
  method, ref, tokens, nfe = masked_side_by_side(built, bundle.denoise_fn, x_init,
                                                 mask_id=bundle.mask_id, gen_length=gen,
                                                 temperature=0.0, repeats=settings.repeats)
  config = bundle.spec.config
  note = (f"tiny RANDOM LLaDA ({config.num_layers} layers, hidden {config.hidden_size}; no real "
          f"dLLM weights here: quality is meaningless, cost only); {gen} positions after the "
          f"prompt, blocks of {block}, greedy; NFE {nfe}; AR reference: the same model left "
          "to right, one token per call")
  text = [bundle.text(row, prompt_length=len(ids)) for row in np.asarray(tokens)]
  out = _row(method, ref, model="tiny random LLaDA", per_forward=gen / max(nfe, 1), note=note)
  return [Measured(out, [t if t.strip() else " " for t in text], _generated(tokens, len(ids)),
                   (bundle.mask_id,))]


NAT_TASK = dict(name="copy", vocab_size=8, min_length=16, max_length=16, num_valid=256)


def _nat_experiment(kind: str, steps: int):
  """The copy task (length 16, 8 symbols) with ``experiments/bench_nat.py``'s small sizes."""
  from partext_jax.nat import config as nat_config
  config = nat_config.default_config()
  config.task.update(NAT_TASK)
  config.model.update(kind=kind, d_model=64, mlp_dim=128, num_encoder_layers=1,
                      num_decoder_layers=1)
  config.train.update(num_steps=steps, batch_size=32, learning_rate=3e-3,
                      warmup_steps=min(20, steps), eval_every=steps, checkpoint_every=steps,
                      log_every=max(steps, 1), progress_bar=False)
  return nat_config.parse_config(config)


def measure_nat(settings: Settings, *, kind: str) -> list[Measured]:
  """A NAT model (``ctc``: one-shot; ``levenshtein``: edit-based) and its AR peer, both trained
  for ``nat_steps`` on the copy task; decoding of 256 held-out sources timed."""
  from partext_jax.models.denoiser import count_params
  from partext_jax.nat import trainer
  from partext_jax.nat.protocols import Source

  steps = settings.nat_steps
  data = trainer.build_data(_nat_experiment("ctc", steps), None)
  peer = trainer.train_and_evaluate(_nat_experiment("ar", steps), None, data=data)
  model = trainer.train_and_evaluate(_nat_experiment(kind, steps), None, data=data)
  valid = data.valid
  source = Source(np.asarray(valid.source), np.asarray(valid.source_lengths))
  method, ref = side_by_side([functools.partial(model.family.decode, model.params, source)],
                             [functools.partial(peer.family.decode, peer.params, source)],
                             settings.repeats)
  (output, forwards), = method.outputs
  per_forward = float(np.mean(np.asarray(output.lengths)) / np.mean(np.asarray(forwards)))
  note = (f"copy task (length 16, 8 symbols), {len(source.lengths)} held-out sources decoded "
          f"as one batch; width 64, 1 + 1 layers, {steps} training steps; AR reference: a "
          f"2-layer causal peer trained the same way (exact match "
          f"{peer.metrics['exact_match']:.3f}, {peer.metrics['forwards_per_sequence']:.1f} "
          f"forwards / sequence, {count_params(peer.params) / 1e6:.2f} M params)")
  row = _row(method, ref, model=f"{kind} NAT ({count_params(model.params) / 1e6:.2f} M params)",
             per_forward=per_forward,
             note=note, exact_match=float(model.metrics["exact_match"]))
  return [Measured(row)]


def measure_external(settings: Settings, *, modules: tuple) -> list[Measured]:
  """Rows of another family's benchmark: the first of ``modules`` (in ``experiments/``) that
  defines ``comparison_rows(quick) -> list[dict]``."""
  module = next(m for m in modules if _defines_rows(m))
  rows = importlib.import_module(module).comparison_rows(settings.quick)
  return [Measured(dict(r)) for r in rows]


#: ``kind -> (measuring function, the Settings fields its results depend on)``.
MEASURES: dict[str, tuple[Callable[..., list[Measured]], tuple[str, ...]]] = {
    "decoder": (measure_decoder, ("prompts", "new_tokens", "repeats")),
    "sot": (measure_sot, ("sot_questions", "sot_tokens", "repeats")),
    "mdm": (measure_mdm, ("mdm_steps", "mdm_samples", "repeats")),
    "dllm": (measure_dllm, ("dllm_gen", "repeats")),
    "nat": (measure_nat, ("nat_steps", "repeats")),
    "external": (measure_external, ("quick",)),
}
# --- measurement: end ---


def _defines_rows(module: str) -> bool:
  """Whether ``experiments/<module>.py`` exists and defines ``comparison_rows``."""
  path = os.path.join(HERE, module + ".py")
  if not os.path.exists(path):
    return False
  with open(path, encoding="utf-8") as f:
    return "def comparison_rows(" in f.read()


def missing_external(cell: Cell) -> str | None:
  """Why an external cell cannot run (``None`` when it can)."""
  modules = cell.kwargs.get("modules", ()) if cell.kind == "external" else ()
  if not modules or any(_defines_rows(m) for m in modules):
    return None
  return f"not measured: {' / '.join(modules)} not present (no comparison_rows)"


# -------------------------------------------------------------------------- the cell subprocess


def _imported_files() -> list[str]:
  """Repository files (package and experiments helpers) imported by this process, this
  script excepted: part of a cell's code version."""
  this = os.path.abspath(__file__)
  files = set()
  for module in list(sys.modules.values()):
    path = os.path.abspath(getattr(module, "__file__", None) or "")
    if path.startswith(REPO + os.sep) and path != this and path.endswith(".py"):
      files.add(os.path.relpath(path, REPO))
  return sorted(files)


def files_digest(files) -> str | None:
  """sha256 over the files' paths and contents; ``None`` if one no longer exists."""
  h = hashlib.sha256()
  for rel in files:
    path = os.path.join(REPO, rel)
    if not os.path.exists(path):
      return None
    h.update(rel.encode())
    with open(path, "rb") as f:
      h.update(f.read())
  return h.hexdigest()[:16]


def child_main() -> None:
  """Runs one cell (``--child``) and writes its rows, outputs and code files as JSON."""
  cell = CELLS[_CHILD.value]
  settings = Settings(**json.loads(_CHILD_SETTINGS.value))
  out, timing_only = _CHILD_OUT.value, _TIMING_ONLY.value
  # tour.py (imported by the measuring functions) defines flags of the same names; this
  # process has read its own already.
  for name in ("quick", "new_tokens"):
    delattr(flags.FLAGS, name)
  measure, _ = MEASURES[cell.kind]
  import jax  # pylint: disable=unused-import
  runtime = _peak_mb()  # resident set of Python + jax before any model is loaded
  results = measure(settings, **cell.kwargs)
  files = _imported_files()
  payload = {"rows": [], "files": files, "files_digest": files_digest(files),
             "peak_reset": _peak_reset()}
  for m in results:
    entry = {"row": {**m.row, "runtime_rss_mb": runtime}}
    if not timing_only and m.texts is not None:
      entry.update(texts=m.texts, token_ids=m.token_ids, ignore_ids=list(m.ignore_ids))
    payload["rows"].append(entry)
  with open(out, "w", encoding="utf-8") as f:
    json.dump(payload, f)


def run_child(cell: Cell, settings: Settings, *, timing_only: bool) -> dict:
  """Runs ``cell`` in a fresh Python process; returns its payload or raises RuntimeError."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "cell.json")
    command = [sys.executable, os.path.abspath(__file__), f"--child={cell.name}",
               f"--child_settings={json.dumps(dataclasses.asdict(settings))}",
               f"--child_out={out}"] + (["--timing_only"] if timing_only else [])
    # The cells compile the same SmolLM2 / MDM programs again and again, one process each:
    # jax's persistent compilation cache shares the executables (compilation is never timed,
    # so only the run's wall time changes). Cells run one at a time, so no file lock is needed.
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
        tempfile.gettempdir(), f"partext-jax-compare-xla-cache-{os.getuid()}"))
    try:
      proc = subprocess.run(command, cwd=HERE, capture_output=True, text=True, env=env,
                            timeout=_CELL_TIMEOUT.value, check=False)
    except subprocess.TimeoutExpired as e:
      raise RuntimeError(f"stopped after {_CELL_TIMEOUT.value} s") from e
    if proc.returncode != 0 or not os.path.exists(out):
      tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
      raise RuntimeError(f"exit {proc.returncode}: {tail[0][:200]}")
    with open(out, encoding="utf-8") as f:
      return json.load(f)


# ------------------------------------------------------------------------------------ the cache


def measurement_digest() -> str:
  """sha256 of this file's measurement section (between its two marker lines)."""
  with open(os.path.abspath(__file__), encoding="utf-8") as f:
    source = f.read()
  begin, end = source.index("# --- measurement: begin"), source.index("# --- measurement: end")
  return hashlib.sha256(source[begin:end].encode()).hexdigest()[:16]


def cell_key(cell: Cell, settings: Settings, measurement: str) -> str:
  """The cache key: the cell, the settings its kind uses and the measurement code."""
  _, used = MEASURES[cell.kind]
  what = {"cell": dataclasses.asdict(cell), "settings": {k: getattr(settings, k) for k in used},
          "measurement": measurement}
  return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_cache(path: str) -> dict[str, dict]:
  """``key -> entry`` (the newest line per key), keeping only entries whose imported files
  still have the digest they had when the cell was measured."""
  if not os.path.exists(path):
    return {}
  entries = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        entry = json.loads(line)
        entries[entry["key"]] = entry
  return {k: e for k, e in entries.items() if files_digest(e["files"]) == e["files_digest"]}


def append_cache(path: str, entry: dict) -> None:
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(entry) + "\n")


# --------------------------------------------------------------------------------- quality


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


# ------------------------------------------------------------------------------- the report


TIMING_FIELDS = ("seconds", "ar_seconds", "peak_rss_mb", "ar_peak_rss_mb", "loaded_rss_mb",
                 "cpu_seconds", "ar_cpu_seconds", "tokens_per_forward")


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


# ------------------------------------------------------------------------------------- driver


def checked_cells(names) -> list[Cell]:
  """The cells of ``--cells`` (all by default); unknown names raise ``app.UsageError``."""
  try:
    _known_cells(names)
  except flags.ValidationError as e:
    raise app.UsageError(f"--cells: {e}") from e
  return list(CELLS.values()) if names is None else [CELLS[n] for n in names]


def _unmeasured(cell: Cell, why: str) -> dict:
  return dict(paradigm=cell.paradigm, method=cell.method, model=None, tokens_per_forward=None,
              seconds=None, ar_seconds=None, peak_rss_mb=None, quality={}, note=why)


def main(argv):
  common.no_arguments(argv)
  if _CHILD.value:
    child_main()
    return
  cells = checked_cells(_CELLS.value)
  settings = Settings.from_flags()
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  cache_path = os.path.join(_OUT_DIR.value, CACHE_NAME)
  cache = read_cache(cache_path)
  measurement = measurement_digest()
  counts = dict(computed=0, cached=0, retimed=0, unmeasured=0)
  rows, loads = [], []
  for cell in tqdm(cells, desc="cells", unit="cell"):
    why = missing_external(cell)
    if why:
      counts["unmeasured"] += 1
      rows.append(_unmeasured(cell, why))
      continue
    key = cell_key(cell, settings, measurement)
    entry = cache.get(key)
    try:
      if entry is None:
        payload = run_child(cell, settings, timing_only=False)
        entry = dict(key=key, cell=cell.name, files=payload["files"],
                     files_digest=payload["files_digest"], rows=score(payload),
                     load_average=os.getloadavg()[0])
        counts["computed"] += 1
        append_cache(cache_path, entry)
      elif _RETIME.value:
        payload = run_child(cell, settings, timing_only=True)
        fresh = [e["row"] for e in payload["rows"]]
        entry = dict(entry, rows=[{**old, **{k: new.get(k) for k in TIMING_FIELDS}}
                                  for old, new in zip(entry["rows"], fresh)],
                     load_average=os.getloadavg()[0])
        counts["retimed"] += 1
        append_cache(cache_path, entry)
      else:
        counts["cached"] += 1
    except RuntimeError as e:
      counts["unmeasured"] += 1
      rows.append(_unmeasured(cell, f"not measured: {e}"))
      continue
    loads.append(entry.get("load_average"))
    for r in entry["rows"]:
      # comparison_rows() of other modules name their own paradigm; file them under the table's.
      paradigm = ROW_PARADIGMS.get(r.get("paradigm"), r.get("paradigm") or cell.paradigm)
      rows.append({"method": cell.method, **r, "paradigm": paradigm, "cell": cell.name})
  command = "python experiments/compare_paradigms.py " + " ".join(sys.argv[1:])
  text = report(rows, settings, counts, command.strip(), [l for l in loads if l is not None])
  with open(os.path.join(_OUT_DIR.value, "compare_paradigms.md"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  plot(rows, os.path.join(_OUT_DIR.value, "compare_paradigms.png"))
  print(text)
  print(f"cells: {counts['computed']} computed, {counts['cached']} cached, "
        f"{counts['retimed']} retimed, {counts['unmeasured']} not measured", flush=True)


if __name__ == "__main__":
  common.run(main)
