"""Token editing (LLaDA 2.1 token-to-token edits) on the adaptive samplers and the block caches.

Oracles: ``edit_threshold=1.0`` (no probability exceeds it) runs the editing code and equals the
sampler without editing token for token, for every rule and with the caches, while a low
threshold does edit on the same model (so the equality could fail); on a model whose top token
changes every step the edited output is known exactly (every committed position of the current
block follows the latest top token, earlier blocks are frozen, ``num_edited`` counts them); prompt
positions are never edited, neither with an exact toy denoiser nor with a model that disagrees
with the prompt; the cached exact mode reproduces the uncached editing sampler.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_compiles_once, cached_toy_denoiser
from partext_jax.masked import adaptive
from partext_jax.masked.adaptive import confidence
from partext_jax.masked.block_cache import block_cache
from partext_jax.testing import toys

V, L = 5, 10
MASK = V
CACHED = cached_toy_denoiser(2, True, vocab_size=V, max_len=12)
RULE_KW = {"topk": dict(num_steps=8, proxy="margin"), "threshold": dict(threshold=0.95),
           "factor": dict(factor=1.0), "eb": dict(gamma=0.1)}


def _x_init(batch=4, length=L, seed=0):
  return toys.random_prompts(jax.random.key(seed), batch, length, V, MASK, keep=0.2, prefix=2)


@pytest.mark.parametrize("rule", sorted(RULE_KW))
def test_threshold_one_equals_no_editing_and_low_threshold_edits(rule):
  fn = toys.mixing_denoiser(V, L, seed=1)
  x = _x_init()
  kw = dict(mask_id=MASK, rule=rule, block_length=4, gen_length=8, **RULE_KW[rule])
  plain, plain_info = confidence(fn, **kw).sample(jax.random.key(0), x)
  same, info = confidence(fn, edit_threshold=1.0, **kw).sample(jax.random.key(0), x)
  np.testing.assert_array_equal(same, plain)
  assert plain_info.num_edited is None
  assert int(info.num_edited.sum()) == 0
  edited, edit_info = confidence(fn, edit_threshold=0.0, **kw).sample(jax.random.key(0), x)
  assert int(edit_info.num_edited.sum()) > 0                  # the edits are real on this model
  assert not np.array_equal(edited, plain)
  np.testing.assert_array_equal(edit_info.nfe, info.nfe)      # edits cost no extra model call


def _drifting_denoiser(scale=5.0):
  """Top token ``(#MASK in the row) % V`` everywhere, probability ``e^s / (e^s + V - 1)``."""
  def fn(tokens, t):
    del t
    n = jnp.sum(tokens == MASK, axis=1)
    logits = scale * jax.nn.one_hot(n % V, V)
    return jnp.broadcast_to(logits[:, None, :], tokens.shape + (V,))
  return fn


def test_edits_follow_the_latest_top_token_inside_the_current_block():
  fn = _drifting_denoiser()
  p_top = np.exp(5.0) / (np.exp(5.0) + V - 1)                  # ~0.974
  prompt, gen, block = 2, 8, 4
  x = jnp.full((1, prompt + gen), MASK, jnp.int32).at[:, :prompt].set(jnp.array([[3, 3]]))
  kw = dict(mask_id=MASK, rule="topk", num_steps=gen, block_length=block, gen_length=gen)
  tokens, info = confidence(fn, edit_threshold=p_top - 0.01, **kw).sample(jax.random.key(0), x)
  tokens = np.asarray(tokens)[0]
  # One token per step; before the step with n masks left every committed token of the block
  # holds the previous top (n + 1) % V and is edited to n % V: the block ends all (last n) % V.
  # Block 0 ends with n = 5 masks before its last step, block 1 with n = 1.
  np.testing.assert_array_equal(tokens[:prompt], [3, 3])
  np.testing.assert_array_equal(tokens[prompt:prompt + block], np.full(block, 5 % V))
  np.testing.assert_array_equal(tokens[prompt + block:], np.full(block, 1 % V))
  np.testing.assert_array_equal(np.asarray(info.num_edited)[:, 0], [0, 1, 2, 3, 0, 1, 2, 3])
  # Above the top probability nothing is edited: each token keeps its own step's top.
  kept, _ = confidence(fn, edit_threshold=p_top + 0.01, **kw).sample(jax.random.key(0), x)
  np.testing.assert_array_equal(np.asarray(kept)[0, prompt:], np.arange(gen, 0, -1) % V)


def test_never_edits_a_prompt_position_exact_toy_and_disagreeing_model():
  joint = toys.random_joint(0, vocab_size=3, length=4)
  x = toys.random_prompts(jax.random.key(2), 32, 4, 3, 3, keep=0.3, prefix=1)
  exact = confidence(toys.exact_denoiser(joint, mask_id=3), mask_id=3, rule="threshold",
                     threshold=0.3, temperature=1.0, edit_threshold=0.0)
  tokens, _ = exact.sample(jax.random.key(0), x)
  prompt = np.asarray(x) != 3
  np.testing.assert_array_equal(np.asarray(tokens)[prompt], np.asarray(x)[prompt])
  # A model that disagrees with the prompt at some prompt position (so the test could fail).
  fn = toys.mixing_denoiser(V, L, seed=1)
  x = _x_init(batch=8)
  prompt = np.asarray(x) != MASK
  top = np.asarray(jnp.argmax(fn(x, None), axis=-1))
  assert np.any(prompt & (top != np.asarray(x)))
  tokens, info = confidence(fn, mask_id=MASK, rule="threshold", threshold=0.5,
                            edit_threshold=0.0).sample(jax.random.key(0), x)
  np.testing.assert_array_equal(np.asarray(tokens)[prompt], np.asarray(x)[prompt])
  assert int(info.num_edited.sum()) > 0


def test_block_caches_with_editing():
  """Exact mode equals the uncached editing sampler (edits happen: the cached kernel's editing
  path is exercised); the dual cache (the prefix cache shares its code path) equals itself
  without editing at ``edit_threshold=1.0``."""
  cfg, fn, kv_fn = CACHED
  x = toys.random_prompts(jax.random.key(4), 3, 12, V, cfg.mask_id, keep=0.0, prefix=4)
  kw = dict(mask_id=cfg.mask_id, rule="topk", num_steps=8, block_length=4, gen_length=8)
  uncached, u_info = confidence(fn, edit_threshold=0.0, **kw).sample(jax.random.key(0), x)
  exact, e_info = block_cache(kv_fn, cache="exact", edit_threshold=0.0, **kw).sample(
      jax.random.key(0), x)
  np.testing.assert_array_equal(exact, uncached)
  np.testing.assert_array_equal(e_info.num_edited, u_info.num_edited)
  assert int(e_info.num_edited.sum()) > 0
  np.testing.assert_array_equal(np.asarray(exact)[:, :4], np.asarray(x)[:, :4])
  plain, _ = block_cache(kv_fn, cache="dual", **kw).sample(jax.random.key(0), x)
  same, info = block_cache(kv_fn, cache="dual", edit_threshold=1.0, **kw).sample(
      jax.random.key(0), x)
  np.testing.assert_array_equal(same, plain)
  assert int(info.num_edited.sum()) == 0


@pytest.mark.parametrize("value,error", [(-0.1, ValueError), (1.5, ValueError),
                                         (float("nan"), ValueError), ("0.9", TypeError)])
def test_bad_edit_threshold(value, error):
  fn = toys.mixing_denoiser(V, L)
  with pytest.raises(error, match="edit_threshold"):
    confidence(fn, mask_id=MASK, rule="threshold", edit_threshold=value)
  with pytest.raises(error, match="edit_threshold"):
    block_cache(CACHED[2], mask_id=V, edit_threshold=value)


def test_editing_sampler_compiles_once():
  model = toys.mixing_model(V, L, seed=2)
  assert_compiles_once(
      lambda m: confidence(m, mask_id=MASK, rule="threshold", threshold=0.7, edit_threshold=0.5),
      model, _x_init(), new_prompt=_x_init(seed=5), jitted=adaptive.jitted_sample.jits[(False,)])
