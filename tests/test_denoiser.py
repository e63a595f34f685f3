"""The bidirectional Flax denoiser."""

import jax
import jax.numpy as jnp
import pytest

from partext_jax.models import denoiser


def _cfg(**kw):
  base = dict(vocab_size=11, max_len=16, d_model=32, num_layers=2, num_heads=4, mlp_dim=64)
  base.update(kw)
  return denoiser.DenoiserConfig(**base)


def test_shapes_and_mask_id():
  cfg = _cfg()
  params = denoiser.init_params(jax.random.key(0), cfg)
  fn = denoiser.make_denoise_fn(cfg, params)
  tokens = jnp.full((3, 16), cfg.mask_id, jnp.int32)
  out = fn(tokens, jnp.full((3,), 0.5))
  assert out.shape == (3, 16, 11) and out.dtype == jnp.float32
  assert cfg.mask_id == 11
  assert bool(jnp.all(jnp.isfinite(out)))


def test_attention_is_bidirectional_and_position_aware():
  cfg = _cfg()
  fn = denoiser.make_denoise_fn(cfg, denoiser.init_params(jax.random.key(1), cfg))
  x = jax.random.randint(jax.random.key(2), (1, 16), 0, 11)
  t = jnp.ones((1,))
  base = fn(x, t)
  later_changed = fn(x.at[0, 15].set((x[0, 15] + 1) % 11), t)
  assert float(jnp.abs(base[0, 0] - later_changed[0, 0]).max()) > 1e-6  # sees the future
  # Without positions the model would be permutation-equivariant; rotary positions break that.
  reversed_out = fn(x[:, ::-1], t)[:, ::-1]
  assert float(jnp.abs(base - reversed_out).max()) > 1e-4


def test_every_parameter_has_logical_axes():
  cfg = _cfg(time_conditioning=True)
  params = denoiser.init_params(jax.random.key(0), cfg)
  axes = denoiser.param_logical_axes(cfg)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  ax_leaves = treedef.flatten_up_to(axes)
  for leaf, spec in zip(leaves, ax_leaves):
    assert len(spec) == leaf.ndim
  assert "time_mlp" in params


def test_time_conditioning_changes_output_once_trained():
  cfg = _cfg(time_conditioning=True)
  params = denoiser.init_params(jax.random.key(0), cfg)
  # FiLM layers start at zero (time has no effect at init); perturb them as training would.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 if "film" in jax.tree_util.keystr(p) else x, params)
  fn = denoiser.make_denoise_fn(cfg, params)
  x = jnp.full((1, 8), cfg.mask_id, jnp.int32)
  diff = jnp.abs(fn(x, jnp.array([0.1])) - fn(x, jnp.array([0.9]))).max()
  assert float(diff) > 1e-4


@pytest.mark.parametrize("kw,match", [
    (dict(num_heads=5), "num_heads"),
    (dict(dtype="float16"), "dtype"),
    (dict(num_layers=0), "num_layers"),
    (dict(dropout_rate=1.0), "dropout_rate"),
])
def test_bad_config(kw, match):
  with pytest.raises(ValueError, match=match):
    _cfg(**kw)


def test_new_parameters_reuse_the_compiled_sampler():
  import partext_jax.masked.tau_leaping as tl  # pylint: disable=import-outside-toplevel
  cfg = _cfg()
  x = jnp.full((2, 16), cfg.mask_id, jnp.int32)
  before = tl.jitted_sample.dynamic._cache_size()
  outs = []
  for seed in (0, 1):  # Two different parameter sets (e.g. two checkpoints).
    fn = denoiser.make_denoise_fn(cfg, denoiser.init_params(jax.random.key(seed), cfg))
    sampler = tl.tau_leaping(fn, mask_id=cfg.mask_id, num_steps=4)
    outs.append(sampler.sample(jax.random.key(0), x)[0])
  assert tl.jitted_sample.dynamic._cache_size() - before == 1
  assert not bool(jnp.all(outs[0] == outs[1]))  # the parameters really were arguments
