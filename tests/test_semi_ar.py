"""Semi-autoregressive (block) decoding: blocks in order, nothing outside the current block,
exactness of one-token-per-step block decoding, and the layout errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax import testing
from partext_jax.masked.adaptive import confidence
from partext_jax.masked.adaptive import eb_sampler
from partext_jax.masked.blocks import BlockLayout, resolve_layout, semi_ar
from partext_jax.testing import toys



V, L, PROMPT, BLOCK = 4, 10, 2, 4      # window of 8 after a 2-token prompt: 2 blocks of 4


def _x():
  x = jnp.full((3, L), V, jnp.int32).at[:, :PROMPT].set(jnp.array([[0, 1], [2, 3], [1, 1]]))
  return x.at[1, 5].set(0)             # a constraint inside block 0 of row 1


def _check_blocks(x, info, layout):
  """Each step decodes only inside the row's current block, blocks finish in order."""
  blocks = layout.position_blocks()
  traj = np.concatenate([np.asarray(x)[None], np.asarray(info.tokens)])
  block_info = np.asarray(info.block)
  for r in range(traj.shape[1]):
    done_upto = -1                                  # last block finished
    for i in range(traj.shape[0] - 1):
      prev, cur = traj[i, r], traj[i + 1, r]
      changed = np.flatnonzero(prev != cur)
      if changed.size == 0:
        assert block_info[i, r] == -1
        continue
      b = block_info[i, r]
      assert np.all(blocks[changed] == b), (r, i, changed, b)
      assert np.all(prev[changed] == V)
      # every earlier block is complete, the current one was not
      assert not np.any(prev[(blocks >= 0) & (blocks < b)] == V)
      assert b >= done_upto
      done_upto = b
    assert not np.any(traj[-1, r] == V)


def test_topk_blocks_in_order_with_even_step_split():
  """num_steps = 6 over 2 blocks: 3 steps per block, LLaDA counts per block (4 masks -> 2, 1, 1;
  row 1's first block has 3 masks -> 1, 1, 1); block b is decoded exactly in steps 3b..3b+2."""
  den = toys.mixing_denoiser(V, L)
  sampler = semi_ar(confidence, den, block_length=BLOCK, gen_length=L - PROMPT, mask_id=V,
                    num_steps=6, record_trajectory=True)
  x = _x()
  tokens, info = sampler.sample(jax.random.key(0), x)
  layout = resolve_layout(L, gen_length=L - PROMPT, block_length=BLOCK)
  _check_blocks(x, info, layout)
  np.testing.assert_array_equal(np.asarray(info.num_decoded).T,
                                [[2, 1, 1, 2, 1, 1], [1, 1, 1, 2, 1, 1], [2, 1, 1, 2, 1, 1]])
  np.testing.assert_array_equal(np.asarray(info.block).T, [[0, 0, 0, 1, 1, 1]] * 3)
  np.testing.assert_array_equal(tokens[:, :PROMPT], x[:, :PROMPT])


@pytest.mark.parametrize("builder, kwargs", [
    (eb_sampler, dict(gamma=0.3)),
    (confidence, dict(rule="threshold", threshold=0.5)),
], ids=["eb", "threshold"])
def test_variable_rules_finish_each_block_before_the_next(builder, kwargs):
  den = toys.mixing_denoiser(V, L, seed=3)
  sampler = semi_ar(builder, den, block_length=BLOCK, gen_length=L - PROMPT, mask_id=V,
                    record_trajectory=True, **kwargs)
  x = _x()
  tokens, info = sampler.sample(jax.random.key(1), x)
  _check_blocks(x, info, resolve_layout(L, gen_length=L - PROMPT, block_length=BLOCK))
  assert info.nfe.shape == (L - PROMPT,)           # the step cap is gen_length


def test_block_decoding_one_token_per_step_samples_the_joint():
  """V = 2, L = 4 joint, two blocks of 2, topk with 4 steps (k = 1 per step), tau = 1: one token
  per step, positions chosen from the state -> exact. n = 10000, K = 16: tv_tolerance = 0.046,
  + 1e-4 for float32 rounding of the exact denoiser; power: TV(joint, product) > 2x bound."""
  joint = testing.random_joint(4, vocab_size=2, length=4, concentration=0.3)
  den = testing.exact_denoiser(joint, mask_id=2)
  n = 10_000
  sampler = semi_ar(confidence, den, block_length=2, mask_id=2, num_steps=4, temperature=1.0)
  tokens, info = sampler.sample(jax.random.key(9), jnp.full((n, 4), 2, jnp.int32))
  np.testing.assert_array_equal(np.asarray(info.block)[:, 0], [0, 0, 1, 1])
  bound = testing.tv_tolerance(n, 16) + 1e-4
  assert testing.total_variation(joint, testing.product_of_marginals(joint)) > 2 * bound
  emp = testing.empirical_distribution(tokens, vocab_size=2)
  assert testing.total_variation(emp, joint) < bound


def test_layout():
  layout = resolve_layout(10, gen_length=8, block_length=4)
  assert layout == BlockLayout(length=10, gen_length=8, block_length=4)
  assert (layout.start, layout.num_blocks) == (2, 2)
  np.testing.assert_array_equal(layout.position_blocks(), [-1, -1, 0, 0, 0, 0, 1, 1, 1, 1])
  assert resolve_layout(6).num_blocks == 1


def test_layout_errors():
  den = toys.mixing_denoiser(V, L)
  key, x = jax.random.key(0), _x()
  with pytest.raises(ValueError, match="gen_length=8 must be a multiple of block_length=3"):
    semi_ar(confidence, den, block_length=3, gen_length=8, mask_id=V, num_steps=6).sample(key, x)
  with pytest.raises(ValueError, match="num_steps=5 must be a multiple"):
    semi_ar(confidence, den, block_length=4, gen_length=8, mask_id=V, num_steps=5).sample(key, x)
  with pytest.raises(ValueError, match="gen_length=12 exceeds"):
    semi_ar(eb_sampler, den, block_length=4, gen_length=12, mask_id=V).sample(key, x)
  with pytest.raises(ValueError, match="x_init holds mask_id"):
    semi_ar(eb_sampler, den, block_length=4, gen_length=8, mask_id=V).sample(
        key, x.at[0, 0].set(V))
  with pytest.raises(ValueError, match="block_length"):
    semi_ar(eb_sampler, den, block_length=0, mask_id=V)
  with pytest.raises(TypeError, match="builder"):
    semi_ar(None, den, block_length=4, mask_id=V)
