r"""Benchmark: LLaDA 2.1 token editing (``edit_threshold``) beside the same sampler without it.

In one run, with the same prompts and key, the Fast-dLLM threshold rule in semi-autoregressive
blocks (the mask-to-token threshold ``--m2t``, a strict one and a low "speedy" one) decodes with
token editing off and at each ``--edit_thresholds`` value (token-to-token threshold), on

* ``mdm_small`` -- the shipped trained MDM (``runs.load_shipped``), judged by SmolLM2-135M's
  generative perplexity (:func:`partext_jax.evaluation.generative_perplexity`);
* ``tiny-llada`` -- the tiny random LLaDA checkpoint of
  :mod:`partext_jax.pretrained.dllm.tiny` (random weights: NFE and edit counts only; its
  perplexity would measure nothing).

Per row: edits per sequence, NFE (denoiser calls), tokens per forward, wall-clock per batch
(median of ``--repeats`` after a warm-up), gen-PPL and unigram entropy of the generated tokens.

    python experiments/bench_token_editing.py --out=experiments/results/bench_token_editing_cpu.md

:func:`measure` returns the rows (``experiments/edit_flows.py``'s ``comparison_rows`` uses it).
"""

from __future__ import annotations

import resource
import sys
import tempfile

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import common
from partext_jax import evaluation
from partext_jax.masked.adaptive import confidence
from partext_jax.models import denoiser
from partext_jax.training import datasets, runs


def define_flags() -> None:
  """The launcher's flags (defined only when run as a script, so importing :func:`measure`
  defines none)."""
  flags.DEFINE_integer("num_samples", 8, "Samples per configuration (one batch).")
  flags.DEFINE_integer("prompt_length", 32, "Prompt tokens (MDM: validation text).")
  flags.DEFINE_integer("block_length", 32, "Block length.")
  flags.DEFINE_list("m2t", ["0.9", "0.1"], "Mask-to-token thresholds (rule=threshold).")
  flags.DEFINE_list("edit_thresholds", ["0.9", "0.5", "0.0"], "Token-to-token thresholds.")
  flags.DEFINE_float(
      "temperature", 1.0, "Token temperature (0: argmax, as LLaDA 2.1 decodes; greedy decoding of "
      "the small MDM degenerates into repetitions, so the default samples).")
  flags.DEFINE_integer("repeats", 2, "Timed calls per configuration (median).")
  flags.DEFINE_bool("judge", True, "Score the MDM's texts with SmolLM2 (gen-PPL).")
  flags.DEFINE_bool("tiny_dllm", True, "Also measure the tiny random LLaDA.")
  flags.DEFINE_string("out", None, "Also write the markdown report here.")


