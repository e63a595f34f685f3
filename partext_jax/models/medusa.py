"""Medusa heads (Flax): extra next-next-token predictors on a frozen LM's last hidden state.

Cai et al. (2024), "Medusa" (``docs/algorithms.md#drafters``). The frozen target LM maps the
final hidden state ``h_t`` (after the final RMSNorm, the LM head's input) of position ``t`` to
the next-token logits ``h_t W`` with
``W = E^T`` the tied embedding (``[embed, vocab]``). Head ``k = 1 .. K`` guesses the token ``k``
places *after* that one, ``x_{t+1+k}``, from the same ``h_t``::

    r_k^(0) = h_t
    r_k^(l+1) = r_k^(l) + SiLU(r_k^(l) A_{k,l} + b_{k,l})       l < L   (residual SiLU blocks)
    logits_k(t) = r_k^(L) W                                          (the frozen, shared head)

Only ``A`` (``[K, L, embed, embed]``) and ``b`` are trained (``K L (E^2 + E)`` parameters: 1.33 M
for ``K = 4, L = 1, E = 576``, 5.3 MB in float32). ``A = b = 0`` at initialisation, so every head
starts as the base model's next-token predictor (``SiLU(0) = 0``), the gradient at zero is
``SiLU'(0) = 1/2`` so training moves off it.

The drafter that fills a static tree from these heads is
:class:`partext_jax.ar.speculative.drafters.medusa.MedusaDrafter`; training is
:mod:`partext_jax.training.medusa`.

Usage::

    mcfg = MedusaConfig(num_heads=4, hidden_size=576)
    mparams = init_params(jax.random.key(0), mcfg)
    logits = head_logits(mparams, hidden, base_params, config=mcfg, base_config=llama_cfg)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from partext_jax.models.layers import logical, logical_axes


@dataclasses.dataclass(frozen=True)
class MedusaConfig:
  """Static shape of the heads (hashable).

  ``num_heads`` = ``K`` (head ``k`` predicts ``k + 1`` tokens past the target's next token),
  ``num_layers`` = residual blocks per head, ``hidden_size`` = the base model's width, ``dtype``
  the matmul dtype name.
  """

  num_heads: int
  hidden_size: int
  num_layers: int = 1
  dtype: str = "float32"

  def __post_init__(self):
    for name in ("num_heads", "hidden_size", "num_layers"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"MedusaConfig.{name}={v!r} must be a positive int")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"MedusaConfig.dtype={self.dtype!r} is not one of "
                       "('float32', 'bfloat16', 'float16')")

  @property
  def num_params(self) -> int:
    return self.num_heads * self.num_layers * (self.hidden_size ** 2 + self.hidden_size)


class MedusaHeads(nn.Module):
  """``hidden [..., E] -> r [K, ..., E]``: the heads' residual towers (before the LM head).

  Parameters are stacked over heads and layers: ``kernel [K, L, embed, mlp]`` and
  ``bias [K, L, mlp]`` with logical names ``(None, None, "embed", "mlp")`` (the block is a
  width-preserving feed-forward layer, so its output axis is the ``mlp`` axis of size ``E``; the
  head axis is replicated).
  """

  config: MedusaConfig

  @nn.compact
  def __call__(self, hidden):
    c = self.config
    dt = jnp.dtype(c.dtype)
    e = c.hidden_size
    if hidden.shape[-1] != e:
      raise ValueError(f"hidden has width {hidden.shape[-1]}, MedusaConfig.hidden_size={e}")
    kernel = self.param("kernel", logical(nn.initializers.zeros, (None, None, "embed", "mlp")),
                        (c.num_heads, c.num_layers, e, e), jnp.float32)
    bias = self.param("bias", logical(nn.initializers.zeros, (None, None, "mlp")),
                      (c.num_heads, c.num_layers, e), jnp.float32)
    r = jnp.broadcast_to(hidden.astype(dt), (c.num_heads,) + hidden.shape)
    for layer in range(c.num_layers):
      # r[k, ..., e] @ kernel[k, layer, e, f] for every head k at once.
      z = jnp.einsum("k...e,kef->k...f", r, kernel[:, layer].astype(dt))
      z = z + bias[:, layer].astype(dt).reshape((c.num_heads,) + (1,) * (r.ndim - 2) + (e,))
      r = r + nn.silu(z)
    return r


def init_params(rng_key, config: MedusaConfig, *, boxed: bool = False):
  """Parameters of :class:`MedusaHeads` (zeros: every head starts as the base next-token head)."""
  variables = MedusaHeads(config).init(rng_key, jnp.zeros((1, config.hidden_size), jnp.float32))
  params = variables["params"]
  return params if boxed else nn.meta.unbox(params)


def param_logical_axes(config: MedusaConfig):
  """``PartitionSpec`` tree of the logical axis names of the head parameters."""
  boxed = jax.eval_shape(lambda k: init_params(k, config, boxed=True), jax.random.key(0))
  return logical_axes(boxed)


def lm_head_logits(x, base_params, *, base_config):
  """``x [..., E] -> x W`` with the base model's (frozen) LM head, float32 ``[..., V]``.

  Tied embeddings: ``W = E^T``, computed as a ``dot_general`` contracting the table's second
  axis (no transposed copy). Untied: ``W`` = ``lm_head.kernel``. No gradient reaches ``W``.
  """
  dt = jnp.dtype(base_config.dtype)
  x = x.astype(dt)
  if base_config.tie_embeddings:
    table = jax.lax.stop_gradient(base_params["embed"]["embedding"]).astype(dt)
    logits = jax.lax.dot_general(x, table, (((x.ndim - 1,), (1,)), ((), ())))
  else:
    w = jax.lax.stop_gradient(base_params["lm_head"]["kernel"]).astype(dt)
    logits = x @ w
  return logits.astype(jnp.float32)


def head_logits(params, hidden, base_params, *, config: MedusaConfig, base_config):
  """Logits of every head: ``hidden [..., E] -> float32 [K, ..., V]``.

  ``hidden`` is the base model's final hidden state (``forward(..., return_hidden=True)``);
  ``[k, ..., :]`` is head ``k + 1``'s guess of the token ``k + 2`` places after the position.
  """
  r = MedusaHeads(config).apply({"params": params}, hidden)
  return lm_head_logits(r, base_params, base_config=base_config)
