r"""The masked-diffusion drafter and APD on SmolLM2, beside prompt lookup, Medusa and plain AR.

    python experiments/bench_diffusion_drafter.py \
        --out experiments/results/bench_diffusion_drafter_cpu.md
    python experiments/bench_diffusion_drafter.py --quick      # 2 prompts x 32 tokens

SmolLM2-135M-Instruct f32 target, batch 1, no EOS stop, ``--new_tokens`` tokens per prompt, on
open-ended chat prompts that none of the drafters was trained on. Every decoder runs once per
compiled shape untimed (compilation excluded), then once per prompt timed (prefill included).

* **Greedy draft-and-verify**: mean tokens committed per SmolLM2 forward (+- standard error over
  prompts), per-prompt wall-clock speed-up over plain greedy AR measured in the same run, and
  whether the output equals AR's token for token. Drafters: the diffusion drafter
  (``partext_jax/assets/diffusion_drafter_smollm2``, one pass, ``gamma`` 4 and 6), prompt lookup
  (``gamma = 6``) and Medusa (the committed heads, default 16-node tree).
* **APD** (temperature 1, ``M = 6``) for several ``R``: tokens per verifier forward, speed-up over
  AR sampling at temperature 1, and the quality of the samples: gen-PPL under SmolLM2 itself
  (the verifier, so lower ``R`` is favoured by construction) and the mean unigram entropy per
  sample (nats; a collapse into repetition lowers it). AR sampling is the ``R = 0`` reference
  point of the quality columns.

``comparison_rows(quick)`` returns the hybrid rows of ``experiments/compare_paradigms.py``.
"""

from __future__ import annotations

import resource
import time

import jax
import numpy as np

from partext_jax import evaluation
from partext_jax import pretrained
from partext_jax.ar import apd
from partext_jax.ar import processors as lp
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import decode
from partext_jax.ar.speculative.drafters import PromptLookupDrafter
from partext_jax.ar.speculative.drafters import medusa as medusa_drafter
from partext_jax.training import diffusion_drafter as tdd
from partext_jax.training import medusa as tm

# Open-ended requests, none built by the training templates of training/distill.py.
PROMPTS = (
    "Describe a quiet library on a rainy afternoon.",
    "Write a short story about a baker who opens a shop on the moon.",
    "Give three tips for keeping houseplants alive in winter.",
    "Write a thank-you note to a neighbour who fixed your fence.",
    "Describe the sounds of a city at midnight.",
    "Explain how to make a paper airplane that flies far.",
    "Write a short poem about autumn leaves.",
    "Plan a one-day trip to a museum with two children.",
)
APD_WEIGHTS = (0.5, 0.7, 0.9)
APD_GAMMA = 6


def _mean_se(xs):
  xs = np.asarray(xs, np.float64)
  return float(xs.mean()), (float(xs.std(ddof=1) / np.sqrt(len(xs))) if len(xs) > 1 else 0.0)


def _fmt(xs, digits=2):
  m, s = _mean_se(xs)
  return f"{m:.{digits}f} +- {s:.{digits}f}"


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Runner:
  """Times generation calls, one untimed warm-up per (method, prompt length bucket)."""

  def __init__(self):
    self.warm = set()

  def __call__(self, name, ids, fn):
    key = (name, ar.bucket_length(len(ids)))
    if key not in self.warm:
      jax.block_until_ready(fn())
      self.warm.add(key)
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def decoders(bundle):
  """``{name: (kind, callable(key, ids) -> (tokens, info))}`` of every measured method."""
  model, params, _ = bundle
  dd4, ddp = tdd.load_drafter(gamma=4)
  dd6, _ = tdd.load_drafter(gamma=6)
  mcfg, heads, _ = tm.load_heads(tm.asset_directory())
  mdp = medusa_drafter.drafter_params(heads, params, base_config=model.config)

  def spec(drafter, dparams):
    return lambda key, ids, n: decode.generate(key, model, params, [ids], drafter=drafter,
                                               drafter_params=dparams, max_new_tokens=n,
                                               eos_id=None)

  def apd_at(r):
    return lambda key, ids, n: apd.generate(key, model, params, [ids], drafter=dd6_apd,
                                            drafter_params=ddp, mixture_weight=r,
                                            max_new_tokens=n, temperature=1.0, eos_id=None)

  dd6_apd, _ = tdd.load_drafter(gamma=APD_GAMMA)
  out = {
      "AR greedy": ("greedy", lambda key, ids, n: ar.generate(
          key, model, params, [ids], max_new_tokens=n, eos_id=None)),
      "diffusion drafter (gamma=4, 1 pass)": ("greedy", spec(dd4, ddp)),
      "diffusion drafter (gamma=6, 1 pass)": ("greedy", spec(dd6, ddp)),
      "prompt lookup (gamma=6)": ("greedy", spec(PromptLookupDrafter(gamma=6), None)),
      "Medusa (16-node tree)": ("greedy", spec(medusa_drafter.MedusaDrafter(mcfg, model.config),
                                               mdp)),
      "AR sampling (T=1)": ("sample", lambda key, ids, n: ar.generate(
          key, model, params, [ids], max_new_tokens=n, processor=lp.identity(), eos_id=None)),
  }
  for r in APD_WEIGHTS:
    out[f"APD R={r} (M={APD_GAMMA}, T=1)"] = ("sample", apd_at(r))
  return out


