"""Pallas tree attention and block cached attention against their dense f32 references.

Written once, run in interpret mode on CPU (CI) and compiled on an accelerator: the test classes
read ``INTERPRET`` (default: interpret only on the CPU backend; ``PARTEXT_PALLAS_INTERPRET=0|1``
forces it). Several cases share shapes on purpose: a shape compiles once per session.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.ar.speculative import trees
from partext_jax.kernels import _common
from partext_jax.kernels import block_attention as ba
from partext_jax.kernels import tree_attention as ta
from partext_jax.models import attention as attention_lib
from partext_jax.models import llama

# The dense references, jitted: eager they dispatch (and compile) op by op, ~5x slower here.
_tree_ref = jax.jit(ta.tree_attention_reference)
_block_ref = jax.jit(ba.block_attention_reference, static_argnames="causal_block_size")

_ENV = os.environ.get("PARTEXT_PALLAS_INTERPRET")
INTERPRET = jax.default_backend() == "cpu" if _ENV is None else _ENV == "1"

# Per-dtype tolerances. f32: kernel and reference differ only by summation order (~1e-7; 1e-5
# leaves room for TF32-free accelerator dots). bf16: the kernel feeds bf16 probabilities to the
# P.V matmul (relative rounding 2^-8) and rounds the output to bf16 (2^-8 relative); with |v|
# up to ~4 that is <= 4 * 2 * 2^-8 ~ 0.03.
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 4e-2}


def _rand(seed, shape, dtype):
  # numpy, not jax.random: an eager jax.random call compiles once per shape (~0.3 s each).
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32), dtype)


def _parents(kind, t, seed=0):
  """Parent arrays: chain, star (all children of node 0), random topological tree."""
  if kind == "chain":
    return np.arange(t) - 1
  if kind == "star":
    return np.concatenate([[-1], np.zeros(t - 1, int)])
  rng = np.random.default_rng(seed)
  return np.array([-1] + [int(rng.integers(0, i)) for i in range(1, t)])


def _tree_inputs(b, t, h, g, d, s, dtype, seed=0):
  """``q [B, T, H, D]``, heads-major caches ``[B, G, S, D]``, block keys/values ``[B, T, G, D]``."""
  shapes = [(b, t, h, d), (b, g, s, d), (b, g, s, d), (b, t, g, d), (b, t, g, d)]
  return tuple(_rand((seed, i), sh, dtype) for i, sh in enumerate(shapes))


def _assert_same_grads(loss, kernel, reference, args):
  """``d loss(fn, *args) / d args[:5]`` (q, k, v of cache and block) agree for kernel and
  reference."""
  grad = lambda fn: jax.jit(jax.grad(lambda *a: loss(fn, *a), argnums=(0, 1, 2, 3, 4)))(*args)
  for gk, gr in zip(grad(kernel), grad(reference)):
    np.testing.assert_allclose(gk, gr, atol=1e-5, rtol=1e-5)


def _path_mask(parents):
  """Brute-force ancestor mask by walking parent pointers."""
  t = len(parents)
  m = np.zeros((t, t), bool)
  for i in range(t):
    j = i
    while j != -1:
      m[i, j] = True
      j = parents[j]
  return m


class TestTreeAttention:
  INTERPRET = INTERPRET

  # (id, T, H, G, D, S, block_sizes, dtype). Three rows per case: chain / star / random tree,
  # prefix lengths ragged per row, including 0, a left-padded start and a range clipped at S.
  CASES = [
      ("mha-f32-default", 7, 2, 2, 16, 64, None, jnp.float32),
      ("gqa3-f32-q8k32-split3", 9, 6, 2, 32, 128, ta.BlockSizes(8, 32, 3), jnp.float32),
      ("mqa-bf16-q16k16", 16, 4, 1, 16, 64, ta.BlockSizes(16, 16), jnp.bfloat16),
  ]

  @pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
  def test_matches_reference(self, case):
    _, t, h, g, d, s, bs, dtype = case
    q, kc, vc, kt, vt = _tree_inputs(3, t, h, g, d, s, dtype)
    parents = np.stack([_parents(k, t) for k in ("chain", "star", "random")])
    mask = trees.ancestor_mask(parents)
    start = jnp.array([0, 5, s - 20])
    prefix_len = jnp.array([s // 2 + 3, 0, 40])       # row 2 runs past S: clipped to 20 slots
    out = ta.tree_attention(q, kc, vc, kt, vt, mask, start, prefix_len, block_sizes=bs,
                            interpret=self.INTERPRET)
    ref = _tree_ref(q, kc, vc, kt, vt, mask, start, prefix_len)
    assert out.shape == q.shape and out.dtype == q.dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=TOL[dtype], rtol=0)

  def test_no_keys_gives_zeros_and_full_prefix(self):
    t, h, g, d, s = 7, 2, 2, 16, 64                     # shapes of the first case: no recompile
    q, kc, vc, kt, vt = _tree_inputs(3, t, h, g, d, s, jnp.float32, seed=1)
    mask = jnp.zeros((3, t, t), bool).at[1].set(jnp.eye(t, dtype=bool))
    start, prefix_len = jnp.array([0, 0, 0]), jnp.array([0, 0, s])
    out = ta.tree_attention(q, kc, vc, kt, vt, mask, start, prefix_len, interpret=self.INTERPRET)
    np.testing.assert_array_equal(out[0], 0.0)          # nothing visible: zeros, not NaN
    np.testing.assert_allclose(out[1], np.repeat(vt[1], h // g, axis=1), atol=1e-6)  # self only
    ref = _tree_ref(q, kc, vc, kt, vt, mask, start, prefix_len)
    np.testing.assert_allclose(out, ref, atol=TOL[jnp.float32], rtol=0)
    # New prefix lengths / starts are data: no retrace, no recompile.
    n_compiled = ta._tree_attention_jit._cache_size()  # pylint: disable=protected-access
    ta.tree_attention(q, kc, vc, kt, vt, mask, start + 1, prefix_len // 2,
                      interpret=self.INTERPRET)
    assert ta._tree_attention_jit._cache_size() == n_compiled  # pylint: disable=protected-access

  def test_grad_matches_reference(self):
    t, h, g, d, s = 7, 2, 2, 16, 64
    args = _tree_inputs(3, t, h, g, d, s, jnp.float32, seed=2)
    mask = trees.ancestor_mask(np.stack([_parents("random", t, seed=i) for i in range(3)]))
    start, prefix_len = jnp.array([0, 5, 1]), jnp.array([10, 0, 50])
    w = _rand(9, args[0].shape, jnp.float32)
    _assert_same_grads(lambda fn, *a: jnp.sum(w * fn(*a, mask, start, prefix_len)),
                       lambda *a: ta.tree_attention(*a, interpret=self.INTERPRET),
                       ta.tree_attention_reference, args)

  def test_ancestor_mask(self):
    for kind in ("chain", "star", "random"):
      p = _parents(kind, 9, seed=3)
      np.testing.assert_array_equal(trees.ancestor_mask(p), _path_mask(p))
    batched = np.stack([_parents("chain", 5), _parents("star", 5)])
    np.testing.assert_array_equal(trees.ancestor_mask(batched)[1], _path_mask(batched[1]))
    np.testing.assert_array_equal(jax.jit(trees.ancestor_mask)(batched)[0],
                                  np.tril(np.ones((5, 5))))

  def test_bad_inputs(self):
    q, kc, vc, kt, vt = _tree_inputs(1, 4, 2, 2, 16, 64, jnp.float32)
    mask = trees.ancestor_mask(_parents("chain", 4))[None]
    with pytest.raises(ValueError, match="block_k=64 must divide the cache length 96"):
      ta.tree_attention(q, jnp.zeros((1, 2, 96, 16)), jnp.zeros((1, 2, 96, 16)), kt, vt, mask, 0,
                        3, block_sizes=ta.BlockSizes(block_k=64))
    with pytest.raises(ValueError, match="power of two >= 8"):
      ta.BlockSizes(block_q=12)
    with pytest.raises(ValueError, match="power of two >= 8"):
      ta.BlockSizes(block_k=48)
    with pytest.raises(ValueError, match="num_splits"):
      ta.BlockSizes(num_splits=0)
    q3 = jnp.zeros((1, 4, 3, 16))
    with pytest.raises(ValueError, match="multiple of key/value heads"):
      ta.tree_attention(q3, kc, vc, kt, vt, mask, 0, 3)
    with pytest.raises(ValueError, match="tree_mask must be bool"):
      ta.tree_attention(q, kc, vc, kt, vt, mask.astype(jnp.int32), 0, 3)
    with pytest.raises(ValueError, match="k_tree.shape"):
      ta.tree_attention(q, kc, vc, kt[:, :3], vt[:, :3], mask, 0, 3)
    with pytest.raises(ValueError, match=r"prefix_len must be an int scalar or int\[B=1\]"):
      ta.tree_attention(q, kc, vc, kt, vt, mask, 0, jnp.array([3, 4]))
    with pytest.raises(ValueError, match="start must be an int"):
      ta.tree_attention(q, kc, vc, kt, vt, mask, 0.5, 3)
    with pytest.raises(ValueError, match="cycle"):
      trees.ancestor_mask(np.array([-1, 2, 1]))
    with pytest.raises(ValueError, match="not topologically ordered"):
      trees.ancestor_mask(np.array([-1, 2, 0]))
    with pytest.raises(ValueError, match="out of range"):
      trees.validate_parents(np.array([-1, 5]))


class TestBlockAttention:
  INTERPRET = INTERPRET

  # (id, Q, H, G, D, S, block_sizes, dtype, causal_block_size, dual)
  CASES = [
      ("prefix-mha-f32-bidir", 8, 2, 2, 16, 64, None, jnp.float32, None, False),
      ("dual-gqa-f32-blockcausal4-split2", 16, 4, 2, 16, 128, ba.BlockSizes(16, 32, 2),
       jnp.float32, 4, True),
      ("dual-mqa-bf16-causal", 8, 4, 1, 32, 64, ba.BlockSizes(8, 16), jnp.bfloat16, 1, True),
  ]

  @pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
  def test_matches_reference(self, case):
    _, ql, h, g, d, s, bs, dtype, cbs, dual = case
    q, kc, vc, kb, vb = _tree_inputs(3, ql, h, g, d, s, dtype, seed=4)
    # Row 0: no prefix; row 1: left padding of 3; row 2: long prefix. The suffix (dual cache)
    # starts right after the block, ragged, and is empty in row 1.
    ps, pn = jnp.array([0, 3, 0]), jnp.array([0, 17, s // 2])
    suffix = dict(suffix_start=pn + ps + ql, suffix_len=jnp.array([s // 3, 0, s])) if dual else {}
    out = ba.block_attention(q, kc, vc, kb, vb, ps, pn, **suffix, causal_block_size=cbs,
                             block_sizes=bs, interpret=self.INTERPRET)
    ref = _block_ref(q, kc, vc, kb, vb, ps, pn, **suffix,
                                       causal_block_size=cbs)
    assert out.shape == q.shape and out.dtype == q.dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=TOL[dtype], rtol=0)

  def test_equals_dense_attention_over_the_sequence(self):
    """Dual cache with the block's rows also in the cache == full bidirectional attention."""
    ql, h, g, d, s = 8, 2, 2, 16, 64
    q, kc, vc, _, _ = _tree_inputs(3, ql, h, g, d, s, jnp.float32, seed=5)
    s0, length = 24, 56                                  # block at [24, 32) of a 56-token sequence
    kb, vb = (x[:, :, s0:s0 + ql].transpose(0, 2, 1, 3) for x in (kc, vc))  # [B, Q, G, D]
    out = ba.block_attention(q, kc, vc, kb, vb, 0, s0, s0 + ql, length - s0 - ql,
                             interpret=self.INTERPRET)
    full = attention_lib.xla_attention(q, kc[:, :, :length], vc[:, :, :length], None)
    np.testing.assert_allclose(out, full, atol=TOL[jnp.float32], rtol=0)

  def test_grad_matches_reference(self):
    ql, h, g, d, s = 8, 2, 2, 16, 64
    args = _tree_inputs(3, ql, h, g, d, s, jnp.float32, seed=6)
    ps, pn = jnp.array([0, 3, 0]), jnp.array([0, 17, 32])

    _assert_same_grads(lambda fn, *a: jnp.sum(jnp.sin(fn(*a, ps, pn))),
                       lambda *a: ba.block_attention(*a, interpret=self.INTERPRET),
                       ba.block_attention_reference, args)

  def test_bad_inputs(self):
    q, kc, vc, kb, vb = _tree_inputs(1, 8, 2, 2, 16, 64, jnp.float32)
    with pytest.raises(ValueError, match="block_k=128 must divide the cache length 64"):
      ba.block_attention(q, kc, vc, kb, vb, 0, 8, block_sizes=ba.BlockSizes(block_k=128))
    with pytest.raises(ValueError, match="multiple of key/value heads"):
      ba.block_attention(jnp.zeros((1, 8, 3, 16)), kc, vc, kb, vb, 0, 8)
    with pytest.raises(ValueError, match="suffix_start and suffix_len"):
      ba.block_attention(q, kc, vc, kb, vb, 0, 8, suffix_start=16)
    with pytest.raises(ValueError, match="causal_block_size"):
      ba.block_attention(q, kc, vc, kb, vb, 0, 8, causal_block_size=0)
    with pytest.raises(ValueError, match="head_dim"):
      ba.block_attention(q, kc[..., :8], vc[..., :8], kb, vb, 0, 8)


