r"""Benchmark: training and sampling throughput per device mesh, with a same-as-one-device check.

For each ``DATA,FSDP,TENSOR`` mesh: train-step tokens/s of the MDM denoiser, tau-leaping and
autoregressive (Llama-style, KV cache) sampling tokens/s, parameter bytes held per device, and
whether the results equal the 1-device run (max parameter difference after the timed train
steps; identical sampled tokens). Times are wall-clock medians after one compilation.

    python experiments/bench_sharding.py --devices=8 \
        --out=experiments/results/bench_sharding_cpu.md

``--devices=N`` simulates N CPU devices (``--xla_force_host_platform_device_count``): on a CPU
the "devices" share the same cores, so this shows correctness and overheads, not speed-up. On
an accelerator host leave ``--devices`` unset and list meshes that fit its device count.
"""

import os
import sys


def _preset_devices(argv):
  # The simulated device count must be set before JAX initialises (absl parses flags later).
  for arg in argv:
    if arg.startswith("--devices="):
      n = int(arg.split("=", 1)[1])
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                 f" --xla_force_host_platform_device_count={n}")


_preset_devices(sys.argv)

import functools  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import common  # noqa: E402
from partext_jax import parallel  # noqa: E402
from partext_jax.models import denoiser, llama  # noqa: E402
from partext_jax.ar import processors as lp  # noqa: E402
from partext_jax.masked.tau_leaping import tau_leaping  # noqa: E402
from partext_jax.schedules import MaskingSchedule  # noqa: E402
from partext_jax.training import mdm  # noqa: E402

flags.DEFINE_integer("devices", None, "Simulated CPU devices (set before JAX starts).")
flags.DEFINE_string("meshes", "1,1,1;8,1,1;1,8,1;1,1,8;2,2,2;2,1,4",
                    "DATA,FSDP,TENSOR meshes separated by ';' (a 1,1,1 reference is added).")
flags.DEFINE_integer("batch", 16, "Rows per train step / sampling call.")
flags.DEFINE_integer("seq_len", 128, "Tokens per row (denoiser).")
flags.DEFINE_integer("train_steps", 4, "Timed training steps.")
flags.DEFINE_integer("sample_steps", 16, "Tau-leaping steps.")
flags.DEFINE_integer("new_tokens", 32, "Autoregressive tokens per row.")
flags.DEFINE_integer("repeats", 2, "Timed repeats of each sampler (median).")
flags.DEFINE_string("out", None, "Also write the markdown table here.")
FLAGS = flags.FLAGS


def _parse_meshes(text):
  meshes = [tuple(int(v) for v in item.split(",")) for item in text.split(";") if item]
  if not meshes or any(len(m) != 3 for m in meshes):
    raise app.UsageError(f"--meshes needs ';'-separated DATA,FSDP,TENSOR triples, got {text!r}")
  return meshes


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def run_mesh(shape, *, cfg, lcfg, data, x_init, prompts):
  d, f, t = shape
  mesh = parallel.make_mesh(data=d, fsdp=f, tensor=t, devices=jax.devices()[:d * f * t])
  optimizer = optax.adamw(1e-3)
  state_sh = mdm.train_state_shardings(cfg, optimizer, mesh)
  state = mdm.init_train_state(jax.random.PRNGKey(0), cfg, optimizer, shardings=state_sh)
  step = mdm.make_train_step(cfg, optimizer, schedule=MaskingSchedule("linear"),
                             antithetic=True, ema_decay=0.99, mesh=mesh)
  batches = [parallel.shard_batch(b, mesh) for b in data]
  state, _ = step(state, batches[0], jax.random.PRNGKey(1))  # compile
  jax.block_until_ready(state)
  start = time.perf_counter()
  for k in range(1, len(batches)):
    state, _ = step(state, batches[k], jax.random.PRNGKey(1 + k))
  jax.block_until_ready(state)
  train_s = (time.perf_counter() - start) / (len(batches) - 1)
  params = jax.device_get(state.params)
  per_device = max(parallel.bytes_per_device(state.params).values())

  sp = parallel.shard_params(params, denoiser.param_logical_axes(cfg), mesh)
  build = functools.partial(tau_leaping, mask_id=cfg.mask_id, num_steps=FLAGS.sample_steps)
  sample = lambda: parallel.sample(build, jax.random.key(2), x_init, params=sp,  # noqa: E731
                                   apply_fn=denoiser.DenoiserApply(cfg), mesh=mesh)[0]
  timing = common.time_call(sample, repeats=FLAGS.repeats)
  mdm_s, mdm_tokens = timing.median, parallel.to_host(timing.output)

  model = llama.LlamaLM(lcfg)
  lparams = parallel.shard_params(model.init(jax.random.key(3)),
                                  llama.param_logical_axes(lcfg), mesh)
  gen = lambda: parallel.generate(jax.random.key(4), model, lparams, prompts,  # noqa: E731
                                  mesh=mesh, max_new_tokens=FLAGS.new_tokens,
                                  processor=lp.build(temperature=1.0))[0]
  timing = common.time_call(gen, repeats=FLAGS.repeats)
  ar_s, ar_tokens = timing.median, parallel.to_host(timing.output)
  return {"mesh": f"{d}x{f}x{t}", "train_s": train_s, "mdm_s": mdm_s, "ar_s": ar_s,
          "param_bytes": per_device, "params": params, "mdm_tokens": mdm_tokens,
          "ar_tokens": ar_tokens}


