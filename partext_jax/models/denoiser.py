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

Cached calls (Fast-dLLM-style block decoding, :mod:`partext_jax.masked.block_cache`). Each
layer ``l`` stores the rotary-embedded keys and values of every position it processed,
``K_l, V_l [B, T, H, D]``. A call with ``context=(cache, ranges)`` -- ``cache`` a
:class:`~partext_jax.models.attention.KVCache` ``[num_layers, B, S, H, D]`` from an earlier
call, ``ranges`` static ``((start, stop), ...)`` rows of it, e.g. the prefix and the suffix
of the current block -- runs only the ``T`` query positions ``tokens`` (at ``positions``)
through the network; in every layer they attend to the stored rows ``C`` in ``ranges`` and to
their own fresh keys and values::

    out_l[q] = sum_{k in C  U  fresh} softmax_k(q.k_l[k] / sqrt(D)) v_l[k]

With a context computed (by a full pass) from the current tokens this equals the full forward
pass on the query rows, up to float rounding, for any depth. A context computed before some
*query* tokens changed is stale in layers ``>= 1`` (their rows saw the old query tokens): the
Fast-dLLM approximation. Layer 0's rows depend only on their own token (and ``t``), so a
1-layer model without time conditioning stays exact while the context tokens are unchanged.
``return_kv=True`` also returns the query rows' ``KVCache``::

    fn = make_cached_denoise_fn(cfg, params)
    logits, kv = fn(tokens, t, positions, None)         # full pass, K/V of every position
    # prefix cache: block and suffix [s, L) over the stored rows [0, s)
    logits_s, _ = fn(tokens[:, s:], t, positions[:, s:], (kv, ((0, s),)))
    # dual cache: block [s, e) over the stored rows [0, s) and [e, L)
    logits_b, _ = fn(tokens[:, s:e], t, positions[:, s:e], (kv, ((0, s), (e, L))))

The context attention runs in jnp (``context_impl="xla"``) or through the Pallas block attention
kernel (``context_impl="pallas"``, :mod:`partext_jax.kernels.block_attention`).
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
from flax import linen as nn

from partext_jax.models import attention as attention_lib
from partext_jax.models import layers
from partext_jax.models.attention import KVCache  # the rows' rotary-embedded K/V [L, B, H, T, D]

DTYPES = ("float32", "bfloat16")
CONTEXT_ATTENTION_IMPLS = ("xla", "pallas")


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


def _heads_major(x):
  """``[B, T, H, D] -> [B, H, T, D]`` (the cache layout)."""
  return x.transpose(0, 2, 1, 3)


def context_attention(q, k, v, cache_k, cache_v, ranges, *, impl: str = "xla"):
  """Queries attend, without a mask, to stored cache rows and to their own fresh rows.

  ``q, k, v [B, T, H, D]`` (the queries, their fresh keys/values); ``cache_k, cache_v [B, H, S,
  D]`` (heads-major, one layer of a :class:`KVCache`) a stored cache of which the rows in
  ``ranges`` (static ``((start, stop), ...)``, at most two, disjoint: prefix and suffix) are the
  context ``C``: ``out = softmax(q [cache_k[C]; k]^T / sqrt(D)) [cache_v[C]; v]``.
  ``impl="xla"`` gathers the ranges and calls the jnp reference; ``impl="pallas"`` calls
  :func:`partext_jax.kernels.block_attention.block_attention` with the ranges as its prefix and
  suffix (no copy of the cache, no mask in memory).
  """
  if impl == "xla":
    ks = [cache_k[:, :, a:b] for a, b in ranges] + [_heads_major(k).astype(cache_k.dtype)]
    vs = [cache_v[:, :, a:b] for a, b in ranges] + [_heads_major(v).astype(cache_v.dtype)]
    return attention_lib.xla_attention(q, jnp.concatenate(ks, 2), jnp.concatenate(vs, 2), None)
  if impl == "pallas":
    from partext_jax.kernels import block_attention  # pylint: disable=import-outside-toplevel
    if not 1 <= len(ranges) <= 2:
      raise ValueError(f"the block attention kernel takes one or two cache ranges (prefix, "
                       f"suffix), got ranges={ranges}")
    (p0, p1), *suffix = ranges
    s0, s1 = suffix[0] if suffix else (None, None)
    return block_attention.block_attention(
        q, cache_k, cache_v, k.astype(cache_k.dtype), v.astype(cache_v.dtype), p0, p1 - p0,
        s0, None if s0 is None else s1 - s0).astype(q.dtype)
  raise ValueError(f"context attention impl={impl!r} is not one of {CONTEXT_ATTENTION_IMPLS}")


