r"""Pallas tree / block attention vs XLA dense-masked attention over the whole cache.

    python experiments/bench_kernels.py                      # realistic shapes (accelerator)
    python experiments/bench_kernels.py --smoke --out experiments/results/bench_kernels_cpu.md

What is compared. "XLA dense": the block is written into the cache and every query scores all
``max_len`` slots under a ``bool[B, T, max_len]`` mask
(``partext_jax.models.attention.xla_attention``). "XLA chunked" (tree rows): what
``partext_jax.models.llama`` runs with ``attention_impl="xla"``,
``partext_jax.models.attention.cache_attention``, an online softmax over the chunks of the cache
that the mask can see. The kernels read only the valid prefix (``tree_attention``: prefix +
ancestor mask; ``block_attention``: Fast-dLLM dual cache, prefix + block + suffix) and never
build the mask. Caches are heads-major ``[B, G, S, D]``.

Metric. Best of ``--reps`` wall times of a jitted call (compilation excluded by a warm-up call).
Effective bandwidth = the bytes the attention must read at least (valid K/V cache rows, q, the
block's K/V) plus the output written, divided by the time; the same numerator for both paths,
so the ratio of bandwidths is the speedup and the kernel's figure can be compared with the
device's peak (H100 SXM: ~3.35 TB/s).

Shapes (defaults): SmolLM2-135M attention (9 query heads, 3 KV heads, head_dim 64), batch 1 and
4, cache ``max_len = 8192``, valid prefix ``--prefixes`` (512, 1024, 2048, 4096), tree 16 / 64
nodes, block 32 (dual cache: the sequence is twice the prefix, the suffix the rest of it).
``--smoke`` runs tiny shapes in Pallas interpret mode (the CPU path): a check that the script
runs, not a measurement.
"""

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import common
from partext_jax.ar.speculative import trees
from partext_jax.kernels import block_attention as ba
from partext_jax.kernels import tree_attention as ta
from partext_jax.models import attention as attention_lib

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes, interpret mode (CPU smoke test).")
_REPS = flags.DEFINE_integer("reps", 10, "Timed repetitions (the best is kept).")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "K/V/q dtype.")
_SPLITS = flags.DEFINE_integer("num_splits", 0, "Kernel split-K programs (0 = auto: enough "
                               "programs for ~132 SMs).")
_PREFIXES = flags.DEFINE_list("prefixes", ["512", "1024", "2048", "4096"],
                              "Valid cache prefixes to time.")
_OUT = flags.DEFINE_string("out", None, "Also write the markdown table here.")


def _best_time(fn, *args, reps):
  return common.time_call(lambda: fn(*args), repeats=reps).best


def _inputs(b, t, h, g, d, s, dtype, seed=0):
  rng = np.random.default_rng(seed)
  mk = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
  return mk(b, t, h, d), mk(b, g, s, d), mk(b, g, s, d), mk(b, t, g, d), mk(b, t, g, d)


