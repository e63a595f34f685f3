"""APD (``docs/algorithms.md#apd``) on enumerable toys: exact laws by TV tests, R = 1 accepts
everything, one compile, bad input.

Toy: texts ``x_0 .. x_3`` over ``V = 3`` tokens, the prompt ``x_0``; the drafter is the exact
denoiser of a joint (:class:`~partext_jax.ar.speculative.drafters.diffusion.PrefixAligned`),
the verifier the exact left-to-right factorisation of a joint (:class:`JointConditionals`). The
empirical law of ``n`` generated texts is compared with the exact one in total variation against
the distribution-free bound :func:`partext_jax.testing.tv_tolerance` (false alarm ``1e-6``);
each statistical test is shown to fire on a deliberately wrong sampler, whose exact TV to the
claimed law is checked to exceed twice the bound first.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax import testing
from partext_jax.ar import apd
from partext_jax.ar import processors as lp
from partext_jax.ar.speculative.drafters.diffusion import DiffusionDrafter, PrefixAligned
from partext_jax.testing import FunctionLM

V, L, M = 3, 4, 2
N = L - 1  # generated tokens
MASK, PAD = V, V + 1
PROMPT = [1]
ROWS = 4000
FAST_COMPILE = {"xla_backend_optimization_level": 0}
TOL = testing.tv_tolerance(ROWS, V ** N)


class JointConditionals:
  """``logits_fn`` of the exact left-to-right factorisation of a joint ``[(V,) * L]``: logits at
  ``t`` are ``log p(x_{t+1} | x_0 .. x_t)`` (uniform past ``L``). Hashed by identity."""

  def __init__(self, joint):
    self.length = joint.ndim
    self.denoise = testing.exact_denoiser(joint, mask_id=MASK)

  def __call__(self, tokens):
    n, t = tokens.shape
    text = jnp.pad(tokens, ((0, 0), (0, max(0, self.length - t))))[:, :self.length]
    out = []
    for i in range(t):
      if i + 1 >= self.length:
        out.append(jnp.zeros((n, V), jnp.float32))
        continue
      masked = jnp.where(jnp.arange(self.length)[None] <= i, text, MASK)
      out.append(self.denoise(masked, None)[:, i + 1])
    return jnp.stack(out, axis=1)


def product_joint(seed):
  """Independent positions with position-dependent laws: marginals = conditionals."""
  rng = np.random.default_rng(seed)
  out = np.ones(())
  for _ in range(L):
    out = out[..., None] * rng.dirichlet(np.full(V, 0.7))
  return out


def drafter_of(joint):
  den = PrefixAligned(testing.exact_denoiser(joint, mask_id=MASK), L, pad_id=PAD, mask_id=MASK)
  return DiffusionDrafter(den, vocab_size=V, mask_id=MASK, gamma=M, context_len=L, pad_id=PAD)


def verifier_of(joint):
  return FunctionLM(JointConditionals(joint), vocab_size=V)


def continuation_law(joint):
  """Exact law of ``x_1 .. x_{L-1}`` given the prompt."""
  cond = joint[PROMPT[0]]
  return cond / cond.sum()


def first_then_ar(draft_joint, verifier_joint):
  """``x_1`` from the drafter's first marginal, the rest from the verifier's conditionals."""
  q1 = testing.marginals(continuation_law(draft_joint))[0]
  law = continuation_law(verifier_joint)
  cond = law / law.sum(axis=(1, 2), keepdims=True)
  return q1[:, None, None] * cond


def run(drafter, verifier, r, *, seed=0, rows=ROWS, **kw):
  out, info = apd.generate(jax.random.key(seed), verifier, None, [PROMPT] * rows, drafter=drafter,
                           drafter_params=None, mixture_weight=r, max_new_tokens=N,
                           processor=lp.identity(), eos_id=None, min_bucket=1,
                           compiler_options=FAST_COMPILE, **kw)
  return np.asarray(out), info


def tv_to(samples, law):
  return testing.total_variation(testing.empirical_distribution(samples, vocab_size=V), law)


JOINT = testing.random_joint(0, vocab_size=V, length=L, concentration=0.5)
WRONG = testing.random_joint(7, vocab_size=V, length=L, concentration=0.3)
PRODUCT = product_joint(1)


def test_r1_accepts_every_draft():
  """R = 1: the target is the drafter's own law sampled with the drafts' Gumbel noise."""
  out, info = run(drafter_of(WRONG), verifier_of(JOINT), 1.0, rows=64)
  assert out.shape == (64, N)
  np.testing.assert_array_equal(np.asarray(info.accepted), N)  # every committed token a draft
  np.testing.assert_array_equal(np.asarray(info.target_calls), -(-N // M))


@pytest.mark.parametrize("r", [0.0, 0.5, 1.0])
def test_exact_drafter_and_verifier_give_the_joint(r):
  """Drafter marginals = left-to-right conditionals (independent positions) and the exact
  verifier: the output follows the joint for every R."""
  out, info = run(drafter_of(PRODUCT), verifier_of(PRODUCT), r)
  assert tv_to(out, continuation_law(PRODUCT)) < TOL
  assert np.all(np.asarray(info.accepted) == N)  # drafts and targets agree everywhere


def test_r0_exact_denoiser_of_a_correlated_joint_gives_the_joint():
  """R = 0 with the exact denoiser (its first marginal is the exact conditional) of a
  correlated joint: every token is an exact left-to-right draw, although drafts get rejected."""
  out, info = run(drafter_of(JOINT), verifier_of(JOINT), 0.0)
  assert tv_to(out, continuation_law(JOINT)) < TOL
  assert np.asarray(info.accepted).sum() < N * ROWS  # rejections happened


def test_r0_wrong_drafter_follows_the_verifier_after_the_first_token():
  """R = 0, a wrong drafter: x_1 follows the drafter's first marginal (accepted unchecked),
  x_2 .. x_N the verifier's conditionals exactly."""
  law = first_then_ar(WRONG, JOINT)
  out, info = run(drafter_of(WRONG), verifier_of(JOINT), 0.0)
  assert tv_to(out, law) < TOL
  assert np.asarray(info.accepted).sum() > 0