def peak_rss_mb() -> float:
  """Peak resident memory of this process so far, MiB (``ru_maxrss``)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _mdm_setup(num_samples: int, prompt_length: int):
  run = runs.load_shipped("mdm_small")
  cfg, params = run.model_config, run.state.ema_params
  seq_len = run.config.data.seq_len
  data = datasets.build_dataset(run.config.data, workdir=None,
                                tokenizer_json=run.metadata["tokenizer"])
  prompts = np.asarray(data.valid[:num_samples, :prompt_length], np.int32)
  x = jnp.full((num_samples, seq_len), cfg.mask_id, jnp.int32).at[:, :prompt_length].set(prompts)
  return dict(name="mdm_small", fn=denoiser.make_denoise_fn(cfg, params), mask_id=cfg.mask_id,
              x=x, decode=run.decode, judge=True, ignore=(cfg.mask_id,))


def _tiny_setup(num_samples: int, prompt_length: int, gen_length: int):
  from partext_jax.pretrained import dllm  # pylint: disable=import-outside-toplevel
  bundle = dllm.load_dllm(dllm.write_tiny_checkpoint(tempfile.mkdtemp(), arch="llada"))
  prompt = np.random.default_rng(0).integers(0, 256, (num_samples, prompt_length))
  x = np.full((num_samples, prompt_length + gen_length), bundle.mask_id, np.int32)
  x[:, :prompt_length] = prompt
  return dict(name="tiny-llada (random)", fn=bundle.denoise_fn, mask_id=bundle.mask_id,
              x=jnp.asarray(x), decode=None, judge=False, ignore=(bundle.mask_id,))


def measure(*, num_samples: int = 8, prompt_length: int = 32, block_length: int = 32,
            m2t=(0.9, 0.1), edit_thresholds=(0.9, 0.5, 0.0), temperature: float = 1.0,
            repeats: int = 2, judge: bool = True, tiny_dllm: bool = True) -> list[dict]:
  """Runs every (model, m2t, edit threshold or None) configuration; one dict per row with
  ``model, m2t, edit_threshold, edits_per_seq, nfe, tokens_per_forward, seconds, gen_ppl,
  entropy, peak_rss_mb, gen_length, num_samples, block_length, temperature``."""
  models = [_mdm_setup(num_samples, prompt_length)]
  gen_length = models[0]["x"].shape[1] - prompt_length
  if tiny_dllm:
    models.append(_tiny_setup(num_samples, prompt_length, gen_length))
  judge_lm = evaluation.Judge.load() if judge else None
  rows = []
  key = jax.random.key(0)
  for m in models:
    for th in m2t:
      for edit in (None, *edit_thresholds):
        sampler = confidence(m["fn"], mask_id=m["mask_id"], rule="threshold", threshold=th,
                             block_length=block_length, gen_length=gen_length,
                             temperature=temperature, edit_threshold=edit)
        timing = common.time_call(lambda s=sampler: s.sample(key, m["x"]), repeats=repeats)
        tokens, info = jax.device_get(timing.output)
        gen = np.asarray(tokens)[:, prompt_length:]
        nfe = int(info.nfe.sum())
        edits = 0 if info.num_edited is None else int(np.asarray(info.num_edited).sum())
        row = dict(model=m["name"], m2t=th, edit_threshold=edit, nfe=nfe,
                   edits_per_seq=edits / num_samples,
                   tokens_per_forward=gen.size / num_samples / nfe,
                   seconds=timing.median, peak_rss_mb=peak_rss_mb(), gen_length=gen_length,
                   num_samples=num_samples, block_length=block_length,
                   temperature=temperature, gen_ppl=None,
                   entropy=evaluation.unigram_entropy(gen, ignore_ids=m["ignore"]))
        if judge_lm is not None and m["judge"]:
          texts = [m["decode"](r) for r in np.asarray(tokens)]
          row["gen_ppl"] = evaluation.generative_perplexity(texts, judge=judge_lm).ppl
        print(row, flush=True)
        rows.append(row)
  return rows


def report(rows: list[dict], command: str) -> str:
  """The markdown report of :func:`measure`'s rows."""
  fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
  table = common.markdown_table(
      ["model", "M2T threshold", "T2T (edit) threshold", "edits / sequence", "NFE",
       "tokens / forward", "s / batch", "gen-PPL (SmolLM2)", "unigram entropy"],
      [[r["model"], r["m2t"], fmt(r["edit_threshold"], ""), f"{r['edits_per_seq']:.2f}",
        r["nfe"], f"{r['tokens_per_forward']:.2f}", f"{r['seconds']:.3f}",
        fmt(r["gen_ppl"], ".2f"), f"{r['entropy']:.3f}"] for r in rows])
  r0 = rows[0]
  return "\n".join([
      "# Token editing (LLaDA 2.1 token-to-token edits) beside the non-editing sampler", "",
      f"Command: `{command}`", "", f"Machine: {common.machine()}.", "",
      f"Rule `threshold` (Fast-dLLM; its threshold is LLaDA 2.1's mask-to-token threshold), "
      f"blocks of {r0['block_length']}, temperature {r0['temperature']}, {r0['num_samples']} "
      f"samples in one batch, gen_length {r0['gen_length']}, key 0; `-` = no editing. NFE: "
      "denoiser calls for the batch (every row shares them); tokens / forward = generated "
      "tokens per sequence / NFE. Seconds: median of jit-compiled calls after a warm-up on a "
      "shared CPU (noisy). Edits run on the unmasking steps only (the reference's "
      "max_post_edit_steps = 0, see docs/algorithms.md#token-editing), so editing costs no "
      "extra forward here. The tiny LLaDA has random weights: its gen-PPL is not measured.", "",
      table, ""])


def main(argv):
  common.no_arguments(argv)
  f = flags.FLAGS
  rows = measure(num_samples=f.num_samples, prompt_length=f.prompt_length,
                 block_length=f.block_length, m2t=tuple(float(v) for v in f.m2t),
                 edit_thresholds=tuple(float(v) for v in f.edit_thresholds),
                 temperature=f.temperature, repeats=f.repeats, judge=f.judge,
                 tiny_dllm=f.tiny_dllm)
  common.write_report(report(rows, "python " + " ".join(sys.argv)), f.out)


if __name__ == "__main__":
  define_flags()
  common.run(main)
