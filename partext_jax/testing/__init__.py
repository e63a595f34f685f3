"""Test doubles shipped for users: enumerable toy distributions and their exact denoisers."""

from partext_jax.testing.toys import (
    all_sequences,
    constant_denoiser,
    empirical_distribution,
    exact_denoiser,
    marginals,
    markov_chain_joint,
    mixing_denoiser,
    product_of_marginals,
    random_joint,
    random_markov_chain,
    total_variation,
    tv_tolerance,
)

__all__ = [
    "all_sequences",
    "constant_denoiser",
    "empirical_distribution",
    "exact_denoiser",
    "marginals",
    "mixing_denoiser",
    "markov_chain_joint",
    "product_of_marginals",
    "random_joint",
    "random_markov_chain",
    "total_variation",
    "tv_tolerance",
]
