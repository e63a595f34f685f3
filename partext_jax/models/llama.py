"""Llama-family causal LM (Flax linen) with a static-shape KV cache.

Architecture (pre-norm, as HF ``LlamaForCausalLM``)::

    h_0     = E[tokens]
    a_l     = Attn(RMSNorm(h_l), positions)                      # RoPE (rotate-half), GQA
    h_l'    = h_l + a_l
    h_{l+1} = h_l' + W_down (silu(W_gate n) * W_up n),  n = RMSNorm(h_l')
    logits  = RMSNorm(h_L) W_out,        W_out = E^T when ``tie_embeddings``

Layers. The ``num_layers`` decoder layers run as one ``nn.scan`` over parameters stacked on a
leading ``"layers"`` axis (``params["layers"]["mlp"]["up"]["kernel"]: [L, embed, mlp]``; one
compiled layer body) or, with ``LlamaConfig(scan_layers=False)``, unrolled with per-layer
parameters ``params["layers"][str(i)]`` (:func:`unstack_layers` / :func:`stack_layers` convert):
see :func:`layer_stack` for the trade-off. Both compute the same function.

KV cache. :class:`~partext_jax.models.attention.KVCache` holds ``k, v: [layers, B, kv_heads,
max_len, head_dim]`` (heads-major) and nothing else: which slots are valid, and where each row's
sequence starts, is the caller's business and is expressed entirely by the attention mask. A
call with a cache

1. computes the block's ``K, V`` (``T`` tokens per row, RoPE at ``positions[b, t]``),
2. writes them at cache slots ``write_slots[b] + t`` (``t < T``; a slot ``>= max_len`` is
   dropped), then
3. lets query ``t`` of row ``b`` attend to cache slot ``s`` iff ``attn_mask[b, t, s]``
   (``bool[B, T, max_len]``, evaluated *after* the write, so the block sees itself), reading only
   the chunks of slots the mask can see
   (:func:`~partext_jax.models.attention.cache_attention`): a step's cost follows the cached
   length, not ``max_len``.

So one call scores a prompt (``write_slots = 0``, causal mask), one new token (``T = 1``) or a
block of draft / tree tokens with any mask (e.g. an ancestor mask over cache + block). Slots and
positions are decoupled: with left padding, row ``b`` may start at slot ``first[b]`` with position
0. :func:`~partext_jax.models.attention.causal_cache_mask` builds the usual mask.

Structured masks. Instead of the dense ``bool[B, T, max_len]``, ``attn_mask`` may be a
:class:`partext_jax.models.attention.CacheBlockMask` ``(start, prefix_len, block_mask)``: query
``t`` sees cache slots ``[start[b], start[b] + prefix_len[b])`` and block token ``j`` (slot
``write_slots[b] + j``) iff ``block_mask[b, t, j]``. With ``attention_impl="xla"`` it is expanded
to the equivalent dense mask; with ``"pallas"`` the tree-attention kernel reads only the valid
prefix and never builds the ``[T, max_len]`` mask (the fast path for tree / draft verification).

The math of cached scoring, ragged left padding and tree masks is in
``docs/algorithms.md#autoregressive-sampling-and-logits-processors`` and
``docs/algorithms.md#token-trees-and-kv-compaction``.

Without a cache the call attends within the block: ``attn_mask`` is ``bool[B, T, T]`` (default:
causal by block index).

Usage::

    config = LlamaConfig.tiny()
    model = LlamaLM(config)
    params = model.init(jax.random.key(0))
    cache = model.init_cache(batch=1, max_len=32)
    tokens, pos = jnp.array([[1, 5, 9, 4, 3]]), jnp.arange(5)[None]
    mask = attention.causal_cache_mask(pos, 0, 32)          # bool[1, 5, 32]
    out = model(params, tokens, pos, mask, cache, jnp.zeros(1, jnp.int32))   # LMOutput
    out.logits.shape, out.cache                                             # [1, 5, V]
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from partext_jax.base import LMOutput
from partext_jax.models import attention as attention_lib
from partext_jax.models.attention import KVCache, causal_cache_mask
from partext_jax.models.layers import (RMSNorm, SwiGLU, apply_rope, default_init, head_projection,
                                       logical, logical_axes, output_projection)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Static hyper-parameters (hashable: usable as a ``static_argnames`` value).

  ``dtype`` is the activation / matmul dtype name (``"float32"`` or ``"bfloat16"``);
  ``attention_impl`` one of :func:`partext_jax.models.attention.available`; ``scan_layers``
  the parameter layout and loop form of the layers (:func:`layer_stack`). ``causal=False``
  makes a call without ``attn_mask`` attend to every position (the bidirectional diffusion LMs
  LLaDA and Dream, :mod:`partext_jax.pretrained.dllm`); ``qkv_bias`` adds the q/k/v biases of
  Qwen2 (Dream).
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rms_eps: float = 1e-5
  context_length: int = 2048
  tie_embeddings: bool = True
  bos_id: int | None = None
  eos_id: int | None = None
  pad_id: int | None = None
  dtype: str = "float32"
  attention_impl: str = "xla"
  causal: bool = True
  qkv_bias: bool = False
  scan_layers: bool = True

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "context_length"):
      v = getattr(self, name)
      if not isinstance(v, int) or v <= 0:
        raise ValueError(f"LlamaConfig.{name}={v!r} must be a positive int")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even (RoPE)")
    for name in ("causal", "qkv_bias"):
      if not isinstance(getattr(self, name), bool):
        raise TypeError(f"LlamaConfig.{name}={getattr(self, name)!r} must be True or False")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"dtype={self.dtype!r} is not one of ('float32', 'bfloat16', 'float16')")

  def replace(self, **changes) -> "LlamaConfig":
    return dataclasses.replace(self, **changes)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @classmethod
  def tiny(cls, **overrides) -> "LlamaConfig":
    """A 2-layer random-weight test double (GQA, untied head, fast to compile)."""
    kw = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
              num_kv_heads=2, head_dim=8, rope_theta=10000.0, context_length=128,
              tie_embeddings=False, bos_id=1, eos_id=2, pad_id=0)
    kw.update(overrides)
    return cls(**kw)


def init_cache(config: LlamaConfig, batch: int, max_len: int, dtype=None) -> KVCache:
  """A zero cache; ``dtype`` defaults to ``config.dtype``."""
  return KVCache.zeros(config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim,
                       config.compute_dtype if dtype is None else dtype)


class Attention(nn.Module):
  """GQA self-attention with RoPE; with a cache, writes the block's K/V into layer ``layer`` and
  attends over the slots of that layer the mask can see (``span``,
  :func:`~partext_jax.models.attention.cache_attention`)."""

  config: LlamaConfig

  @nn.compact
  def __call__(self, x, positions, mask, cache, write_slots, layer, span):
    c = self.config
    project = lambda heads, axis, name: head_projection(heads, c.head_dim, axis,
                                                        c.compute_dtype, name,
                                                        use_bias=c.qkv_bias)(x)
    q = apply_rope(project(c.num_heads, "heads", "q"), positions, theta=c.rope_theta)
    k = apply_rope(project(c.num_kv_heads, "kv_heads", "k"), positions, theta=c.rope_theta)
    v = project(c.num_kv_heads, "kv_heads", "v")
    if cache is None:
      heads_major = lambda y: y.transpose(0, 2, 1, 3)
      out = attention_lib.attention(q, heads_major(k), heads_major(v), mask, impl=c.attention_impl)
    else:
      cache = cache.write(layer, write_slots, k, v)
      out, cache = attention_lib.cache_attention(q, cache, layer, mask, span,
                                                 impl=c.attention_impl)
    return output_projection(c.hidden_size, c.compute_dtype, "o")(out), cache


class DecoderLayer(nn.Module):
  """Pre-norm block ``h + Attn(RMSNorm(h))``, then ``h' + SwiGLU(RMSNorm(h'))``, in the scan's
  ``(carry, x) -> (carry, y)`` form: ``carry = (h, cache)``, ``x = layer`` (its index, which
  selects the cache layer); the rest is broadcast to every layer."""

  config: LlamaConfig

  @nn.compact
  def __call__(self, carry, layer, positions, mask, write_slots, span):
    x, cache = carry
    c = self.config
    norm = lambda name, h: RMSNorm(c.rms_eps, c.compute_dtype, name=name)(h)
    a, cache = Attention(c, name="attn")(norm("attn_norm", x), positions, mask, cache,
                                         write_slots, layer, span)
    x = x + a
    x = x + SwiGLU(c.intermediate_size, c.compute_dtype, name="mlp")(norm("mlp_norm", x))
    return (x, cache), None


class _UnrolledLayers(nn.Module):
  """The layers applied one after the other, each with its own parameter arrays (``"0"``,
  ``"1"``, ...): what :func:`layer_stack` runs with ``scan_layers=False``."""

  config: LlamaConfig

  @nn.compact
  def __call__(self, carry, layers, positions, mask, write_slots, span):
    del layers
    for i in range(self.config.num_layers):
      carry, _ = DecoderLayer(self.config, name=str(i))(carry, i, positions, mask, write_slots,
                                                        span)
    return carry, None


def layer_stack(config: LlamaConfig, name: str = "layers") -> nn.Module:
  """The ``num_layers`` decoder layers.

  ``scan_layers=True``: one ``nn.scan``; every parameter gets a leading layer axis (logical name
  ``"layers"``) and one layer body is compiled whatever the depth. ``scan_layers=False``: the
  layers unrolled, ``params[name][str(i)]`` per layer (:func:`unstack_layers` converts); XLA:CPU
  then reads each layer's weights in place, where a scan copies every layer's weights out of the
  stacked arrays at every call (measured in ``experiments/bench_ar.py``). Both give the same
  numbers. Call it as ``(h, cache), _ = layer_stack(config)((h, cache),
  jnp.arange(num_layers), positions, mask, write_slots, span)``.
  """
  if not config.scan_layers:
    return _UnrolledLayers(config, name=name)
  scanned = nn.scan(DecoderLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                    in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                    length=config.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
  return scanned(config, name=name)


def unstack_layers(params):
  """``params`` of a ``scan_layers=True`` model as those of ``scan_layers=False``.

  Every stacked array ``params["layers"][...]: [L, *shape]`` becomes ``L`` arrays ``[*shape]``
  under ``params["layers"][str(i)][...]`` (same dtype; the embedding, final norm and head are
  shared, not copied). Used by the unrolled reference path and the unrolled CPU decode
  (:func:`layer_stack`).
  """
  layers = params["layers"]
  n = jax.tree_util.tree_leaves(layers)[0].shape[0]
  return dict(params, layers={str(i): jax.tree_util.tree_map(lambda x, i=i: x[i], layers)
                              for i in range(n)})


def stack_layers(params):
  """The inverse of :func:`unstack_layers`: per-layer arrays ``params["layers"][str(i)]`` (``i``
  in ``0 .. L-1``) stacked into ``[L, *shape]`` arrays under ``params["layers"]``."""
  layers = params["layers"]
  return dict(params, layers=jax.tree_util.tree_map(
      lambda *xs: jnp.stack(xs), *[layers[str(i)] for i in range(len(layers))]))


def first_layers(params, config: LlamaConfig, num_layers: int):
  """The parameters of ``config.replace(num_layers=num_layers)``: the first ``num_layers``
  layers of ``params`` (a model of ``config``), embedding, final norm and head shared.

  With ``config.scan_layers`` a slice ``[:num_layers]`` of every stacked array (a copy of
  ``num_layers / L`` of the layer weights), else the first per-layer subtrees (no copy). Used by
  the self-speculative early-exit drafter
  (:func:`partext_jax.ar.speculative.drafters.lm.early_exit_drafter`, Elhoushi et al. 2024,
  ``docs/algorithms.md#speculative-decoding``).
  """
  layers = params["layers"]
  if config.scan_layers:
    layers = jax.tree_util.tree_map(lambda x: x[:num_layers], layers)
  else:
    layers = {str(i): layers[str(i)] for i in range(num_layers)}
  return dict(params, layers=layers)


class Llama(nn.Module):
  """The causal LM. ``__call__(tokens, positions, attn_mask=None, cache=None, write_slots=None,
  *, logits_at=None, return_hidden=False)``.

  Args:
    tokens: ``int[B, T]``.
    positions: ``int[B, T]`` RoPE positions.
    attn_mask: ``bool[B, T, max_len]`` with a cache, ``bool[B, T, T]`` without (anything
      broadcastable works), or with a cache a structured
      :class:`~partext_jax.models.attention.CacheBlockMask` (its ``write_slots`` defaults to
      ``write_slots``); ``None`` means causal
      (:func:`~partext_jax.models.attention.causal_cache_mask` with
      ``q_slot = write_slots[b] + t`` and ``first = 0`` when a cache is given), or every
      position (every cache slot) when ``config.causal`` is False.
    cache: a :class:`~partext_jax.models.attention.KVCache` or ``None``.
    write_slots: ``int[B]`` first cache slot of the block (required with a cache).
    logits_at: optional ``int[B, K]`` block indices; logits (and hidden) are computed only there
      (saves the ``T x V`` head matmul of a prefill).
    return_hidden: also return the final hidden states (after the final RMSNorm, i.e. the LM
      head's input), ``[B, T or K, hidden]``.
  Returns:
    :class:`partext_jax.base.LMOutput` ``(logits [B, T or K, V] float32, cache, hidden)``;
    ``cache`` is ``None`` without one, ``hidden`` ``None`` unless ``return_hidden``.
  Raises:
    ValueError: a cache without ``write_slots``, or a ``CacheBlockMask`` without a cache.
  """

  config: LlamaConfig

  @nn.compact
  def __call__(self, tokens, positions, attn_mask=None, cache=None, write_slots=None, *,
               logits_at=None, return_hidden=False):
    c = self.config
    b, t = tokens.shape
    embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.compute_dtype, name="embed",
                     embedding_init=logical(default_init, ("vocab", "embed")))
    x = embed(tokens)
    if cache is not None:
      if write_slots is None:
        raise ValueError("write_slots (int[B]) is required when a cache is given")
      write_slots = jnp.broadcast_to(jnp.asarray(write_slots, jnp.int32), (b,))
      if attn_mask is None and c.causal:
        attn_mask = causal_cache_mask(write_slots[:, None] + jnp.arange(t)[None], 0,
                                      cache.max_len)
      elif attn_mask is None:   # bidirectional (causal=False): every slot of the cache
        attn_mask = jnp.ones((1, t, cache.max_len), bool)
      # Expanded once here (not in every layer) when the implementation takes dense masks.
      attn_mask = attention_lib.resolve_mask(attn_mask, impl=c.attention_impl,
                                             max_len=cache.max_len, write_slots=write_slots)
    elif isinstance(attn_mask, attention_lib.CacheBlockMask):
      raise ValueError("a CacheBlockMask attn_mask needs a cache (and write_slots)")
    elif attn_mask is None and c.causal:
      attn_mask = jnp.tril(jnp.ones((t, t), bool))[None]
    span = None if cache is None else attention_lib.visible_span(attn_mask, cache.max_len)
    (x, cache), _ = layer_stack(c)((x, cache), jnp.arange(c.num_layers), positions, attn_mask,
                                   write_slots, span)
    if logits_at is not None:
      x = jnp.take_along_axis(x, logits_at[:, :, None].astype(jnp.int32), axis=1)
    hidden = RMSNorm(c.rms_eps, c.compute_dtype, name="final_norm")(x)
    if c.tie_embeddings:
      # ``hidden @ E^T`` as a dot_general contracting E's second axis: ``embed.attend`` (an
      # explicit ``E.T``) made XLA:CPU materialise a transposed copy of E at every decode step.
      table = embed.embedding.astype(c.compute_dtype)
      logits = jax.lax.dot_general(hidden.astype(c.compute_dtype), table,
                                   (((hidden.ndim - 1,), (1,)), ((), ())))
    else:
      logits = nn.Dense(c.vocab_size, use_bias=False, dtype=c.compute_dtype, name="lm_head",
                        kernel_init=logical(default_init, ("embed", "vocab")))(hidden)
    return LMOutput(logits.astype(jnp.float32), cache, hidden if return_hidden else None)


def forward(params, tokens, positions, attn_mask=None, cache=None, write_slots=None, *,
            config: LlamaConfig, logits_at=None, return_hidden=False):
  """Pure-function form of :class:`Llama` (``params`` is the unboxed ``"params"`` collection).

  Weight-only quantized kernels (leaves with a ``dequantize()`` method, e.g.
  :class:`partext_jax.pretrained.quantize.QuantizedTensor`) are dequantised here, inside the
  caller's jit (``docs/algorithms.md#weight-only-quantization``).
  """
  is_quantized = lambda x: hasattr(x, "dequantize")  # noqa: E731
  params = jax.tree_util.tree_map(lambda x: x.dequantize() if is_quantized(x) else x, params,
                                  is_leaf=is_quantized)
  return Llama(config).apply({"params": params}, tokens, positions, attn_mask, cache, write_slots,
                             logits_at=logits_at, return_hidden=return_hidden)


def init_params(rng_key, config: LlamaConfig, *, boxed: bool = False):
  """Random parameters (``boxed=True`` keeps the logical-partitioning metadata)."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  variables = Llama(config).init(rng_key, tokens, tokens)
  params = variables["params"]
  return params if boxed else nn.meta.unbox(params)


def param_logical_axes(config: LlamaConfig):
  """``PartitionSpec`` tree of logical axis names (vocab/embed/mlp/heads/kv_heads/head_dim)."""
  boxed = jax.eval_shape(lambda k: init_params(k, config, boxed=True), jax.random.key(0))
  return logical_axes(boxed)


@dataclasses.dataclass(frozen=True)
class LlamaLM:
  """The model as the samplers see it: a hashable callable plus cache/params constructors.

  ``model(params, tokens, positions, attn_mask, cache, write_slots, *, logits_at=None,
  return_hidden=False) -> LMOutput`` (the :class:`partext_jax.base.CausalLM` protocol). Being a
  frozen dataclass of a frozen config, it can be a static argument of ``jax.jit``; two equal
  configs hit the same compilation cache entry.
  """

  config: LlamaConfig

  def __call__(self, params, tokens, positions, attn_mask, cache, write_slots, *, logits_at=None,
               return_hidden=False):
    return forward(params, tokens, positions, attn_mask, cache, write_slots, config=self.config,
                   logits_at=logits_at, return_hidden=return_hidden)

  def init(self, rng_key):
    return init_params(rng_key, self.config)

  def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
    return init_cache(self.config, batch, max_len, dtype)

  @property
  def context_length(self) -> int:
    return self.config.context_length

  @property
  def eos_id(self):
    return self.config.eos_id

  @property
  def pad_id(self):
    return self.config.pad_id


class ModelBundle(NamedTuple):
  """What :func:`partext_jax.ar.sampling.generate_text` needs."""

  model: LlamaLM
  params: Any
  tokenizer: Any  # partext_jax.pretrained.tokenizer.GGUFTokenizer
