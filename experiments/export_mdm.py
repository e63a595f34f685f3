r"""Exports a trained MDM run as the package's shipped checkpoint, with its bound and samples.

    python experiments/train.py --config=configs/mdm_small.py --workdir=workdir/mdm_small
    python experiments/export_mdm.py --workdir=workdir/mdm_small            # latest step
    python experiments/export_mdm.py --workdir=workdir/mdm_small --step=1000

Writes the EMA parameters, config and tokenizer of one checkpoint to
``partext_jax/assets/<--name>`` (``partext_jax.training.runs.export_run``; loaded with
``runs.load_shipped(name)``), then evaluates the *exported* asset with the trainer's own
estimator (same validation batches and Monte-Carlo keys as the training run's evaluations) and
compares it with the bound the run recorded in ``metrics.jsonl`` at that step, when it evaluated
there: training and evaluation are deterministic on CPU, so the two must agree (within float
reassociation noise, far inside one standard error). The bound, the run's metrics log, its plot and
tau-leaping samples scored by generative perplexity under SmolLM2 and unigram entropy, beside
held-out validation windows scored the same way, go to ``--results_dir``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import common
from partext_jax import evaluation
from partext_jax.masked.tau_leaping import tau_leaping
from partext_jax.models.denoiser import make_denoise_fn
from partext_jax.training import core
from partext_jax.training import datasets
from partext_jax.training import runs

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run to export (experiments/train.py).",
                               required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
_NAME = flags.DEFINE_enum("name", "mdm_small", runs.SHIPPED, "Shipped checkpoint to write.")
_RESULTS = flags.DEFINE_string("results_dir", "experiments/results/mdm_small",
                               "Where summary.json, summary.md, metrics.* and samples go.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 16, "Unconditional samples to score.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 128, "Tau-leaping steps per sample.")


def _recorded_eval(metrics_path: str, step: int) -> dict | None:
  """The run's own ``eval/*`` record at ``step`` (``None`` if it did not evaluate there)."""
  if not os.path.exists(metrics_path):
    return None
  rows = [r for r in core.read_metrics(metrics_path)
          if r.get("step") == step and "eval/bits_per_token" in r]
  return rows[-1] if rows else None


def _score(texts, token_rows, judge, mask_id) -> dict:
  ppl = evaluation.generative_perplexity(texts, judge=judge, batch_size=8)
  return {"gen_ppl": ppl.ppl, "entropy_nats": evaluation.unigram_entropy(
      token_rows, ignore_ids=[mask_id])}


def samples_and_scores(run: runs.LoadedRun, *, num_samples: int, num_steps: int, seed: int = 0):
  """Tau-leaping samples of ``run`` and held-out windows, both scored (gen. PPL, entropy)."""
  mask_id, seq = run.model_config.mask_id, run.config.data.seq_len
  sampler = tau_leaping(make_denoise_fn(run.model_config, run.state.ema_params), mask_id=mask_id,
                        num_steps=num_steps, schedule=run.config.diffusion.masking_schedule())
  tokens, _ = sampler.sample(jax.random.PRNGKey(seed),
                             jnp.full((num_samples, seq), mask_id, jnp.int32))
  tokens = np.asarray(tokens)
  data = datasets.build_dataset(run.config.data, workdir=None,
                                tokenizer_json=run.metadata["tokenizer"])
  valid = np.asarray(data.valid).reshape(-1, seq)
  windows = valid[np.linspace(0, len(valid) - 1, num_samples).astype(int)]
  judge = evaluation.Judge.load()
  texts = [run.decode(t) for t in tokens]
  return texts, {"samples": _score(texts, tokens, judge, mask_id),
                 "held_out": _score([run.decode(w) for w in windows], windows, judge, mask_id)}


