r"""A tour of partext-jax: parallel generation of real text, exact and timed, on a laptop CPU.

    python experiments/tour.py                       # the full tour (3 min 48 s, idle 2-core CPU)
    python experiments/tour.py --quick               # one prompt, short outputs (what CI runs)
    python experiments/tour.py --workdir=tour_out --decoders="prompt lookup,Medusa heads"

1. **Draft-and-verify decoding of SmolLM2-135M-Instruct** (embedded; no download). For each
   prompt (a code edit, an open question, a summary of a given paragraph) plain greedy
   autoregressive decoding (AR) runs beside every lossless parallel decoder of :data:`DECODERS`.
   Each decoder's tokens are asserted equal to AR's (greedy verification is exact:
   ``docs/algorithms.md#speculative-decoding``); the text is printed once, then a table of
   tokens committed per target forward and wall-clock speed-up over AR, timed in the same process
   after one compiling call.
2. **Masked diffusion on the shipped checkpoint** (``runs.load_shipped("mdm_small")``): one
   infilling task (a Python prefix and suffix, the middle masked) through each sampler of
   :data:`MASKED_SAMPLERS`; a table of the infilled text, denoiser calls (NFE), generative
   perplexity of the whole row under SmolLM2 and its unigram entropy, and a heat-map of the step
   at which each position was unmasked (``unmasking_order.png``, one row per sampler).
3. A closing summary: where the outputs are, what to run next.

A decoder is one entry of :data:`DECODERS` (name -> builder); a masked sampler one entry of
:data:`MASKED_SAMPLERS`. Outputs (``--workdir``, default ``./tour_out``): ``summary.json``,
``decoders.md``, ``masked.md``, ``unmasking_order.png``. The tour exits with an error if a
decoder's text differs from AR's.
"""

from __future__ import annotations

import functools
import json
import logging as py_logging
import os
import time
from typing import Any, Callable, NamedTuple

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import common
from partext_jax import evaluation
from partext_jax import pretrained
from partext_jax.ar import jacobi
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import decode
from partext_jax.ar.speculative import drafters
from partext_jax.ar.speculative.drafters import medusa as medusa_drafter
from partext_jax.masked.adaptive import confidence
from partext_jax.masked.adaptive import eb_sampler
from partext_jax.masked.p2 import p2
from partext_jax.masked.remdm import remdm
from partext_jax.masked.tau_leaping import tau_leaping
from partext_jax.models.denoiser import make_denoise_fn
from partext_jax.training import medusa as medusa_training
from partext_jax.training import runs

_WORKDIR = flags.DEFINE_string("workdir", "tour_out", "Where the tables, JSON and picture go.")
_QUICK = flags.DEFINE_bool("quick", False, "One prompt, short outputs, fewer diffusion steps (CI).")
_DECODERS = flags.DEFINE_list("decoders", None, "Subset of the parallel decoders (default: all).")
_SAMPLERS = flags.DEFINE_list("samplers", None, "Subset of the masked samplers (default: all).")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", None,
                                   "Tokens per prompt (default 64; quick 16).")
_MDM_STEPS = flags.DEFINE_integer("mdm_steps", None, "Steps of the fixed-step masked samplers "
                                  "(default 64; quick 16).")
_MDM_SAMPLES = flags.DEFINE_integer("mdm_samples", 4, "Rows per masked sampler (gen. PPL).")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "mdm_small", runs.SHIPPED,
                                "Shipped masked-diffusion checkpoint.")

SEED = 0  # Greedy decoding ignores the key; masked samplers draw from it.

CODE = '''def word_counts(path, min_length=1):
    """Count how often each word of at least min_length letters occurs in a text file."""
    counts = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            for word in line.lower().split():
                word = word.strip(".,;:!?\"'()")
                if len(word) >= min_length:
                    counts[word] = counts.get(word, 0) + 1
    return counts'''

PARAGRAPH = ("The printing press, invented by Johannes Gutenberg around 1440, made books cheaper "
             "and faster to produce. Within fifty years presses were running in more than two "
             "hundred European cities, and tens of millions of books had been printed. Cheap "
             "books spread literacy, let scholars compare identical copies of the same text, and "
             "helped start both the Reformation and the scientific revolution.")

