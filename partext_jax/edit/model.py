"""A small Flax rate model for Edit Flows and its training loop on an enumerable toy.

Havasi et al. 2025, ``docs/algorithms.md#edit-flows``. The model reads ``[BOS, x_1 .. x_n, PAD
..]`` (``N + 1`` slots) with a bidirectional Transformer (the NAT stack of
:mod:`partext_jax.nat.networks`: pre-norm RMSNorm, SwiGLU, learned positions) and a time
embedding added to every slot. Slot ``g`` predicts the insertions into gap ``g`` (slot 0 is BOS:
the gap before the first token), slot ``i + 1`` the deletion and substitutions of position
``i``. As in the paper, each kind is a total rate times a distribution over tokens:

    insert[g, v] = lambda_ins(g) Q_ins(v | g),   substitute[i, v] = lambda_sub(i) Q_sub(v | i),
    lambda = softplus(.) / (1 - t)

(the ``1 / (1 - t) = kappa'_t / (1 - kappa_t)`` factor of the conditional rates is explicit, so
the network predicts a bounded quantity: the exact marginal rate is ``1 / (1 - t)`` times the
posterior probability that the edit is pending). Training minimises
:func:`partext_jax.edit.edit_flows.bregman_loss` on fresh pairs ``(x0 ~ p0, x1 ~ p1)`` each step.

Example::

    toy = exact.random_toy(0, vocab_size=3, source_length=2, target_length=4)
    cfg = RateModelConfig(vocab_size=3, capacity=8)
    params, losses = train(jax.random.key(0), toy, cfg, num_steps=1000)
    sampler = edit_flows.edit_flows(make_rate_fn(cfg, params), num_steps=64)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from partext_jax.base import checked_int
from partext_jax.edit import alignment, edit_flows, exact
from partext_jax.nat import networks


@dataclasses.dataclass(frozen=True)
class RateModelConfig:
  """Sizes of the rate model (hashable).

  Attributes:
    vocab_size: ``V`` (padding id ``V``, BOS ``V + 1``).
    capacity: ``N``, the longest sequence the model reads (the sampler's capacity).
    d_model, num_heads, num_layers, mlp_dim: Transformer sizes.
    time_features: sinusoidal features of ``t``.
  """
  vocab_size: int
  capacity: int
  d_model: int = 64
  num_heads: int = 4
  num_layers: int = 2
  mlp_dim: int = 128
  time_features: int = 16

  def __post_init__(self):
    for name in ("vocab_size", "capacity", "d_model", "num_heads", "num_layers", "mlp_dim",
                 "time_features"):
      checked_int(f"RateModelConfig.{name}", getattr(self, name), minimum=1)

  def stack_config(self) -> networks.NATConfig:
    """The :class:`partext_jax.nat.networks.NATConfig` the shared Transformer stack reads."""
    return networks.NATConfig(vocab_size=self.vocab_size, max_source_len=self.capacity + 1,
                              max_target_len=self.capacity + 1, d_model=self.d_model,
                              num_heads=self.num_heads, num_encoder_layers=self.num_layers,
                              num_decoder_layers=self.num_layers, mlp_dim=self.mlp_dim)


class RateModel(nn.Module):
  """``(tokens int32[B, N], lengths int32[B], t float32[B]) -> EditRates`` (module docstring)."""

  cfg: RateModelConfig

  @nn.compact
  def __call__(self, tokens, lengths, t) -> edit_flows.EditRates:
    cfg, v = self.cfg, self.cfg.vocab_size
    b, n = tokens.shape
    slots = jnp.concatenate([jnp.full((b, 1), v + 1, jnp.int32), tokens], axis=1)
    valid = jnp.arange(n + 1)[None, :] <= lengths[:, None]
    freqs = jnp.exp(jnp.linspace(0.0, jnp.log(100.0), cfg.time_features // 2 + 1))
    angles = t[:, None] * freqs[None, :]
    time = nn.Dense(cfg.d_model, name="time")(jnp.concatenate([jnp.sin(angles),
                                                                jnp.cos(angles)], axis=1))
    x = nn.Embed(v + 2, cfg.d_model, name="embed")(jnp.where(valid, slots, v))
    x = x + time[:, None, :]
    stack = networks.TransformerStack
    h = stack(cfg.stack_config(), cfg.num_layers, n + 1, False, name="stack")(
        x, jnp.ones_like(valid))
    out = nn.Dense(3 + 2 * v, name="head")(h).astype(jnp.float32)
    scale = 1.0 / (1.0 - t)[:, None]
    rate = jax.nn.softplus(out[..., :3]) * scale[..., None]               # [B, N + 1, 3]
    q_ins = jax.nn.softmax(out[..., 3:3 + v], axis=-1)
    q_sub = jax.nn.softmax(out[:, 1:, 3 + v:], axis=-1)
    rates = edit_flows.EditRates(rate[..., 0:1] * q_ins, rate[:, 1:, 1],
                                 rate[:, 1:, 2:3] * q_sub)
    return edit_flows.valid_rates(rates, tokens, lengths)


def init_params(rng_key, cfg: RateModelConfig):
  """Fresh parameters of :class:`RateModel`."""
  n = cfg.capacity
  return RateModel(cfg).init(rng_key, jnp.zeros((1, n), jnp.int32), jnp.zeros((1,), jnp.int32),
                             jnp.zeros((1,), jnp.float32))["params"]


@dataclasses.dataclass(frozen=True)
class _Apply:
  """``apply(params, tokens, lengths, t)`` of a config; hashable and equal by value, so a
  ``Partial`` over it hits the same compiled sampler for every parameter set."""
  cfg: RateModelConfig

  def __call__(self, params, tokens, lengths, t):
    return RateModel(self.cfg).apply({"params": params}, tokens, lengths, t)


def make_rate_fn(cfg: RateModelConfig, params) -> jax.tree_util.Partial:
  """The model as a :data:`~partext_jax.edit.edit_flows.RateFn` (a ``Partial``: parameters are
  traced, so new parameters reuse the compiled sampler)."""
  return jax.tree_util.Partial(_Apply(cfg), params)


def path_batch(rng_key, toy: exact.EditToy, batch_size: int, *, capacity: int):
  """A training batch: pairs ``x0 ~ p0``, ``x1 ~ p1``, aligned, at ``t ~ U[0, 1)``.
  Returns ``(z_t, z1, tokens, lengths, t)`` (:func:`partext_jax.edit.edit_flows.sample_path`)."""
  k0, k1, kt, kp = jax.random.split(rng_key, 4)
  width = toy.max_length
  x0, n0 = exact.sample_toy(k0, toy.p0, toy, batch_size, capacity=width)
  x1, n1 = exact.sample_toy(k1, toy.p1, toy, batch_size, capacity=width)
  z0, z1, _ = alignment.align_batch(x0, n0, x1, n1)
  t = jax.random.uniform(kt, (batch_size,))
  z_t, tokens, lengths = edit_flows.sample_path(kp, z0, z1, t, capacity=capacity,
                                                vocab_size=toy.vocab_size)
  return z_t, z1, tokens, lengths, t


def train(rng_key, toy: exact.EditToy, cfg: RateModelConfig, *, num_steps: int = 1000,
          batch_size: int = 128, learning_rate: float = 3e-3):
  """Trains :class:`RateModel` on ``toy`` with the Bregman loss (AdamW with a cosine decay).

  Returns ``(params, losses float64[num_steps])``. ``ValueError`` if ``cfg`` does not fit the
  toy (vocabulary, or a capacity below the longest path state ``2 * toy.max_length``).
  """
  checked_int("num_steps", num_steps, minimum=1)
  checked_int("batch_size", batch_size, minimum=1)
  if cfg.vocab_size != toy.vocab_size or cfg.capacity < 2 * toy.max_length:
    raise ValueError(f"RateModelConfig(vocab_size={cfg.vocab_size}, capacity={cfg.capacity}) "
                     f"does not fit the toy (V={toy.vocab_size}, paths up to "
                     f"{2 * toy.max_length} tokens)")
  k_init, k_data = jax.random.split(rng_key)
  params = init_params(k_init, cfg)
  optimizer = optax.adamw(optax.cosine_decay_schedule(learning_rate, num_steps), 
                          weight_decay=0.0)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, key):
    z_t, z1, tokens, lengths, t = path_batch(key, toy, batch_size, capacity=cfg.capacity)

    def loss_fn(p):
      rates = _Apply(cfg)(p, tokens, lengths, t)
      return jnp.mean(edit_flows.bregman_loss(rates, tokens, lengths, z_t, z1, t))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(num_steps):
    params, opt_state, loss = step(params, opt_state, jax.random.fold_in(k_data, i))
    losses.append(loss)
  return params, np.asarray(jax.device_get(losses), np.float64)
