"""Every masked sampler on tiny LLaDA and Dream models, whose MASK id lies inside the vocabulary.

* the shared invariant battery (``partext_jax.testing.battery``) on every sampler family --
  tau-leaping, confidence rules with semi-AR blocks, EB, ReMDM, P2, the Fast-dLLM block caches --
  for both families, and no MASK or other never-generate id in any output;
* a model that pushes those ids to the top of its logits: with the samplers' exclusion they are
  still never drawn, and with the exclusion switched off the same check fires;
* the block cache's exact mode equals the uncached sampler token for token, and a cached call on
  a fresh context equals the full pass (Dream's shift included);
* the EOS block early stop and the EOS penalty, and compile-once with new weights.

``docs/algorithms.md#real-diffusion-lms-llada-dream``.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax import masked
from partext_jax.masked import adaptive, blocks, driver
from partext_jax.pretrained import dllm
from partext_jax.testing import battery

PROMPT, GEN, BLOCK, BATCH = 3, 8, 4, 8

# name -> (SAMPLERS entry, hyper-parameters, remasking)
CASES = {
    "tau_leaping": ("tau_leaping", dict(num_steps=4), False),
    "confidence_topk_semi_ar": ("confidence", dict(
        num_steps=4, proxy="margin", temperature=1.0, block_length=BLOCK, gen_length=GEN), False),
    "eb_semi_ar": ("eb", dict(gamma=0.5, temperature=1.0, block_length=BLOCK, gen_length=GEN),
                   False),
    "remdm_cap": ("remdm", dict(num_steps=6, strategy="cap", eta=0.3), True),
    "p2_rdm": ("p2", dict(num_steps=5, eta=1.0), True),
    "block_cache_dual_threshold": ("block_cache", dict(
        cache="dual", rule="threshold", threshold=0.3, temperature=1.0, block_length=BLOCK,
        gen_length=GEN), False),
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
  root = tmp_path_factory.mktemp("dllm")
  return {arch: dllm.load_dllm(dllm.write_tiny_checkpoint(str(root / arch), arch=arch))
          for arch in ("llada", "dream")}


def _x_init(bundle, batch=BATCH, seed=0):
  prompt = np.random.default_rng(seed).integers(0, 256, (batch, PROMPT))   # byte tokens
  x = np.full((batch, PROMPT + GEN), bundle.mask_id, np.int32)
  x[:, :PROMPT] = prompt
  return jnp.asarray(x)


def _model_for(entry, bundle, model=None, kv_model=None):
  if entry == "block_cache":
    return kv_model if kv_model is not None else bundle.kv_denoise_fn
  return model if model is not None else bundle.denoise_fn


def _build(name, bundle, **models):
  entry, kwargs, _ = CASES[name]
  return masked.SAMPLERS[entry](_model_for(entry, bundle, **models), mask_id=bundle.mask_id,
                                **kwargs)


def never_generate(bundle) -> np.ndarray:
  return np.asarray((bundle.mask_id,) + bundle.spec.exclude_ids)


def test_cases_cover_every_sampler_family():
  assert {entry for entry, _, _ in CASES.values()} == set(masked.SAMPLERS)


@dataclasses.dataclass(frozen=True)
class Boosted:
  """``inner``'s logits with ``boost`` added at ``ids`` (its ``exclude_ids`` kept): a model that
  prefers its never-generate ids, or EOS, to everything else."""
  inner: Any
  ids: tuple
  boost: float = 30.0

  @property
  def exclude_ids(self):
    return self.inner.exclude_ids

  def __call__(self, params, *args):
    out = self.inner(params, *args)
    add = lambda logits: logits.at[..., jnp.asarray(self.ids)].add(self.boost)
    return (add(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else add(out)


def _boosted(bundle, ids, boost=30.0):
  return dict(model=jax.tree_util.Partial(Boosted(bundle.model, ids, boost), bundle.params),
              kv_model=jax.tree_util.Partial(Boosted(dllm.model.CachedDiffusionLM(bundle.model),
                                                     ids, boost), bundle.params))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_battery_with_mask_inside_the_vocabulary(bundles, arch, name):
  """The battery on the model that prefers its never-generate ids (``Boosted``): after the
  samplers' exclusion its logits are the plain model's, so this is the battery of the tiny
  LLaDA / Dream itself, and no output may hold MASK or a padded row."""
  bundle = bundles[arch]
  assert bundle.mask_id < bundle.spec.vocab_size and bundle.spec.exclude_ids
  banned = never_generate(bundle)
  x = _x_init(bundle)
  sampler = _build(name, bundle, **_boosted(bundle, tuple(int(i) for i in banned)))
  tokens, _ = battery.run_battery(sampler, x, mask_id=bundle.mask_id,
                                  vocab_size=bundle.spec.vocab_size, remasking=CASES[name][2],
                                  rng_key=jax.random.key(1))
  assert not np.isin(tokens, banned).any()


def test_the_exclusion_check_fires_without_the_exclusion(bundles, monkeypatch):
  """The battery's check is not vacuous: the boosted model samples exactly as the plain one
  (the exclusion sets, not adds, ``-inf``), and with ``driver.without_ids`` disabled the boosted
  ids are emitted almost everywhere (MASK itself and the padded rows)."""
  bundle = bundles["llada"]
  banned = tuple(int(i) for i in never_generate(bundle))
  x = _x_init(bundle)
  plain, _ = _build("tau_leaping", bundle).sample(jax.random.key(2), x)
  boosted, _ = _build("tau_leaping", bundle, **_boosted(bundle, banned)).sample(
      jax.random.key(2), x)
  np.testing.assert_array_equal(plain, boosted)
  monkeypatch.setattr(driver, "without_ids", lambda model, ids, vocab_size: model)
  leaky, _ = _build("tau_leaping", bundle, **_boosted(bundle, banned)).sample(
      jax.random.key(2), x)
  emitted = np.isin(np.asarray(leaky)[:, PROMPT:], banned)
  assert emitted.mean() > 0.9, emitted.mean()


@pytest.mark.parametrize("arch, rule", [("llada", "threshold"), ("llada", "topk"),
                                        ("dream", "threshold")])
def test_block_cache_exact_mode_equals_the_uncached_sampler(bundles, arch, rule):
  bundle = bundles[arch]
  kwargs = dict(rule=rule, temperature=1.0, block_length=BLOCK, gen_length=GEN,
                **(dict(threshold=0.3) if rule == "threshold" else dict(num_steps=4)))
  x = _x_init(bundle, batch=6)
  uncached = masked.SAMPLERS["confidence"](bundle.denoise_fn, mask_id=bundle.mask_id, **kwargs)
  exact = masked.SAMPLERS["block_cache"](bundle.kv_denoise_fn, mask_id=bundle.mask_id,
                                         cache="exact", **kwargs)
  a, info = uncached.sample(jax.random.key(4), x)
  b, cinfo = exact.sample(jax.random.key(4), x)
  np.testing.assert_array_equal(a, b)
  assert int(np.asarray(cinfo.nfe).sum()) == int(np.asarray(info.nfe).sum())
  assert not np.isin(np.asarray(a), never_generate(bundle)).any()


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_cached_calls_on_a_fresh_context_equal_the_full_pass(bundles, arch):
  """Stored rows computed from the current tokens make every cached call exact (to f32
  rounding): prefix and dual layouts, a block at position 0 (Dream: no left neighbour)."""
  bundle = bundles[arch]
  kv_fn = bundle.kv_denoise_fn
  length = PROMPT + GEN
  x = jnp.asarray(np.random.default_rng(5).integers(0, 260, (2, length)), jnp.int32)
  t = jnp.full((2,), 0.5)
  positions = jnp.broadcast_to(jnp.arange(length), x.shape)
  full, cache = kv_fn(x, t, positions, None)
  # The cached pass reads the cache in chunks (online softmax): equal up to f32 reassociation.
  np.testing.assert_allclose(full, bundle.denoise_fn(x, t), atol=2e-5, rtol=0)
  assert isinstance(cache, dllm.ContextCache)
  for s, e in ((0, 4), (3, 7), (7, 11)):
    dual, _ = kv_fn(x[:, s:e], t, positions[:, s:e], (cache, ((0, s), (e, length))))
    np.testing.assert_allclose(dual, full[:, s:e], atol=2e-5, rtol=0)
    prefix, _ = kv_fn(x[:, s:], t, positions[:, s:], (cache, ((0, s),)))
    np.testing.assert_allclose(prefix, full[:, s:], atol=2e-5, rtol=0)
  # A stale context (block tokens changed since the refresh) is not the full pass.
  y = x.at[:, 3:7].set(7)
  stale, _ = kv_fn(y[:, 3:7], t, positions[:, 3:7], (cache, ((0, 3), (7, length))))
  assert float(jnp.max(jnp.abs(stale - bundle.denoise_fn(y, t)[:, 3:7]))) > 1e-3


def test_dream_logits_are_shifted(bundles):
  """Output position i is the network's prediction at i - 1 (position 0: its own)."""
  bundle = bundles["dream"]
  x = _x_init(bundle, batch=2)
  unshifted = dataclasses.replace(bundle.spec, shift_logits=False)
  raw = jax.tree_util.Partial(dllm.DiffusionLM(unshifted), bundle.params)(x, jnp.ones(2))
  out = bundle.denoise_fn(x, jnp.ones(2))
  np.testing.assert_array_equal(out[:, 1:], raw[:, :-1])
  np.testing.assert_array_equal(out[:, 0], raw[:, 0])