PROMPTS = {
    "code edit": "Rename the variable `counts` to `frequencies` in this Python function. Output "
                 "only the code.\n\n" + CODE,
    "open question": "Why is the sky blue? Answer in three sentences.",
    "summary": "Summarize this paragraph in two sentences:\n\n" + PARAGRAPH,
}

# The infilling task of the masked-diffusion section: the middle of a function is masked.
INFILL_PREFIX = 'def read_config(path):\n    """Read a JSON file and return its contents."""\n'
INFILL_SUFFIX = "\n    return config\n\n\ndef main():\n    config = read_config(sys.argv[1])\n"


# -------------------------------------------------------------------------- parallel decoders

# ``generate(prompts, *, max_new_tokens, eos_id, min_bucket) -> (tokens int32[B, N], info)``:
# a greedy decoder bound to its model; ``info.lengths`` are the tokens per row and
# ``info.accepted_per_call`` or ``info.tokens_per_call`` the tokens committed per target forward.
Generate = Callable[..., tuple[jax.Array, Any]]


def speculative(bundle, drafter, drafter_params=None, *, model=None, params=None) -> Generate:
  """Greedy draft-and-verify decoding of ``bundle``'s model with ``drafter``.

  ``model`` / ``params`` replace the bundle's for targets that wrap it (e.g. an MTP model: its
  next-token logits are SmolLM2's, so its greedy text is too).
  """
  return functools.partial(decode.generate, jax.random.key(SEED),
                           bundle.model if model is None else model,
                           bundle.params if params is None else params,
                           drafter=drafter, drafter_params=drafter_params)


def medusa(bundle) -> Generate:
  """The committed Medusa heads (``partext_jax/assets/medusa_smollm2``), default tree."""
  config, heads, _ = medusa_training.load_heads(medusa_training.asset_directory())
  return speculative(
      bundle, drafters.MedusaDrafter(config, bundle.model.config),
      medusa_drafter.drafter_params(heads, bundle.params, base_config=bundle.model.config))


def early_exit(bundle, mode: str, **tree) -> Generate:
  """The target's first 6 of 30 layers as the drafter (chain or EAGLE-2 dynamic tree)."""
  return speculative(bundle, *drafters.early_exit_drafter(bundle.model, bundle.params,
                                                          num_layers=6, mode=mode, **tree))


#: Lossless parallel decoders: name -> builder(bundle) -> :data:`Generate`. One line each.
DECODERS: dict[str, Callable[[Any], Generate]] = {
    "prompt lookup": lambda b: speculative(b, drafters.PromptLookupDrafter(gamma=8, max_ngram=3,
                                                                           min_ngram=2)),
    "early exit, chain": lambda b: early_exit(b, "chain", gamma=3),
    "early exit, EAGLE tree": lambda b: early_exit(b, "eagle", gamma=3, top_k=3, num_nodes=10),
    "Medusa heads": medusa,
    "Jacobi (block 8)": lambda b: functools.partial(jacobi.generate, b.model, b.params,
                                                    block_size=8),
    "Lookahead (W 5, N 4)": lambda b: speculative(b, drafters.LookaheadDrafter(
        vocab_size=b.model.config.vocab_size, window=5, ngram=4, pool_size=5)),
}


def tokens_per_forward(info) -> float:
  """Mean tokens committed per target forward (1 for plain AR, whose info has neither field)."""
  for name in ("accepted_per_call", "tokens_per_call"):
    if hasattr(info, name):
      return float(np.mean(np.asarray(getattr(info, name))))
  return 1.0


class Decoded(NamedTuple):
  """One decoder on one prompt: its token ids, tokens per target forward and wall seconds."""

  ids: list[int]
  per_forward: float
  seconds: float


def run_decoder(generate: Generate, prompt_ids, **kwargs) -> Decoded:
  """Compiles with one call, then times a second one (``jax.block_until_ready``)."""
  timing = common.time_call(lambda: generate([prompt_ids], **kwargs), repeats=1)
  tokens, info = timing.output
  n = int(np.asarray(info.lengths)[0])
  return Decoded(np.asarray(tokens)[0, :n].tolist(), tokens_per_forward(info), timing.best)


