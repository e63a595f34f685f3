"""Cells of notebooks/kernels.ipynb (``python notebooks/generate.py kernels``)."""

NEEDS_SMOLLM2 = False

CELLS = [
    ("md", """# Pallas kernels against their references

`partext_jax.kernels` holds two attention kernels that read only the valid part of a KV cache:
**tree attention** (draft-tree nodes over a ragged prefix plus their ancestors: speculative
verification) and **block attention** (a block of queries over a prefix range, itself and an
optional suffix range: the Fast-dLLM prefix / dual caches). Each has a dense jnp reference that
builds the full mask. Here both are checked against their references and timed.

On a GPU or TPU runtime the kernels are compiled (Triton / Mosaic); on a CPU they run in the Pallas
interpreter, which checks the same code path but says nothing about speed. Environment variable:
`PARTEXT_NOTEBOOK_CACHE_LEN` (cache slots, default 4096 on an accelerator, 512 on a CPU)."""),
    ("code", """import functools, os, time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from partext_jax.ar.speculative import trees
from partext_jax.ar.speculative.drafters import medusa
from partext_jax.kernels import block_attention as ba
from partext_jax.kernels import tree_attention as ta

ON_ACCELERATOR = BACKEND in ("gpu", "tpu")
INTERPRET = not ON_ACCELERATOR
S = int(os.environ.get("PARTEXT_NOTEBOOK_CACHE_LEN", "4096" if ON_ACCELERATOR else "512"))
B, H, G, D = 4, 8, 2, 64          # rows, query heads, KV heads (grouped-query), head dim
DTYPE = jnp.bfloat16 if ON_ACCELERATOR else jnp.float32
print(f"{BACKEND}: cache {S} slots, {DTYPE.__name__}, "
      f"{'compiled' if ON_ACCELERATOR else 'Pallas interpret mode (not a speed measurement)'}")


def best_ms(fn, *args, repeats=3):
  jax.block_until_ready(fn(*args))                       # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * min(times)


def rand(key, shape):
  return jax.random.normal(key, shape, jnp.float32).astype(DTYPE)


def compare(name, kernel, reference, args):
  \"\"\"Max |kernel - reference| over the outputs and (kernel ms, reference ms); asserts agreement
  to the dtype's precision.\"\"\"
  kernel, reference = jax.jit(kernel), jax.jit(reference)
  err = float(jnp.max(jnp.abs(kernel(*args).astype(jnp.float32)
                              - reference(*args).astype(jnp.float32))))
  ms = best_ms(kernel, *args), best_ms(reference, *args)
  print(f"{name}: max |kernel - reference| = {err:.2e}; kernel {ms[0]:.2f} ms, "
        f"reference {ms[1]:.2f} ms")
  assert err < (3e-2 if DTYPE == jnp.bfloat16 else 1e-4), (name, err)
  return ms"""),
    ("md", """## Tree attention
The tree is Medusa's default 16-node choice tree; each node attends to the row's valid prefix
(rows have different prompt starts and lengths: left padding) and to its ancestors."""),
    ("code", """spec = trees.TreeSpec.from_choices(medusa.DEFAULT_CHOICES)
T = len(spec.parent)
anc = jnp.broadcast_to(trees.ancestor_mask(jnp.asarray(spec.parent)), (B, T, T))
keys = jax.random.split(jax.random.key(0), 5)
q = rand(keys[0], (B, T, H, D))
k_cache, v_cache = rand(keys[1], (B, G, S, D)), rand(keys[2], (B, G, S, D))   # heads-major
k_tree, v_tree = rand(keys[3], (B, T, G, D)), rand(keys[4], (B, T, G, D))
start = jnp.array([0, 5, S // 4, 17])[:B]               # first valid slot per row
prefix_len = jnp.array([S - T, S // 2, S // 3, 1])[:B]   # valid slots per row

tree_ms = compare("tree attention", functools.partial(ta.tree_attention, interpret=INTERPRET),
                  ta.tree_attention_reference,
                  (q, k_cache, v_cache, k_tree, v_tree, anc, start, prefix_len))"""),
    ("md", """## Block attention (Fast-dLLM dual cache)
A block of 32 queries sees the prompt (the prefix range), itself (bidirectionally) and the
positions after the block (the suffix range) from the cache."""),
    ("code", """Q = 32
keys = jax.random.split(jax.random.key(1), 3)
qb = rand(keys[0], (B, Q, H, D))
k_block, v_block = rand(keys[1], (B, Q, G, D)), rand(keys[2], (B, Q, G, D))
p_start, p_len = jnp.zeros((B,), jnp.int32), jnp.full((B,), S // 2, jnp.int32)
s_start, s_len = jnp.full((B,), S // 2 + Q, jnp.int32), jnp.full((B,), S // 4, jnp.int32)

block_ms = compare("block attention", functools.partial(ba.block_attention, interpret=INTERPRET),
                   ba.block_attention_reference,
                   (qb, k_cache, v_cache, k_block, v_block, p_start, p_len, s_start, s_len))"""),
    ("code", """fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.5))
ax0.imshow(np.asarray(anc[0]), cmap="Greys", interpolation="nearest")
ax0.set(title=f"tree mask: node i sees node j ({T} nodes)", xlabel="key node j",
        ylabel="query node i")
x = np.arange(2)
ax1.bar(x - 0.2, [tree_ms[0], block_ms[0]], 0.4, label="Pallas kernel")
ax1.bar(x + 0.2, [tree_ms[1], block_ms[1]], 0.4, label="jnp reference (dense mask)")
ax1.set_xticks(x, ["tree attention", "block attention"])
ax1.set(ylabel="ms per call (best of 3)", title=f"{BACKEND}, cache {S} slots"
        + ("" if ON_ACCELERATOR else "\\n(interpret mode: not a speed measurement)"))
ax1.legend()
plt.tight_layout()
plt.show()"""),
]
