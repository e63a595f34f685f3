"""Cached block decoding (Fast-dLLM prefix / dual cache, exact mode) for the adaptive samplers.

Oracles: the exact mode reproduces the uncached sampler token for token (any depth, time
conditioning, several rules, batch 3 with a prompt); a 1-layer model without time conditioning
makes both approximate caches exact (a layer-0 key/value row depends only on its own token, and
the context tokens do not change within a block), so they too reproduce the uncached tokens;
the cached model call with a fresh context equals the full pass, a stale one in a 2-layer model
does not (the approximation is real, and the tests above could fail). The shared invariant
battery runs on the dual cache in tests/test_sampler_battery.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import cached_toy_denoiser
from partext_jax.masked.adaptive import confidence, eb_sampler
from partext_jax.masked.block_cache import CACHE_MODES, block_cache
from partext_jax.models import denoiser

V, L = 7, 12
MASK = V
PROMPT, BLOCK = 4, 4
GEN = L - PROMPT                      # two blocks of 4 after a 4-token prompt
NUM_BLOCKS = GEN // BLOCK


DEEP = cached_toy_denoiser(2, True, vocab_size=V, max_len=L)      # caches are stale here
SHALLOW = cached_toy_denoiser(1, False, vocab_size=V, max_len=L)   # caches are provably exact


def _x_init(batch=3):
  prompt = jax.random.randint(jax.random.key(3), (batch, PROMPT), 0, V)
  return jnp.full((batch, L), MASK, jnp.int32).at[:, :PROMPT].set(prompt)


def _uncached(fn, rule, kw):
  if rule == "eb":
    return eb_sampler(fn, mask_id=MASK, block_length=BLOCK, gen_length=GEN, **kw)
  return confidence(fn, mask_id=MASK, rule=rule, block_length=BLOCK, gen_length=GEN, **kw)


def _cached(kv_fn, rule, kw, cache):
  return block_cache(kv_fn, mask_id=MASK, cache=cache, rule=rule, block_length=BLOCK,
                     gen_length=GEN, **kw)


# --------------------------------------------------------------------------- the model call

def _context(kv, s, e, mode):
  if mode == "prefix":
    return (kv, ((0, s),)), (s, L)
  return (kv, ((0, s), (e, L))), (s, e)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_call_equals_full_pass_with_fresh_context(mode):
  cfg, fn, kv_fn = DEEP
  x = jax.random.randint(jax.random.key(1), (2, L), 0, V + 1)
  t = jnp.array([0.3, 0.8])
  pos = jnp.broadcast_to(jnp.arange(L), (2, L))
  full = jax.jit(fn)(x, t)
  logits, kv = jax.jit(kv_fn)(x, t, pos, None)
  np.testing.assert_array_equal(logits, full)              # the plain path is unchanged
  assert kv.k.shape == (cfg.num_layers, 2, cfg.num_heads, L, cfg.head_dim)  # KVCache layout
  (_, ranges), (q0, q1) = _context(kv, 4, 8, mode)
  out, _ = jax.jit(lambda q, p, c: kv_fn(q, t, p, (c, ranges)))(x[:, q0:q1], pos[:, q0:q1], kv)
  np.testing.assert_allclose(out, full[:, q0:q1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_stale_context_is_exact_for_one_layer_only(mode):
  """Change block tokens after computing the cache: 1 layer (no FiLM) still exact, 2 not."""
  x = jnp.full((2, L), MASK, jnp.int32).at[:, :4].set(2)
  x_new = x.at[:, 5].set(1).at[:, 6].set(4)        # block [4, 8) decoded further
  t = jnp.array([0.5, 0.5])
  pos = jnp.broadcast_to(jnp.arange(L), (2, L))
  errors = []
  for _, fn, kv_fn in (SHALLOW, DEEP):
    _, stale = jax.jit(kv_fn)(x, t, pos, None)
    (_, ranges), (q0, q1) = _context(stale, 4, 8, mode)
    out, _ = jax.jit(lambda q, p, c, kv_fn=kv_fn: kv_fn(q, t, p, (c, ranges)))(
        x_new[:, q0:q1], pos[:, q0:q1], stale)
    errors.append(float(jnp.abs(out - jax.jit(fn)(x_new, t)[:, q0:q1]).max()))
  assert errors[0] < 1e-5 and errors[1] > 1e-3, errors


def test_pallas_context_attention_matches_jnp():
  """The block attention kernel (interpret mode on CPU) serves the dual cache call."""
  cfg = denoiser.DenoiserConfig(vocab_size=V, max_len=16, d_model=16, num_layers=2, num_heads=2,
                                mlp_dim=32)
  params = denoiser.init_params(jax.random.key(0), cfg)
  x = jax.random.randint(jax.random.key(1), (2, 16), 0, V + 1)
  t = jnp.array([0.3, 0.8])
  pos = jnp.broadcast_to(jnp.arange(16), (2, 16))
  _, kv = jax.jit(denoiser.make_cached_denoise_fn(cfg, params))(x, t, pos, None)
  outs = []
  for impl in ("xla", "pallas"):
    fn = denoiser.make_cached_denoise_fn(cfg, params, context_impl=impl)
    call = jax.jit(lambda q, p, kv, fn=fn: fn(q, t, p, (kv, ((0, 8), (12, 16))))[0])
    outs.append(call(x[:, 8:12], pos[:, 8:12], kv))
  np.testing.assert_allclose(outs[1], outs[0], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- samplers

EXACT_CASES = {   # eb at temperature 1: the per-row randomness index must match as well.
    # (topk and factor reproduce the uncached tokens through the caches below.)
    "threshold": ("threshold", dict(threshold=0.6)),
    "eb_sampled": ("eb", dict(gamma=0.3, temperature=1.0)),
}


@pytest.mark.parametrize("name", sorted(EXACT_CASES))
def test_exact_mode_reproduces_uncached_sampler(name):
  rule, kw = EXACT_CASES[name]
  _, fn, kv_fn = DEEP
  x, key = _x_init(), jax.random.key(5)
  ref_tokens, ref_info = _uncached(fn, rule, kw).sample(key, x)
  tokens, info = _cached(kv_fn, rule, kw, "exact").sample(key, x)
  np.testing.assert_array_equal(tokens, ref_tokens)
  for name in ("nfe", "num_decoded", "block"):
    np.testing.assert_array_equal(getattr(info, name), getattr(ref_info, name), err_msg=name)
  np.testing.assert_array_equal(info.full_calls, info.nfe)    # every call is a refresh
  assert not np.any(np.asarray(tokens) == MASK)


CACHE_CASES = {
    "prefix_factor": ("prefix", "factor", dict(factor=1.5)),
    "dual_threshold": ("dual", "threshold", dict(threshold=0.6)),
    "dual_topk": ("dual", "topk", dict(num_steps=6, proxy="neg_entropy")),
}


@pytest.fixture(scope="module")
def cache_runs():
  """name -> (cached tokens, cached info, uncached tokens) on the 1-layer model."""
  _, fn, kv_fn = SHALLOW
  x, key = _x_init(), jax.random.key(5)
  runs = {}
  for name, (cache, rule, kw) in CACHE_CASES.items():
    ref_tokens, _ = _uncached(fn, rule, kw).sample(key, x)
    tokens, info = _cached(kv_fn, rule, kw, cache).sample(key, x)
    runs[name] = (np.asarray(tokens), jax.tree.map(np.asarray, info), np.asarray(ref_tokens))
  return runs


@pytest.mark.parametrize("name", sorted(CACHE_CASES))
def test_caches_reproduce_uncached_when_staleness_cannot_matter(cache_runs, name):
  tokens, _, ref_tokens = cache_runs[name]
  np.testing.assert_array_equal(tokens, ref_tokens)


@pytest.mark.parametrize("name", sorted(CACHE_CASES))
def test_cache_refreshes_exactly_at_block_starts(cache_runs, name):
  cache = CACHE_CASES[name][0]
  _, info, _ = cache_runs[name]
  called = info.nfe == 1
  decoded_block = info.block.max(axis=1)                     # the batch's block of each step
  starts = called & np.concatenate([[True], decoded_block[1:] != decoded_block[:-1]])
  np.testing.assert_array_equal(info.full_calls == 1, starts)
  assert int(info.full_calls.sum()) == NUM_BLOCKS
  # Cost: a refresh is a full pass; a cached step runs the block (dual) or block + suffix.
  s = PROMPT + BLOCK * decoded_block
  per_step = np.where(cache == "dual", BLOCK / L, (L - s) / L)
  expected = np.where(info.full_calls == 1, 1.0, np.where(called, per_step, 0.0))
  np.testing.assert_allclose(info.cost, expected, rtol=1e-6)
  assert int(info.nfe.sum()) > NUM_BLOCKS                     # some steps used the cache


def test_dual_cache_is_approximate_on_a_deep_model():
  """Guard against a vacuous oracle: on the 2-layer model the stale dual cache changes the
  tokens of some row for this setting (exact mode does not, see above). Also, some row waits
  for another within a block (the batch-level block of the caches), which is what makes the
  battery's batch-invariance check on this setting (tests/test_sampler_battery.py) meaningful."""
  _, fn, kv_fn = DEEP
  x = _x_init()
  key = jax.random.key(5)
  kw = dict(threshold=0.6)
  ref, _ = _uncached(fn, "threshold", kw).sample(key, x)
  out, info = _cached(kv_fn, "threshold", kw, "dual").sample(key, x)
  assert np.any(np.asarray(ref) != np.asarray(out))
  assert out.shape == x.shape and not np.any(np.asarray(out) == MASK)
  waited = (np.asarray(info.num_decoded) == 0) & (np.asarray(info.nfe)[:, None] == 1)
  assert waited.any()


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(cache="full"), ValueError, r"cache='full' is not one of \('exact', 'prefix', 'dual'\)"),
    (dict(rule="greedy"), ValueError, "rule='greedy' is not one of"),
    (dict(block_length=3, gen_length=8), ValueError, "multiple of block_length=3"),
    (dict(rule="threshold", factor=2.0), ValueError, "factor=2.0 is only used by"),
    (dict(rule="eb", proxy="margin"), ValueError, "not used by rule='eb'"),
    (dict(rule="topk", num_steps=None), TypeError, "num_steps must be an int"),
    (dict(block_length=0), ValueError, "block_length=0 must be >= 1"),
], ids=["cache", "rule", "block_length", "factor", "eb_proxy", "topk_steps", "zero_block"])
def test_bad_arguments(kwargs, error, match):
  base = dict(mask_id=MASK, cache="dual", rule="threshold", block_length=4, gen_length=8)
  base.update(kwargs)
  with pytest.raises(error, match=match):
    block_cache(DEEP[2], **base)


def test_bad_inputs_raise_before_compiling():
  kv_fn = DEEP[2]
  sampler = _cached(kv_fn, "topk", dict(num_steps=3), "prefix")
  with pytest.raises(ValueError, match="num_steps=3 must be a multiple of the number of blocks"):
    sampler.sample(jax.random.key(0), _x_init())
  sampler = _cached(kv_fn, "threshold", {}, "dual")
  with pytest.raises(ValueError, match="before the generation window"):
    sampler.sample(jax.random.key(0), _x_init().at[0, 1].set(MASK))
  with pytest.raises(ValueError, match="gen_length=8 exceeds"):
    sampler.sample(jax.random.key(0), _x_init()[:, :6])
  plain = block_cache(DEEP[1], mask_id=MASK, cache="dual", block_length=4, gen_length=8)
  with pytest.raises(TypeError, match="must be a cached model"):
    plain.sample(jax.random.key(0), _x_init())
  assert CACHE_MODES == ("exact", "prefix", "dual")
  with pytest.raises(ValueError, match="context_impl='cuda' is not one of"):
    denoiser.make_cached_denoise_fn(DEEP[0], None, context_impl="cuda")
