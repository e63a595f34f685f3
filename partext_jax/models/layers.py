"""Transformer building blocks shared by the denoiser and the causal LM (Flax linen).

Every parameter carries *logical* axis names (``nn.with_logical_partitioning``) so that a mesh
rule set can shard the same model without a rewrite. The names used project-wide are:

==============  ====================================================
logical name    meaning
==============  ====================================================
``vocab``       vocabulary rows of the embedding / output projection
``embed``       model width (``d_model``)
``mlp``         hidden width of the feed-forward block
``heads``       query heads
``kv_heads``    key/value heads (grouped-query attention)
``head_dim``    per-head width
``layers``      the stacked layer axis of scanned blocks (replicated)
==============  ====================================================

Activations use ``batch`` and ``length``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

LOGICAL_AXES = ("vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers", "batch",
                "length")

default_init = nn.initializers.normal(stddev=0.02)


def logical(init, names):
  """Attaches logical axis names to an initializer."""
  return nn.with_logical_partitioning(init, names)


class RMSNorm(nn.Module):
  """Root-mean-square norm: ``x / sqrt(mean(x^2) + eps) * scale`` (computed in float32)."""

  eps: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", logical(nn.initializers.ones, ("embed",)), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale).astype(self.dtype)


def rope_frequencies(head_dim: int, theta: float) -> jnp.ndarray:
  """Inverse frequencies ``theta^(-2i/d)`` for ``i < d/2``."""
  if head_dim % 2:
    raise ValueError(f"head_dim={head_dim} must be even for rotary embeddings")
  return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def apply_rope(x, positions, *, theta: float = 10000.0):
  """Rotary position embedding, "rotate-half" layout (HF Llama convention).

  Args:
    x: ``[B, T, H, D]`` queries or keys.
    positions: ``[B, T]`` integer positions.
    theta: RoPE base.

  The pair rotated together is ``(x[..., i], x[..., i + D/2])`` by angle ``pos * theta^(-2i/D)``.
  GGUF files store Q/K permuted for llama.cpp's interleaved layout; the GGUF loader undoes that
  permutation so this one implementation serves every model.
  """
  d = x.shape[-1]
  inv = rope_frequencies(d, theta)
  angles = positions.astype(jnp.float32)[..., None] * inv  # [B, T, D/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., : d // 2], x32[..., d // 2 :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class SwiGLU(nn.Module):
  """Gated feed-forward block ``W_down (silu(W_gate x) * W_up x)``."""

  hidden_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]

    def dense(features, names, name):
      return nn.Dense(features, use_bias=False, dtype=self.dtype, name=name,
                      kernel_init=logical(default_init, names))

    gate = dense(self.hidden_dim, ("embed", "mlp"), "gate")(x)
    up = dense(self.hidden_dim, ("embed", "mlp"), "up")(x)
    return dense(d, ("mlp", "embed"), "down")(nn.silu(gate) * up)


def head_projection(num_heads: int, head_dim: int, head_axis: str, dtype, name: str, *,
                    use_bias: bool = False):
  """``[.., embed] -> [.., heads, head_dim]`` projection (a ``[heads, head_dim]`` bias when
  ``use_bias``, as Qwen2's q/k/v)."""
  return nn.DenseGeneral((num_heads, head_dim), use_bias=use_bias, dtype=dtype, name=name,
                         kernel_init=logical(default_init, ("embed", head_axis, "head_dim")),
                         bias_init=logical(nn.initializers.zeros, (head_axis, "head_dim")))


def output_projection(features: int, dtype, name: str):
  """``[.., heads, head_dim] -> [.., embed]`` projection without bias."""
  return nn.DenseGeneral(features, axis=(-2, -1), use_bias=False, dtype=dtype, name=name,
                         kernel_init=logical(default_init, ("heads", "head_dim", "embed")))


def unbox(tree):
  """Strips logical-partitioning boxes from a parameter tree (plain arrays remain)."""
  return nn.meta.unbox(tree)


def logical_axes(boxed_tree):
  """The ``PartitionSpec`` tree of logical axis names of a boxed parameter tree."""
  return nn.get_partition_spec(boxed_tree)