def main(argv):
  del argv
  meshes = _parse_meshes(FLAGS.meshes)
  if meshes[0] != (1, 1, 1):
    meshes.insert(0, (1, 1, 1))  # The reference every row is compared with.
  cfg = denoiser.DenoiserConfig(vocab_size=1023, max_len=FLAGS.seq_len, d_model=128,
                                num_layers=4, num_heads=8, mlp_dim=512)
  lcfg = llama.LlamaConfig.tiny(vocab_size=1024, hidden_size=128, intermediate_size=512,
                                num_layers=4, num_heads=8, num_kv_heads=4, head_dim=16,
                                context_length=256)
  rng = np.random.default_rng(0)
  b, seq = FLAGS.batch, FLAGS.seq_len
  data = [rng.integers(0, cfg.vocab_size, (b, seq)).astype(np.int32)
          for _ in range(FLAGS.train_steps + 1)]
  x_init = np.full((b, seq), cfg.mask_id, np.int32)
  prompts = [list(rng.integers(3, 1000, 1 + i % 7)) for i in range(b)]
  rows = []
  for shape in meshes:
    rows.append(run_mesh(shape, cfg=cfg, lcfg=lcfg, data=data, x_init=x_init, prompts=prompts))
    print(f"done {rows[-1]['mesh']}", flush=True)
  ref = rows[0]
  total = sum(x.nbytes for x in jax.tree_util.tree_leaves(ref["params"]))
  header = (f"Sharding benchmark: {common.machine()}; denoiser {total / 4 / 1e6:.2f} M params, "
            f"batch {b}, seq_len {seq}, {FLAGS.sample_steps} tau-leaping steps, "
            f"{FLAGS.new_tokens} AR tokens/row")
  table = []
  for r in rows:
    same = (bool(np.array_equal(r["mdm_tokens"], ref["mdm_tokens"])),
            bool(np.array_equal(r["ar_tokens"], ref["ar_tokens"])))
    table.append((r["mesh"], f"{b * seq / r['train_s']:,.0f}", f"{b * seq / r['mdm_s']:,.0f}",
                  f"{b * FLAGS.new_tokens / r['ar_s']:,.0f}", f"{r['param_bytes']:,}",
                  f"{r['param_bytes'] / total:.3f}", f"{_max_diff(r['params'], ref['params']):.1e}",
                  f"{'yes' if same[0] else 'NO'}, {'yes' if same[1] else 'NO'}"))
  common.write_report(header + "\n\n" + common.markdown_table(
      ["mesh (data x fsdp x tensor)", "train tokens/s", "tau-leaping tokens/s", "AR tokens/s",
       "param bytes / device", "of 1 device", "max param diff vs 1 device",
       "same tokens (tau-leaping, AR)"], table), FLAGS.out)

if __name__ == "__main__":
  common.run(main)
