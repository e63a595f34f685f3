"""Autoregressive generation over the :class:`partext_jax.base.CausalLM` protocol
(``docs/algorithms.md#autoregressive-sampling-and-logits-processors``,
``docs/algorithms.md#speculative-decoding``).

* :mod:`~partext_jax.ar.sampling` -- prefill + ``lax.while_loop`` decode with a KV cache,
  ragged prompts, streaming; ``generate`` / ``generate_text``.
* :mod:`~partext_jax.ar.processors` -- composable logits processors (temperature, top-k, top-p,
  greedy), hashable so they are static jit arguments.
* :mod:`~partext_jax.ar.speculative` -- draft-and-verify decoding: token trees, lossless
  verification, the compiled decode loop and its drafters.
* :mod:`~partext_jax.ar.apd` -- adaptive parallel decoding: a diffusion drafter and an AR
  verifier under a product-of-experts target (``docs/algorithms.md#apd``).
"""

from partext_jax.ar import processors, sampling
from partext_jax.ar.sampling import GenerateInfo, GeneratedText, generate, generate_text

__all__ = ["GenerateInfo", "GeneratedText", "generate", "generate_text", "processors", "sampling"]