def measure(bundle, num_prompts: int, new_tokens: int, names=None):
  """Per method: ``{"kind", "tpf", "seconds", "tokens", "identical"}`` lists over prompts."""
  tok = bundle.tokenizer
  ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}],
                                            add_generation_prompt=True))
         for p in PROMPTS[:num_prompts]]
  runner = Runner()
  methods = decoders(bundle)
  names = list(methods) if names is None else names
  res = {n: {"kind": methods[n][0], "tpf": [], "seconds": [], "tokens": [], "identical": True}
         for n in names}
  for i, p in enumerate(ids):
    key = jax.random.key(i)
    ref = None
    for name in names:
      kind, fn = methods[name]
      t, (out, info) = runner(name, p, lambda: fn(key, p, new_tokens))
      out = np.asarray(out)[0]
      r = res[name]
      r["seconds"].append(t)
      r["tokens"].append(out.tolist())
      calls = getattr(info, "target_calls", None)
      r["tpf"].append(1.0 if calls is None else float(np.asarray(info.accepted_per_call)[0]))
      if name == "AR greedy":
        ref = out
      elif kind == "greedy" and ref is not None:
        r["identical"] = r["identical"] and bool(np.array_equal(out, ref))
    print(f"prompt {i}: " + ", ".join(f"{n}: {res[n]['tpf'][-1]:.2f} tok/fwd "
                                      f"{res[n]['seconds'][-1]:.2f} s" for n in names),
          flush=True)
  return res


def quality(bundle, tokens):
  """``{"gen_ppl", "entropy"}`` of generated token lists (judge: SmolLM2, f32)."""
  tok = bundle.tokenizer
  texts = [tok.decode(t) for t in tokens]
  stats = evaluation.generative_perplexity(texts, judge=evaluation.Judge.from_bundle(bundle),
                                           batch_size=4, max_length=256)
  return {"gen_ppl": float(stats.ppl),
          "entropy": float(evaluation.unigram_entropy(tokens))}


def comparison_rows(quick: bool) -> list[dict]:
  """Hybrid rows of the paradigm comparison (experiments/compare_paradigms.py): the diffusion
  drafter (greedy, gamma 4) and APD at each R, with AR timed in the same call on the same
  prompts and lengths (greedy AR for the drafter, AR sampling at T=1 for APD)."""
  bundle = pretrained.load_bundle()
  num, n_new = (2, 32) if quick else (len(PROMPTS), 64)
  spec_name = "diffusion drafter (gamma=4, 1 pass)"
  apd_names = [f"APD R={r} (M={APD_GAMMA}, T=1)" for r in APD_WEIGHTS]
  res = measure(bundle, num, n_new, ["AR greedy", spec_name, "AR sampling (T=1)", *apd_names])
  rss = _peak_rss_mb()
  rows = [{
      "paradigm": "hybrid", "method": "speculative, masked-diffusion drafter (gamma=4)",
      "model": "SmolLM2-135M-Instruct + 2.5M-param denoiser drafter",
      "tokens_per_forward": _mean_se(res[spec_name]["tpf"])[0],
      "seconds": float(np.sum(res[spec_name]["seconds"])),
      "ar_seconds": float(np.sum(res["AR greedy"]["seconds"])),
      "peak_rss_mb": rss,
      "quality": {"exact_match": float(res[spec_name]["identical"])},
      "note": f"greedy, batch 1, {num} prompts x {n_new} tokens; exact_match = output equals "
              "plain greedy AR"}]
  for r, name in zip(APD_WEIGHTS, apd_names):
    rows.append({
        "paradigm": "hybrid", "method": f"APD R={r} (M={APD_GAMMA})",
        "model": "SmolLM2-135M-Instruct verifier + denoiser drafter",
        "tokens_per_forward": _mean_se(res[name]["tpf"])[0],
        "seconds": float(np.sum(res[name]["seconds"])),
        "ar_seconds": float(np.sum(res["AR sampling (T=1)"]["seconds"])),
        "peak_rss_mb": rss, "quality": quality(bundle, res[name]["tokens"]),
        "note": f"temperature 1, batch 1, {num} prompts x {n_new} tokens; ar_seconds: AR "
                "sampling at T=1"})
  return rows


