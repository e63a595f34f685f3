"""Masked-diffusion samplers: pure functions over ``denoise_fn(tokens, t) -> logits``.

Every constructor closes over the model and its hyper-parameters and returns a
:class:`partext_jax.base.SamplingAlgorithm` ``(init, step, sample)``; ``sample`` runs the whole
trajectory in one ``lax`` loop, compiled once per shape. :data:`SAMPLERS` names them all::

    from partext_jax import masked
    sampler = masked.SAMPLERS["tau_leaping"](denoise_fn, mask_id=V, num_steps=64)
    tokens, info = sampler.sample(jax.random.key(0), x_init)
    # the same constructor: masked.tau_leaping.tau_leaping (the module keeps its name)

Modules: :mod:`~partext_jax.masked.tau_leaping` (ancestral / Euler), :mod:`~.adaptive` (the
confidence frame: top-k, threshold, factor, EB), :mod:`~.rules` (its unmasking rules and their
registry), :mod:`~.blocks` (semi-autoregressive blocks), :mod:`~.block_cache` (Fast-dLLM
prefix / dual caches), :mod:`~.remdm` (remasking), :mod:`~.p2` (path planning),
:mod:`~.categorical` (exact draws), :mod:`~.driver` (what they share). A new sampler is one
module plus one line in :data:`SAMPLERS`. The math is in ``docs/algorithms.md``.
"""

from partext_jax.masked import (adaptive, block_cache, blocks, categorical, driver, p2, remdm,
                                rules, tau_leaping)
from partext_jax.masked.adaptive import confidence, eb_sampler
from partext_jax.masked.blocks import semi_ar
from partext_jax.masked.driver import MaskedSampler

# Name -> constructor. ``block_cache`` takes the cached model protocol (``kv_denoise_fn``); the
# others take ``denoise_fn(tokens, t) -> logits``.
SAMPLERS = {
    "tau_leaping": tau_leaping.tau_leaping,
    "confidence": confidence,
    "eb": eb_sampler,
    "remdm": remdm.remdm,
    "p2": p2.p2,
    "block_cache": block_cache.block_cache,
}

__all__ = ["MaskedSampler", "SAMPLERS", "adaptive", "block_cache", "blocks", "categorical",
           "confidence", "driver", "eb_sampler", "p2", "remdm", "rules", "semi_ar", "tau_leaping"]
