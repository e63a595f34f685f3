"""Every masked-diffusion sampler through the shared invariant battery.

``partext_jax.testing.battery`` checks, for each sampler: no MASK in the output, prompt fixed,
determinism for a fixed key, batch invariance (a row alone == inside a batch, whatever the
other rows), eager ``step`` x N == jitted ``sample``, and per-step carry-over (non-remasking);
``docs/algorithms.md#correctness-properties``. Every entry of ``partext_jax.masked.SAMPLERS`` has
at least one case (built through the registry), and a new entry fails
``test_every_registered_sampler_has_a_battery_case`` until it gets one. The models are a small
random token-mixing network passed as a ``jax.tree_util.Partial`` (its parameters are traced
arguments), so the outputs depend on the whole context, and for the block cache a 2-layer
time-conditioned denoiser whose cache is stale.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_rejects_bad_inputs, cached_toy_denoiser
from partext_jax import masked, testing
from partext_jax.masked import driver
from partext_jax.masked.blocks import semi_ar
from partext_jax.masked.p2 import P2Info, P2State, denoiser_planner
from partext_jax.testing import battery

V, L = 5, 8
MASK = V


def _mixing():
  return testing.mixing_model(V, L, seed=42)


def _x_init(prompt_len=0):
  return testing.random_prompts(jax.random.key(7), 4, L, V, MASK, prefix=prompt_len)


class Case(NamedTuple):
  """A battery case: ``build(constructor, model)`` with ``constructor = SAMPLERS[entry]``."""
  entry: str
  build: Callable
  model: Callable = _mixing
  x_init: Callable = _x_init
  mask_id: int = MASK
  vocab_size: int = V
  rng_key: int = 3
  remasking: bool = False
  check: Callable | None = None   # (sampler, x_init, tokens, info): the case tests what it should


def _check_remasks(sampler, x, tokens, info):
  del sampler, x, tokens
  assert int(np.asarray(info.num_remasked).sum()) > 0          # the remasking path ran


def _check_p2(sampler, x, tokens, info):
  _check_remasks(sampler, x, tokens, info)
  assert isinstance(info, P2Info) and isinstance(sampler.init(x), P2State)


def _check_rows_wait(sampler, x, tokens, info):
  """Batch invariance is only tested if some row waited for another within a block."""
  del sampler, x, tokens
  waited = (np.asarray(info.num_decoded) == 0) & (np.asarray(info.nfe)[:, None] == 1)
  assert waited.any()


CACHED = dict(vocab_size=7, max_len=12)      # two blocks of 4 after a 4-token prompt


def _cached_x_init():
  prompt = jax.random.randint(jax.random.key(3), (3, 4), 0, CACHED["vocab_size"])
  return jnp.full((3, CACHED["max_len"]), CACHED["vocab_size"], jnp.int32).at[:, :4].set(prompt)


CASES = {
    "tau_leaping": Case("tau_leaping", lambda make, m: make(m, mask_id=MASK, num_steps=6)),
    "topk_margin_algtemp": Case("confidence", lambda make, m: make(
        m, mask_id=MASK, num_steps=8, proxy="margin", alg_temp=0.5, temperature=0.7)),
    "factor_sampledprob": Case("confidence", lambda make, m: make(
        m, mask_id=MASK, rule="factor", proxy="sampled_prob", factor=2.0)),
    "eb": Case("eb", lambda make, m: make(m, mask_id=MASK, gamma=0.5)),
    "semi_ar_topk": Case("confidence", lambda make, m: semi_ar(
        make, m, block_length=3, gen_length=6, mask_id=MASK, num_steps=4),
                         x_init=lambda: _x_init(prompt_len=2)),
    "semi_ar_eb": Case("eb", lambda make, m: semi_ar(
        make, m, block_length=2, mask_id=MASK, gamma=0.2, threshold=0.8, temperature=1.0)),
    # ReMDM's state-dependent strategy (conf) with top-p and MDLM's grid (tests/test_remdm.py).
    "remdm_conf": Case("remdm", lambda make, m: make(
        m, mask_id=5, num_steps=6, strategy="conf", top_p=0.9, t_min=1e-5,
        record_trajectory=True), model=lambda: testing.mixing_model(5, 6, seed=42),
                       x_init=lambda: testing.random_prompts(jax.random.key(8), 4, 6, 5, 5),
                       rng_key=0, remasking=True, check=_check_remasks),
    # P2 RDM-style (eta = 1, remasking) with a Partial BERT-style planner (tests/test_p2.py).
    "p2_rdm_planner": Case("p2", lambda make, m: make(
        m, mask_id=5, num_steps=5, eta=1.0, kappa="sine", planner=denoiser_planner(m)),
                           model=lambda: testing.mixing_model(5, 6, seed=42),
                           x_init=lambda: testing.random_prompts(jax.random.key(6), 4, 6, 5, 5),
                           rng_key=0, remasking=True, check=_check_p2),
    # The dual cache (whose reference mixes batch rows) on the 2-layer time-conditioned model of
    # tests/test_block_cache.py, where the cache is stale; the prefix cache shares all but its
    # query range.
    "block_cache_dual": Case("block_cache", lambda make, m: make(
        m, mask_id=7, cache="dual", rule="threshold", threshold=0.6, block_length=4,
        gen_length=8), model=lambda: cached_toy_denoiser(2, True, **CACHED)[2],
                             x_init=_cached_x_init, mask_id=7, vocab_size=7, rng_key=5,
                             check=_check_rows_wait),
}


def test_every_registered_sampler_has_a_battery_case():
  """The battery's parametrization covers exactly the registry: a new SAMPLERS entry fails here
  until it has a case below."""
  assert {case.entry for case in CASES.values()} == set(masked.SAMPLERS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_battery(name):
  case = CASES[name]
  sampler = case.build(masked.SAMPLERS[case.entry], case.model())
  x = case.x_init()
  tokens, info = battery.run_battery(sampler, x, mask_id=case.mask_id,
                                     vocab_size=case.vocab_size, remasking=case.remasking,
                                     rng_key=jax.random.key(case.rng_key))
  assert tokens.shape == x.shape
  if case.check is not None:
    case.check(sampler, x, tokens, info)


# Extra hyper-parameters of each constructor for the bad-input checks (on the V = L = 3 toy).
BAD_INPUT_KWARGS = {"tau_leaping": dict(num_steps=4), "confidence": dict(num_steps=3), "eb": {},
                    "remdm": dict(num_steps=4), "p2": dict(num_steps=4)}


@pytest.mark.parametrize("entry", sorted(BAD_INPUT_KWARGS))
def test_rejects_bad_inputs(entry, denoiser):
  """Every sampler over ``denoise_fn`` rejects bad ``x_init`` / keys / ``mask_id`` / models before
  compiling, naming the argument (the block cache's checks are in test_block_cache.py)."""
  make, kwargs = masked.SAMPLERS[entry], BAD_INPUT_KWARGS[entry]
  assert_rejects_bad_inputs(lambda m, mask_id: make(m, mask_id=mask_id, **kwargs), denoiser,
                            mask_id=3, length=3)
  assert set(BAD_INPUT_KWARGS) == set(masked.SAMPLERS) - {"block_cache"}


def test_battery_catches_a_broken_sampler():
  """A sampler that rewrites a decoded token must fail the carry-over check, one that emits
  MASK the no-mask check."""
  case = CASES["tau_leaping"]     # same model and config: compiled already
  good = case.build(masked.SAMPLERS[case.entry], case.model())
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


def test_row_keys_fold_in_step_then_row():
  """The per-row keys every sampler draws from: row r of step i is fold_in(fold_in(key, i), r),
  for a scalar step and for per-row steps (the block caches' own step counts); a row's key does
  not depend on the batch size."""
  key = jax.random.key(11)
  data = lambda k: jax.random.key_data(k)
  keys = driver.row_keys(key, jnp.int32(4), 3)
  for r in range(3):
    want = jax.random.fold_in(jax.random.fold_in(key, 4), r)
    np.testing.assert_array_equal(data(keys[r]), data(want))
  steps = jnp.array([0, 5, 2], jnp.int32)
  per_row = driver.row_keys(key, steps, 3)
  for r in range(3):
    want = jax.random.fold_in(jax.random.fold_in(key, int(steps[r])), r)
    np.testing.assert_array_equal(data(per_row[r]), data(want))
  np.testing.assert_array_equal(data(driver.row_keys(key, 4, 1)[0]), data(keys[0]))