def test_stop_at_eos_block_fills_only_finished_eos_rows():
  layout = blocks.resolve_layout(9, gen_length=8, block_length=4)    # prompt 1, blocks 1-4, 5-8
  m, e1, e2 = 9, 7, 8
  x = jnp.array([[1, e1, e2, e2, e2, m, m, m, m],      # block 0 done, all EOS: stop
                 [1, e1, 3, e2, e2, m, m, m, m],       # done, not all EOS
                 [1, e1, m, e2, e2, m, m, m, m],       # not done
                 [1, e1, e1, e1, e1, m, 5, m, m]])     # stop; the constraint 5 stays
  block = jnp.zeros((4,), jnp.int32)
  out, saved = blocks.stop_at_eos_block(x, block, layout, mask_id=m, eos_ids=(e1, e2),
                                        steps_per_block=2)
  np.testing.assert_array_equal(out[0], [1, e1, e2, e2, e2, e2, e2, e2, e2])
  np.testing.assert_array_equal(out[1:3], x[1:3])
  np.testing.assert_array_equal(out[3], [1, e1, e1, e1, e1, e1, 5, e1, e1])
  np.testing.assert_array_equal(saved, [2, 0, 0, 2])
  _, saved = blocks.stop_at_eos_block(x, block, layout, mask_id=m, eos_ids=(e1, e2))
  np.testing.assert_array_equal(saved, [1, 0, 0, 1])
  same, zero = blocks.stop_at_eos_block(x, block, layout, mask_id=m, eos_ids=())
  assert same is x and not np.asarray(zero).any()


