r"""Sample from a real diffusion LM (LLaDA / Dream) with any masked sampler.

    python experiments/dllm.py                       # an embedded tiny random LLaDA (runs here)
    python experiments/dllm.py --checkpoint=/ckpt/LLaDA-8B-Instruct --dtype=bfloat16 \
        --sampler=confidence --num_steps=128 --gen_length=128 --block_length=32 \
        --prompt="What is 7 * 8?"
    python experiments/dllm.py --checkpoint=/ckpt/dream-7b.gguf --sampler=block_cache \
        --cache=dual --hparams=rule=threshold,threshold=0.9 --block_length=32 --gen_length=256
    python experiments/dllm.py --checkpoint=... --mesh=1,4,2      # FSDP 4 x tensor parallel 2
    python experiments/dllm.py --memory_plan                      # LLaDA-8B bf16 on 8 devices

``--checkpoint`` is a GGUF file or an HF directory (``partext_jax.pretrained.dllm.load_dllm``);
without it a tiny random checkpoint (``--tiny_arch``) is written to a temporary directory.
``--sampler`` is any name in ``partext_jax.masked.SAMPLERS``; ``--num_steps``,
``--temperature``, ``--block_length``, ``--gen_length`` (the semi-AR blocks), ``--cache`` (the
Fast-dLLM caches of ``block_cache``) and ``--hparams=NAME=VALUE,...`` (any other keyword of the
constructor, values as Python literals) are its hyper-parameters. Every flag is checked against
the constructor (names and values) before anything is loaded. Prints each sample's text (ending
at the first EOS), the model calls (NFE), the calls the EOS block stop saved, and tokens/s.
"""

import ast
import inspect
import math
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import common
from partext_jax import masked, parallel
from partext_jax.models import llama
from partext_jax.pretrained import dllm

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint", None, "GGUF file or HF directory of a LLaDA / Dream model "
                    "(default: a tiny random one written to a temporary directory).")
flags.DEFINE_enum("tiny_arch", "llada", ["llada", "dream"], "Family of the default tiny model.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter / activation dtype.")
flags.DEFINE_enum("sampler", "confidence", sorted(masked.SAMPLERS), "Masked sampler.")
flags.DEFINE_string("prompt", "Write a haiku about the sea.", "User prompt.")
flags.DEFINE_bool("chat", True, "Wrap the prompt in the checkpoint's chat template.")
flags.DEFINE_string("system", None, "Optional system message (with --chat).")
flags.DEFINE_integer("gen_length", 32, "Tokens to generate (MASKs after the prompt).")
flags.DEFINE_integer("num_samples", 1, "Rows (samples of the same prompt).")
flags.DEFINE_integer("seed", 0, "Sampler seed.")
flags.DEFINE_integer("num_steps", None, "Steps (sampler hyper-parameter; default: gen_length "
                     "for samplers that need it).")
flags.DEFINE_float("temperature", None, "Token temperature (sampler hyper-parameter).")
flags.DEFINE_integer("block_length", None, "Semi-autoregressive block length (confidence, eb, "
                     "block_cache).")
flags.DEFINE_enum("cache", None, ["dual", "prefix", "exact"], "Fast-dLLM cache of block_cache.")
flags.DEFINE_list("hparams", [], "Further constructor keywords NAME=VALUE (Python literals), "
                  "e.g. rule=threshold,threshold=0.9 or strategy=cap,eta=0.01.")
flags.DEFINE_float("eos_penalty", 0.0, "Dream-Coder EOS penalty c >= 0 (0: off).")
flags.DEFINE_bool("stop_at_eos", True, "Block samplers: stop a row once a block is all EOS.")
flags.DEFINE_integer("timed_runs", 1, "Timed runs after the first (compiling) one.")
flags.DEFINE_list("mesh", None, "DATA,FSDP,TENSOR device mesh, e.g. 1,4,2 (default: one device).")
flags.DEFINE_bool("memory_plan", False, "Print the LLaDA-8B bf16 memory plan per device on the "
                  "(8,) and (4, 2) meshes and exit (no weights needed).")
flags.DEFINE_integer("plan_length", 1024, "Sequence length of the memory plan.")
flags.DEFINE_string("out", None, "With --memory_plan: also write the table to this file.")


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text   # a bare word: a string (rule=threshold)


def sampler_kwargs() -> dict:
  """The constructor keywords of the flags, checked by name and value (``app.UsageError``)."""
  build = masked.SAMPLERS[FLAGS.sampler]
  parameters = inspect.signature(build).parameters
  accepted = [p for p in parameters if p not in ("denoise_fn", "kv_denoise_fn")]
  kwargs = {}
  for item in FLAGS.hparams:
    name, sep, value = item.partition("=")
    if not sep:
      raise app.UsageError(f"--hparams entry {item!r} is not NAME=VALUE")
    kwargs[name.strip()] = _literal(value.strip())
  explicit = {"num_steps": FLAGS.num_steps, "temperature": FLAGS.temperature,
              "block_length": FLAGS.block_length, "cache": FLAGS.cache}
  kwargs.update({k: v for k, v in explicit.items() if v is not None})
  if "gen_length" in accepted:
    kwargs["gen_length"] = FLAGS.gen_length
  if FLAGS.stop_at_eos and "eos_ids" in accepted:
    kwargs["eos_ids"] = ()   # filled in with the checkpoint's ids after loading
  rule = kwargs.get("rule", parameters["rule"].default if "rule" in parameters else None)
  if "num_steps" in accepted and "num_steps" not in kwargs and rule in (None, "topk"):
    kwargs["num_steps"] = FLAGS.gen_length   # one token per step
  for name in kwargs:
    if name == "mask_id" or name not in accepted:
      raise app.UsageError(f"{name!r} is not a hyper-parameter of sampler {FLAGS.sampler!r} "
                           f"(it takes: {', '.join(a for a in accepted if a != 'mask_id')})")
  try:   # values, before any loading: the constructors check without calling the model
    build(lambda *args: None, mask_id=0, **kwargs)
  except (TypeError, ValueError) as e:
    raise app.UsageError(f"sampler {FLAGS.sampler!r}: {e}") from e
  return kwargs


