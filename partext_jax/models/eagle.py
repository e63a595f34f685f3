"""EAGLE feature-level draft head (Flax): one decoder layer autoregressive in feature space.

Li et al. (2024), "EAGLE: speculative sampling requires rethinking feature uncertainty" (EAGLE-1;
the dynamic trees of EAGLE-2 are in :mod:`partext_jax.ar.speculative.drafters.eagle`);
``docs/algorithms.md#eagle-feature-drafter``. ``f_i`` is the frozen target's final hidden state
at position ``i`` (after the final RMSNorm: the LM head's input), ``e(x)`` its (frozen) token
embedding and ``W`` its LM head. The head reads the pair (feature of the previous position, token
of this position) and predicts this position's feature::

    u_i   = [e(x_i), f_{i-1}] A + a                 (A: [2E, E], "fc"; f_{-1} = 0)
    f^_i  = DecoderLayer(u_<=i)_i                   (one Llama layer, causal, RoPE at i)
    q_i   = softmax(f^_i W_d)                       (guess of x_{i+1})

``W_d = W[:, vocab_ids]`` is the target's head restricted to a *draft vocabulary* (EAGLE-3's
reduced draft vocabulary: the ``V_d`` most frequent tokens of the training data; ``vocab_ids =
arange(V)`` keeps the whole vocabulary). Drafting feeds its own guesses back: the child ``c`` of
a drafted node ``i`` is scored from ``(f^_i, c)``. Only ``A, a`` and the layer are trained.

Usage::

    ecfg = EagleConfig.from_base(llama_cfg)
    eparams = init_params(jax.random.key(0), ecfg)
    dparams = draft_params(eparams, base_params, vocab_ids, base_config=llama_cfg)
    feat, _ = apply_head(dparams, feat_prev, tokens, positions, mask, None, None, config=ecfg)
    logits = draft_logits(dparams, feat)          # float32[..., V_d] over vocab_ids
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from partext_jax.models import attention as attention_lib
from partext_jax.models import llama
from partext_jax.models.attention import KVCache
from partext_jax.models.layers import default_init, logical, logical_axes


@dataclasses.dataclass(frozen=True)
class EagleConfig:
  """Static shape of the head (hashable); the layer's widths default to the target's.

  ``hidden_size`` = the target's width ``E``; ``intermediate_size``, ``num_heads``,
  ``num_kv_heads``, ``head_dim``, ``rope_theta``, ``rms_eps`` describe the one decoder layer;
  ``dtype`` the matmul dtype name.
  """

  hidden_size: int
  intermediate_size: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rms_eps: float = 1e-5
  dtype: str = "float32"

  def __post_init__(self):
    try:
      self.layer_config()  # LlamaConfig's checks of the layer widths.
    except ValueError as e:
      raise ValueError(f"EagleConfig: {e}") from e

  @classmethod
  def from_base(cls, base_config: llama.LlamaConfig, **overrides) -> "EagleConfig":
    """One layer shaped like a layer of ``base_config`` (a :class:`~.llama.LlamaConfig`)."""
    kw = dict(hidden_size=base_config.hidden_size,
              intermediate_size=base_config.intermediate_size, num_heads=base_config.num_heads,
              num_kv_heads=base_config.num_kv_heads, head_dim=base_config.head_dim,
              rope_theta=base_config.rope_theta, rms_eps=base_config.rms_eps)
    kw.update(overrides)
    return cls(**kw)

  def layer_config(self) -> llama.LlamaConfig:
    """The :class:`~.llama.LlamaConfig` of the single decoder layer (vocabulary unused)."""
    return llama.LlamaConfig(vocab_size=1, hidden_size=self.hidden_size,
                             intermediate_size=self.intermediate_size, num_layers=1,
                             num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                             head_dim=self.head_dim, rope_theta=self.rope_theta,
                             rms_eps=self.rms_eps, dtype=self.dtype)

  @property
  def num_params(self) -> int:
    e, f, d = self.hidden_size, self.intermediate_size, self.head_dim
    attn = e * d * (2 * self.num_heads + 2 * self.num_kv_heads)
    return 2 * e * e + e + attn + 3 * e * f + 2 * e

  def init_cache(self, batch: int, max_len: int) -> KVCache:
    """A zero one-layer KV cache."""
    return llama.init_cache(self.layer_config(), batch, max_len)


class EagleHead(nn.Module):
  """``(feat_prev [B, T, E], emb [B, T, E]) -> (f^ [B, T, E], cache)`` (module docstring).

  ``positions``, ``mask``, ``cache``, ``write_slots`` as :class:`~.llama.Llama` (dense masks:
  ``bool[B, T, S]`` with a cache, ``[B or 1, T, T]`` without).
  """

  config: EagleConfig

  @nn.compact
  def __call__(self, feat_prev, emb, positions, mask, cache=None, write_slots=None):
    c = self.config
    dt = jnp.dtype(c.dtype)
    fc = nn.Dense(c.hidden_size, dtype=dt, name="fc",
                  kernel_init=logical(default_init, (None, "embed")),
                  bias_init=logical(nn.initializers.zeros, ("embed",)))
    u = fc(jnp.concatenate([emb.astype(dt), feat_prev.astype(dt)], axis=-1))
    span = None if cache is None else attention_lib.visible_span(mask, cache.max_len)
    (x, cache), _ = llama.DecoderLayer(c.layer_config(), name="layer")(
        (u, cache), 0, positions, mask, write_slots, span)
    return x, cache


def init_params(rng_key, config: EagleConfig, *, boxed: bool = False):
  """Random parameters of :class:`EagleHead` (``fc`` and the layer)."""
  x = jnp.zeros((1, 1, config.hidden_size), jnp.float32)
  pos = jnp.zeros((1, 1), jnp.int32)
  variables = EagleHead(config).init(rng_key, x, x, pos, jnp.ones((1, 1, 1), bool))
  params = variables["params"]
  return params if boxed else nn.meta.unbox(params)


def param_logical_axes(config: EagleConfig):
  """``PartitionSpec`` tree of the logical axis names of the head parameters."""
  boxed = jax.eval_shape(lambda k: init_params(k, config, boxed=True), jax.random.key(0))
  return logical_axes(boxed)


def select_draft_vocab(token_counts, size: int) -> np.ndarray:
  """The ``size`` most frequent token ids (ties: lower id first), sorted: ``int32[size]``.

  ``token_counts`` is ``int[V]`` (e.g. ``np.bincount`` of the training tokens and labels).
  Raises ``ValueError`` unless ``1 <= size <= V``.
  """
  counts = np.asarray(token_counts)
  if not isinstance(size, (int, np.integer)) or not 1 <= size <= counts.shape[0]:
    raise ValueError(f"draft vocabulary size={size!r} must be an int in [1, {counts.shape[0]}]")
  order = np.lexsort((np.arange(counts.shape[0]), -counts))
  return np.sort(order[:size]).astype(np.int32)


def draft_params(head_params, base_params, vocab_ids, *, base_config: llama.LlamaConfig):
  """The drafter's parameter pytree: ``{"head", "embed", "lm_head", "vocab_ids"}``.

  ``embed`` is the target's embedding table (the same array, no copy); ``lm_head`` the rows of
  the target's LM head for ``vocab_ids`` (``float[V_d, E]``, a gathered copy: the extra memory
  of a reduced vocabulary), ``vocab_ids`` ``int32[V_d]``. Raises ``ValueError`` for ids outside
  the vocabulary.
  """
  ids = np.asarray(vocab_ids, np.int32)
  if ids.ndim != 1 or ids.size == 0 or ids.min() < 0 or ids.max() >= base_config.vocab_size:
    raise ValueError(f"vocab_ids must be a non-empty int[V_d] within [0, "
                     f"{base_config.vocab_size}), got shape {ids.shape}")
  emb = base_params["embed"]["embedding"]
  if base_config.tie_embeddings:
    table = jnp.take(emb, jnp.asarray(ids), axis=0)
  else:
    table = jnp.take(base_params["lm_head"]["kernel"], jnp.asarray(ids), axis=1).T
  return {"head": head_params, "embed": emb, "lm_head": table, "vocab_ids": jnp.asarray(ids)}


def apply_head(dparams, feat_prev, tokens, positions, mask, cache=None, write_slots=None, *,
               config: EagleConfig):
  """Runs :class:`EagleHead` on tokens: ``-> (f^ float[B, T, E], cache)``.

  ``dparams`` from :func:`draft_params`; ``feat_prev`` ``float[B, T, E]`` (the feature of the
  position before each token), ``tokens`` ``int[B, T]``. The target's embedding gets no gradient.
  """
  emb = jnp.take(jax.lax.stop_gradient(dparams["embed"]), tokens, axis=0)
  return EagleHead(config).apply({"params": dparams["head"]}, feat_prev, emb, positions, mask,
                                 cache, write_slots)


def draft_logits(dparams, feat):
  """``feat [..., E] -> float32[..., V_d]``: the target's frozen head on the draft vocabulary
  (column ``j`` is token ``dparams["vocab_ids"][j]``)."""
  table = jax.lax.stop_gradient(dparams["lm_head"])
  out = jax.lax.dot_general(feat.astype(table.dtype), table, (((feat.ndim - 1,), (1,)), ((), ())))
  return out.astype(jnp.float32)


def full_vocab_logits(dparams, logits_d, vocab_size: int):
  """Scatters draft-vocabulary logits ``[..., V_d]`` into ``[..., V]`` (``-inf`` elsewhere)."""
  out = jnp.full(logits_d.shape[:-1] + (vocab_size,), -jnp.inf, jnp.float32)
  return out.at[..., dparams["vocab_ids"]].set(logits_d)