class _SelfAttention(nn.Module):
  """Bidirectional self-attention; also returns the block's K/V, heads-major ``[B, H, T, D]``."""

  cfg: DenoiserConfig
  ranges: tuple | None = None   # static context ranges (with a context)
  context_impl: str = "xla"

  @nn.compact
  def __call__(self, x, positions, context):
    """``context``: ``(cache_k, cache_v)`` of this layer, stored rows to attend to besides
    ``x``'s (the rows in ``ranges``), or ``None``."""
    cfg = self.cfg
    b, l, _ = x.shape
    q = layers.head_projection(cfg.num_heads, cfg.head_dim, "heads", cfg.jnp_dtype, "q")(x)
    k = layers.head_projection(cfg.num_heads, cfg.head_dim, "heads", cfg.jnp_dtype, "k")(x)
    v = layers.head_projection(cfg.num_heads, cfg.head_dim, "heads", cfg.jnp_dtype, "v")(x)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    q = layers.apply_rope(q, positions, theta=cfg.rope_theta)
    k = layers.apply_rope(k, positions, theta=cfg.rope_theta)
    if context is None:
      out = attention_lib.attention(q, _heads_major(k), _heads_major(v), None,
                                    impl=cfg.attention_impl)
    else:
      out = context_attention(q, k, v, *context, self.ranges, impl=self.context_impl)
    return (layers.output_projection(cfg.d_model, cfg.jnp_dtype, "o")(out),
            (_heads_major(k), _heads_major(v)))


class _Block(nn.Module):
  """One pre-norm block in the scan's ``(carry, x) -> (carry, y)`` form: ``carry`` the residual
  stream, ``x`` this layer's context ``(cache_k, cache_v)`` (or ``None``), ``y`` the block's
  K/V."""

  cfg: DenoiserConfig
  deterministic: bool = True
  ranges: tuple | None = None
  context_impl: str = "xla"

  @nn.compact
  def __call__(self, x, context, cond, positions):
    drop = nn.Dropout(self.cfg.dropout_rate)
    h, kv = _SelfAttention(self.cfg, self.ranges, self.context_impl, name="attn")(
        _ModulatedNorm(self.cfg, name="attn_norm")(x, cond), positions, context)
    x = x + drop(h, deterministic=self.deterministic)
    h = layers.SwiGLU(self.cfg.mlp_dim, dtype=self.cfg.jnp_dtype, name="mlp")(
        _ModulatedNorm(self.cfg, name="mlp_norm")(x, cond))
    return x + drop(h, deterministic=self.deterministic), kv


def stack_blocks(params):
  """Parameters of the unrolled layout (``params["block_0"]`` ... ``["block_{L-1}"]``, what
  checkpoints written before the blocks ran under ``nn.scan`` hold) in the stacked layout of
  :func:`block_stack` (``params["blocks"]``, a leading layer axis). Trees without ``block_<i>``
  keys come back unchanged.

  Args:
    params: a denoiser parameter tree (arrays).
  """
  names = sorted((k for k in params if re.fullmatch(r"block_\d+", k)), key=lambda k: int(k[6:]))
  if not names:
    return params
  rest = {k: v for k, v in params.items() if k not in names}
  return dict(rest, blocks=jax.tree_util.tree_map(lambda *xs: jnp.stack(xs),
                                                  *[params[k] for k in names]))


def unstacked_shapes(abstract_params):
  """The inverse layout of :func:`stack_blocks` for an abstract tree (``ShapeDtypeStruct``
  leaves): ``blocks [L, ...]`` becomes ``block_0`` ... ``block_{L-1}`` (used to read old
  checkpoints).

  Args:
    abstract_params: the stacked parameter tree's shapes, e.g. from ``jax.eval_shape``.
  """
  blocks = abstract_params["blocks"]
  n = jax.tree_util.tree_leaves(blocks)[0].shape[0]
  one = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), blocks)
  rest = {k: v for k, v in abstract_params.items() if k != "blocks"}
  return dict(rest, **{f"block_{i}": one for i in range(n)})