def decoders_section(bundle, names, prompts, new_tokens) -> list[dict]:
  """Runs AR and every decoder on every prompt; asserts identical tokens; prints the tables."""
  tok = bundle.tokenizer
  encoded = {p: tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))
             for p, text in prompts.items()}
  # One prompt bucket for all prompts, so each decoder compiles once.
  kwargs = dict(max_new_tokens=new_tokens, eos_id=tok.eos_id,
                min_bucket=max(len(ids) for ids in encoded.values()))
  builders = {"greedy AR": lambda b: functools.partial(ar.generate, jax.random.key(SEED), b.model,
                                                       b.params),
              **{name: DECODERS[name] for name in names}}
  results = {p: {} for p in prompts}
  with tqdm(total=len(prompts) * len(builders), desc="SmolLM2 decoders", leave=False) as bar:
    for name, build in builders.items():
      generate = build(bundle)
      for p, ids in encoded.items():
        bar.set_postfix_str(f"{name} / {p}")
        results[p][name] = run_decoder(generate, ids, **kwargs)
        bar.update()
  rows = []
  for p, by_name in results.items():
    reference = by_name["greedy AR"]
    print(f"\n--- {p} ---\n{prompts[p]}\n\n>>> {tok.decode(reference.ids).strip()}\n")
    for name, out in by_name.items():
      if name == "greedy AR":
        continue
      identical = out.ids == reference.ids
      print(f"{name}: identical to greedy AR: {'yes' if identical else 'NO'}")
      rows.append(dict(prompt=p, decoder=name, identical=identical, tokens=len(out.ids),
                       per_forward=out.per_forward, seconds=out.seconds,
                       speedup=reference.seconds / out.seconds))
    rows.append(dict(prompt=p, decoder="greedy AR", identical=True, tokens=len(reference.ids),
                     per_forward=1.0, seconds=reference.seconds, speedup=1.0))
  return rows


def decoders_table(rows) -> str:
  body = [[r["prompt"], r["decoder"], "yes" if r["identical"] else "NO", r["tokens"],
           f"{r['per_forward']:.2f}", f"{r['tokens'] / r['seconds']:.1f}", f"{r['speedup']:.2f}x"]
          for r in sorted(rows, key=lambda r: (r["prompt"], r["decoder"] != "greedy AR"))]
  return aligned(["prompt", "decoder", "identical to AR", "tokens", "tokens / target forward",
                  "tokens/s", "speed-up vs AR"], body)


def aligned(header, rows) -> str:
  """A markdown table whose columns are padded to equal width (readable in a terminal)."""
  cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
  return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                   + [line(r) for r in cells[1:]])


# ---------------------------------------------------------------------------- masked diffusion

# ``builder(denoise_fn, mask_id, schedule, num_steps) -> (sampler, fixed)``: ``fixed`` says the
# sampler runs exactly ``num_steps`` steps (else it stops when no MASK is left). Temperature 1.
MASKED_SAMPLERS: dict[str, Callable[..., tuple[Any, bool]]] = {
    "tau-leaping": lambda fn, m, sched, n: (
        tau_leaping(fn, mask_id=m, num_steps=n, schedule=sched), True),
    "top-k confidence (max-prob)": lambda fn, m, sched, n: (confidence(
        fn, mask_id=m, rule="topk", num_steps=n, proxy="max_prob", temperature=1.0), False),
    "EB-sampler (gamma=30)": lambda fn, m, sched, n: (
        eb_sampler(fn, mask_id=m, gamma=30.0, temperature=1.0), False),
    "ReMDM (cap, top-p 0.9)": lambda fn, m, sched, n: (remdm(
        fn, mask_id=m, num_steps=n, strategy="cap", schedule=sched, top_p=0.9), True),
    "P2 self-planning": lambda fn, m, sched, n: (p2(fn, mask_id=m, num_steps=n), True),
}