def test_tv_tests_fire_on_wrong_samplers():
  """The paper's rule verbatim (forced first draft every round, no target sample committed) is
  not exact sampling of the verifier at R = 0; and R = 1 with a wrong drafter is not the joint."""
  law = first_then_ar(WRONG, JOINT)
  out, _ = run(drafter_of(WRONG), verifier_of(JOINT), 0.0, commit_target=False)
  assert tv_to(out, law) > TOL
  wrong_law = testing.product_of_marginals(continuation_law(WRONG))
  assert testing.total_variation(wrong_law, continuation_law(PRODUCT)) > 2 * TOL
  out, _ = run(drafter_of(WRONG), verifier_of(PRODUCT), 1.0)
  assert tv_to(out, continuation_law(PRODUCT)) > TOL


def test_compiles_once_and_bad_input():
  drafter, verifier = drafter_of(JOINT), verifier_of(JOINT)
  fn = apd._generate_jit_with(tuple(sorted(FAST_COMPILE.items())))
  run(drafter, verifier, 0.5, rows=8, seed=0)
  before = fn._cache_size()
  run(drafter, verifier, 0.5, rows=8, seed=1)
  assert fn._cache_size() == before
  for r in (-0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match="mixture_weight"):
      run(drafter, verifier, r, rows=2)
  with pytest.raises(ValueError, match="gamma"):
    DiffusionDrafter(drafter.denoiser, vocab_size=V, mask_id=MASK, gamma=0)
  with pytest.raises(ValueError, match="passes"):
    run(DiffusionDrafter(drafter.denoiser, vocab_size=V, mask_id=MASK, gamma=2, passes=2,
                         context_len=L, pad_id=PAD), verifier, 0.5, rows=2)
  with pytest.raises(ValueError, match="vocab_size"):
    run(DiffusionDrafter(drafter.denoiser, vocab_size=V + 1, mask_id=MASK, gamma=2,
                         context_len=L, pad_id=PAD), verifier, 0.5, rows=2)
  with pytest.raises(TypeError, match="lacks"):
    run(object(), verifier, 0.5, rows=2)