def block_stack(cfg: DenoiserConfig, *, deterministic: bool = True, ranges=None,
                context_impl: str = "xla", name: str = "blocks") -> nn.Module:
  """The ``num_layers`` blocks as one ``nn.scan`` (parameters stacked on a leading ``"layers"``
  axis; one block body is compiled whatever the depth). Call it as
  ``x, (k, v) = block_stack(cfg)(x, context, cond, positions)`` with ``context`` ``None`` or the
  stored ``(k, v)`` ``[num_layers, B, H, S, D]``; ``k, v`` are the blocks' own
  ``[num_layers, B, H, T, D]``."""
  scanned = nn.scan(_Block, variable_axes={"params": 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=(0, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                    metadata_params={nn.PARTITION_NAME: "layers"})
  return scanned(cfg, deterministic, ranges, context_impl, name=name)


class Denoiser(nn.Module):
  """``(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]`` (see module docstring).

  Optional keywords (cached calls): ``positions int32[B, T]`` of the query tokens (default
  ``0..T-1``); ``context`` ``(KVCache, ranges)``, stored rows every layer also attends to;
  ``return_kv`` returns ``(logits, KVCache)`` of the query rows; ``context_impl`` ``"xla"`` or
  ``"pallas"`` for the context attention.
  """

  cfg: DenoiserConfig

  @nn.compact
  def __call__(self, tokens, t, *, deterministic: bool = True, positions=None, context=None,
               return_kv: bool = False, context_impl: str = "xla"):
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
    stored, ranges = None, None
    if context is not None:
      cache, ranges = context
      stored, ranges = (cache.k, cache.v), _checked_ranges(ranges, cache.max_len)
    x, (keys, values) = block_stack(cfg, deterministic=deterministic, ranges=ranges,
                                    context_impl=context_impl)(x, stored, cond, positions)
    x = layers.RMSNorm(dtype=cfg.jnp_dtype, name="final_norm")(x)
    logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.jnp_dtype, name="head",
                      kernel_init=layers.logical(layers.default_init, ("embed", "vocab")))(x)
    logits = logits.astype(jnp.float32)
    if return_kv:
      return logits, KVCache(keys, values)
    return logits


def _checked_ranges(ranges, length: int):
  if any(isinstance(x, jax.core.Tracer) for r in ranges for x in r):
    raise TypeError(f"context ranges must be static Python ints (close over them, do not pass "
                    f"them through jit), got {ranges}")
  ranges = tuple((int(a), int(b)) for a, b in ranges)
  ends = [x for r in sorted(ranges) for x in r]
  if any(not 0 <= a <= b <= length for a, b in ranges) or ends != sorted(ends):
    raise ValueError(f"context ranges={ranges} must be disjoint (start, stop) pairs inside "
                     f"[0, {length}] (static ints)")
  return ranges


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


@dataclasses.dataclass(frozen=True)
class CachedDenoiserApply:
  """Hashable ``(params, tokens, t, positions, context) -> (logits, KVCache)`` for a config."""

  cfg: DenoiserConfig
  context_impl: str = "xla"

  def __post_init__(self):
    if self.context_impl not in CONTEXT_ATTENTION_IMPLS:
      raise ValueError(f"context_impl={self.context_impl!r} is not one of "
                       f"{CONTEXT_ATTENTION_IMPLS}")

  def __call__(self, params, tokens, t, positions, context):
    return Denoiser(self.cfg).apply({"params": params}, tokens, t, positions=positions,
                                    context=context, return_kv=True,
                                    context_impl=self.context_impl)


def make_cached_denoise_fn(cfg: DenoiserConfig, params, *,
                           context_impl: str = "xla") -> jax.tree_util.Partial:
  """The ``kv_denoise_fn`` cached samplers take (:mod:`partext_jax.masked.block_cache`).

  ``kv_denoise_fn(tokens int32[B, T], t float32[B], positions int32[B, T], context) ->
  (logits float32[B, T, V], KVCache)``; ``context`` is ``None`` (a plain forward pass over the
  ``T`` positions) or ``(KVCache [num_layers, B, S, H, D], ranges)``: the stored rows in the
  static ``ranges = ((start, stop), ...)`` that the queries also attend to (module docstring).
  ``context_impl="pallas"`` runs the context attention through the block attention kernel. A
  ``jax.tree_util.Partial`` over ``params``, as :func:`make_denoise_fn`.
  """
  return jax.tree_util.Partial(CachedDenoiserApply(cfg, context_impl), params)


def count_params(params) -> int:
  """The number of scalar parameters in the pytree ``params``."""
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
