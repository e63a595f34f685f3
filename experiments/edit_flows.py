r"""Edit Flows on an enumerable toy: train the Flax rate model, sample by tau-leaping, compare.

Havasi et al. 2025 (``docs/algorithms.md#edit-flows``). The toy (:func:`partext_jax.edit.exact.
random_toy`) has a source ``p0`` (uniform over short sequences) and a target ``p1`` over
sequences of several lengths, both enumerable, so the quality of a sampler is its exact total
variation to ``p1`` (and of its length distribution). In one run:

* ``exact rates`` -- the marginal rates computed from ``p0, p1`` (the conditional-path formula,
  :func:`partext_jax.edit.exact.exact_rate_fn`): what a perfect model would give, so its TV is
  the floor set by tau-leaping and the sample size;
* ``trained model`` -- :class:`partext_jax.edit.model.RateModel` trained with the Bregman loss.

    python experiments/edit_flows.py                                   # ~3 min on a CPU
    python experiments/edit_flows.py --train_steps=500 --num_steps=32 --num_samples=2000

:func:`comparison_rows` gives the rows of the paradigm comparison table (Edit Flows here, and
masked decoding with token editing from ``experiments/bench_token_editing.py``).
"""

from __future__ import annotations

import sys
import time

from absl import flags
import jax
import numpy as np

import bench_token_editing
import common
from partext_jax.base import checked_int
from partext_jax.edit import edit_flows, exact
from partext_jax.edit import model as rate_model
from partext_jax.testing import toys


def define_flags() -> None:
  """The launcher's flags (defined only when run as a script, so that importing
  :func:`comparison_rows` defines none)."""
  flags.DEFINE_integer("seed", 0, "Toy seed (random_toy).")
  flags.DEFINE_integer("vocab_size", 2, "Toy vocabulary.")
  flags.DEFINE_integer("source_length", 2, "Longest source sequence (p0).")
  flags.DEFINE_integer("target_length", 3, "Longest target sequence (p1).")
  flags.DEFINE_integer("train_steps", 3000, "Rate-model training steps.")
  flags.DEFINE_integer("batch_size", 256, "Training batch.")
  flags.DEFINE_integer("num_steps", 64, "Tau-leaping steps (forwards per sequence).")
  flags.DEFINE_integer("num_samples", 8000, "Samples drawn per sampler.")
  flags.DEFINE_string("out", None, "Also write the markdown report here.")


def measure(*, seed: int = 0, vocab_size: int = 2, source_length: int = 2,
            target_length: int = 3, train_steps: int = 3000, batch_size: int = 256,
            num_steps: int = 64, num_samples: int = 8000) -> list[dict]:
  """Trains the rate model and samples with it and with the exact rates; one dict per sampler
  (``method, seconds`` (per sequence, batched), ``forwards_per_sequence, tokens_per_forward,
  tv, length_tv, tv_bound, train_seconds, peak_rss_mb``)."""
  checked_int("num_steps", num_steps, minimum=1, hint=" (tau-leaping steps)")
  checked_int("num_samples", num_samples, minimum=1)
  checked_int("train_steps", train_steps, minimum=1)
  toy = exact.random_toy(seed, vocab_size=vocab_size, source_length=source_length,
                         target_length=target_length)
  capacity = 2 * toy.max_length
  cfg = rate_model.RateModelConfig(vocab_size=vocab_size, capacity=capacity, d_model=32,
                                   num_heads=2, num_layers=2, mlp_dim=64)
  start = time.perf_counter()
  params, losses = rate_model.train(jax.random.key(seed), toy, cfg, num_steps=train_steps,
                                    batch_size=batch_size)
  train_seconds = time.perf_counter() - start
  x0 = exact.sample_toy(jax.random.key(seed + 1), toy.p0, toy, num_samples, capacity=capacity)
  target = np.append(toy.p1, 0.0)
  rows = []
  for method, rate_fn in (("exact rates", exact.exact_rate_fn(toy, capacity=capacity)),
                          ("trained model", rate_model.make_rate_fn(cfg, params))):
    sampler = edit_flows.edit_flows(rate_fn, num_steps=num_steps)
    timing = common.time_call(lambda s=sampler: s.sample(jax.random.key(seed + 2), x0),
                              repeats=1)
    out, info = jax.device_get(timing.output)
    emp = exact.empirical(out, toy)
    lengths = np.asarray(out.lengths)
    rows.append(dict(
        method=method, seconds=timing.median / num_samples, forwards_per_sequence=num_steps,
        tokens_per_forward=float(lengths.mean()) / num_steps,
        tv=toys.total_variation(emp, target),
        length_tv=toys.total_variation(exact.length_distribution(emp, toy),
                                       exact.length_distribution(target, toy)),
        tv_bound=toys.tv_tolerance(num_samples, len(target)),
        overflow=int(np.asarray(info.overflow).sum()),
        train_seconds=train_seconds if method == "trained model" else None,
        final_loss=float(losses[-100:].mean()) if method == "trained model" else None,
        peak_rss_mb=bench_token_editing.peak_rss_mb(), num_samples=num_samples,
        toy=f"V={vocab_size}, p0 lengths <= {source_length}, p1 lengths <= {target_length} "
            f"({len(toy.sequences)} outcomes), seed {seed}"))
    print(rows[-1], flush=True)
  return rows


