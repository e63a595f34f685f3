"""Llama-family GGUF checkpoints into the Flax :class:`~partext_jax.models.llama.Llama`.

1. the metadata becomes a frozen :class:`~partext_jax.models.llama.LlamaConfig`;
2. every tensor is dequantised (:func:`partext_jax.pretrained.gguf.dequantize`);
3. llama.cpp's Q/K row permutation is undone and every matrix reshaped into the Flax layout;
   the per-layer tensors ``blk.{i}.*`` are stacked on a leading layer axis, as the scanned
   layers of :func:`~partext_jax.models.llama.layer_stack` take them
   (``params["layers"]["attn"]["q"]["kernel"]: [num_layers, embed, heads, head_dim]``), or kept
   per layer with ``scan_layers=False``.

Usage::

    config, params = load_gguf(gguf.smollm2_path())
    out = LlamaLM(config)(params, tokens, positions, None, None, None)     # LMOutput
    bundle = load_bundle()            # (model, params, tokenizer) of the embedded SmolLM2
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.models.llama import LlamaConfig, LlamaLM, ModelBundle
from partext_jax.pretrained import quantize as quantize_lib
from partext_jax.pretrained import tokenizer as tokenizer_lib
from partext_jax.pretrained.gguf import (SUPPORTED_ARCHITECTURES, GGUFError, dequantize, open_gguf,
                                         read_metadata, smollm2_path, unpermute_qk)


def config_from_metadata(meta: dict[str, Any], *, path: str = "<gguf>",
                         architectures=SUPPORTED_ARCHITECTURES) -> LlamaConfig:
  """Builds a :class:`LlamaConfig` from GGUF metadata ``meta`` (:func:`read_metadata`) of the
  file ``path`` (named in errors); raises :class:`GGUFError` on gaps.

  ``architectures``: the ``general.architecture`` values accepted (the Llama block stack under
  other names, e.g. ``("llada", "dream")`` for :mod:`partext_jax.pretrained.dllm`).
  """
  arch = meta.get("general.architecture")
  if arch not in architectures:
    raise GGUFError(
        f"{path!r} describes architecture {arch!r}; supported architectures: "
        f"{list(architectures)}")

  def need(key):
    full = f"{arch}.{key}"
    if full not in meta:
      raise GGUFError(f"{path!r} lacks the metadata field {full!r}")
    return meta[full]

  hidden = int(need("embedding_length"))
  heads = int(need("attention.head_count"))
  kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
  head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
  rope_dim = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
  if rope_dim != head_dim:
    raise GGUFError(f"{path!r}: partial rotary embeddings (rope.dimension_count={rope_dim} < "
                    f"head_dim={head_dim}) are not supported")
  if meta.get(f"{arch}.rope.scaling.type") not in (None, "none"):
    raise GGUFError(f"{path!r}: RoPE scaling {meta[f'{arch}.rope.scaling.type']!r} is not "
                    "supported")
  vocab = meta.get(f"{arch}.vocab_size")
  if vocab is None:
    raise GGUFError(f"{path!r} lacks '{arch}.vocab_size'")

  def token_id(key):
    v = meta.get(f"tokenizer.ggml.{key}")
    return None if v is None else int(v)

  return LlamaConfig(
      vocab_size=int(vocab),
      hidden_size=hidden,
      intermediate_size=int(need("feed_forward_length")),
      num_layers=int(need("block_count")),
      num_heads=heads,
      num_kv_heads=kv_heads,
      head_dim=head_dim,
      rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
      rms_eps=float(need("attention.layer_norm_rms_epsilon")),
      context_length=int(need("context_length")),
      tie_embeddings=True,  # fixed below from the tensor list
      bos_id=token_id("bos_token_id"),
      eos_id=token_id("eos_token_id"),
      pad_id=token_id("padding_token_id"),
  )


def load_gguf(path: str, dtype=jnp.float32, *, scan_layers: bool = True,
              quantization: str | None = None
              ) -> tuple[LlamaConfig, dict]:
  """Reads ``path`` into ``(config, params)`` for :class:`~partext_jax.models.llama.Llama`.

  Args:
    path: a GGUF file (e.g. :func:`smollm2_path`).
    dtype: parameter dtype (``jnp.float32``; ``jnp.bfloat16`` halves memory but XLA:CPU bf16
      matmuls are much slower). ``config.dtype`` is set to match.
    scan_layers: the layer layout, set in ``config`` too: stacked for a scan (default, a short
      compilation) or per layer (``params["layers"][str(i)]``, the fastest CPU decode; see
      :func:`~partext_jax.models.llama.layer_stack`).
    quantization: ``None`` or ``"int8"``: weight-only int8 decoder-layer kernels
      (:func:`partext_jax.pretrained.quantize.quantize_params`, dequantised inside the model's
      forward; ``docs/algorithms.md#weight-only-quantization``).
  Returns:
    ``config``, and ``params`` (plain arrays, no logical-axis boxes; see
    :func:`~partext_jax.models.llama.param_logical_axes`).
  Raises:
    FileNotFoundError, or :class:`GGUFError` naming the file and the problem; ``ValueError``
    for an unknown ``quantization``.
  """
  quantize_lib.check_scheme(quantization)
  path = os.fspath(path)
  reader = open_gguf(path)
  meta = read_metadata(reader)
  config = config_from_metadata(meta, path=path)
  tensors = {t.name: t for t in reader.tensors}
  tied = "output.weight" not in tensors
  config = config.replace(tie_embeddings=tied, dtype=jnp.dtype(dtype).name,
                          scan_layers=scan_layers)

  def get(name):
    if name not in tensors:
      raise GGUFError(f"{path!r} lacks the tensor {name!r} needed by a {config.num_layers}-layer "
                      "llama model")
    return dequantize(tensors[name], path=path)

  def check(name, arr, shape):
    if arr.shape != shape:
      raise GGUFError(f"{path!r}: tensor {name!r} has shape {arr.shape}, expected {shape} from "
                      "the metadata")
    return arr

  c = config
  e, h, g, d, f = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size
  cast = lambda a: jnp.asarray(a, dtype=dtype)
  emb = check("token_embd.weight", get("token_embd.weight"), (c.vocab_size, e))
  params: dict[str, Any] = {"embed": {"embedding": cast(emb)}}

  def layer(i):
    p = f"blk.{i}."
    wq = check(p + "attn_q.weight", get(p + "attn_q.weight"), (h * d, e))
    wk = check(p + "attn_k.weight", get(p + "attn_k.weight"), (g * d, e))
    wv = check(p + "attn_v.weight", get(p + "attn_v.weight"), (g * d, e))
    wo = check(p + "attn_output.weight", get(p + "attn_output.weight"), (e, h * d))
    wg = check(p + "ffn_gate.weight", get(p + "ffn_gate.weight"), (f, e))
    wu = check(p + "ffn_up.weight", get(p + "ffn_up.weight"), (f, e))
    wd = check(p + "ffn_down.weight", get(p + "ffn_down.weight"), (e, f))
    return {
        "attn_norm": {"scale": check(p + "attn_norm.weight", get(p + "attn_norm.weight"), (e,))},
        "attn": {
            # (out, in) -> (in, heads, head_dim), after undoing the RoPE row permutation.
            "q": {"kernel": unpermute_qk(wq, h).T.reshape(e, h, d)},
            "k": {"kernel": unpermute_qk(wk, g).T.reshape(e, g, d)},
            "v": {"kernel": wv.T.reshape(e, g, d)},
            "o": {"kernel": wo.T.reshape(h, d, e)},
        },
        "mlp_norm": {"scale": check(p + "ffn_norm.weight", get(p + "ffn_norm.weight"), (e,))},
        "mlp": {"gate": {"kernel": wg.T}, "up": {"kernel": wu.T}, "down": {"kernel": wd.T}},
    }

  layers = [layer(i) for i in range(c.num_layers)]
  if scan_layers:   # every tensor stacked on a leading layer axis
    params["layers"] = jax.tree.map(lambda *xs: cast(np.stack(xs)), *layers)
  else:
    params["layers"] = {str(i): jax.tree.map(cast, p) for i, p in enumerate(layers)}
  params["final_norm"] = {"scale": cast(check("output_norm.weight", get("output_norm.weight"),
                                              (e,)))}
  if not tied:
    params["lm_head"] = {"kernel": cast(check("output.weight", get("output.weight"),
                                              (c.vocab_size, e)).T)}
  return config, quantize_lib.quantize_params(params, quantization)


def load_smollm2(dtype=jnp.float32, *, scan_layers: bool = True) -> tuple[LlamaConfig, dict]:
  """:func:`load_gguf` on the embedded SmolLM2-135M-Instruct file, parameters in ``dtype``;
  ``scan_layers`` as :func:`load_gguf`."""
  return load_gguf(smollm2_path(), dtype=dtype, scan_layers=scan_layers)


def load_bundle(path: str | None = None, dtype=jnp.float32, *, scan_layers: bool = True,
                quantization: str | None = None):
  """``ModelBundle(model, params, tokenizer)`` from the GGUF file ``path`` (default: the embedded
  SmolLM2), parameters in ``dtype`` (float32 by default); ``scan_layers`` and ``quantization``
  as :func:`load_gguf`."""
  path = smollm2_path() if path is None else path
  config, params = load_gguf(path, dtype=dtype, scan_layers=scan_layers,
                             quantization=quantization)
  return ModelBundle(LlamaLM(config), params, tokenizer_lib.load_tokenizer(path))
