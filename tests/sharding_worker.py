"""Subprocess side of tests/test_sharding.py (the device count is fixed when JAX starts).

    python tests/sharding_worker.py meshes --out=report.json
        8 simulated CPU devices: for each mesh, a few train steps and every sampler against one
        device; per-device parameter bytes; bad-input errors. Writes a JSON report.
    python tests/sharding_worker.py multi --process_id=I --num_processes=2 --port=P --out=x.json
        one of two processes (4 CPU devices each) of a jax.distributed run on localhost; process 0
        writes the gathered samples.

Both modes build their models and inputs with the functions below, which the test imports too
(the single-process reference).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _setup(num_devices: int) -> None:
  # Before JAX initialises: the simulated device count, and cheaper (not different) compilation.
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count={num_devices} "
                             f"--xla_backend_optimization_level=0 "
                             f"--xla_llvm_disable_expensive_passes=true")
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# Meshes as (data, fsdp, tensor); names are the "data x model" shapes.
MESHES = {"1x8": (1, 4, 2), "2x4": (2, 1, 4), "8x1": (8, 1, 1)}
BATCH, LENGTH, NUM_STEPS, TRAIN_STEPS = 8, 16, 6, 3
PROMPTS = [[1, 5, 9], [3, 4], [7, 8, 9, 10], [11], [12, 13], [14], [15, 16, 17], [18, 19]]
MAX_NEW_TOKENS = 6


def denoiser_config():
  from partext_jax.models.denoiser import DenoiserConfig
  # 31 + 1 (MASK) = 32 embedding rows: every axis here divides by 2, 4 and 8 except the head's
  # 31 outputs (replicated under tensor parallelism).
  return DenoiserConfig(vocab_size=31, max_len=LENGTH, d_model=32, num_layers=1, num_heads=4,
                        mlp_dim=64)


def denoiser_params():
  import jax
  from partext_jax.models import denoiser
  return denoiser.init_params(jax.random.key(0), denoiser_config())


# The masked samplers are compared on an integer-valued test model. A float model's logits move
# by ~3e-6 when only the batch split changes (measured: one row alone vs inside a batch of 8 on
# ONE device), which flips confidence / entropy rankings at near-ties: exact token equality is
# a property of exact arithmetic, not of sharding. Here every product and partial sum is an
# integer below 2**24, exact in float32 in any summation order, so the sharded run must give
# the very same logits, and any token difference is a sharding (or randomness) bug.
class IntegerModel:
  """``logits = 2**-11 * head(down(relu(up(mix_positions(embed[tokens])))))``, all integers."""

  @staticmethod
  def init(seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    v, d, m = denoiser_config().vocab_size, 32, 64
    ints = lambda lo, hi, shape: rng.integers(lo, hi + 1, shape).astype(np.float32)
    return {"embed": ints(-2, 2, (v + 1, d)), "mix": ints(0, 1, (LENGTH, LENGTH)),
            "up": ints(-2, 2, (d, m)), "down": ints(-1, 1, (m, d)), "head": ints(-2, 2, (d, v))}

  @staticmethod
  def logical_axes():
    from jax.sharding import PartitionSpec as P
    return {"embed": P("vocab", "embed"), "mix": P("length", None), "up": P("embed", "mlp"),
            "down": P("mlp", "embed"), "head": P("embed", "vocab")}

  def __call__(self, params, tokens, t):
    import jax.numpy as jnp
    del t
    h = jnp.take(params["embed"], tokens, axis=0)                    # [B, L, D], |.| <= 2
    h = jnp.einsum("bld,lk->bkd", h, params["mix"])                  # <= 32
    u = jnp.maximum(h @ params["up"], 0.0)                           # <= 2048
    return (u @ params["down"] @ params["head"]) * (2.0 ** -11)      # ints <= 2**23, scaled

  def __hash__(self):
    return hash(IntegerModel)

  def __eq__(self, other):
    return isinstance(other, IntegerModel)


def samplers():
  """name -> ``denoise_fn -> MaskedSampler`` (one object each: a static jit argument)."""
  import functools
  from partext_jax.masked.adaptive import confidence
  from partext_jax.masked.adaptive import eb_sampler
  from partext_jax.masked.p2 import p2
  from partext_jax.masked.remdm import remdm
  from partext_jax.masked.blocks import semi_ar
  from partext_jax.masked.tau_leaping import tau_leaping
  mask = denoiser_config().mask_id
  return {
      "tau_leaping": functools.partial(tau_leaping, mask_id=mask, num_steps=NUM_STEPS),
      "confidence": functools.partial(confidence, mask_id=mask, num_steps=NUM_STEPS,
                                      temperature=1.0),
      "eb": functools.partial(eb_sampler, mask_id=mask, gamma=0.5, temperature=1.0),
      "semi_ar": functools.partial(semi_ar, confidence, block_length=LENGTH // 2, mask_id=mask,
                                   num_steps=NUM_STEPS, temperature=1.0),
      "remdm": functools.partial(remdm, mask_id=mask, num_steps=NUM_STEPS, strategy="cap",
                                 eta=0.05),
      "p2": functools.partial(p2, mask_id=mask, num_steps=NUM_STEPS),
  }


def x_init():
  import numpy as np
  x = np.full((BATCH, LENGTH), denoiser_config().mask_id, np.int32)
  x[:, :2] = np.arange(2 * BATCH).reshape(BATCH, 2) % 31  # A different 2-token prompt per row.
  return x


def llama_model():
  from partext_jax.models import llama
  return llama.LlamaLM(llama.LlamaConfig.tiny())


def processor():
  from partext_jax.ar import processors as lp
  return lp.build(temperature=1.0)


def reference_masked(name, params):
  """One-device ``sample`` of sampler ``name`` on :class:`IntegerModel` (tokens as numpy)."""
  import jax
  import numpy as np
  tokens, _ = samplers()[name](jax.tree_util.Partial(IntegerModel(), params)).sample(
      jax.random.key(1), jax.numpy.asarray(x_init()))
  return np.asarray(tokens)


def reference_generate(params):
  import jax
  import numpy as np
  from partext_jax.ar import sampling as ar
  tokens, _ = ar.generate(jax.random.key(3), llama_model(), params, PROMPTS,
                          max_new_tokens=MAX_NEW_TOKENS, processor=processor())
  return np.asarray(tokens)


SPEC_PROMPTS = [[1, 5, 9, 1, 5, 9, 1, 5], [3, 4, 3, 4, 3, 4], [7, 8, 9, 10, 7, 8], [11, 12, 11],
                [12, 13, 12, 13], [14, 14, 14], [15, 16, 17, 15, 16], [18, 19, 18, 19]]
SPEC_MESH = "1x8"  # Speculative decoding is checked on this mesh only (compile time).


def speculative(model, params):
  """Greedy prompt-lookup speculative decoding (``partext_jax.ar.speculative.decode``)."""
  import jax
  from partext_jax.ar.speculative import decode, drafters
  tokens, _ = decode.generate(jax.random.key(0), model, params, SPEC_PROMPTS,
                              drafter=drafters.PromptLookupDrafter(gamma=3), max_new_tokens=8)
  return tokens


def _train_setup():
  import optax
  from partext_jax.diffusion import MaskingSchedule
  return optax.adamw(1e-2), MaskingSchedule("linear")


def _train(mesh):
  """``TRAIN_STEPS`` steps of the real trainer step, sharded on ``mesh`` (or unsharded)."""
  import jax
  import numpy as np
  from partext_jax import parallel
  from partext_jax.training import mdm as trainer
  cfg = denoiser_config()
  optimizer, schedule = _train_setup()
  shardings = None if mesh is None else trainer.train_state_shardings(cfg, optimizer, mesh)
  state = trainer.init_train_state(jax.random.PRNGKey(0), cfg, optimizer, shardings=shardings)
  step = trainer.make_train_step(cfg, optimizer, schedule=schedule, antithetic=True,
                                 ema_decay=0.9, mesh=mesh)
  data = np.random.default_rng(0).integers(0, cfg.vocab_size, (TRAIN_STEPS, BATCH, LENGTH))
  losses = []
  for k in range(TRAIN_STEPS):
    batch = data[k].astype(np.int32)
    batch = jax.numpy.asarray(batch) if mesh is None else parallel.shard_batch(batch, mesh)
    state, metrics = step(state, batch, jax.random.fold_in(state.rng, k))
    losses.append(float(metrics["loss"]))
  return state, losses


def _max_diff(a, b) -> float:
  import jax
  import numpy as np
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _error(fn) -> str:
  try:
    fn()
  except ValueError as e:
    return str(e)
  return ""


def run_meshes() -> dict:
  import jax
  import numpy as np
  from partext_jax import parallel
  from partext_jax.models import denoiser, llama
  report = {"num_devices": jax.device_count(), "meshes": {}, "seconds": {}}
  t0 = time.perf_counter()
  cfg = denoiser_config()
  ref_state, ref_losses = _train(None)
  params = IntegerModel.init()
  axes = IntegerModel.logical_axes()
  ref_tokens = {name: reference_masked(name, params) for name in samplers()}
  dparams = denoiser_params()
  daxes = denoiser.param_logical_axes(cfg)
  probe = jax.numpy.asarray(x_init())
  ref_logits = np.asarray(
      jax.jit(denoiser.DenoiserApply(cfg))(dparams, probe, jax.numpy.ones(BATCH)))
  model = llama_model()
  lparams = model.init(jax.random.key(2))
  laxes = llama.param_logical_axes(model.config)
  ref_ar = reference_generate(lparams)
  ref_spec = np.asarray(speculative(model, lparams))
  report["seconds"]["reference"] = time.perf_counter() - t0

  for label, (d, f, t) in MESHES.items():
    t0 = time.perf_counter()
    mesh = parallel.make_mesh(data=d, fsdp=f, tensor=t)
    out = {"mesh": parallel.describe(mesh)}
    state, losses = _train(mesh)
    out["train_max_param_diff"] = _max_diff(state.params, ref_state.params)
    out["train_max_loss_diff"] = max(abs(a - b) for a, b in zip(losses, ref_losses))
    out["param_spec_example"] = str(state.params["blocks"]["mlp"]["gate"]["kernel"].sharding.spec)
    per_dev = parallel.bytes_per_device(state.params)
    out["param_bytes_total"] = int(
        sum(x.nbytes for x in jax.tree_util.tree_leaves(ref_state.params)))
    out["param_bytes_per_device"] = sorted(set(per_dev.values()))
    specs = parallel.param_specs(daxes, state.params, mesh)
    out["param_bytes_expected"] = parallel.expected_bytes_per_device(state.params, specs, mesh)
    apply = jax.jit(parallel.MeshDenoiser(denoiser.DenoiserApply(cfg), mesh))
    logits = apply(parallel.shard_params(dparams, daxes, mesh), parallel.shard_batch(probe, mesh),
                   jax.numpy.ones(BATCH))
    out["denoiser_logits_max_diff"] = float(np.max(np.abs(parallel.to_host(logits) - ref_logits)))
    sp = parallel.shard_params(params, axes, mesh)
    out["integer_model_spec"] = {k: str(v.sharding.spec) for k, v in sp.items()}
    out["tokens_equal"] = {}
    for name, build in samplers().items():
      tokens, _ = parallel.sample(build, jax.random.key(1), x_init(), params=sp,
                                  apply_fn=IntegerModel(), mesh=mesh)
      out["tokens_equal"][name] = bool(np.array_equal(parallel.to_host(tokens), ref_tokens[name]))
      out.setdefault("token_sharding", str(tokens.sharding.spec))
    lsp = parallel.shard_params(lparams, laxes, mesh)
    tokens, _ = parallel.generate(jax.random.key(3), model, lsp, PROMPTS, mesh=mesh,
                                  max_new_tokens=MAX_NEW_TOKENS, processor=processor())
    out["tokens_equal"]["ar_generate"] = bool(np.array_equal(parallel.to_host(tokens), ref_ar))
    if label == SPEC_MESH:  # The target model with its KV cache pinned by MeshLM.
      tokens = speculative(parallel.MeshLM(model, mesh), lsp)
      out["tokens_equal"]["speculative_greedy"] = bool(np.array_equal(np.asarray(tokens),
                                                                      ref_spec))
    cache = jax.jit(lambda: parallel.MeshLM(model, mesh).init_cache(BATCH, 32))()
    out["cache_spec"] = str(cache.k.sharding.spec)
    per_dev = parallel.bytes_per_device(lsp)
    out["llama_bytes_total"] = int(sum(x.nbytes for x in jax.tree_util.tree_leaves(lparams)))
    out["llama_bytes_per_device"] = sorted(set(per_dev.values()))
    report["meshes"][label] = out
    report["seconds"][label] = time.perf_counter() - t0

  mesh8 = parallel.make_mesh(data=8)
  report["errors"] = {
      "mesh_not_dividing": _error(lambda: parallel.make_mesh(data=3, fsdp=1, tensor=1)),
      "batch_not_divisible": _error(lambda: parallel.sample(
          samplers()["tau_leaping"], jax.random.key(1), x_init()[:6], params=params,
          apply_fn=IntegerModel(), mesh=mesh8)),
      "generate_batch_not_divisible": _error(lambda: parallel.generate(
          jax.random.key(3), model, lparams, PROMPTS[:3], mesh=mesh8, max_new_tokens=2)),
      "unknown_logical_axis": _error(lambda: parallel.shard_params(
          dparams, daxes, mesh8, rules=[r for r in parallel.DEFAULT_RULES if r[0] != "mlp"])),
      "train_batch_not_divisible": _error(lambda: parallel.shard_batch(
          np.zeros((4, LENGTH), np.int32), mesh8)),
  }
  return report


def run_multi(process_id: int, num_processes: int, port: int) -> dict:
  import jax
  from partext_jax import parallel
  from partext_jax.models import llama
  parallel.initialize_distributed(coordinator_address=f"localhost:{port}",
                                  num_processes=num_processes, process_id=process_id)
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  # Every process holds the full host values (same keys); put() keeps only its shards.
  params = IntegerModel.init()
  sp = parallel.shard_params(params, IntegerModel.logical_axes(), mesh)
  out = {"mesh": parallel.describe(mesh), "process_count": jax.process_count(),
         "local_devices": jax.local_device_count()}
  build = samplers()["tau_leaping"]
  tokens, _ = parallel.sample(build, jax.random.key(1), x_init(), params=sp,
                              apply_fn=IntegerModel(), mesh=mesh)
  out["tau_leaping"] = parallel.to_host(tokens).tolist()
  model = llama_model()
  lparams = model.init(jax.random.key(2))
  lsp = parallel.shard_params(lparams, llama.param_logical_axes(model.config), mesh)
  tokens, _ = parallel.generate(jax.random.key(3), model, lsp, PROMPTS, mesh=mesh,
                                max_new_tokens=MAX_NEW_TOKENS, processor=processor())
  out["ar_generate"] = parallel.to_host(tokens).tolist()
  jax.distributed.shutdown()
  return out


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("mode", choices=("meshes", "multi"))
  parser.add_argument("--out", required=True)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--port", type=int, default=0)
  args = parser.parse_args()
  if args.mode == "meshes":
    _setup(8)
    report = run_meshes()
  else:
    _setup(8 // args.num_processes)
    report = run_multi(args.process_id, args.num_processes, args.port)
  if args.mode == "meshes" or args.process_id == 0:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)


if __name__ == "__main__":
  main()