@pytest.mark.parametrize("entry, rule", [("confidence", "topk"), ("block_cache", "topk"),
                                         ("confidence", "threshold")])
def test_block_decoding_stops_once_a_block_is_all_eos(bundles, entry, rule):
  """A model that always prefers EOS: block 0 decodes to EOS, the 3 later blocks are filled
  without model calls, and ``nfe_saved`` is what the run without the stop would spend on them:
  top-k with 8 steps over 4 blocks of 4 calls the model at every step (2 per block, 8 in all),
  threshold 0.9 decodes a block in one confident step (4 in all)."""
  bundle = bundles["llada"]
  eos = bundle.tokenizer.eos_id
  models = _boosted(bundle, (eos,))
  per_block = 2 if rule == "topk" else 1
  x = jnp.asarray(np.concatenate([np.asarray(_x_init(bundle, batch=3)),
                                  np.full((3, GEN), bundle.mask_id, np.int32)], axis=1))
  kwargs = dict(rule=rule, block_length=BLOCK, gen_length=2 * GEN, eos_ids=bundle.spec.eos_ids,
                **(dict(num_steps=8) if rule == "topk" else dict(threshold=0.9)))
  if entry == "block_cache":
    kwargs["cache"] = "dual"
  sampler = masked.SAMPLERS[entry](_model_for(entry, bundle, **models), mask_id=bundle.mask_id,
                                   **kwargs)
  tokens, info = sampler.sample(jax.random.key(0), x)
  assert (np.asarray(tokens)[:, PROMPT:] == eos).all()
  assert int(np.asarray(info.nfe).sum()) == per_block                 # block 0 only
  np.testing.assert_array_equal(np.asarray(info.nfe_saved).sum(axis=0), 3 * per_block)
  if entry == "confidence":   # the run without the stop spends exactly what was reported saved
    kwargs["eos_ids"] = ()
    same, full = masked.SAMPLERS[entry](models["model"], mask_id=bundle.mask_id,
                                        **kwargs).sample(jax.random.key(0), x)
    np.testing.assert_array_equal(same, tokens)
    assert int(np.asarray(full.nfe).sum()) == 4 * per_block
    assert not np.asarray(full.nfe_saved).any()


def test_eos_penalty_is_dream_coders(bundles):
  bundle = bundles["dream"]
  x = _x_init(bundle, batch=3)
  t = jnp.array([1.0, 0.5, 0.0])
  plain = bundle.denoise_fn(x, t)
  penalised = bundle.with_options(eos_penalty=3.0).denoise_fn(x, t)
  diff = np.asarray(penalised - plain)
  eos = list(bundle.spec.eos_ids)
  want = 3.0 * np.log(1.0 - np.asarray(t) + 1e-3)
  np.testing.assert_allclose(diff[:, :, eos], np.broadcast_to(want[:, None, None],
                                                              diff[:, :, eos].shape), atol=1e-4)
  others = np.delete(diff, eos, axis=-1)
  assert not others.any()
  with pytest.raises(ValueError, match="eos_penalty"):
    bundle.with_options(eos_penalty=-1.0)


def test_new_weights_reuse_the_compiled_sampler(bundles):
  bundle = bundles["llada"]
  x = _x_init(bundle, batch=2)
  build = lambda b: masked.SAMPLERS["confidence"](b.denoise_fn, mask_id=b.mask_id, num_steps=4,
                                                  block_length=BLOCK, gen_length=GEN)
  build(bundle).sample(jax.random.key(0), x)
  before = adaptive.jitted_sample.dynamic._cache_size()
  other = bundle._replace(params=jax.tree.map(lambda a: a * 1.01, bundle.params))
  build(other).sample(jax.random.key(1), x)
  assert adaptive.jitted_sample.dynamic._cache_size() == before
