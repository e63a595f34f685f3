r"""Benchmark: cached block decoding (Fast-dLLM prefix / dual cache, exact mode) vs no cache.

On the project's trained MDM (``--workdir``, read-only), in one run: the same prompts, key and
confidence rule in semi-autoregressive block mode, decoded by

* ``none``   -- the uncached sampler (:func:`partext_jax.masked.adaptive.confidence`);
* ``exact``  -- :func:`partext_jax.masked.block_cache.block_cache` refreshing every step;
* ``prefix`` / ``dual`` -- the Fast-dLLM caches, refreshed at each block start.

Reported per mode: wall-clock per sample (jit-compiled, after a warm-up call, median of
``--repeats``), denoiser calls, NFE-equivalent cost (query positions / L summed over steps: a full
pass = 1), agreement with the uncached tokens (generated positions; whole rows), and the
generative perplexity of the decoded texts under SmolLM2-135M-Instruct
(:func:`partext_jax.evaluation.generative_perplexity`) with the paired per-sample NLL change vs no
cache (mean +- standard error), plus the unigram entropy of the generated tokens.

    python experiments/bench_block_cache.py --workdir=/tmp/mainjob \
        --out=experiments/results/bench_block_cache_cpu.md
"""

import datetime
import math
import platform
import sys

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import common
from partext_jax import evaluation
from partext_jax.models import denoiser
from partext_jax.masked.block_cache import block_cache
from partext_jax.masked.adaptive import confidence
from partext_jax.training import datasets
from partext_jax.training.runs import load_run

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/mainjob", "Trained MDM run (read only).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 8, "Batch of samples (one call).")
_PROMPT = flags.DEFINE_integer("prompt_length", 32, "Prompt tokens from validation sequences.")
_BLOCK = flags.DEFINE_integer("block_length", 32, "Block length.")
_RULE = flags.DEFINE_enum("rule", "threshold", ["threshold", "factor", "topk"], "Decoding rule.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.9, "rule=threshold: confidence threshold.")
_FACTOR = flags.DEFINE_float("factor", 1.0, "rule=factor: Fast-dLLM factor.")
_STEPS = flags.DEFINE_integer("num_steps", 48, "rule=topk: total steps.")
_TEMPERATURE = flags.DEFINE_float(
    "temperature", 1.0, "Token temperature (0: argmax; greedy decoding of this small model "
    "degenerates into repetitions, so the default samples).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed rounds over the modes (median).")
_JUDGE = flags.DEFINE_bool("judge", True, "Score generative perplexity with SmolLM2.")
_OUT = flags.DEFINE_string("out", None, "Also write the markdown report here.")

MODES = ("none", "exact", "prefix", "dual")


def _rule_kwargs():
  if _RULE.value == "threshold":
    return dict(rule="threshold", threshold=_THRESHOLD.value)
  if _RULE.value == "factor":
    return dict(rule="factor", factor=_FACTOR.value)
  return dict(rule="topk", num_steps=_STEPS.value)


def main(argv):
  del argv
  run = load_run(_WORKDIR.value)
  cfg, params = run.model_config, run.state.ema_params
  seq_len = run.config.data.seq_len
  gen_length = seq_len - _PROMPT.value
  data = datasets.build_dataset(run.config.data, workdir=None,
                                tokenizer_json=run.metadata["tokenizer"])
  prompts = np.asarray(data.valid[:_NUM_SAMPLES.value, :_PROMPT.value], np.int32)
  if len(prompts) < _NUM_SAMPLES.value:
    raise ValueError(f"only {len(prompts)} validation sequences for --num_samples")
  x_init = jnp.full((_NUM_SAMPLES.value, seq_len), cfg.mask_id, jnp.int32)
  x_init = x_init.at[:, :_PROMPT.value].set(prompts)
  shared = dict(mask_id=cfg.mask_id, block_length=_BLOCK.value, gen_length=gen_length,
                temperature=_TEMPERATURE.value, **_rule_kwargs())
  samplers = {"none": confidence(denoiser.make_denoise_fn(cfg, params), **shared)}
  kv_fn = denoiser.make_cached_denoise_fn(cfg, params)
  for mode in MODES[1:]:
    samplers[mode] = block_cache(kv_fn, cache=mode, **shared)

  key = jax.random.key(0)
  rows = {}
  timed = common.time_round_robin({mode: (lambda s=samplers[mode]: s.sample(key, x_init))
                                   for mode in MODES}, repeats=_REPEATS.value)
  for mode in MODES:
    seconds, out = timed[mode].median, timed[mode].output
    tokens, info = jax.device_get(out)
    cost = float(info.nfe.sum()) if mode == "none" else float(info.cost.sum())
    rows[mode] = dict(seconds=seconds, tokens=np.asarray(tokens), nfe=int(info.nfe.sum()),
                      full=(int(info.nfe.sum()) if mode == "none"
                            else int(info.full_calls.sum())), cost=cost)
    print(f"{mode:7s} {1e3 * seconds / _NUM_SAMPLES.value:8.2f} ms/sample  nfe {rows[mode]['nfe']}"
          f"  cost {cost:.2f}", flush=True)

  ref = rows["none"]["tokens"][:, _PROMPT.value:]
  for mode in MODES:
    gen = rows[mode]["tokens"][:, _PROMPT.value:]
    rows[mode]["agree_tok"] = float(np.mean(gen == ref))
    rows[mode]["agree_row"] = float(np.mean(np.all(gen == ref, axis=1)))
    rows[mode]["entropy"] = evaluation.unigram_entropy(gen)

  if _JUDGE.value:
    judge = evaluation.Judge.load()
    for mode in MODES:
      texts = [run.decode(row) for row in rows[mode]["tokens"]]
      stats = evaluation.generative_perplexity(texts, judge=judge, batch_size=8)
      rows[mode]["ppl"] = stats.ppl
      rows[mode]["nll"] = np.asarray(stats.per_sample_nll)
      print(f"{mode:7s} gen ppl {stats.ppl:.2f}", flush=True)

  base_t = rows["none"]["seconds"]
  lines = [
      "# Cached block decoding for the MDM: no cache vs exact vs Fast-dLLM prefix / dual cache",
      "",
      f"Command: `python {' '.join(sys.argv)}`",
      "",
      f"Machine: 2-core AMD EPYC CPU, no accelerator ({platform.python_version()}, jax "
      f"{jax.__version__}); CPU shared with other jobs, so wall-clock is noisy. Date: "
      f"{datetime.date.today().isoformat()}.",
      "",
      f"Model: `{_WORKDIR.value}` (step {run.step}, EMA params; d_model {cfg.d_model}, "
      f"{cfg.num_layers} layers, V = {cfg.vocab_size}, L = {seq_len}). {_NUM_SAMPLES.value} "
      f"samples in one batch: validation prompts of {_PROMPT.value} tokens, gen_length "
      f"{gen_length}, block_length {_BLOCK.value} ({gen_length // _BLOCK.value} blocks), "
      f"rule {_rule_kwargs()}, temperature {_TEMPERATURE.value}, key 0. Time: median of "
      f"{_REPEATS.value} jit-compiled calls after a warm-up (modes interleaved round-robin), "
      f"divided by the batch.",
      "",
      "| cache | ms / sample | speed-up | denoiser calls | full passes | NFE-equivalent cost "
      "| tokens = uncached | rows = uncached | gen. ppl (SmolLM2) | paired NLL change "
      "(nats/token) | unigram entropy |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for mode in MODES:
    r = rows[mode]
    ppl = f"{r['ppl']:.2f}" if "ppl" in r else "-"
    delta = "-"
    if "nll" in r:
      d = r["nll"] - rows["none"]["nll"]
      delta = f"{d.mean():+.4f} +- {d.std(ddof=1) / math.sqrt(len(d)):.4f}"
    lines.append(
        f"| {mode} | {1e3 * r['seconds'] / _NUM_SAMPLES.value:.2f} | "
        f"{base_t / r['seconds']:.2f}x | {r['nfe']} | {r['full']} | {r['cost']:.2f} | "
        f"{100 * r['agree_tok']:.1f}% | {100 * r['agree_row']:.0f}% | {ppl} | {delta} | "
        f"{r['entropy']:.3f} |")
  lines += [
      "",
      "NFE-equivalent cost: sum over steps of (query positions / L); a full forward pass is 1 "
      "(the cached attention over the stored rows is not counted). Token agreement is over the "
      "generated positions. Paired NLL change: per-sample judge NLL minus the uncached sample's, "
      "mean +- standard error over samples.",
  ]
  report = "\n".join(lines) + "\n"
  print(report)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(report)


if __name__ == "__main__":
  common.run(main)
