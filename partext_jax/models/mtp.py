"""Multi-token prediction (MTP) on a frozen causal LM: Gloeckle et al. heads, DeepSeek-V3 modules.

``docs/algorithms.md#multi-token-prediction``. A frozen *trunk* (any
:class:`partext_jax.base.CausalLM` with LlamaLM-style ``embed`` / ``lm_head`` parameters, e.g.
SmolLM2) gives the final hidden state ``h_t`` (after its final norm, the LM head's input) and the
next-token logits ``h_t W``. ``D`` extra predictors, each **one transformer block** with causal
self-attention over the positions (pre-norm, GQA, RoPE, SwiGLU), reuse the trunk's unembedding
``W`` (and, for DeepSeek, its embedding ``Emb``):

* ``kind="gloeckle"`` (Gloeckle et al. 2024, "Better & faster LLMs via multi-token prediction"):
  head ``k + 1`` (``k = 1 .. D``; head 1 is the trunk's own) predicts ``x_{t+k+1}`` from the trunk
  sequence: ``r_k = Block_k(h)_t``, ``logits = r_k W``. The heads are independent given the trunk.
* ``kind="deepseek"`` (DeepSeek-AI 2024, "DeepSeek-V3", section 2.2): sequential modules.
  Module ``k`` at (module) position ``i`` combines its predecessor's state with the embedding of
  the token ``k`` places ahead and predicts the token after it::

      a_k(i) = Block_k( M_k [ RMSNorm(a_{k-1}(i)) ; RMSNorm(Emb(x_{i+k})) ] ),   a_0 = h
      logits_k(i) = RMSNorm_k(a_k(i)) W            (predicts x_{i+k+1})

  Written at the *token* position ``p = i + k`` of its input token, every module predicts
  ``x_{p+1}`` from ``a_{k-1}`` at ``p - 1`` and ``x_p``: a shift-by-one recurrence with the trunk's
  causal structure (entries at ``p < k`` do not exist and are masked out).

Self-speculative decoding (Gloeckle et al.; Stern et al. 2018). :class:`MTPModel` wraps trunk +
predictors as one :class:`~partext_jax.base.CausalLM`: its logits are the trunk's (so it decodes
exactly as the trunk), and its forward also runs the predictors, keeping their K/V in its cache
beside the trunk's (one ``compact`` moves both). Its ``hidden`` output at every scored node is
what the MTP drafter (:mod:`partext_jax.ar.speculative.drafters.mtp`) needs, so drafting costs
no extra forward:

* Gloeckle: the heads' LM-head inputs ``[r_1 .. r_D]`` at the node (``D E`` floats).
* DeepSeek: module 1 needs the root, which only verification decides. At every node ``t`` the
  forward takes the ``num_roots`` most likely next tokens ``c`` of the trunk and runs the module
  chain along the diagonal for each: ``d_0 = c``, module ``k`` at token positions
  ``pos_t + 1 .. pos_t + k`` (inputs ``d_0 .. d_{k-1}``) gives ``d_k = argmax`` of its head.
  ``hidden = [h_t, RMSNorm_k(a_k) for every (c, k)]`` (``(1 + num_roots D) E`` floats); the
  drafter recomputes the candidates from ``h_t`` and picks the chain of the actual root.

Parameters: ``{"trunk": <trunk params>, "mtp": {"layers_<k-1>": ...}}`` (:func:`init_params`
makes the ``"mtp"`` part). Usage::

    cfg = MTPConfig.for_trunk(llama_cfg, kind="deepseek", depth=1)
    mparams = init_params(jax.random.key(0), cfg)
    model = MTPModel(trunk=LlamaLM(llama_cfg), config=cfg)
    params = {"trunk": trunk_params, "mtp": mparams}
    tokens, info = decode.generate(key, model, params, prompts, drafter=MTPDrafter(cfg, llama_cfg),
                                   drafter_params=drafter_params(trunk_params, llama_cfg), ...)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from partext_jax.base import LMOutput
from partext_jax.models import attention as attention_lib
from partext_jax.models.attention import KVCache, causal_cache_mask
from partext_jax.models.layers import (RMSNorm, SwiGLU, apply_rope, default_init, head_projection,
                                       logical, output_projection)
from partext_jax.models.medusa import lm_head_logits

MTP_KINDS = ("gloeckle", "deepseek")


@dataclasses.dataclass(frozen=True)
class MTPConfig:
  """Static shape of the ``D`` predictors (hashable).

  Attributes:
    kind: ``"gloeckle"`` (independent heads) or ``"deepseek"`` (sequential modules).
    depth: ``D >= 1``, tokens predicted beyond the trunk's next token (Gloeckle's ``n = D + 1``
      heads counting the trunk's; DeepSeek's ``D`` modules).
    hidden_size: ``E``, the trunk's width.
    vocab_size: ``V``, the trunk's vocabulary.
    num_heads, num_kv_heads, head_dim: attention shape of each block (GQA).
    mlp_dim: SwiGLU width of each block.
    rope_theta, rms_eps: as the trunk's.
    dtype: matmul dtype name.
  """

  kind: str
  depth: int
  hidden_size: int
  vocab_size: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10000.0
  rms_eps: float = 1e-5
  dtype: str = "float32"

  def __post_init__(self):
    if self.kind not in MTP_KINDS:
      raise ValueError(f"MTPConfig.kind={self.kind!r} is not one of {MTP_KINDS}")
    for name in ("depth", "hidden_size", "vocab_size", "num_heads", "num_kv_heads", "head_dim",
                 "mlp_dim"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"MTPConfig.{name}={v!r} must be an int >= 1")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"MTPConfig.num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"MTPConfig.head_dim={self.head_dim} must be even (RoPE)")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"MTPConfig.dtype={self.dtype!r} is not one of "
                       "('float32', 'bfloat16', 'float16')")

  @classmethod
  def for_trunk(cls, trunk_config, *, kind: str, depth: int, mlp_dim: int | None = None,
                **overrides) -> "MTPConfig":
    """Blocks shaped like the trunk's layers (``trunk_config``: a ``LlamaConfig``-like object);
    ``mlp_dim`` defaults to the trunk's ``intermediate_size``."""
    kw = dict(kind=kind, depth=depth, hidden_size=trunk_config.hidden_size,
              vocab_size=trunk_config.vocab_size, num_heads=trunk_config.num_heads,
              num_kv_heads=trunk_config.num_kv_heads, head_dim=trunk_config.head_dim,
              mlp_dim=mlp_dim or trunk_config.intermediate_size,
              rope_theta=trunk_config.rope_theta, rms_eps=trunk_config.rms_eps,
              dtype=trunk_config.dtype)
    kw.update(overrides)
    return cls(**kw)

  @property
  def num_params(self) -> int:
    """Trainable parameters of the ``D`` predictors."""
    e = self.hidden_size
    block = (2 * e + e * (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
             + self.num_heads * self.head_dim * e + 3 * e * self.mlp_dim)
    extra = 2 * e * e + 3 * e if self.kind == "deepseek" else 0  # projection M_k + 3 norms
    return self.depth * (block + extra)


Attend = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class Block(nn.Module):
  """Pre-norm transformer block ``x + Attn(RMSNorm(x))``, then ``+ SwiGLU(RMSNorm(.))``.

  ``attend(q, k, v) -> out`` (``[B, T, H or G, head_dim]``) is supplied by the caller: it writes
  ``k, v`` to a cache, adds keys, and applies the mask (:func:`MTPModel.__call__`,
  :func:`sequence_forward`). Queries and keys are rotated (RoPE) at ``positions`` here.
  """

  config: MTPConfig

  @nn.compact
  def __call__(self, x, positions, attend: Attend):
    c = self.config
    dt = jnp.dtype(c.dtype)
    norm = lambda name, y: RMSNorm(c.rms_eps, dt, name=name)(y)  # noqa: E731
    n = norm("attn_norm", x)
    project = lambda heads, axis, name: head_projection(heads, c.head_dim, axis, dt, name)(n)
    q = apply_rope(project(c.num_heads, "heads", "q"), positions, theta=c.rope_theta)
    k = apply_rope(project(c.num_kv_heads, "kv_heads", "k"), positions, theta=c.rope_theta)
    v = project(c.num_kv_heads, "kv_heads", "v")
    x = x + output_projection(c.hidden_size, dt, "o")(attend(q, k, v))
    return x + SwiGLU(c.mlp_dim, dt, name="mlp")(norm("mlp_norm", x))


class Predictor(nn.Module):
  """One Gloeckle head or DeepSeek module: ``(prev, emb, positions, attend) -> (state, out)``.

  Gloeckle: ``state = out = Block(prev)`` (``prev`` = the trunk's ``h``; ``emb`` unused).
  DeepSeek: ``state = Block(M [RMSNorm(prev); RMSNorm(emb)])`` (carried to the next module) and
  ``out = RMSNorm(state)`` (the shared LM head's input).
  """

  config: MTPConfig

  @nn.compact
  def __call__(self, prev, emb, positions, attend: Attend):
    c = self.config
    dt = jnp.dtype(c.dtype)
    if c.kind == "gloeckle":
      state = Block(c, name="block")(prev, positions, attend)
      return state, state
    norm = lambda name, y: RMSNorm(c.rms_eps, dt, name=name)(y)  # noqa: E731
    u = jnp.concatenate([norm("hidden_norm", prev), norm("embed_norm", emb)], axis=-1)
    u = nn.Dense(c.hidden_size, use_bias=False, dtype=dt, name="proj",
                 kernel_init=logical(default_init, (None, "embed")))(u)
    state = Block(c, name="block")(u, positions, attend)
    return state, norm("out_norm", state)


def _heads_major(x):
  """``[B, T, G, D] -> [B, G, T, D]``: the layout of the attention functions and the KV cache."""
  return x.transpose(0, 2, 1, 3)


def init_params(rng_key, config: MTPConfig):
  """Parameters of the ``D`` predictors: ``{"layers_<k-1>": ...}`` for ``k = 1 .. D``."""
  e = config.hidden_size
  x = jnp.zeros((1, 1, e), jnp.float32)
  pos = jnp.zeros((1, 1), jnp.int32)
  self_attend = lambda q, k, v: attention_lib.xla_attention(  # noqa: E731
      q, _heads_major(k), _heads_major(v), None)
  keys = jax.random.split(rng_key, config.depth)
  return {f"layers_{k}": nn.meta.unbox(
      Predictor(config).init(keys[k], x, x, pos, self_attend)["params"])
          for k in range(config.depth)}


def _apply(config, params, k: int, prev, emb, positions, attend):
  return Predictor(config).apply({"params": params[f"layers_{k}"]}, prev, emb, positions, attend)


def embed_tokens(trunk_params, tokens):
  """The trunk's (shared, frozen) token embedding ``Emb(x)``, float32 ``[..., E]``."""
  table = jax.lax.stop_gradient(trunk_params["embed"]["embedding"])
  return jnp.take(table, tokens, axis=0).astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# Teacher-forced forward over whole sequences (training, evaluation).


def sequence_forward(params, trunk_hidden, tokens, trunk_params, *, config: MTPConfig,
                     valid=None):
  """Every predictor's LM-head input at every position, teacher-forced: ``float32[D, B, T, E]``.

  Args:
    params: the predictors' parameters (:func:`init_params`).
    trunk_hidden: ``float[B, T, E]``, the frozen trunk's final hidden states ``h``.
    tokens: ``int32[B, T]``, the sequence (DeepSeek embeds it).
    trunk_params: the trunk's parameters (its embedding, for DeepSeek).
    valid: optional ``bool[B, T]`` real (non-padding) positions; keys elsewhere are masked.
  Returns:
    ``out[k - 1, b, t]``: Gloeckle head ``k + 1``'s input predicting ``x_{t+k+1}``; DeepSeek
    module ``k``'s input predicting ``x_{t+1}`` (meaningful for ``t >= k``).
  """
  b, t = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  causal = jnp.tril(jnp.ones((t, t), bool))[None]
  if valid is not None:
    causal = causal & valid[:, None, :]
  emb = embed_tokens(trunk_params, tokens) if config.kind == "deepseek" else None
  h = trunk_hidden.astype(jnp.float32)
  state = h
  outs = []
  for k in range(1, config.depth + 1):
    if config.kind == "deepseek":
      # a_{k-1} at p - 1 feeds the entry at p; entries at p < k do not exist (masked keys).
      prev = jnp.concatenate([jnp.zeros_like(state[:, :1]), state[:, :-1]], axis=1)
      mask = causal & (positions >= k)[:, None, :]
    else:
      prev, mask = h, causal  # every head reads the trunk
    attend = lambda q, kk, v, mask=mask: attention_lib.xla_attention(  # noqa: E731
        q, _heads_major(kk), _heads_major(v), mask)
    state, out = _apply(config, params, k - 1, prev, emb, positions, attend)
    outs.append(out)
  return jnp.stack(outs)


# --------------------------------------------------------------------------------------------
# The self-speculative model: trunk + predictors with one cache.


class MTPCache(NamedTuple):
  """The cache of :class:`MTPModel`: the trunk's, the predictors' K/V and per-slot state.

  Attributes:
    trunk: the trunk's own cache.
    kv: :class:`~partext_jax.models.attention.KVCache` with one layer per predictor.
    positions: ``int32[B, S]`` token position written at every slot.
    states: ``float32[D, B, S, E]`` (DeepSeek): ``a_0 = h`` .. ``a_{D-1}`` at every slot, the
      inputs of the next module's entries; ``[0, B, S, E]`` for Gloeckle.
  """

  trunk: Any
  kv: KVCache
  positions: jax.Array
  states: jax.Array

  @property
  def max_len(self) -> int:
    return self.positions.shape[1]

  def compact(self, src, dst) -> "MTPCache":
    """Moves slot ``src[b, j]`` to ``dst[b, j]`` everywhere (``dst >= S`` drops), as
    :meth:`partext_jax.models.attention.KVCache.compact`."""
    rows = jnp.arange(self.positions.shape[0])[:, None]
    return MTPCache(self.trunk.compact(src, dst), self.kv.compact(src, dst),
                    self.positions.at[rows, dst].set(self.positions[rows, src], mode="drop"),
                    self.states.at[:, rows, dst].set(self.states[:, rows, src], mode="drop"))


def _spec_mask(row_mask, key_ok, m: int, k: int):
  """Mask of ``Q = K m k`` speculative queries over ``[S cache keys | Q speculative keys]``.

  Query ``(node n, root c, entry j)`` sees the cache keys of ``row_mask[b, n] & key_ok`` and the
  speculative entries ``(n, c, j' <= j)``. ``row_mask bool[B, K, S]``, ``key_ok bool[B, S]``.
  Returns ``bool[B, Q, S + Q]``.
  """
  b, kk, s = row_mask.shape
  cache = jnp.broadcast_to((row_mask & key_ok[:, None, :])[:, :, None, None, :],
                           (b, kk, m, k, s)).reshape(b, kk * m * k, s)
  group = jnp.arange(kk * m * k) // k
  entry = jnp.arange(kk * m * k) % k
  spec = (group[:, None] == group[None, :]) & (entry[None, :] <= entry[:, None])
  return jnp.concatenate([cache, jnp.broadcast_to(spec, (b,) + spec.shape)], axis=-1)


@dataclasses.dataclass(frozen=True)
class MTPModel:
  """Frozen trunk + ``D`` MTP predictors as one :class:`~partext_jax.base.CausalLM` (module
  docstring). Hashable (a static argument of the decoders).

  Attributes:
    trunk: the frozen causal LM (``LlamaLM``-style parameters ``embed`` / ``lm_head`` and a
      ``config`` with ``tie_embeddings`` and ``dtype``; its cache needs ``compact``).
    config: the predictors' :class:`MTPConfig` (``hidden_size`` / ``vocab_size`` = the trunk's).
    num_roots: DeepSeek only: candidate roots (the trunk's top tokens) a chain is run for at
      every node; 1 suffices for greedy decoding.

  ``__call__(params, tokens, positions, attn_mask, cache, write_slots, *, logits_at=None,
  return_hidden=False)``: ``params = {"trunk": ..., "mtp": ...}``; logits are the trunk's;
  ``hidden [B, T or K, X]`` is the drafter's input (module docstring). The trunk is always run
  with ``logits_at=None`` (the predictors' keys need ``h`` at every position), so a prefill
  computes the full logits before selecting ``logits_at``. Without a cache it is the trunk plus
  :func:`sequence_forward` (``hidden [B, T, D E]``).
  Raises ``ValueError`` for a width or vocabulary that differs from the trunk's, or
  ``num_roots < 1``.
  """

  trunk: Any
  config: MTPConfig
  num_roots: int = 1

  def __post_init__(self):
    tc = getattr(self.trunk, "config", None)
    for name in ("hidden_size", "vocab_size"):
      if getattr(tc, name, None) != getattr(self.config, name):
        raise ValueError(f"MTPConfig.{name}={getattr(self.config, name)} differs from the "
                         f"trunk's {name}={getattr(tc, name, None)}")
    if not isinstance(self.num_roots, int) or self.num_roots < 1:
      raise ValueError(f"num_roots={self.num_roots!r} must be an int >= 1")
    if self.num_roots > self.config.vocab_size:
      raise ValueError(f"num_roots={self.num_roots} exceeds vocab_size={self.config.vocab_size}")

  # The CausalLM attributes, from the trunk.
  @property
  def context_length(self):
    return getattr(self.trunk, "context_length", None)

  @property
  def eos_id(self):
    return getattr(self.trunk, "eos_id", None)

  @property
  def pad_id(self):
    return getattr(self.trunk, "pad_id", None)

  @property
  def vocab_size(self) -> int:
    return self.config.vocab_size

  @property
  def hidden_width(self) -> int:
    """``X``, the width of the ``hidden`` output (what the drafter reads)."""
    c = self.config
    if c.kind == "gloeckle":
      return c.depth * c.hidden_size
    return (1 + self.num_roots * c.depth) * c.hidden_size

  def init_cache(self, batch: int, max_len: int, dtype=None) -> MTPCache:
    c = self.config
    n_states = c.depth if c.kind == "deepseek" else 0
    return MTPCache(self.trunk.init_cache(batch, max_len, dtype),
                    KVCache.zeros(c.depth, batch, max_len, c.num_kv_heads, c.head_dim,
                                  jnp.dtype(c.dtype) if dtype is None else dtype),
                    jnp.zeros((batch, max_len), jnp.int32),
                    jnp.zeros((n_states, batch, max_len, c.hidden_size), jnp.float32))

  def __call__(self, params, tokens, positions, attn_mask=None, cache=None, write_slots=None, *,
               logits_at=None, return_hidden=False):
    tokens = jnp.asarray(tokens, jnp.int32)
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.asarray(positions, jnp.int32), (b, t))
    trunk_params = params["trunk"]
    out = self.trunk(trunk_params, tokens, positions, attn_mask,
                     None if cache is None else cache.trunk, write_slots, return_hidden=True)
    h = out.hidden.astype(jnp.float32)
    if cache is None:
      hidden = sequence_forward(params["mtp"], h, tokens, trunk_params, config=self.config)
      hidden = jnp.moveaxis(hidden, 0, 2).reshape(b, t, -1)
      logits = out.logits
      if logits_at is not None:
        at = jnp.asarray(logits_at, jnp.int32)[:, :, None]
        logits = jnp.take_along_axis(logits, at, axis=1)
        hidden = jnp.take_along_axis(hidden, at, axis=1)
      return LMOutput(logits, None, hidden if return_hidden else None)
    return self._cached(params, tokens, positions, attn_mask, cache, write_slots, out, h,
                        logits_at=logits_at, return_hidden=return_hidden)

  def _cached(self, params, tokens, positions, attn_mask, cache, write_slots, out, h, *,
              logits_at, return_hidden):
    c = self.config
    b, t = tokens.shape
    s_len = cache.max_len
    write_slots = jnp.broadcast_to(jnp.asarray(write_slots, jnp.int32), (b,))
    slots = write_slots[:, None] + jnp.arange(t)[None]
    if attn_mask is None:
      attn_mask = causal_cache_mask(slots, 0, s_len)
    dense = jnp.broadcast_to(attention_lib.resolve_mask(attn_mask, impl="xla", max_len=s_len,
                                                        write_slots=write_slots), (b, t, s_len))
    rows = jnp.arange(b)[:, None]
    slot_pos = cache.positions.at[rows, slots].set(positions, mode="drop")
    kv = cache.kv
    states = cache.states
    emb = embed_tokens(params["trunk"], tokens) if c.kind == "deepseek" else None
    if c.kind == "deepseek":
      # Parent of every block token: the attended slot one position earlier.
      is_parent = dense & (slot_pos[:, None, :] == positions[:, :, None] - 1)
      parent = jnp.argmax(is_parent, axis=-1)  # [B, T] (0 when none: an invalid entry anyway)
      states = states.at[0, rows, slots].set(h, mode="drop")
    entry_state, entry_out = [], []
    for k in range(1, c.depth + 1):
      key_ok = slot_pos >= (k if c.kind == "deepseek" else 0)
      mask = dense & key_ok[:, None, :]

      def attend(q, kk, v, k=k, mask=mask):
        nonlocal kv
        kv = kv.write(k - 1, write_slots, kk, v)
        return attention_lib.xla_attention(q, kv.k[k - 1], kv.v[k - 1], mask)

      if c.kind == "deepseek":
        prev = states[k - 1][rows, parent]  # a_{k-1} at the parent slot
      else:
        prev = h
      state, o = _apply(c, params["mtp"], k - 1, prev, emb, positions, attend)
      if c.kind == "deepseek" and k < c.depth:
        states = states.at[k, rows, slots].set(state, mode="drop")
      entry_state.append(state)
      entry_out.append(o)
    new_cache = MTPCache(out.cache, kv, slot_pos, states)
    logits = out.logits
    sel = (lambda x: x) if logits_at is None else (
        lambda x: jnp.take_along_axis(x, jnp.asarray(logits_at, jnp.int32).reshape(
            (b, -1) + (1,) * (x.ndim - 2)), axis=1))
    logits = sel(logits)
    if not return_hidden:
      return LMOutput(logits, new_cache, None)
    if c.kind == "gloeckle":
      hidden = jnp.concatenate([sel(o) for o in entry_out], axis=-1)
      return LMOutput(logits, new_cache, hidden)
    chain = self._deepseek_chain(params, sel(out.logits), sel(h), sel(positions),
                                 [sel(s) for s in entry_state], sel(dense), slot_pos, kv)
    hidden = jnp.concatenate([sel(h), chain], axis=-1)
    return LMOutput(logits, new_cache, hidden)

  def _deepseek_chain(self, params, logits, h, positions, entry_state, row_mask, slot_pos, kv):
    """The speculative module chains of every node and candidate root: ``[B, K, m D E]``."""
    c = self.config
    m, d = self.num_roots, c.depth
    b, kk = positions.shape
    _, roots = jax.lax.top_k(logits, m)  # [B, K, m]
    z = [roots.astype(jnp.int32)]  # z[j]: the token at position pos + 1 + j
    prev_spec = None  # module k-1's speculative states, [B, K, m, k-1, E]
    outs = []
    for k in range(1, d + 1):
      # Entry j = 1..k of module k sits at token position pos + j with input token z[j - 1] and
      # predecessor state a_{k-1} at pos + j - 1: module k-1's node entry (j = 1) or its
      # speculative entry j - 1.
      first = (h if k == 1 else entry_state[k - 2])[:, :, None, None, :]
      first = jnp.broadcast_to(first, (b, kk, m, 1, c.hidden_size))
      prev = first if k == 1 else jnp.concatenate([first, prev_spec], axis=3)
      toks = jnp.stack(z[:k], axis=-1)  # [B, K, m, k]
      pos = positions[:, :, None, None] + 1 + jnp.arange(k)
      pos = jnp.broadcast_to(pos, (b, kk, m, k))
      flat = lambda x: x.reshape((b, kk * m * k) + x.shape[4:])  # noqa: E731
      key_ok = slot_pos >= k
      spec_ok = flat(pos) >= k
      mask = _spec_mask(row_mask, key_ok, m, k) & jnp.concatenate(
          [jnp.ones((b, 1, slot_pos.shape[1]), bool), spec_ok[:, None, :]], axis=-1)

      def attend(q, kq, v, k=k, mask=mask):
        keys = jnp.concatenate([kv.k[k - 1], _heads_major(kq).astype(kv.k.dtype)], axis=2)
        values = jnp.concatenate([kv.v[k - 1], _heads_major(v).astype(kv.v.dtype)], axis=2)
        return attention_lib.xla_attention(q, keys, values, mask)

      emb = embed_tokens(params["trunk"], flat(toks))
      state, o = _apply(c, params["mtp"], k - 1, flat(prev), emb, flat(pos), attend)
      state = state.reshape(b, kk, m, k, -1)
      o = o.reshape(b, kk, m, k, -1)[:, :, :, -1]  # the diagonal entry predicts d_k
      outs.append(o)
      prev_spec = state
      if k < d:
        head = lm_head_logits(o, params["trunk"], base_config=self.trunk.config)
        z.append(jnp.argmax(head, axis=-1).astype(jnp.int32))
    return jnp.stack(outs, axis=3).reshape(b, kk, m * d * c.hidden_size)
