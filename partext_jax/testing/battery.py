r"""The shared invariant battery every masked-diffusion sampler is run through.

The properties are those of ``docs/algorithms.md#correctness-properties`` (numbered there).

Each check takes a built :class:`partext_jax.masked.driver.MaskedSampler` and an initial batch
``x_init int32[B, L]`` (MASK at positions to generate, anything else a prompt / constraint),
raises ``AssertionError`` with a message on failure, and returns what it computed:

* :func:`check_no_mask` -- the output holds no MASK and only ids in ``[0, vocab_size)``
  (property 1);
* :func:`check_prompt_fixed` -- every non-MASK position of ``x_init`` is unchanged;
* :func:`check_determinism` -- a fixed key reproduces the output bit for bit (property 10);
* :func:`check_batch_invariance` -- row 0 sampled alone equals row 0 inside the batch, and is
  unchanged when the other rows are replaced (property 9);
* :func:`check_step_matches_sample` -- ``num_steps`` eager (un-jitted) ``step`` calls with the
  same key reproduce the jitted ``sample`` token for token (property 9, jit vs eager); along
  the way, at *every* step, prompt positions stay fixed and -- for non-remasking samplers --
  every unmasked token is carried over unchanged (property 1).

:func:`run_battery` runs them all (sharing one ``sample`` call). ``num_steps`` defaults to the
leading axis of ``info`` returned by ``sample`` (the house convention: per-step info stacked
along axis 0); samplers must make steps past their end no-ops, or pass ``num_steps``.

Example (in a test file)::

    from partext_jax.testing import battery
    sampler = remdm(denoise_fn, mask_id=V, num_steps=16, eta=0.02)   # any masked.SAMPLERS entry
    battery.run_battery(sampler, x_init, mask_id=V, vocab_size=V, remasking=True)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _default_key(rng_key):
  return jax.random.key(0) if rng_key is None else rng_key


def _sample_tokens(sampler, rng_key, x_init):
  tokens, info = sampler.sample(rng_key, x_init)
  return np.asarray(tokens), info


def check_no_mask(sampler, x_init, *, mask_id: int, vocab_size=None, rng_key=None, tokens=None):
  """Asserts the output has no MASK (and, if ``vocab_size`` is given, only real token ids)."""
  if tokens is None:
    tokens, _ = _sample_tokens(sampler, _default_key(rng_key), x_init)
  tokens = np.asarray(tokens)
  assert tokens.shape == np.shape(x_init), (tokens.shape, np.shape(x_init))
  assert not np.any(tokens == mask_id), (
      f"MASK id {mask_id} emitted at {np.argwhere(tokens == mask_id)[:5].tolist()}")
  if vocab_size is not None:
    bad = (tokens < 0) | (tokens >= vocab_size)
    assert not np.any(bad), f"ids outside [0, {vocab_size}): {np.unique(tokens[bad])[:10]}"
  return tokens


def check_prompt_fixed(sampler, x_init, *, mask_id: int, rng_key=None, tokens=None):
  """Asserts ``tokens[x_init != MASK] == x_init[x_init != MASK]``."""
  if tokens is None:
    tokens, _ = _sample_tokens(sampler, _default_key(rng_key), x_init)
  x, tokens = np.asarray(x_init), np.asarray(tokens)
  keep = x != mask_id
  np.testing.assert_array_equal(tokens[keep], x[keep], err_msg="prompt positions changed")
  return tokens


def check_determinism(sampler, x_init, *, rng_key=None, tokens=None):
  """Asserts two ``sample`` calls with the same key give identical tokens."""
  rng_key = _default_key(rng_key)
  first = _sample_tokens(sampler, rng_key, x_init)[0] if tokens is None else np.asarray(tokens)
  second = _sample_tokens(sampler, rng_key, x_init)[0]
  np.testing.assert_array_equal(first, second, err_msg="same key, different samples")
  return first


def check_batch_invariance(sampler, x_init, *, rng_key=None, other_rows=None, tokens=None):
  """Asserts row 0 alone == row 0 of the batch == row 0 when rows 1.. are ``other_rows``.

  ``other_rows`` (``int32[B - 1, L]``) defaults to rows 1.. of ``x_init`` in reverse order.
  """
  rng_key = _default_key(rng_key)
  x = jnp.asarray(x_init)
  if x.shape[0] < 2:
    raise ValueError(f"x_init needs >= 2 rows for a batch-invariance check, got {x.shape}")
  full = _sample_tokens(sampler, rng_key, x)[0] if tokens is None else np.asarray(tokens)
  alone = _sample_tokens(sampler, rng_key, x[:1])[0]
  np.testing.assert_array_equal(alone[0], full[0], err_msg="row alone != row in batch")
  other = x[1:][::-1] if other_rows is None else jnp.asarray(other_rows, x.dtype)
  mixed = _sample_tokens(sampler, rng_key, jnp.concatenate([x[:1], other]))[0]
  np.testing.assert_array_equal(mixed[0], full[0], err_msg="row 0 depends on the other rows")
  return full


def _num_steps_of(info) -> int:
  leaves = [leaf for leaf in jax.tree.leaves(info) if np.ndim(leaf) >= 1]
  if not leaves:
    raise ValueError("cannot infer num_steps from info (no stacked leaves): pass num_steps")
  return int(np.shape(leaves[0])[0])


def check_step_matches_sample(sampler, x_init, *, mask_id: int, rng_key=None, num_steps=None,
                              remasking: bool = False, tokens=None, info=None):
  """Eager ``step`` x ``num_steps`` (same key each call) == jitted ``sample``; per-step carry-over.

  At every step: prompt positions (non-MASK in ``x_init``) never change; if not ``remasking``,
  every position unmasked before the step keeps its token. Returns the final eager tokens.
  """
  rng_key = _default_key(rng_key)
  if tokens is None or (num_steps is None and info is None):
    tokens, info = _sample_tokens(sampler, rng_key, x_init)
  if num_steps is None:
    num_steps = _num_steps_of(info)
  x0 = np.asarray(x_init)
  prompt = x0 != mask_id
  state = sampler.init(x_init)
  prev = x0
  for i in range(num_steps):
    state, _ = sampler.step(rng_key, state)
    cur = np.asarray(state.tokens)
    np.testing.assert_array_equal(cur[prompt], x0[prompt],
                                  err_msg=f"prompt changed at step {i}")
    if not remasking:
      set_before = prev != mask_id
      np.testing.assert_array_equal(cur[set_before], prev[set_before],
                                    err_msg=f"a decoded token changed at step {i}")
    prev = cur
  np.testing.assert_array_equal(prev, np.asarray(tokens),
                                err_msg="eager step-by-step != jitted sample")
  return prev


def run_battery(sampler, x_init, *, mask_id: int, vocab_size=None, remasking: bool = False,
                rng_key=None, num_steps=None):
  """Runs every check above on ``sampler`` (one shared ``sample`` call; needs ``B >= 2``).

  Returns ``(tokens np.ndarray[B, L], info)`` of that call; raises ``AssertionError`` naming the
  failed property, or ``ValueError`` if ``x_init`` has fewer than 2 rows.
  """
  rng_key = _default_key(rng_key)
  tokens, info = _sample_tokens(sampler, rng_key, x_init)
  check_no_mask(sampler, x_init, mask_id=mask_id, vocab_size=vocab_size, tokens=tokens)
  check_prompt_fixed(sampler, x_init, mask_id=mask_id, tokens=tokens)
  check_determinism(sampler, x_init, rng_key=rng_key, tokens=tokens)
  check_batch_invariance(sampler, x_init, rng_key=rng_key, tokens=tokens)
  check_step_matches_sample(sampler, x_init, mask_id=mask_id, rng_key=rng_key,
                            num_steps=num_steps, remasking=remasking, tokens=tokens, info=info)
  return tokens, info
