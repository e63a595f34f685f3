"""Bidirectional transformer denoiser for masked diffusion LMs (Flax linen).

The model maps partially masked tokens ``x_t`` (ids in ``[0, V]``, where ``V`` is the MASK id)
and the diffusion time ``t`` to logits over the ``V`` real tokens::

    logits = Denoiser(cfg).apply({"params": params}, tokens, t)   # [B, L, V]

Architecture: token embedding (``V + 1`` rows), ``num_layers`` pre-norm blocks of bidirectional
multi-head self-attention with rotary positions and a SwiGLU feed-forward, a final RMSNorm and
an untied output projection. With ``time_conditioning`` each norm is modulated FiLM-style by an
embedding of ``t`` (``(1 + scale(t)) * norm(x) + shift(t)``, zero-initialised so training starts
from the unconditioned model). Masked diffusion with the absorbing process does not need ``t``
(the denoiser's optimum is time-independent, MDLM section 3), which is why it is off by default
and why samplers may cache its outputs.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from partext_jax.models import attention as attention_lib
from partext_jax.models import layers

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class DenoiserConfig:
  """Size and options of :class:`Denoiser`.

  Attributes:
    vocab_size: ``V``, the number of real tokens; the MASK id is ``V``.
    max_len: longest sequence the model is used on (documentation and checks only: RoPE has no
      learned positions).
    d_model: residual width.
    num_layers: transformer blocks.
    num_heads: attention heads (``d_model % num_heads == 0``).
    mlp_dim: SwiGLU hidden width.
    time_conditioning: FiLM-modulate the norms by an embedding of ``t``.
    rope_theta: RoPE base.
    dropout_rate: dropout on the residual branches during training.
    dtype: activation dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32).
    attention_impl: name registered in :mod:`partext_jax.models.attention`.
  """

  vocab_size: int
  max_len: int = 128
  d_model: int = 128
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 512
  time_conditioning: bool = False
  rope_theta: float = 10000.0
  dropout_rate: float = 0.0
  dtype: str = "float32"
  attention_impl: str = "xla"

  def __post_init__(self):
    for name in ("vocab_size", "max_len", "d_model", "num_layers", "num_heads", "mlp_dim"):
      if getattr(self, name) < 1:
        raise ValueError(f"DenoiserConfig.{name}={getattr(self, name)} must be >= 1")
    if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
      raise ValueError(f"DenoiserConfig: d_model={self.d_model} must split into num_heads="
                       f"{self.num_heads} heads of even width")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"DenoiserConfig.dropout_rate={self.dropout_rate} must be in [0, 1)")
    if self.dtype not in DTYPES:
      raise ValueError(f"DenoiserConfig.dtype={self.dtype!r} is not one of {DTYPES}")

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
  """Sinusoidal features of ``t in [0, 1]`` (scaled by 1000, as DDPM-style models do)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = 1000.0 * t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class _ModulatedNorm(nn.Module):
  """RMSNorm, FiLM-modulated by the time embedding when one is given."""

  cfg: DenoiserConfig

  @nn.compact
  def __call__(self, x, cond):
    y = layers.RMSNorm(dtype=self.cfg.jnp_dtype, name="norm")(x)
    if cond is None:
      return y
    mod = nn.Dense(2 * x.shape[-1], dtype=self.cfg.jnp_dtype, name="film",
                   kernel_init=layers.logical(nn.initializers.zeros, (None, "embed")),
                   bias_init=layers.logical(nn.initializers.zeros, ("embed",)))(cond)
    scale, shift = jnp.split(mod[:, None, :], 2, axis=-1)
    return y * (1.0 + scale) + shift