class TestLowering:
  """Without an accelerator: the cache kernel lowers for GPU (Pallas -> Triton) and TPU (Pallas
  -> Mosaic) through ``jax.export`` (cross-platform lowering; compiling the emitted Triton /
  Mosaic IR to machine code is not checked here), and the TPU operand layout (bounds in SMEM,
  ``[rows, 1]`` LSE) computes the same numbers in interpret mode."""

  SHAPES = dict(b=2, t=16, h=9, g=3, d=64, s=1024)
  BLOCKS = _common.BlockSizes(block_q=16, block_k=128, num_splits=2)

  def _export(self, platform):
    sh = self.SHAPES
    q = jax.ShapeDtypeStruct((sh["b"], sh["t"], sh["h"], sh["d"]), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((sh["b"], sh["g"], sh["s"], sh["d"]), jnp.bfloat16)
    bounds = jax.ShapeDtypeStruct((sh["b"], 4), jnp.int32)
    fn = jax.jit(lambda *a: _common.cache_attention_lse(
        *a, scale=0.125, block_sizes=self.BLOCKS, interpret=False, backend=platform))
    checks = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton"),
              jax.export.DisabledSafetyCheck.custom_call("tpu_custom_call")]
    exported = jax.export.export(fn, platforms=[platform], disabled_checks=checks)(
        q, kv, kv, bounds)
    return exported.mlir_module()

  def test_lowers_to_triton(self):
    assert "__gpu$xla.gpu.triton" in self._export("cuda")

  def test_lowers_to_mosaic_tpu(self, monkeypatch):
    # Mosaic picks its tiling from the attached TPU's kind; pretend a v5e is attached (a private
    # hook: if a jax upgrade moves it, this test fails loudly rather than skipping).
    from jax._src.pallas.mosaic import tpu_info  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr(tpu_info, "get_device_kind", lambda: "TPU v5 lite")
    monkeypatch.setattr(tpu_info, "get_num_device_cores", lambda: 1)
    assert "tpu_custom_call" in self._export("tpu")

  def test_tpu_layout_matches_reference(self):
    sh = self.SHAPES
    q, kc, vc, _, _ = _tree_inputs(sh["b"], 4, 6, 2, 16, 64, jnp.float32, seed=8)
    bounds = _common.ranges_to_bounds([(jnp.array([0, 5]), jnp.array([40, 20])),
                                       (jnp.array([50, 30]), jnp.array([3, 0]))], 64, 2)
    bs = _common.BlockSizes(block_q=8, block_k=16, num_splits=2)
    run = jax.jit(lambda *a, backend: _common.merge_partials(*_common.cache_attention_lse(
        *a, scale=0.25, block_sizes=bs, interpret=True, backend=backend)),
                  static_argnames="backend")
    o, lse = run(q, kc, vc, bounds, backend="tpu")  # the GPU layout is what the other tests run
    ref = jax.jit(lambda q, k, v, m: _common.dense_attention_lse(q, k, v, m, scale=0.25))(
        q, _common.positions_major(kc), _common.positions_major(vc),
        _common.ranges_mask(bounds, 64)[:, None])
    np.testing.assert_allclose(o, ref[0], atol=1e-5)
    np.testing.assert_allclose(lse, ref[1], atol=1e-5)


