r"""AR decode benchmark on CPU: our JAX f32 sampler vs transformers vs the bandwidth floor.

    python experiments/bench_ar.py --out /tmp/bench_ar.md

Method. Decode cost per token = ``(t(N) - t(1)) / (N - 1)`` where ``t(n)`` is the best of
``--reps`` wall times of a full greedy ``generate`` of ``n`` tokens (prefill included in both, so
it cancels; compilation excluded by a warm-up call). transformers is timed the same way with
``model.generate`` (greedy, no EOS stop). The floor is ``bytes of weights read per token /
bandwidth``, the bandwidth being that of a large ``numpy`` copy (read + write bytes / time); every
weight is read once per step (the tied embedding as the LM head), so the floor is the same at
batch 1 and 8 while the batch amortises it.
"""

import os
import platform
import resource
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.models import llama
from partext_jax import pretrained
from partext_jax.ar import sampling as ar

_GGUF = flags.DEFINE_string("gguf", None, "GGUF file (default: the embedded SmolLM2-135M).")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to time.")
_NEW = flags.DEFINE_integer("new_tokens", 33, "Tokens per timed generation (>= 2).")
_REPS = flags.DEFINE_integer("reps", 3, "Timed repetitions (the best is kept).")
_HF = flags.DEFINE_bool("hf", True, "Also time transformers (skipped if not installed).")
_HF_THREADS = flags.DEFINE_list(
    "hf_threads", ["1"], "torch intra-op thread counts to time (torch's OpenMP threads "
    "spin-wait badly when the cores are shared, so 1 thread can beat 2).")
_BF16_TOKENS = flags.DEFINE_integer("bf16_tokens", 6, "Tokens for the bf16 run (0 = skip).")
_OUT = flags.DEFINE_string("out", None, "Write the markdown table here too.")

PROMPT = "Write a short paragraph about the history of the printing press."


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_bandwidth(nbytes: int = 512 << 20, reps: int = 5) -> float:
  """Bytes/s of ``np.copyto`` on a large float32 array (read + write counted)."""
  src = np.ones(nbytes // 4, np.float32)
  dst = np.empty_like(src)
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    np.copyto(dst, src)
    best = min(best, time.perf_counter() - t)
  return 2 * nbytes / best


def _best(fn, reps):
  fn()  # warm-up / compilation
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def time_jax(model, params, prompt_ids, batch, n, reps):
  prompts = [prompt_ids] * batch

  def run(k):
    return lambda: jax.block_until_ready(ar.generate(
        jax.random.key(0), model, params, prompts, max_new_tokens=k, eos_id=None)[0])

  t1, tn = _best(run(1), reps), _best(run(n), reps)
  return (tn - t1) / (n - 1), t1


def time_hf(hf_model, prompt_ids, batch, n, reps):
  import torch  # pylint: disable=import-outside-toplevel
  x = torch.tensor([prompt_ids] * batch)

  def run(k):
    def f():
      with torch.no_grad():
        hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=k,
                          min_new_tokens=None, do_sample=False, eos_token_id=None, pad_token_id=0)
    return f

  t1, tn = _best(run(1), reps), _best(run(n), reps)
  return (tn - t1) / (n - 1), t1


def main(argv):
  del argv
  n, reps = _NEW.value, _REPS.value
  if n < 2:
    raise app.UsageError(f"--new_tokens={n} must be >= 2")
  path = _GGUF.value or pretrained.smollm2_path()
  bundle = pretrained.load_bundle(path)
  model, params, tok = bundle
  config = model.config
  prompt_ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": PROMPT}]))
  weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  bw = measure_bandwidth()
  floor_ms = weight_bytes / bw * 1e3
  cache_len = ar.bucket_length(len(prompt_ids)) + n

  rows = []
  for b in (int(s) for s in _BATCHES.value):
    ms, prefill = time_jax(model, params, prompt_ids, b, n, reps)
    kv = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(
        jax.eval_shape(lambda b=b: llama.init_cache(config, b, cache_len))))
    rows.append(("partext-jax f32", b, ms * 1e3, b / ms, prefill * 1e3, kv))
    print(f"jax f32 B={b}: {ms * 1e3:.2f} ms/token", file=sys.stderr, flush=True)
  jax_peak = _peak_rss_mb()

  if _BF16_TOKENS.value > 1:
    cfg16, params16 = config.replace(dtype="bfloat16"), jax.tree.map(
        lambda x: x.astype(jnp.bfloat16), params)
    ms, prefill = time_jax(llama.LlamaLM(cfg16), params16, prompt_ids, 1, _BF16_TOKENS.value, 2)
    rows.append(("partext-jax bf16", 1, ms * 1e3, 1 / ms, prefill * 1e3, None))
    del params16

  hf_note = ""
  if _HF.value:
    try:
      import torch  # pylint: disable=import-outside-toplevel
      import transformers  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      hf_note = f"transformers not installed ({e}): its rows are skipped."
      print(hf_note, file=sys.stderr)
    else:
      hf = transformers.AutoModelForCausalLM.from_pretrained(
          os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
      for threads in (int(s) for s in _HF_THREADS.value):
        torch.set_num_threads(threads)
        for b in (int(s) for s in _BATCHES.value):
          ms, prefill = time_hf(hf, prompt_ids, b, n, reps)
          rows.append((f"transformers {transformers.__version__} f32, {threads} thread(s)", b,
                       ms * 1e3, b / ms, prefill * 1e3, None))
          print(f"hf f32 {threads} threads B={b}: {ms * 1e3:.2f} ms/token", file=sys.stderr,
                flush=True)
  for b in (int(s) for s in _BATCHES.value):
    rows.append(("bandwidth floor (f32 weights)", b, floor_ms, b / floor_ms * 1e3, None, None))

  cpu = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  lines = [
      f"# AR decode benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
      "",
      f"Machine: {cpu}, {os.cpu_count()} cores, {platform.python_version()}, jax {jax.__version__}"
      f". Model: {os.path.basename(path)} ({weight_bytes / 1e6:.0f} MB of f32 weights). Prompt "
      f"{len(prompt_ids)} tokens (bucket {ar.bucket_length(len(prompt_ids))}), {n} new tokens, "
      f"best of {reps}. Measured copy bandwidth {bw / 1e9:.1f} GB/s. Load average at the end "
      f"(1/5/15 min): {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (other jobs share the "
      "cores: every figure is a shared-machine figure).",
      "",
      "| implementation | batch | decode ms/token (step) | tokens/s | prefill+1 token ms | "
      "KV-cache bytes |",
      "|---|---|---|---|---|---|",
  ]
  for name, b, ms, tps, prefill, kv in rows:
    lines.append(f"| {name} | {b} | {ms:.2f} | {tps:.1f} | "
                 f"{'' if prefill is None else f'{prefill:.0f}'} | "
                 f"{'' if kv is None else f'{kv / 1e6:.2f} MB'} |")
  lines += ["", f"Peak RSS after the JAX runs: {jax_peak:.0f} MB; at the end (transformers model "
            f"loaded too): {_peak_rss_mb():.0f} MB."]
  if _BF16_TOKENS.value > 1:
    lines.append(f"bf16 row: bf16 weights and activations, {_BF16_TOKENS.value} tokens, best of 2 "
                 "(XLA:CPU bf16 matmuls are slow on AVX2).")
  if hf_note:
    lines.append(hf_note)
  table = "\n".join(lines) + "\n"
  print(table)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(table)


if __name__ == "__main__":
  app.run(main)
