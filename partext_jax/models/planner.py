r"""A trained P2 planner: a small head on the frozen denoiser that judges each decoded token.

P2 (Peng et al. 2025, "Path Planning for Masked Diffusion Model Sampling";
``docs/algorithms.md#p2-path-planning``) chooses which decoded tokens to send back to MASK by a
*planner* score. Self-planning reuses the denoiser's own
log-probability of the proposal; BERT-planning asks another masked LM; the **trained planner**
learns the question directly: given a filled-in sequence ``y`` (earlier decoded tokens kept, the
rest proposed), is token ``y_l`` right?

Model. With the denoiser frozen, ``h = FinalNorm(Denoiser(y, t=0))`` (its last hidden states,
``[B, L, d]``) feeds a two-layer head::

    s_l = w_2 . silu(W_1 h_l + b_1) + b_2,        P(y_l is correct | y) = sigmoid(s_l)

trained by binary cross-entropy (:mod:`partext_jax.training.planner`): ``x`` from the data,
masked at ``t ~ U(0, 1)``, masked positions filled by sampling the denoiser, label
``y_l == x_l`` at the filled positions.

As a planner for :func:`partext_jax.masked.p2.p2`, which scores
``log_softmax(planner(x, x0))[x0]``, the head's answer is written as logits over the vocabulary
with exactly that log-probability::

    out[l, x0_l] = log sigmoid(s_l),   out[l, v != x0_l] = log(1 - sigmoid(s_l)) - log(V - 1)

(a proper distribution, so ``log_softmax`` leaves it unchanged). The judged sequence is
``y = where(x == MASK, x0, x)``: decoded tokens are judged as held, which is what survives if
they are not remasked. The planner runs the denoiser once more per step, and P2 counts that call
in its NFE.

Why not BERT-planning with the MDM itself: an MDM trained with the masked-token loss never gets a
loss at unmasked positions, so its raw outputs there are untrained (and with the SUBS
carry-over they are one-hot: every held token scores ``log 1 = 0``). The head is what gives such
a model a meaningful remasking signal.

Usage::

    planner = trained_planner(denoiser_cfg, denoiser_params, head_params)
    sampler = p2(denoise_fn, mask_id=V, num_steps=64, planner=planner)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from partext_jax.models import layers
from partext_jax.models.denoiser import Denoiser, DenoiserConfig


@dataclasses.dataclass(frozen=True)
class PlannerConfig:
  """``hidden``: width of the head's hidden layer."""

  hidden: int = 128

  def __post_init__(self):
    if not isinstance(self.hidden, int) or self.hidden < 1:
      raise ValueError(f"hidden must be a positive int, got {self.hidden!r}")


class PlannerHead(nn.Module):
  """``h [B, L, d] -> s [B, L]``: the logit that each position's token is correct."""

  config: PlannerConfig

  @nn.compact
  def __call__(self, h):
    z = nn.Dense(self.config.hidden, name="hidden",
                 kernel_init=layers.logical(layers.default_init, ("embed", "mlp")),
                 bias_init=layers.logical(nn.initializers.zeros, ("mlp",)))(h)
    s = nn.Dense(1, name="score", kernel_init=layers.logical(layers.default_init, ("mlp", None)),
                 bias_init=layers.logical(nn.initializers.zeros, (None,)))(nn.silu(z))
    return s[..., 0].astype(jnp.float32)


def init_head(rng_key, config: PlannerConfig, d_model: int):
  """Head parameters for ``d_model``-wide features (Dense kernels ``[d_model, hidden]``,
  ``[hidden, 1]`` and their biases, float32), from ``rng_key``."""
  return nn.meta.unbox(PlannerHead(config).init(rng_key, jnp.zeros((1, 1, d_model)))["params"])


def denoiser_features(model_cfg: DenoiserConfig, params, tokens):
  """The denoiser's final-norm hidden states ``[B, L, d_model]`` for ``tokens`` int32[B, L].

  Evaluated at ``t = 0`` (what the head is trained and used on); activations in the model's
  dtype.
  """
  t = jnp.zeros((tokens.shape[0],), jnp.float32)
  _, state = Denoiser(model_cfg).apply(
      {"params": params}, tokens, t,
      capture_intermediates=lambda mdl, _: mdl.name == "final_norm", mutable=["intermediates"])
  return state["intermediates"]["final_norm"]["__call__"][0]


def head_scores(model_cfg: DenoiserConfig, denoiser_params, head_config: PlannerConfig,
                head_params, tokens):
  """Scores ``s`` float32[B, L] (logits of "this token is right") of ``tokens`` int32[B, L].

  ``tokens`` must be fully filled (no MASK): the head judges tokens, not gaps.
  """
  h = denoiser_features(model_cfg, denoiser_params, tokens)
  return PlannerHead(head_config).apply({"params": head_params}, h)


def score_as_logits(score, x0, vocab_size: int):
  """Logits ``[B, L, vocab_size]`` whose ``log_softmax`` at ``x0`` is ``log sigmoid(score)``.

  ``score`` float32[B, L], ``x0`` int[B, L]; the other ``V - 1`` tokens share
  ``log(1 - sigmoid(score))`` equally (module docstring). Raises ``ValueError`` if
  ``vocab_size < 2``.
  """
  if vocab_size < 2:
    raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
  hit = jax.nn.log_sigmoid(score)[..., None]
  miss = (jax.nn.log_sigmoid(-score) - jnp.log(vocab_size - 1.0))[..., None]
  return jnp.where(jax.nn.one_hot(x0, vocab_size, dtype=bool), hit, miss)


@dataclasses.dataclass(frozen=True)
class _PlannerCall:
  """Hashable by value, so equal configs share one compilation."""

  model_cfg: DenoiserConfig
  head_config: PlannerConfig

  def __call__(self, denoiser_params, head_params, tokens, x0):
    filled = jnp.where(tokens == self.model_cfg.mask_id, x0, tokens)
    score = head_scores(self.model_cfg, denoiser_params, self.head_config, head_params, filled)
    return score_as_logits(score, x0, self.model_cfg.vocab_size)


def trained_planner(model_cfg: DenoiserConfig, denoiser_params, head_params, *,
                    head_config: PlannerConfig = PlannerConfig()) -> jax.tree_util.Partial:
  """``planner(x, x0) -> logits [B, L, V]`` for :func:`partext_jax.masked.p2.p2`.

  ``x`` int32[B, L] the current tokens (MASK = ``model_cfg.mask_id`` where undecided), ``x0``
  int32[B, L] the proposal; the head judges ``where(x == MASK, x0, x)``. A ``Partial`` holding
  both parameter trees, so they are traced (new weights do not recompile).
  """
  return jax.tree_util.Partial(_PlannerCall(model_cfg, head_config), denoiser_params,
                               head_params)