def summary_markdown(s: dict) -> str:
  v, rec = s["asset_eval"], s["recorded_eval"]
  lines = [
      f"# Shipped checkpoint `{s['name']}`", "",
      f"Trained by `{s['train_command']}`; exported by `{s['export_command']}`.", "",
      f"Step {s['step']} of the {s['num_steps']}-step schedule ({common.machine()}).", "",
      common.markdown_table(
          ["", "bits/token", "bits/char"],
          [["validation NELBO bound of the exported asset (EMA)",
            f"{v['bits_per_token']:.3f} +- {v['stderr_bits_per_token']:.3f}",
            f"{v['bits_per_char']:.3f}"]] + (
              [[f"recorded by the training run at step {s['step']}",
                f"{rec['eval/bits_per_token']:.3f} +- {rec['eval/stderr_bits_per_token']:.3f}",
                f"{rec['eval/bits_per_char']:.3f}"]] if rec else [])),
      "",
      common.markdown_table(
          ["text", "gen. PPL (SmolLM2)", "unigram entropy (nats)"],
          [[f"tau-leaping samples ({s['num_samples']} x {s['seq_len']} tokens, "
            f"{s['num_sample_steps']} steps)", f"{s['scores']['samples']['gen_ppl']:.1f}",
            f"{s['scores']['samples']['entropy_nats']:.2f}"],
           ["held-out validation windows (same count and length)",
            f"{s['scores']['held_out']['gen_ppl']:.1f}",
            f"{s['scores']['held_out']['entropy_nats']:.2f}"]]),
      "", "## Samples", ""]
  for i, text in enumerate(s["samples"][:4]):
    lines += [f"### sample {i}", "", "```", text, "```", ""]
  return "\n".join(lines)


def main(argv):
  common.no_arguments(argv)
  destination = runs.shipped_directory(_NAME.value)
  command = "python experiments/export_mdm.py " + " ".join(sys.argv[1:])
  runs.export_run(_WORKDIR.value, destination, step=_STEP.value)
  asset = runs.load_exported(destination)
  print(f"exported step {asset.step} to {destination}; evaluating the asset ...", flush=True)
  bound = runs.evaluate_run(asset)
  recorded = _recorded_eval(os.path.join(_WORKDIR.value, core.METRICS_FILE), asset.step)
  # Rewrite with the bound in the metadata (the same parameters; a few seconds).
  runs.export_run(_WORKDIR.value, destination, step=asset.step,
                  metadata={"export_command": command, "valid": bound, "recorded_valid": recorded})
  texts, scores = samples_and_scores(asset, num_samples=_NUM_SAMPLES.value,
                                     num_steps=_NUM_STEPS.value)
  os.makedirs(_RESULTS.value, exist_ok=True)
  for name in (core.METRICS_FILE, core.PLOT_FILE):
    source = os.path.join(_WORKDIR.value, name)
    if os.path.exists(source):
      shutil.copyfile(source, os.path.join(_RESULTS.value, name))
  core.plot_metrics(os.path.join(_RESULTS.value, core.METRICS_FILE),
                    os.path.join(_RESULTS.value, core.PLOT_FILE),
                    curves=(("train/bits_per_token", "train NELBO"),
                            ("eval/bits_per_token", "validation NELBO (EMA)")),
                    reference_lines=((bound["unigram_entropy_bits"], "unigram entropy"),),
                    ylabel="bits / token")
  summary = {
      "name": _NAME.value, "step": asset.step, "num_steps": asset.config.train.num_steps,
      "train_command": f"python experiments/train.py --config=configs/{_NAME.value}.py "
                       "--workdir=DIR",
      "export_command": command, "asset_eval": bound, "recorded_eval": recorded,
      "num_samples": _NUM_SAMPLES.value, "seq_len": asset.config.data.seq_len,
      "num_sample_steps": _NUM_STEPS.value, "scores": scores, "samples": texts}
  if recorded:
    diff = bound["bits_per_token"] - recorded["eval/bits_per_token"]
    summary["difference_in_standard_errors"] = diff / recorded["eval/stderr_bits_per_token"]
  with open(os.path.join(_RESULTS.value, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  common.write_report(summary_markdown(summary), os.path.join(_RESULTS.value, "summary.md"))


if __name__ == "__main__":
  common.run(main)
