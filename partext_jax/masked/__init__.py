"""Masked-diffusion samplers: pure functions over ``denoise_fn(tokens, t) -> logits``.

Every constructor closes over the model and its hyper-parameters and returns a
:class:`partext_jax.base.SamplingAlgorithm` ``(init, step, sample)``; ``sample`` runs the whole
trajectory in one ``lax`` loop, compiled once per shape. :data:`SAMPLERS` names them all::

    from partext_jax import masked
    sampler = masked.SAMPLERS["tau_leaping"](denoise_fn, mask_id=V, num_steps=64)
    tokens, info = sampler.sample(jax.random.key(0), x_init)
    # the same constructor: masked.tau_leaping.tau_leaping (the module keeps its name)

Modules (the math of each is in ``docs/algorithms.md``, at the anchor named):

* :mod:`~partext_jax.masked.tau_leaping` -- ancestral / Euler tau-leaping (``#tau-leaping``);
* :mod:`~partext_jax.masked.adaptive` -- the confidence frame and the EB-sampler
  (``#confidence-based-adaptive-decoding``, ``#eb-sampler``), with its unmasking rules and
  their registry in :mod:`~partext_jax.masked.rules`;
* :mod:`~partext_jax.masked.blocks` -- semi-autoregressive blocks (``#semi-autoregressive-blocks``);
* :mod:`~partext_jax.masked.block_cache` -- Fast-dLLM prefix / dual caches (``#block-caches``);
* :mod:`~partext_jax.masked.remdm` -- ReMDM remasking (``#remdm-remasking``);
* :mod:`~partext_jax.masked.p2` -- P2 path planning (``#p2-path-planning``);
* :mod:`~partext_jax.masked.categorical` -- exact categorical draws
  (``#exact-categorical-draws``);
* :mod:`~partext_jax.masked.driver` -- what they share: per-row keys, time grid, noise removal,
  loops, assembly and input checks.

A new sampler is one module (a frozen config, ``build_kernel``, ``init_state``, closed by
:func:`~partext_jax.masked.driver.scan_sampler`) plus one line in :data:`SAMPLERS`;
``tests/test_sampler_battery.py`` fails until the new entry has a case in the shared invariant
battery (``docs/algorithms.md#correctness-properties``).
"""

from partext_jax.masked import (adaptive, block_cache, blocks, categorical, driver, p2, remdm,
                                rules, tau_leaping)
from partext_jax.masked.adaptive import confidence, eb_sampler
from partext_jax.masked.blocks import semi_ar
from partext_jax.masked.driver import MaskedSampler

# Name -> constructor. ``block_cache`` takes the cached model protocol (``kv_denoise_fn``); the
# others take ``denoise_fn(tokens, t) -> logits``. ``semi_ar`` is not an entry: it wraps the
# adaptive constructors (``confidence``, ``eb``), which take ``block_length=`` themselves.
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
