"""Real pretrained checkpoints: file formats, weight conversion and tokenizers.

* :mod:`~partext_jax.pretrained.gguf` -- reading GGUF files (metadata, dequantised tensors,
  llama.cpp's Q/K permutation); :func:`smollm2_path` locates the embedded SmolLM2-135M-Instruct.
* :mod:`~partext_jax.pretrained.llama` -- Llama-family GGUF checkpoints into
  :class:`partext_jax.models.llama.Llama`; :func:`load_bundle` returns
  ``(model, params, tokenizer)``.
* :mod:`~partext_jax.pretrained.tokenizer` -- the tokenizer stored in a GGUF file (HF
  ``tokenizers``) and the ChatML chat template.

Usage::

    from partext_jax import pretrained
    model, params, tok = pretrained.load_bundle()       # the embedded SmolLM2-135M-Instruct
"""

from partext_jax.pretrained.gguf import (GGUFError, dequantize, open_gguf, permute_qk,
                                         read_metadata, smollm2_path, supported_tensor_types,
                                         unpermute_qk)
from partext_jax.pretrained.llama import (config_from_metadata, load_bundle, load_gguf,
                                          load_smollm2)
from partext_jax.pretrained.tokenizer import GGUFTokenizer, apply_chat_template, load_tokenizer

__all__ = [
    "GGUFError", "GGUFTokenizer", "apply_chat_template", "config_from_metadata", "dequantize",
    "load_bundle", "load_gguf", "load_smollm2", "load_tokenizer", "open_gguf", "permute_qk",
    "read_metadata", "smollm2_path", "supported_tensor_types", "unpermute_qk",
]