def comparison_rows(quick: bool) -> list[dict]:
  """Rows of the paradigm comparison: Edit Flows on its toy ("edit-based") and masked decoding
  with LLaDA 2.1 token editing on the shipped MDM and a tiny random LLaDA ("masked + token
  editing"), measured now. ``quick`` shrinks every run (training 300 steps, fewer samples, no
  SmolLM2 judge, no tiny dLLM).

  Each dict: ``paradigm, method, model, tokens_per_forward, seconds`` (wall-clock per sequence,
  batched), ``ar_seconds`` (``None``: see ``note``), ``peak_rss_mb`` (this process's peak so
  far), ``quality`` (``tv``/``length_tv`` or ``gen_ppl``/``entropy``), ``note``.
  """
  rows = []
  for r in measure(train_steps=300 if quick else 3000, num_samples=2000 if quick else 8000,
                   num_steps=32 if quick else 64):
    rows.append(dict(
        paradigm="edit-based", method=f"Edit Flows, {r['method']}", model=f"toy {r['toy']}",
        tokens_per_forward=r["tokens_per_forward"], seconds=r["seconds"], ar_seconds=None,
        peak_rss_mb=r["peak_rss_mb"],
        quality=dict(tv=r["tv"], length_tv=r["length_tv"], tv_sample_bound=r["tv_bound"]),
        note=(f"{r['forwards_per_sequence']} tau-leaping forwards per sequence, batch of "
              f"{r['num_samples']}; no AR model is trained on this toy (its exact AR sampler "
              "would be a table lookup), so no AR time; tv is exact against p1, tv_sample_bound "
              "the TV a perfect sampler stays under with probability 1 - 1e-6")))
  edit_rows = bench_token_editing.measure(
      num_samples=4 if quick else 8, m2t=(0.9, 0.3) if not quick else (0.3,),
      edit_thresholds=(0.9, 0.7) if not quick else (0.7,), repeats=1, judge=not quick,
      tiny_dllm=not quick)
  for r in edit_rows:
    edit = "off" if r["edit_threshold"] is None else r["edit_threshold"]
    rows.append(dict(
        paradigm="masked + token editing",
        method=f"threshold rule (M2T {r['m2t']}), token editing T2T {edit}",
        model=r["model"], tokens_per_forward=r["tokens_per_forward"],
        seconds=r["seconds"] / r["num_samples"], ar_seconds=None, peak_rss_mb=r["peak_rss_mb"],
        quality=dict(gen_ppl=r["gen_ppl"], entropy=r["entropy"],
                     edits_per_sequence=r["edits_per_seq"]),
        note=(f"NFE {r['nfe']} for {r['gen_length']} generated tokens, blocks of "
              f"{r['block_length']}, temperature {r['temperature']}; no autoregressive model "
              "shares this model's weights and tokenizer, so no AR time"
              + ("; random weights: gen-PPL not measured" if "random" in r["model"] else "")
              + ("; quick run: no SmolLM2 judge, gen-PPL not measured" if quick else ""))))
  return rows


def main(argv):
  common.no_arguments(argv)
  f = flags.FLAGS
  rows = measure(seed=f.seed, vocab_size=f.vocab_size, source_length=f.source_length,
                 target_length=f.target_length, train_steps=f.train_steps,
                 batch_size=f.batch_size, num_steps=f.num_steps, num_samples=f.num_samples)
  table = common.markdown_table(
      ["sampler", "forwards / sequence", "tokens / forward", "ms / sequence (batched)",
       "TV to p1", "length TV", "TV bound (n)", "overflow", "training s"],
      [[r["method"], r["forwards_per_sequence"], f"{r['tokens_per_forward']:.3f}",
        f"{1e3 * r['seconds']:.4f}", f"{r['tv']:.4f}", f"{r['length_tv']:.4f}",
        f"{r['tv_bound']:.4f}", r["overflow"],
        "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"] for r in rows])
  text = "\n".join([
      "# Edit Flows on an enumerable toy", "", f"Command: `python {' '.join(sys.argv)}`", "",
      f"Machine: {common.machine()}.", "", f"Toy: {rows[0]['toy']}; {rows[0]['num_samples']} "
      "samples per sampler from draws of p0. TV bound: the distribution-free bound a perfect "
      "sampler stays under with probability 1 - 1e-6 at this sample size.", "", table, ""])
  common.write_report(text, f.out)


if __name__ == "__main__":
  define_flags()
  common.run(main)
