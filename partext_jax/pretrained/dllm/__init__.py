r"""Real diffusion LMs -- LLaDA (Nie et al. 2025) and Dream (Ye et al. 2025) -- for every masked
sampler, from the formats their weights are published in
(``docs/algorithms.md#real-diffusion-lms-llada-dream``).

* :func:`load_dllm` (:mod:`~partext_jax.pretrained.dllm.load`) -- a GGUF file or an HF directory
  into a :class:`DLLMBundle` ``(model, params, tokenizer, spec)``, optionally straight onto a
  device mesh; ``bundle.denoise_fn`` / ``bundle.kv_denoise_fn`` are the sampler-facing models.
* :mod:`~partext_jax.pretrained.dllm.spec` -- :class:`DLLMSpec` (architecture, MASK id inside the
  vocabulary, shifted logits, EOS ids, never-generate ids) from GGUF metadata / config.json;
  the published 8B / 7B sizes (:func:`llada_8b`, :func:`dream_7b`).
* :mod:`~partext_jax.pretrained.dllm.checkpoint` -- tensor names per format and the conversion
  into the Flax Llama tree, tensor by tensor onto the mesh.
* :mod:`~partext_jax.pretrained.dllm.model` -- :class:`DiffusionLM`, the adapter (shift, EOS
  penalty, the cached protocol of the Fast-dLLM block caches, sharding constraints).
* :mod:`~partext_jax.pretrained.dllm.text` -- tokenizers, chat templates, decoded text.
* :mod:`~partext_jax.pretrained.dllm.memory` -- the ``jax.eval_shape`` memory plan per device.
* :mod:`~partext_jax.pretrained.dllm.tiny` -- tiny random checkpoints in the real formats.

Usage::

    from partext_jax.masked import SAMPLERS
    from partext_jax.pretrained import dllm
    bundle = dllm.load_dllm("LLaDA-8B-Instruct/", dtype="bfloat16")
    ids = bundle.prompt_ids("What is 2 + 2?")                       # chat template applied
    x = bundle.x_init(ids, gen_length=128)
    sampler = SAMPLERS["confidence"](bundle.denoise_fn, mask_id=bundle.mask_id, num_steps=128,
                                     block_length=32, gen_length=128)
    tokens, info = sampler.sample(jax.random.key(0), x)
    print(bundle.text(tokens[0], prompt_length=len(ids)))
"""

from partext_jax.pretrained.dllm.load import DLLMBundle, load_dllm
from partext_jax.pretrained.dllm.memory import (MemoryPlan, format_memory_plan, memory_plan,
                                                plan_8_devices)
from partext_jax.pretrained.dllm.model import (ContextCache, DiffusionLM, denoise_fn,
                                               kv_denoise_fn)
from partext_jax.pretrained.dllm.spec import DLLMError, DLLMSpec, dream_7b, llada_8b
from partext_jax.pretrained.dllm.tiny import write_tiny_checkpoint

__all__ = [
    "ContextCache", "DLLMBundle", "DLLMError", "DLLMSpec", "DiffusionLM", "MemoryPlan",
    "denoise_fn", "dream_7b", "format_memory_plan", "kv_denoise_fn", "llada_8b", "load_dllm",
    "memory_plan", "plan_8_devices", "write_tiny_checkpoint",
]
