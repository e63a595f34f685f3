"""partext-jax: parallel text generation in JAX.

One package per generation family over one contract layer (:mod:`partext_jax.base`):

* :mod:`partext_jax.masked` -- masked-diffusion samplers over ``denoise_fn(tokens, t)``;
* :mod:`partext_jax.ar` -- autoregressive generation and draft-and-verify (speculative)
  decoding over the :class:`~partext_jax.base.CausalLM` protocol;
* :mod:`partext_jax.nat` -- non-autoregressive generation (one-shot CTC / GLAT, the
  Levenshtein Transformer); :mod:`partext_jax.edit` -- Edit Flows (insert / delete /
  substitute edits in continuous time);
* :mod:`partext_jax.models` (Flax models), :mod:`partext_jax.pretrained` (real checkpoints),
  ``partext_jax.kernels`` (Pallas kernels), :mod:`partext_jax.parallel` (meshes and sharded
  runs), :mod:`partext_jax.training`, :mod:`partext_jax.data`, :mod:`partext_jax.testing`
  (test doubles), :mod:`partext_jax.evaluation` (sample quality).

The README's "Architecture" section draws the map; ``docs/algorithms.md`` holds the math.
"""

from partext_jax import _deprecated
from partext_jax.schedules import MaskingSchedule, get_schedule

_deprecated.install()

__version__ = "0.2.0"
__all__ = ["MaskingSchedule", "get_schedule", "__version__"]
