"""Test doubles shipped for users: enumerable toy distributions and their exact denoisers.

Also here: :mod:`~partext_jax.testing.battery` (the invariants every masked sampler is checked
against, ``docs/algorithms.md#correctness-properties``), :mod:`~partext_jax.testing.eager`
(eager reference loops), :mod:`~partext_jax.testing.ngram` and
:mod:`~partext_jax.testing.function_lm` (autoregressive toys).
"""

from partext_jax.testing.function_lm import FunctionLM
from partext_jax.testing.ngram import NGramTable, exact_continuation_probs, ngram_lm, random_ngram
from partext_jax.testing.toys import (
    all_sequences,
    constant_denoiser,
    empirical_distribution,
    exact_denoiser,
    marginals,
    markov_chain_joint,
    mixing_denoiser,
    mixing_model,
    product_of_marginals,
    random_joint,
    random_markov_chain,
    random_prompts,
    total_variation,
    tv_tolerance,
)

__all__ = [
    "FunctionLM",
    "NGramTable",
    "exact_continuation_probs",
    "ngram_lm",
    "random_ngram",
    "all_sequences",
    "constant_denoiser",
    "empirical_distribution",
    "exact_denoiser",
    "marginals",
    "mixing_denoiser",
    "mixing_model",
    "markov_chain_joint",
    "product_of_marginals",
    "random_joint",
    "random_markov_chain",
    "random_prompts",
    "total_variation",
    "tv_tolerance",
]