def trajectory(sampler, fixed: bool, num_steps: int, x_init, mask_id: int):
  """Runs ``sampler.step`` (the loop its ``sample`` compiles) and records when tokens appear.

  Returns ``(tokens int32[B, L], nfe, unmasked_at int32[B, L])``: ``unmasked_at`` is the last
  step at which a position went from MASK to a token (-1: never masked, the prompt).
  """
  state, key = sampler.init(x_init), jax.random.PRNGKey(SEED)
  step = jax.jit(sampler.step)
  masked = np.asarray(x_init) == mask_id
  unmasked_at = np.full(masked.shape, -1, np.int32)
  nfe, i = 0, 0
  cap = num_steps if fixed else x_init.shape[1]
  while i < cap and (fixed or masked.any()):
    state, info = step(key, state)
    now = np.asarray(state.tokens) == mask_id
    unmasked_at[masked & ~now] = i
    masked, i = now, i + 1
    nfe += int(np.max(np.asarray(info.nfe)))  # one batched denoiser call serves every row
  return np.asarray(state.tokens), nfe, unmasked_at


def masked_section(run, judge, names, num_steps, num_samples) -> tuple[list[dict], dict]:
  """Every masked sampler on the infilling task; returns table rows and the unmasking steps."""
  mask_id, seq = run.model_config.mask_id, run.config.data.seq_len
  prefix, suffix = run.encode(INFILL_PREFIX), run.encode(INFILL_SUFFIX)
  middle = seq - len(prefix) - len(suffix)
  row = np.concatenate([prefix, np.full(middle, mask_id), suffix]).astype(np.int32)
  x_init = jnp.asarray(np.tile(row, (num_samples, 1)))
  denoise_fn = make_denoise_fn(run.model_config, run.state.ema_params)
  schedule = run.config.diffusion.masking_schedule()
  rows, orders = [], {}
  print(f"\n--- infilling with the shipped MDM (step {run.step}; {middle} of {seq} tokens "
        f"masked) ---\n{INFILL_PREFIX}[...]{INFILL_SUFFIX}")
  for name in tqdm(names, desc="masked samplers", leave=False):
    sampler, fixed = MASKED_SAMPLERS[name](denoise_fn, mask_id, schedule, num_steps)
    start = time.perf_counter()
    tokens, nfe, orders[name] = trajectory(sampler, fixed, num_steps, x_init, mask_id)
    seconds = time.perf_counter() - start
    texts = [run.decode(t) for t in tokens]
    ppl = evaluation.generative_perplexity(texts, judge=judge, batch_size=num_samples)
    rows.append(dict(sampler=name, nfe=nfe, gen_ppl=ppl.ppl, seconds=seconds,
                     entropy=evaluation.unigram_entropy(tokens, ignore_ids=[mask_id]),
                     infill=run.decode(tokens[0, len(prefix):seq - len(suffix)])))
  for r in rows:  # The infill in bold between the fixed prefix and suffix.
    print(f"\n{r['sampler']} (NFE {r['nfe']}):\n{INFILL_PREFIX}\033[1m{r['infill']}\033[0m"
          f"{INFILL_SUFFIX}".rstrip())
  return rows, orders


def masked_table(rows, num_samples) -> str:
  return aligned(["sampler", "NFE", f"gen. PPL (SmolLM2, {num_samples} rows)",
                  "entropy (nats)", "seconds (incl. compile)"],
                 [[r["sampler"], r["nfe"], f"{r['gen_ppl']:.1f}", f"{r['entropy']:.2f}",
                   f"{r['seconds']:.1f}"] for r in rows])