# ----------------------------------------------------------------------------- causal LM


_fwd = jax.jit(llama.forward, static_argnames="config")


@pytest.fixture(scope="module")
def tiny_prefilled():
  """Tiny Llama with a ragged, left-padded prompt already in a 24-slot cache."""
  config = llama.LlamaConfig.tiny()
  params = jax.jit(llama.init_params, static_argnames="config")(jax.random.key(0), config=config)
  b, p, max_len = 2, 6, 24
  first = jnp.array([0, 2])                                # row 1 is left-padded by 2
  tokens = jnp.asarray(np.random.default_rng(1).integers(3, config.vocab_size, (b, p)))
  slots = jnp.broadcast_to(jnp.arange(p), (b, p))
  positions = jnp.maximum(slots - first[:, None], 0)
  cache = llama.init_cache(config, b, max_len)
  _, cache, _ = _fwd(params, tokens, positions,
                     attention_lib.causal_cache_mask(slots, first, max_len), cache,
                     jnp.zeros(b, jnp.int32), config=config)
  return config, params, cache, first, tokens


def test_cache_block_mask_to_dense_is_causal_for_a_chain():
  first, write = jnp.array([0, 2]), jnp.array([6, 4])
  m = attention_lib.CacheBlockMask(first, write - first, jnp.tril(jnp.ones((2, 5, 5), bool)),
                                   write)
  slots = write[:, None] + jnp.arange(5)[None]
  np.testing.assert_array_equal(m.to_dense(12), attention_lib.causal_cache_mask(slots, first, 12))
  # A block running past the cache end: the dropped slots are simply absent.
  np.testing.assert_array_equal(m.to_dense(9), attention_lib.causal_cache_mask(slots, first, 9))