def _block_sizes(b, g, rows, max_len):
  """Default tiles; split-K so that the grid has about 132 programs (H100 SMs)."""
  bs = ta.BlockSizes(block_k=min(128, max_len)).resolve(rows, max_len)
  splits = _SPLITS.value or max(1, min(32, 132 // (b * g * -(-rows // bs.block_q))))
  return ta.BlockSizes(block_q=bs.block_q, block_k=bs.block_k, num_splits=splits)


def bench_tree(b, h, g, d, max_len, prefix, t, dtype, interpret, reps):
  q, kc, vc, kt, vt = _inputs(b, t, h, g, d, max_len, dtype)
  mask = trees.ancestor_mask(np.concatenate([[-1], np.arange(t - 1) // 2]))  # a binary tree
  mask = jnp.broadcast_to(mask, (b, t, t))
  start, plen = jnp.zeros(b, jnp.int32), jnp.full((b,), prefix, jnp.int32)
  bs = _block_sizes(b, g, t * h // g, max_len)
  kernel = jax.jit(lambda *a: ta.tree_attention(*a, block_sizes=bs, interpret=interpret))
  # XLA paths: the tree written at slots [prefix, prefix + t) of the cache, dense mask.
  slots = prefix + jnp.arange(t)
  kc_full = kc.at[:, :, slots].set(kt.transpose(0, 2, 1, 3))
  vc_full = vc.at[:, :, slots].set(vt.transpose(0, 2, 1, 3))
  dense = attention_lib.CacheBlockMask(start, plen, mask, jnp.full((b,), prefix)).to_dense(
      max_len)
  xla = jax.jit(attention_lib.xla_attention)

  @jax.jit
  def chunked(q, k, v, dense):
    cache = attention_lib.KVCache(k[None], v[None])
    return attention_lib.cache_attention(q, cache, 0, dense,
                                         attention_lib.visible_span(dense, max_len))[0]

  out_k = kernel(q, kc, vc, kt, vt, mask, start, plen)
  out_x = xla(q, kc_full, vc_full, dense)
  err = float(jnp.max(jnp.abs(out_k.astype(jnp.float32) - out_x.astype(jnp.float32))))
  err = max(err, float(jnp.max(jnp.abs(chunked(q, kc_full, vc_full, dense).astype(jnp.float32)
                                       - out_x.astype(jnp.float32)))))
  t_k = _best_time(kernel, q, kc, vc, kt, vt, mask, start, plen, reps=reps)
  t_x = _best_time(xla, q, kc_full, vc_full, dense, reps=reps)
  t_c = _best_time(chunked, q, kc_full, vc_full, dense, reps=reps)
  nbytes = (2 * b * (prefix + t) * g * d + 2 * b * t * h * d) * jnp.dtype(dtype).itemsize
  return dict(kernel="tree", shape=f"B={b} T={t} prefix={prefix} S={max_len}", t_k=t_k,
              t_x=t_x, t_c=t_c, nbytes=nbytes, err=err)


def bench_block(b, h, g, d, max_len, prefix, q_len, seq_len, dtype, interpret, reps):
  q, kc, vc, kb, vb = _inputs(b, q_len, h, g, d, max_len, dtype, seed=1)
  suffix_start, suffix_len = prefix + q_len, seq_len - prefix - q_len
  bs = _block_sizes(b, g, q_len * h // g, max_len)
  kernel = jax.jit(lambda *a: ba.block_attention(*a, block_sizes=bs, interpret=interpret))
  slots = prefix + jnp.arange(q_len)
  kc_full = kc.at[:, :, slots].set(kb.transpose(0, 2, 1, 3))
  vc_full = vc.at[:, :, slots].set(vb.transpose(0, 2, 1, 3))
  s = jnp.arange(max_len)
  dense = jnp.broadcast_to((s < seq_len)[None, None], (b, q_len, max_len))
  xla = jax.jit(attention_lib.xla_attention)
  args = (q, kc, vc, kb, vb, jnp.zeros(b, jnp.int32), jnp.full((b,), prefix),
          jnp.full((b,), suffix_start), jnp.full((b,), suffix_len))
  out_k = kernel(*args)
  out_x = xla(q, kc_full, vc_full, dense)
  err = float(jnp.max(jnp.abs(out_k.astype(jnp.float32) - out_x.astype(jnp.float32))))
  t_k = _best_time(kernel, *args, reps=reps)
  t_x = _best_time(xla, q, kc_full, vc_full, dense, reps=reps)
  nbytes = (2 * b * seq_len * g * d + 2 * b * q_len * h * d) * jnp.dtype(dtype).itemsize
  return dict(kernel="block (dual cache)", shape=f"B={b} Q={q_len} seq={seq_len} "
              f"prefix={prefix} S={max_len}", t_k=t_k, t_x=t_x, t_c=None, nbytes=nbytes,
              err=err)


def main(argv):
  del argv
  smoke = _SMOKE.value
  interpret = jax.default_backend() == "cpu"
  dtype = jnp.dtype(_DTYPE.value)
  reps = 2 if smoke else _REPS.value
  h, g, d = (4, 2, 32) if smoke else (9, 3, 64)
  rows = []
  if smoke:
    rows.append(bench_tree(1, h, g, d, 256, 200, 8, dtype, interpret, reps))
    rows.append(bench_block(1, h, g, d, 256, 64, 16, 200, dtype, interpret, reps))
  else:
    for b in (1, 4):
      for prefix in (int(p) for p in _PREFIXES.value):
        for t in (16, 64):
          rows.append(bench_tree(b, h, g, d, 8192, prefix, t, dtype, interpret, reps))
        rows.append(bench_block(b, h, g, d, 8192, prefix, 32, 2 * prefix, dtype, interpret,
                                reps))
  header = (f"Command: `python experiments/bench_kernels.py{' --smoke' if smoke else ''} "
            f"--dtype={dtype.name} --prefixes={','.join(_PREFIXES.value)}`  \nMachine: "
            f"{common.machine()}; Pallas "
            f"{'interpret mode' if interpret else 'compiled'}  \nHeads: H={h}, G={g}, D={d}; "
            f"best of {reps}.")
  table = [(r["kernel"], r["shape"], f"{1e3 * r['t_k']:.3f}", f"{1e3 * r['t_x']:.3f}",
            "" if r["t_c"] is None else f"{1e3 * r['t_c']:.3f}",
            f"{r['t_x'] / r['t_k']:.2f}", f"{r['nbytes'] / r['t_k'] / 1e9:.1f}",
            f"{r['nbytes'] / r['t_x'] / 1e9:.1f}", f"{r['err']:.2e}") for r in rows]
  common.write_report(header + "\n\n" + common.markdown_table(
      ["kernel", "shape", "Pallas ms", "XLA dense ms", "XLA chunked ms", "speedup vs dense",
       "Pallas GB/s", "XLA dense GB/s", "max abs diff"], table), _OUT.value)

if __name__ == "__main__":
  common.run(main)
