"""Every masked-diffusion sampler through the shared invariant battery (ALGORITHMS.md 8).

``partext_jax.testing.battery`` checks, for each sampler: no MASK in the output, prompt fixed,
determinism for a fixed key, batch invariance (a row alone == inside a batch, whatever the
other rows), eager ``step`` x N == jitted ``sample``, and per-step carry-over (non-remasking).
The model is a small random token-mixing network passed as a ``jax.tree_util.Partial`` (its
parameters are traced arguments), so the outputs depend on the whole context.
"""

import jax
import jax.numpy as jnp
import pytest

from partext_jax.masked.adaptive import confidence
from partext_jax.masked.adaptive import eb_sampler
from partext_jax.masked.blocks import semi_ar
from partext_jax.masked.tau_leaping import tau_leaping
from partext_jax.testing import battery

V, L = 5, 8
MASK = V


def _mixing_model(params, tokens, t):
  """logits[b, i] = bias[i] + sum_j W[i, j, tokens[b, j]] (MASK has its own embedding row)."""
  del t
  onehot = jax.nn.one_hot(tokens, V + 1, dtype=jnp.float32)            # [B, L, V + 1]
  return params["bias"][None] + jnp.einsum("bjw,ijwv->biv", onehot, params["w"])


def _model():
  k1, k2 = jax.random.split(jax.random.key(42))
  params = {"w": 1.5 * jax.random.normal(k1, (L, L, V + 1, V)),
            "bias": jax.random.normal(k2, (L, V))}
  return jax.tree_util.Partial(_mixing_model, params)


def _x_init(prompt_len=0):
  k1, k2 = jax.random.split(jax.random.key(7))
  tokens = jax.random.randint(k1, (4, L), 0, V)
  keep = jax.random.uniform(k2, (4, L)) < 0.3
  x = jnp.where(keep, tokens, MASK).astype(jnp.int32)
  return x.at[:, :prompt_len].set(tokens[:, :prompt_len])


SAMPLERS = {
    "tau_leaping": lambda m: tau_leaping(m, mask_id=MASK, num_steps=6),
    "topk_margin_algtemp": lambda m: confidence(m, mask_id=MASK, num_steps=8, proxy="margin",
                                                alg_temp=0.5, temperature=0.7),
    "factor_sampledprob": lambda m: confidence(m, mask_id=MASK, rule="factor",
                                               proxy="sampled_prob", factor=2.0),
    "eb": lambda m: eb_sampler(m, mask_id=MASK, gamma=0.5),
    "semi_ar_topk": lambda m: semi_ar(confidence, m, block_length=3, gen_length=6,
                                      mask_id=MASK, num_steps=4),
    "semi_ar_eb": lambda m: semi_ar(eb_sampler, m, block_length=2, mask_id=MASK, gamma=0.2,
                                    threshold=0.8, temperature=1.0),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_battery(name):
  sampler = SAMPLERS[name](_model())
  x = _x_init(prompt_len=2 if name == "semi_ar_topk" else 0)
  tokens, info = battery.run_battery(sampler, x, mask_id=MASK, vocab_size=V,
                                     rng_key=jax.random.key(3))
  assert tokens.shape == (4, L)


def test_battery_catches_a_broken_sampler():
  """A sampler that rewrites a decoded token must fail the carry-over check, one that emits
  MASK the no-mask check."""
  good = SAMPLERS["tau_leaping"](_model())     # same model and config: compiled already
  x = _x_init()

  def bad_step(key, state):
    state, info = good.step(key, state)
    return state._replace(tokens=(state.tokens + 1) % V), info

  broken = good._replace(step=bad_step)
  with pytest.raises(AssertionError):
    battery.check_step_matches_sample(broken, x, mask_id=MASK, num_steps=6)
  leaky = good._replace(sample=lambda key, x: (x, None))
  with pytest.raises(AssertionError, match="MASK"):
    battery.check_no_mask(leaky, x, mask_id=MASK)