def checked_flags():
  """Everything that can be checked before loading: the sampler, the mesh, the sizes."""
  if FLAGS.gen_length < 1 or FLAGS.num_samples < 1:
    raise app.UsageError("--gen_length and --num_samples must be >= 1")
  if FLAGS.checkpoint and not os.path.exists(FLAGS.checkpoint):
    raise app.UsageError(f"--checkpoint={FLAGS.checkpoint!r} does not exist")
  if FLAGS.eos_penalty < 0:
    raise app.UsageError(f"--eos_penalty={FLAGS.eos_penalty} must be >= 0")
  kwargs = sampler_kwargs()
  mesh = common.mesh_from_flag(FLAGS.mesh) if FLAGS.mesh else None
  return kwargs, mesh


def place_batch(x, mesh):
  """``x [B, L]`` on one device, or on ``mesh``: rows split over the batch axes when they divide
  ``B``, else replicated (e.g. one sample on an FSDP mesh)."""
  if mesh is None:
    return jnp.asarray(x)
  sizes = parallel.mesh_shape(mesh)
  if x.shape[0] % math.prod(sizes[a] for a in parallel.batch_axes(mesh)) == 0:
    return parallel.shard_batch(x, mesh)
  return parallel.put(x, parallel.replicated(mesh))


def print_memory_plan() -> None:
  spec = dllm.llada_8b("bfloat16")
  plans = dllm.plan_8_devices(spec, length=FLAGS.plan_length)
  params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(
      lambda: llama.init_params(jax.random.key(0), spec.config))))
  title = (f"# LLaDA-8B memory plan per device\n\nbfloat16, batch 1, length "
           f"{FLAGS.plan_length}, from `jax.eval_shape` ({params:,} parameters); generated by "
           f"`python experiments/dllm.py --memory_plan` ({common.machine()}).")
  note = ("\nA lower bound: XLA's temporaries are not modelled. With one row the batch cannot "
          "split over `fsdp`, so the KV cache and logits are replicated except for the KV heads "
          "on `tensor`.")
  common.write_report(dllm.format_memory_plan(plans, title=title) + "\n" + note, FLAGS.out)


def main(argv):
  common.no_arguments(argv)
  if FLAGS.memory_plan:
    print_memory_plan()
    return
  kwargs, mesh = checked_flags()
  path = FLAGS.checkpoint
  if path is None:
    path = dllm.write_tiny_checkpoint(os.path.join(tempfile.mkdtemp(), "tiny.gguf"),
                                      arch=FLAGS.tiny_arch, fmt="gguf")
    print(f"# tiny random {FLAGS.tiny_arch} checkpoint: {path}", file=sys.stderr)
  t0 = time.perf_counter()
  bundle = dllm.load_dllm(path, dtype=FLAGS.dtype, mesh=mesh, eos_penalty=FLAGS.eos_penalty)
  print(f"# loaded {bundle.spec.arch} ({bundle.spec.config.num_layers} layers, V="
        f"{bundle.spec.vocab_size}, mask id {bundle.mask_id}) in {time.perf_counter() - t0:.1f} s"
        + (f" on {parallel.describe(mesh)}" if mesh is not None else ""), file=sys.stderr)
  if "eos_ids" in kwargs:
    kwargs["eos_ids"] = bundle.spec.eos_ids
  model = bundle.kv_denoise_fn if FLAGS.sampler == "block_cache" else bundle.denoise_fn
  sampler = masked.SAMPLERS[FLAGS.sampler](model, mask_id=bundle.mask_id, **kwargs)
  ids = bundle.prompt_ids(FLAGS.prompt, chat=FLAGS.chat, system=FLAGS.system)
  x = bundle.x_init(ids, gen_length=FLAGS.gen_length, batch=FLAGS.num_samples)
  x = place_batch(x, mesh)
  key = jax.random.key(FLAGS.seed)
  start = time.perf_counter()
  tokens, info = jax.block_until_ready(sampler.sample(key, x))
  first = time.perf_counter() - start
  timing = common.time_call(lambda: sampler.sample(key, x), repeats=FLAGS.timed_runs) \
      if FLAGS.timed_runs > 0 else None
  tokens = np.asarray(parallel.to_host(tokens))
  for i, row in enumerate(tokens):
    print(f"===== sample {i} =====\n{bundle.text(row, prompt_length=len(ids))}", flush=True)
  nfe = int(np.asarray(info.nfe).sum())
  saved = int(np.asarray(info.nfe_saved).sum(0).max()) if hasattr(info, "nfe_saved") else 0
  generated = FLAGS.num_samples * FLAGS.gen_length
  seconds = timing.best if timing is not None else first
  print(f"[{FLAGS.sampler}: NFE {nfe} (model calls, batch level); EOS stop saved up to {saved} "
        f"calls per row; {generated} tokens in {seconds:.3f} s = {generated / seconds:.1f} "
        f"tokens/s{'' if timing is not None else ' incl. compilation'}; first call incl. "
        f"compilation {first:.2f} s]", flush=True)


if __name__ == "__main__":
  jax.config.config_with_absl()
  common.run(main)
