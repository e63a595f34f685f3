"""Shared fixtures: one enumerable joint over V = 3 tokens, L = 3 positions, and its exact denoiser.

Test modules using them define ``V, L = 3, 3`` and ``MASK = V`` to match.
"""

import pytest

from partext_jax import testing

V, L = 3, 3
MASK = V


@pytest.fixture(scope="module")
def joint():
  return testing.random_joint(0, vocab_size=V, length=L, concentration=0.5)


@pytest.fixture(scope="module")
def denoiser(joint):
  return testing.exact_denoiser(joint, mask_id=MASK)