def plot_orders(orders: dict, path: str) -> None:
  """Heat-map: the step at which each position of row 0 was unmasked, one row per sampler."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  names = list(orders)
  # Normalised to [0, 1] per sampler (their step counts differ); the prompt is blank.
  image = np.stack([np.where(orders[n][0] < 0, np.nan,
                             orders[n][0] / max(int(orders[n][0].max()), 1)) for n in names])
  fig, ax = plt.subplots(figsize=(12, 0.5 * len(names) + 1.5))
  shown = ax.imshow(image, aspect="auto", cmap="viridis", interpolation="nearest")
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("position (blank: prompt prefix / suffix)")
  fig.colorbar(shown, ax=ax, label="unmasked at step (fraction of the sampler's steps)")
  ax.set_title("Order of unmasking on the infilling task (row 0 of each sampler)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ------------------------------------------------------------------------------------- driver


def quiet() -> None:
  """No INFO lines: absl at WARNING, and the jax / orbax Python loggers too."""
  logging.set_verbosity(logging.WARNING)
  for name in ("jax", "orbax", "absl"):
    py_logging.getLogger(name).setLevel(py_logging.WARNING)


def checked_subset(flag: str, chosen, table: dict) -> list[str]:
  if chosen is None:
    return list(table)
  unknown = [c for c in chosen if c not in table]
  if unknown:
    raise app.UsageError(f"--{flag}: unknown {unknown}; choose from {list(table)}")
  return list(chosen)


def main(argv):
  common.no_arguments(argv)
  quiet()
  quick = _QUICK.value
  decoder_names = checked_subset("decoders", _DECODERS.value, DECODERS)
  sampler_names = checked_subset("samplers", _SAMPLERS.value, MASKED_SAMPLERS)
  new_tokens = _NEW_TOKENS.value or (16 if quick else 64)
  mdm_steps = _MDM_STEPS.value or (16 if quick else 64)
  prompts = dict(list(PROMPTS.items())[:1]) if quick else PROMPTS
  os.makedirs(_WORKDIR.value, exist_ok=True)
  start = time.perf_counter()

  print("== 1. Lossless parallel decoding of SmolLM2-135M-Instruct (greedy) ==")
  bundle = pretrained.load_bundle()
  sections = {"load SmolLM2": time.perf_counter() - start}
  decoder_rows = decoders_section(bundle, decoder_names, prompts, new_tokens)
  sections["decoders"] = time.perf_counter() - start - sum(sections.values())
  table = decoders_table(decoder_rows)
  print("\n" + table)

  print(f"\n== 2. Masked diffusion on the shipped checkpoint '{_CHECKPOINT.value}' ==")
  run = runs.load_shipped(_CHECKPOINT.value)
  masked_rows, orders = masked_section(run, evaluation.Judge.from_bundle(bundle), sampler_names,
                                       mdm_steps, _MDM_SAMPLES.value)
  mtable = masked_table(masked_rows, _MDM_SAMPLES.value)
  print("\n" + mtable)
  picture = os.path.join(_WORKDIR.value, "unmasking_order.png")
  plot_orders(orders, picture)

  seconds = time.perf_counter() - start
  sections["masked diffusion"] = seconds - sum(sections.values())
  with open(os.path.join(_WORKDIR.value, "decoders.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")
  with open(os.path.join(_WORKDIR.value, "masked.md"), "w", encoding="utf-8") as f:
    f.write(mtable + "\n")
  with open(os.path.join(_WORKDIR.value, "summary.json"), "w", encoding="utf-8") as f:
    json.dump({"quick": quick, "seconds": seconds, "section_seconds": sections,
               "machine": common.machine(), "decoder_names": decoder_names,
               "decoders": decoder_rows, "masked": masked_rows,
               "checkpoint": {"name": _CHECKPOINT.value, "step": run.step,
                              "valid": run.metadata.get("valid")}}, f, indent=2)
  mismatched = [f"{r['decoder']} on {r['prompt']}" for r in decoder_rows if not r["identical"]]
  print(f"""
== 3. Summary ({seconds:.0f} s) ==
Outputs in {os.path.abspath(_WORKDIR.value)}: decoders.md, masked.md, summary.json,
  unmasking_order.png (when each position was unmasked, per sampler).
Next:
  python experiments/train.py --config=configs/default.py --workdir=workdir/default
      train the 10-minute masked-diffusion model (configs/mdm_small.py: the shipped one)
  python experiments/sweep_samplers.py --workdir=workdir/default   every sampler x NFE
  python experiments/bench_speculative.py                          decoders, timed in detail
  notebooks/quickstart.ipynb                                       the same in Colab""")
  if mismatched:
    raise SystemExit(f"decoders whose text differs from greedy AR: {mismatched}")


if __name__ == "__main__":
  common.run(main)
