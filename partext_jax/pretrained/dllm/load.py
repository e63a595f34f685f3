"""``load_dllm``: a LLaDA / Dream checkpoint (GGUF file or HF directory) as a
:class:`DLLMBundle`."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, NamedTuple, Sequence

import jax.numpy as jnp

from partext_jax import parallel
from partext_jax.base import checked_choice
from partext_jax.pretrained import gguf as gguf_lib
from partext_jax.pretrained import tokenizer as tokenizer_lib
from partext_jax.pretrained.dllm import checkpoint, model as model_lib, text
from partext_jax.pretrained.dllm.spec import (DLLMError, DLLMSpec, spec_from_gguf_metadata,
                                              spec_from_hf_config)

DTYPES = ("float32", "bfloat16")
GGUF_TOKEN_UNUSED = 5   # gguf.TokenType.UNUSED


class DLLMBundle(NamedTuple):
  """A loaded diffusion LM: the adapter, its parameters, the tokenizer and the spec.

  ``denoise_fn`` / ``kv_denoise_fn`` are the sampler-facing models (``jax.tree_util.Partial``
  over ``params``: new weights of the same shapes reuse compiled samplers); ``mask_id`` the id to
  pass as ``mask_id=``.
  """
  model: model_lib.DiffusionLM
  params: Any
  tokenizer: tokenizer_lib.GGUFTokenizer
  spec: DLLMSpec

  @property
  def mask_id(self) -> int:
    return self.spec.mask_id

  @property
  def denoise_fn(self):
    """``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]``."""
    return model_lib.denoise_fn(self.model, self.params)

  @property
  def kv_denoise_fn(self):
    """The cached model of :mod:`partext_jax.masked.block_cache`."""
    return model_lib.kv_denoise_fn(self.model, self.params)

  def with_options(self, **changes) -> "DLLMBundle":
    """The bundle with adapter fields replaced (``eos_penalty``, ``mesh``, ``rules``)."""
    return self._replace(model=dataclasses.replace(self.model, **changes))

  def prompt_ids(self, prompt: str, *, chat: bool = True, system: str | None = None) -> list[int]:
    """Token ids of ``prompt``, in the chat format (:func:`text.chat_prompt`) when ``chat``."""
    if chat:
      return self.tokenizer.encode(text.chat_prompt(self.tokenizer, prompt, system=system),
                                   add_bos=False)
    return self.tokenizer.encode(prompt)

  def x_init(self, prompt_ids: Sequence[int], *, gen_length: int, batch: int = 1):
    """``int32[batch, len(prompt_ids) + gen_length]``: the prompt then MASKs."""
    return text.prompt_batch(prompt_ids, gen_length=gen_length, batch=batch,
                             mask_id=self.spec.mask_id)

  def text(self, tokens, *, prompt_length: int) -> str:
    """The generated text of one row, ending at the first EOS / end of turn."""
    return text.generated_text(self.tokenizer, tokens, prompt_length=prompt_length,
                               eos_ids=self.spec.eos_ids)


def _finish_spec(spec: DLLMSpec, tokenizer, exclude_ids: Sequence[int], where: str) -> DLLMSpec:
  """Checks the tokenizer against the model; adds end-of-turn ids and the never-generate ids
  (the embedding rows past the tokenizer's vocabulary, and ``exclude_ids``)."""
  v, n = spec.vocab_size, tokenizer.vocab_size
  if n > v:
    raise DLLMError(f"{where}: the tokenizer has {n} tokens (tokenizer vocab_size) but the model's "
                    f"vocab_size is {v}: ids >= {v} have no embedding row")
  if spec.mask_id >= n:
    raise DLLMError(f"{where}: mask_token_id={spec.mask_id} is not a token of the tokenizer "
                    f"({n} tokens)")
  eos = spec.eos_ids + text.end_of_turn_ids(tokenizer) + (
      () if tokenizer.eos_id is None else (tokenizer.eos_id,))
  return spec.replace(eos_ids=eos,
                      exclude_ids=tuple(exclude_ids) + tuple(range(n, v)) + spec.exclude_ids)


def _gguf(path: str):
  reader = gguf_lib.open_gguf(path)
  meta = gguf_lib.read_metadata(reader)
  source = checkpoint.GGUFSource(reader, path)
  embed = checkpoint.gguf_name("embed")
  if embed not in source:
    raise DLLMError(f"GGUF file {path!r} lacks the tensor {embed!r}")
  spec = spec_from_gguf_metadata(meta, vocab_size=source.rows(embed),
                                 tied=checkpoint.gguf_name("lm_head") not in source, path=path)
  # llama.cpp pads the token list to the vocabulary with UNUSED entries: never generate them.
  field = reader.fields.get("tokenizer.ggml.token_type")
  types = [] if field is None else field.contents()
  unused = tuple(i for i, kind in enumerate(types) if int(kind) == GGUF_TOKEN_UNUSED)
  return spec.replace(exclude_ids=unused), source, tokenizer_lib.load_tokenizer(path)


def _hf(directory: str):
  config_path = os.path.join(directory, "config.json")
  if not os.path.isfile(config_path):
    raise DLLMError(f"{directory!r} lacks config.json")
  with open(config_path, encoding="utf-8") as f:
    cfg = json.load(f)
  gen = text.read_json(os.path.join(directory, "generation_config.json"))
  spec = spec_from_hf_config(cfg, path=directory, generation_config=gen)
  return spec, checkpoint.SafetensorsSource(directory), text.load_hf_tokenizer(directory, cfg)


def load_dllm(path: str, *, dtype: str = "float32", mesh=None, rules=parallel.DEFAULT_RULES,
              eos_penalty: float = 0.0, exclude_ids: Sequence[int] = ()) -> DLLMBundle:
  """Loads a LLaDA / Dream checkpoint (Nie et al. 2025; Ye et al. 2025) for the masked samplers.

  Args:
    path: a GGUF file (``general.architecture`` ``llada`` / ``dream``, llama.cpp's converter) or
      an HF-style directory (``config.json``, ``tokenizer.json``, ``*.safetensors`` or a sharded
      ``model.safetensors.index.json``) with the published key names.
    dtype: ``"float32"`` (quantised GGUF tensors are dequantised) or ``"bfloat16"``; the
      parameters and the activations use it (the norms and attention softmax run in float32).
    mesh: optional ``jax.sharding.Mesh``: every tensor goes straight to its shards by the
      logical-axis ``rules`` (FSDP x tensor parallel, :mod:`partext_jax.parallel.mesh`), one
      tensor at a time on the host; the adapter pins activations to the mesh.
    eos_penalty: the adapter's EOS penalty (``docs/algorithms.md#real-diffusion-lms-llada-dream``).
    exclude_ids: further never-generate ids (besides the MASK id and the embedding rows beyond
      the tokenizer's vocabulary).

  Returns:
    :class:`DLLMBundle` ``(model, params, tokenizer, spec)``.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    DLLMError: a ``ValueError`` naming the field -- a causal model (a Llama GGUF,
      ``attention.causal = true``), an unknown architecture, a missing ``mask_token_id``, a
      tokenizer larger than the model's vocabulary, a missing tensor, a shape mismatch.
  """
  checked_choice("dtype", dtype, DTYPES)
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist (a GGUF file or an HF directory)")
  spec, source, tokenizer = _hf(path) if os.path.isdir(path) else _gguf(path)
  spec = _finish_spec(spec, tokenizer, exclude_ids, repr(path))
  spec = spec.replace(config=spec.config.replace(dtype=jnp.dtype(dtype).name))
  params = checkpoint.load_params(checkpoint.tensor_reader(source, spec), spec.config,
                                  dtype=dtype, mesh=mesh, rules=rules)
  model = model_lib.DiffusionLM(spec, eos_penalty=eos_penalty, mesh=mesh, rules=rules)
  return DLLMBundle(model, params, tokenizer, spec)