def report(num_prompts: int, new_tokens: int) -> str:
  """The markdown report (tables and notes)."""
  import common  # noqa: PLC0415 - the launcher helpers (experiments/ on sys.path)
  bundle = pretrained.load_bundle()
  res = measure(bundle, num_prompts, new_tokens)
  t_ar = np.asarray(res["AR greedy"]["seconds"])
  t_ar_s = np.asarray(res["AR sampling (T=1)"]["seconds"])
  greedy_rows, apd_rows = [], []
  for name, r in res.items():
    base = t_ar if r["kind"] == "greedy" else t_ar_s
    speed = _fmt(base / np.asarray(r["seconds"]))
    if r["kind"] == "greedy":
      greedy_rows.append((name, _fmt(r["tpf"]), speed,
                          f"{new_tokens * len(t_ar) / np.sum(r['seconds']):.1f}",
                          "yes" if r["identical"] else "NO"))
    else:
      q = quality(bundle, r["tokens"])
      apd_rows.append((name, _fmt(r["tpf"]), speed, f"{q['gen_ppl']:.2f}",
                       f"{q['entropy']:.3f}"))
  meta = tdd.drafter_metadata()
  cfg = meta["train_config"]
  lines = [
      "# Masked-diffusion drafter and APD on SmolLM2 (CPU)", "",
      f"Machine: {common.machine()}.", "",
      "Command: `python experiments/bench_diffusion_drafter.py --out "
      "experiments/results/bench_diffusion_drafter_cpu.md" +
      ("" if (num_prompts, new_tokens) == (len(PROMPTS), 64) else
       f" --num_prompts {num_prompts} --new_tokens {new_tokens}") + "`", "",
      f"{num_prompts} open-ended chat prompts x {new_tokens} new tokens, batch 1, no EOS stop; "
      "compilation excluded, prefill included; +- is the standard error over prompts.", "",
      "## Greedy draft-and-verify", "",
      common.markdown_table(["decoder", "tokens / target forward", "speed-up vs AR (per prompt)",
                             "tokens/s", "identical to AR"], greedy_rows), "",
      "## APD (temperature 1)", "",
      common.markdown_table(["decoder", "tokens / verifier forward",
                             "speed-up vs AR sampling (per prompt)", "gen-PPL (SmolLM2)",
                             "unigram entropy (nats)"], apd_rows), "",
      "Gen-PPL: `partext_jax.evaluation.generative_perplexity` of the generated text alone (not "
      "conditioned on the prompt), judged by SmolLM2 -- the verifier itself, so it favours low R "
      "by construction; R = 0 would be exact SmolLM2 sampling after the first token "
      "(docs/algorithms.md#apd). Entropy: mean unigram entropy of each sample's tokens.",
      "", f"Drafter (`partext_jax/assets/diffusion_drafter_smollm2`, bfloat16): window "
      f"{cfg['context_len']} + {cfg['block_len']} tokens, draft vocabulary "
      f"{cfg['draft_vocab_size']}, d_model {cfg['d_model']} x {cfg['num_layers']} layers; "
      f"trained {meta.get('seconds_train', float('nan')):.0f} s wall on the shared CPU "
      f"({cfg['num_steps']} steps x {cfg['batch_size']} windows) after "
      f"{meta.get('seconds_data', float('nan')):.0f} s of data; held-out one-pass greedy "
      f"block: {meta.get('valid', {})}.",
      "", f"Peak RSS of the process: {_peak_rss_mb():.0f} MB.",
  ]
  return "\n".join(lines)


def main(argv):
  import common  # noqa: PLC0415
  common.no_arguments(argv)
  num, n_new = (2, 32) if FLAGS.quick else (FLAGS.num_prompts, FLAGS.new_tokens)
  common.write_report(report(num, n_new), FLAGS.out)


if __name__ == "__main__":
  from absl import flags  # noqa: PLC0415
  import common  # noqa: PLC0415
  FLAGS = flags.FLAGS
  flags.DEFINE_integer("new_tokens", 64, "Tokens per generation.")
  flags.DEFINE_integer("num_prompts", len(PROMPTS), f"Prompts (<= {len(PROMPTS)}).")
  flags.DEFINE_bool("quick", False, "2 prompts x 32 tokens.")
  flags.DEFINE_string("out", None, "Write the markdown report here too.")
  common.run(main)
