"""The eager reference loops agree with the compiled samplers (and with the math)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax import testing
from partext_jax.masked.adaptive import confidence
from partext_jax.testing import eager

from conftest import L, MASK, V


@pytest.mark.parametrize("num_steps", [1, 4, 7, 12])
def test_llada_eager_equals_compiled_topk(num_steps):
  """Greedy max-prob top-k is deterministic: the paper's loop and our sampler give the same
  tokens, batch of 5 with a prompt, step counts dividing and not dividing the masked count."""
  vocab, length = 6, 12
  denoise_fn = testing.mixing_denoiser(vocab, length, seed=3)
  x = jnp.full((5, length), vocab, jnp.int32).at[:, :2].set(jnp.array([1, 4]))
  x = x.at[1, 5].set(2)  # a row with an extra fixed position (9 masked instead of 10)
  ours, info = confidence(denoise_fn, mask_id=vocab, rule="topk", num_steps=num_steps,
                          proxy="max_prob", temperature=0.0).sample(jax.random.key(0), x)
  ref, nfe = eager.llada_topk_eager(denoise_fn, x, mask_id=vocab, num_steps=num_steps)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
  assert nfe == num_steps
  # The compiled sampler skips the model call once no row has a position left to decode.
  assert int(np.asarray(info.nfe).sum()) == min(num_steps, 10)
  assert not np.any(np.asarray(ref) == vocab)


def test_llada_eager_with_jitted_model_is_identical():
  denoise_fn = testing.mixing_denoiser(5, 8, seed=1)
  x = jnp.full((3, 8), 5, jnp.int32)
  a, _ = eager.llada_topk_eager(denoise_fn, x, mask_id=5, num_steps=4)
  b, _ = eager.llada_topk_eager(denoise_fn, x, mask_id=5, num_steps=4, jit_model=True)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mdlm_eager_matches_joint(joint, denoiser):
  """MDLM ancestral loop with an exact denoiser: within tv_tolerance + d of the joint, d the
  probability that some step unmasks >= 2 positions (tests/test_remdm.py module docstring, with
  sigma = 0: q_i = 1/N per position and step). n = 20000, N = 64: d = 0.0023."""
  n, num_steps = 20_000, 64
  tokens, nfe = eager.mdlm_ancestral_eager(jax.random.key(2), denoiser,
                                           jnp.full((n, L), MASK, jnp.int32), mask_id=MASK,
                                           num_steps=num_steps, jit_model=True)
  assert nfe == num_steps
  q = 1.0 / num_steps
  d = num_steps * (1 - (1 - q) ** L - L * q * (1 - q) ** (L - 1))
  bound = testing.tv_tolerance(n, V**L) + d
  assert testing.total_variation(joint, testing.product_of_marginals(joint)) > 2 * bound
  emp = testing.empirical_distribution(tokens, vocab_size=V)
  assert testing.total_variation(emp, joint) < bound
