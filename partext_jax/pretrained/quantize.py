"""Weight-only int8 quantization of Llama parameters (per output channel, symmetric).

``docs/algorithms.md#weight-only-quantization``. A kernel ``W`` whose contraction axes are ``A``
(the input axes of the matmul) becomes ``int8`` values and one float32 scale per output channel::

    s_o = max_{a in A} |W[a, o]| / 127            (s_o = 1 where the channel is all zero)
    Q[a, o] = clip(round(W[a, o] / s_o), -127, 127)
    W~ = Q s_o                                     (|W - W~| <= s_o / 2 entrywise)

as LLM.int8's vector-wise weight quantization without the outlier split (Dettmers et al. 2022);
llama.cpp's ``Q8_0`` is the same rounding with one scale per block of 32 inputs. Activations stay float32. The decoder layers' matrices
(``q, k, v, o, gate, up, down``) are quantized; norms and the (tied) embedding / LM head stay
float32 (quantizing the ``[V, E]`` table would need a dequantise-after-dot LM head). The model dequantises ``Q s`` at the top of its
forward, inside the caller's jit, so any backend that fuses a convert into its matmul reads int8
weights. Measured on XLA:CPU (jax 0.10.2, ``experiments/bench_quantized_matvec.py``,
``experiments/results/bench_quantized_matvec_cpu.md``, ``bench_eagle_cpu.md``): it does not.
A convert fused into a dot becomes a slow loop (6-15x a float32 dot for every route tried), and in
a jitted generation XLA hoists the loop-invariant dequantisation out of the decode loop: float32
copies of the matrices are materialised once per call (421 MiB of temporaries for SmolLM2), so
decode runs at the float32 speed and the generation holds more memory than with float32
parameters (631 vs 529 MiB). The gain on this backend is the parameters at rest (2.4x smaller on
disk, in host memory between calls, and to transfer). Grouped int4 (``jnp.int4``) was slower
still and is not offered.

Usage::

    qparams = quantize_params(params, "int8")            # or load_bundle(quantization="int8")
    out = LlamaLM(config)(qparams, tokens, positions, None, None, None)   # dequantised inside
    quantization_error(params, qparams)                  # relative Frobenius errors
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SCHEMES = (None, "int8")
# Contraction axes of every quantized kernel of a Llama decoder layer (the Flax layouts of
# :mod:`partext_jax.models.llama`: q/k/v [E, heads, head_dim], o [heads, head_dim, E],
# gate/up [E, F], down [F, E]).
_CONTRACTION_AXES = {"q": (0,), "k": (0,), "v": (0,), "o": (0, 1), "gate": (0,), "up": (0,),
                     "down": (0,)}


class QuantizedTensor(NamedTuple):
  """``values int8[...]`` and ``scale float32[...]`` (1 on the contraction axes): ``W ~ Q s``.

  A pytree (both arrays are leaves), so quantized parameters are ordinary traced arguments.
  """

  values: jax.Array
  scale: jax.Array

  def dequantize(self, dtype=jnp.float32) -> jax.Array:
    return (self.values.astype(jnp.float32) * self.scale).astype(dtype)

  @property
  def nbytes(self) -> int:
    return self.values.size * self.values.dtype.itemsize + self.scale.size * 4


def quantize_int8(w, axes) -> QuantizedTensor:
  """Symmetric int8 of ``w`` with one scale per index of the non-``axes`` dimensions."""
  w = np.asarray(w, np.float32)
  amax = np.max(np.abs(w), axis=tuple(axes), keepdims=True)
  scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
  q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
  return QuantizedTensor(jnp.asarray(q), jnp.asarray(scale))


def _is_quantized(x) -> bool:
  return isinstance(x, QuantizedTensor)


def check_scheme(scheme) -> None:
  """Raises ``ValueError`` naming ``quantization`` unless ``scheme`` is in :data:`SCHEMES`."""
  if scheme not in SCHEMES:
    raise ValueError(f"quantization={scheme!r} is not one of {SCHEMES}")


def quantize_params(params, scheme: str | None):
  """Quantizes the decoder-layer kernels of Llama ``params`` (``scheme`` in :data:`SCHEMES`;
  ``None`` returns ``params``). Raises ``ValueError`` for an unknown scheme."""
  check_scheme(scheme)
  if scheme is None:
    return params

  def visit(path, x):
    keys = [getattr(k, "key", None) for k in path]
    if len(keys) < 3 or keys[-1] != "kernel" or keys[-2] not in _CONTRACTION_AXES:
      return x
    if not str(keys[0]).startswith("layers"):
      return x
    # Layers stacked under a scan (params["layers"][...]: a leading layer axis) or one tree per
    # layer (params["layers"]["0"], params["layers_0"]).
    stacked = int(keys[0] == "layers" and not str(keys[1]).isdigit())
    return quantize_int8(x, tuple(a + stacked for a in _CONTRACTION_AXES[keys[-2]]))

  return jax.tree_util.tree_map_with_path(visit, params)


def param_bytes(params) -> int:
  """Bytes of a (possibly quantized) parameter tree."""
  leaves = jax.tree_util.tree_leaves(params, is_leaf=_is_quantized)
  return int(sum(x.nbytes if _is_quantized(x) else x.size * x.dtype.itemsize for x in leaves))


def quantization_error(params, qparams) -> dict[str, Any]:
  """Relative Frobenius error ``|W - W~| / |W|`` of the quantized kernels: mean, max, and the
  error of the whole set (``total``), plus the bytes before and after."""
  errs, num, den = [], 0.0, 0.0
  flat = jax.tree_util.tree_leaves_with_path(qparams, is_leaf=_is_quantized)
  ref = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
  for path, x in flat:
    if not _is_quantized(x):
      continue
    w = np.asarray(ref[jax.tree_util.keystr(path)], np.float64)
    d = float(np.sum((w - np.asarray(x.dequantize(), np.float64)) ** 2))
    n = float(np.sum(w * w))
    errs.append(np.sqrt(d / max(n, 1e-30)))
    num, den = num + d, den + n
  if not errs:
    raise ValueError("qparams holds no quantized tensor")
  return {"num_tensors": len(errs), "mean_rel_error": float(np.mean(errs)),
          "max_rel_error": float(np.max(errs)), "total_rel_error": float(np.sqrt(num / den)),
          "bytes_before": param_bytes(params), "bytes_after": param_bytes(qparams)}