class _SelfAttention(nn.Module):
  cfg: DenoiserConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    b, l, _ = x.shape
    q = layers.head_projection(cfg.num_heads, cfg.head_dim, "heads", cfg.jnp_dtype, "q")(x)
    k = layers.head_projection(cfg.num_heads, cfg.head_dim, "heads", cfg.jnp_dtype, "k")(x)
    v = layers.head_projection(cfg.num_heads, cfg.head_dim, "heads", cfg.jnp_dtype, "v")(x)
    positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    q = layers.apply_rope(q, positions, theta=cfg.rope_theta)
    k = layers.apply_rope(k, positions, theta=cfg.rope_theta)
    out = attention_lib.attention(q, k, v, None, impl=cfg.attention_impl)
    return layers.output_projection(cfg.d_model, cfg.jnp_dtype, "o")(out)


class _Block(nn.Module):
  cfg: DenoiserConfig

  @nn.compact
  def __call__(self, x, cond, deterministic: bool):
    drop = nn.Dropout(self.cfg.dropout_rate)
    h = _SelfAttention(self.cfg, name="attn")(_ModulatedNorm(self.cfg, name="attn_norm")(x, cond))
    x = x + drop(h, deterministic=deterministic)
    h = layers.SwiGLU(self.cfg.mlp_dim, dtype=self.cfg.jnp_dtype, name="mlp")(
        _ModulatedNorm(self.cfg, name="mlp_norm")(x, cond))
    return x + drop(h, deterministic=deterministic)


class Denoiser(nn.Module):
  """``(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]`` (see module docstring)."""

  cfg: DenoiserConfig

  @nn.compact
  def __call__(self, tokens, t, *, deterministic: bool = True):
    cfg = self.cfg
    x = nn.Embed(cfg.vocab_size + 1, cfg.d_model, name="embed",
                 embedding_init=layers.logical(layers.default_init, ("vocab", "embed")))(tokens)
    x = x.astype(cfg.jnp_dtype)
    cond = None
    if cfg.time_conditioning:
      cond = timestep_embedding(jnp.broadcast_to(t, tokens.shape[:1]), cfg.d_model)
      cond = nn.silu(nn.Dense(cfg.d_model, name="time_mlp",
                              kernel_init=layers.logical(layers.default_init, (None, "embed")),
                              bias_init=layers.logical(nn.initializers.zeros, ("embed",)))(cond))
    for i in range(cfg.num_layers):
      x = _Block(cfg, name=f"block_{i}")(x, cond, deterministic)
    x = layers.RMSNorm(dtype=cfg.jnp_dtype, name="final_norm")(x)
    logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.jnp_dtype, name="head",
                      kernel_init=layers.logical(layers.default_init, ("embed", "vocab")))(x)
    return logits.astype(jnp.float32)


def _boxed_params(rng, cfg: DenoiserConfig):
  tokens = jnp.zeros((1, min(cfg.max_len, 8)), jnp.int32)
  return Denoiser(cfg).init(rng, tokens, jnp.zeros((1,), jnp.float32))["params"]


def init_params(rng, cfg: DenoiserConfig):
  """Randomly initialised parameters (plain arrays, the tree under ``"params"``)."""
  return layers.unbox(_boxed_params(rng, cfg))


def param_logical_axes(cfg: DenoiserConfig):
  """``PartitionSpec`` tree of logical axis names matching :func:`init_params` (no FLOPs)."""
  boxed = jax.eval_shape(lambda: _boxed_params(jax.random.key(0), cfg))
  return layers.logical_axes(boxed)


@dataclasses.dataclass(frozen=True)
class DenoiserApply:
  """Hashable ``(params, tokens, t) -> logits`` for a config (the function of a ``Partial``)."""

  cfg: DenoiserConfig

  def __call__(self, params, tokens, t):
    return Denoiser(self.cfg).apply({"params": params}, tokens, t)


def make_denoise_fn(cfg: DenoiserConfig, params) -> jax.tree_util.Partial:
  """The ``denoise_fn(tokens, t) -> logits`` samplers take, closing over ``params``.

  Returned as a ``jax.tree_util.Partial``: samplers trace the parameters as arguments (not
  compile-time constants), so sampling with new parameters of the same config reuses the
  compiled program.
  """
  return jax.tree_util.Partial(DenoiserApply(cfg), params)


def count_params(params) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
