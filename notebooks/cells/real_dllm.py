"""Cells of notebooks/real_dllm.ipynb (``python notebooks/generate.py real_dllm``).

Needs ``partext_jax.pretrained.dllm`` (LLaDA / Dream loaders); ``tests/test_notebooks.py``
skips executing it, naming that module, where the package does not have it yet.
"""

NEEDS_SMOLLM2 = False

CELLS = [
    ("md", """# A real diffusion LM (LLaDA / Dream), sharded over the runtime's devices

Loads a LLaDA or Dream checkpoint (a GGUF file or an HF directory) with
`partext_jax.pretrained.dllm.load_dllm`, places every tensor on a device mesh as it is read,
prints the memory each device holds, and samples with the Fast-dLLM dual block cache.

By default it writes and loads a **tiny random** checkpoint in the real format (2 layers, no
download, meaningless text): set `CHECKPOINT` below to a real one (e.g. `LLaDA-8B-Instruct/` in
bfloat16 on a TPU v4-8 or a GPU with >= 24 GB). `PARTEXT_NOTEBOOK_GEN_LENGTH` (environment,
default 64) shrinks the generation."""),
    ("code", """import os, tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np

from partext_jax import masked, parallel
from partext_jax.pretrained import dllm

CHECKPOINT = ""          # a GGUF file or HF directory of LLaDA / Dream; "" = a tiny random one
TINY_ARCH = "llada"      # "llada" or "dream" (the tiny checkpoint's family)
DTYPE = "float32" if BACKEND == "cpu" else "bfloat16"
GEN_LENGTH = int(os.environ.get("PARTEXT_NOTEBOOK_GEN_LENGTH", "64"))
BLOCK_LENGTH = min(32, GEN_LENGTH)

path = CHECKPOINT or dllm.write_tiny_checkpoint(
    os.path.join(tempfile.mkdtemp(), "tiny.gguf"), arch=TINY_ARCH, fmt="gguf")
print("checkpoint:", path)"""),
    ("md", """## A mesh over every device
FSDP over the devices, and tensor parallelism over pairs of them when the count is even (the KV
heads must split too). Parameters follow the logical-axis rules of `partext_jax.parallel`; one
device gives a trivial mesh and the same code runs."""),
    ("code", """n = jax.device_count()
tensor = 2 if n % 2 == 0 else 1
mesh = parallel.make_mesh(data=1, fsdp=n // tensor, tensor=tensor)
bundle = dllm.load_dllm(path, dtype=DTYPE, mesh=mesh)
spec = bundle.spec
print(f"{spec.arch}: {spec.config.num_layers} layers, vocabulary {spec.vocab_size}, MASK id "
      f"{bundle.mask_id}, on {parallel.describe(mesh)}")

held = parallel.bytes_per_device(bundle.params)
for device, size in held.items():
  stats = device.memory_stats() or {}
  in_use = f", {stats['bytes_in_use'] / 2**20:.1f} MiB in use" if "bytes_in_use" in stats else ""
  print(f"{device}: {size / 2**20:.2f} MiB of parameters{in_use}")
print(f"bytes per device (parameters): {sorted(held.values())}")
fig, ax = plt.subplots(figsize=(6, 2.5))
ax.bar([str(d.id) for d in held], [b / 2**20 for b in held.values()])
ax.set(xlabel="device", ylabel="MiB of parameters", title=f"parameters per device ({DTYPE})")
plt.show()"""),
    ("md", """## Sample with the dual block cache
Semi-autoregressive blocks of `BLOCK_LENGTH` tokens; at each block start a full pass refreshes
the key/value cache, then every step recomputes only the block over the cached prefix and suffix
and unmasks the tokens whose confidence passes the threshold."""),
    ("code", """sampler = masked.SAMPLERS["block_cache"](
    bundle.kv_denoise_fn, mask_id=bundle.mask_id, cache="dual", rule="threshold", threshold=0.9,
    block_length=BLOCK_LENGTH, gen_length=GEN_LENGTH)
ids = bundle.prompt_ids("Write a haiku about the sea.")
x = parallel.put(bundle.x_init(ids, gen_length=GEN_LENGTH), parallel.replicated(mesh))
tokens, info = sampler.sample(jax.random.key(0), x)
tokens = np.asarray(parallel.to_host(tokens))
print(f"sample 0 ({int(np.asarray(info.nfe).sum())} model calls for {GEN_LENGTH} tokens):")
print(bundle.text(tokens[0], prompt_length=len(ids)))"""),
    ("md", """## What LLaDA-8B needs per device
The same sharding rules applied to the published 8B shapes with `jax.eval_shape` (no weights,
no FLOPs): parameters, KV cache and logits per device on 8 devices."""),
    ("code", """plans = dllm.plan_8_devices(dllm.llada_8b("bfloat16"), length=1024)
print(dllm.format_memory_plan(plans, title="LLaDA-8B, bfloat16, batch 1, 1024 tokens"))"""),
]