def test_llama_tree_block_pallas_equals_xla(tiny_prefilled):
  """Structured mask: pallas (kernel) == xla (dense expansion), and a node's logits equal a
  plain causal forward over its root path (``docs/algorithms.md#correctness-properties``)."""
  config, params, cache, first, prompt = tiny_prefilled
  p = prompt.shape[1]
  parents = np.stack([_parents("random", 5, seed=7), _parents("chain", 5)])
  anc = trees.ancestor_mask(parents)
  depth = anc.sum(-1) - 1
  tree = jnp.asarray(np.random.default_rng(2).integers(3, config.vocab_size, (2, 5)))
  positions = (p - first)[:, None] + depth
  write = jnp.full((2,), p)
  mask = attention_lib.CacheBlockMask(first, p - first, anc)
  got = {impl: _fwd(params, tree, positions, mask, cache, write,
                   config=config.replace(attention_impl=impl)) for impl in ("xla", "pallas")}
  np.testing.assert_allclose(got["pallas"][0], got["xla"][0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got["pallas"][1].k, got["xla"][1].k, atol=1e-5)  # same writes
  # Oracle: node 4 of row 0 scored by a causal forward over prompt + its root path.
  path = [int(j) for j in np.nonzero(np.asarray(anc[0, 4]))[0]]
  seq = jnp.concatenate([prompt[0], tree[0, jnp.array(path)]])[None]
  full, _, _ = _fwd(params, seq, jnp.arange(seq.shape[1])[None], config=config)
  np.testing.assert_allclose(got["pallas"][0][0, 4], full[0, -1], atol=1e-5, rtol=1e-5)


def test_llama_structured_mask_needs_cache(tiny_prefilled):
  config, params = tiny_prefilled[:2]
  mask = attention_lib.CacheBlockMask(jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32),
                                      jnp.ones((1, 2, 2), bool))
  with pytest.raises(ValueError, match="needs a cache"):
    llama.forward(params, jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32), mask,
                  config=config)
