"""Encoder-decoder Transformers for the one-shot CTC NAT and the Levenshtein Transformer (Flax).

``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing`` and
``docs/algorithms.md#levenshtein-transformer``. Both are the fairseq NAT layout in the project's
blocks (pre-norm RMSNorm, SwiGLU, logical axis names): an encoder of bidirectional
self-attention over the source, and a decoder whose layers attend bidirectionally to the decoder
positions (padding masked, no causal mask) and then to the encoder states. Positions are learned
absolute embeddings (fairseq's NAT models learn them too): the decoder must know where it is to
copy from or reverse the source.

* :class:`CTCTransformer` (Libovicky & Helcl 2018): the decoder input is the encoder output
  *upsampled* by ``lambda`` -- each encoder state is projected into ``lambda`` states (their
  "state splitting"), so row ``b`` has ``lambda src_len[b]`` decoder positions -- and every
  position is predicted at once over the ``V`` tokens plus the blank (column ``V``). With
  ``glance=(symbols, mask)`` the decoder input at ``mask`` positions is replaced by the
  embedding of ``symbols`` (a token or the blank): GLAT's second pass.
* :class:`LevenshteinTransformer` (Gu et al. 2019): the decoder reads a canvas (token, placeholder,
  BOS, EOS, PAD embeddings) and three heads read its final states: deletion (2 classes per
  position), placeholder insertion (``K + 1`` classes per slot, from the states of the slot's two
  neighbours concatenated, as fairseq's ``forward_mask_ins``) and token prediction (``V``
  classes). The three share every decoder layer (fairseq's default ``--early-exit 6,6,6``).

Usage::

    cfg = NATConfig(vocab_size=8, max_source_len=16, max_target_len=16, upsampling=2)
    params = init_params(jax.random.key(0), cfg, "ctc")
    ctc_fn = make_ctc_fn(cfg, params)                         # (src, src_len) -> logits
    encode_fn, edit_fn = make_levenshtein_fns(cfg, lev_params)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from partext_jax.base import checked_int
from partext_jax.models import attention as attention_lib
from partext_jax.models import layers
from partext_jax.nat.edits import CanvasIds
from partext_jax.nat.protocols import EditLogits

KINDS = ("ctc", "levenshtein")


@dataclasses.dataclass(frozen=True)
class NATConfig:
  """Sizes of the NAT networks (hashable: a static jit argument).

  Attributes:
    vocab_size: ``V`` real tokens, shared by source and target (source padding id ``V``).
    max_source_len: ``S``, the padded source length the position table covers.
    max_target_len: longest target (the Levenshtein canvas holds ``max_target_len + 2``
      positions and inserts ``0 .. max_target_len`` placeholders per slot).
    upsampling: ``lambda >= 1`` decoder positions per source token (CTC).
    d_model: residual width.
    num_heads: attention heads (``d_model % num_heads == 0``).
    num_encoder_layers: encoder blocks.
    num_decoder_layers: decoder blocks.
    mlp_dim: SwiGLU hidden width.
  """

  vocab_size: int
  max_source_len: int
  max_target_len: int
  upsampling: int = 2
  d_model: int = 128
  num_heads: int = 4
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  mlp_dim: int = 256

  def __post_init__(self):
    checked_int("upsampling", self.upsampling, minimum=1,
                hint=" (decoder positions per source token)")
    for name in ("vocab_size", "max_source_len", "max_target_len", "d_model", "num_heads",
                 "num_encoder_layers", "num_decoder_layers", "mlp_dim"):
      checked_int(f"NATConfig.{name}", getattr(self, name), minimum=1)
    if self.d_model % self.num_heads:
      raise ValueError(f"NATConfig: d_model={self.d_model} must be a multiple of num_heads="
                       f"{self.num_heads}")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def decoder_len(self) -> int:
    """The number of CTC decoder positions for a full-length source, ``upsampling * max_source_len``."""
    return self.upsampling * self.max_source_len

  @property
  def canvas_size(self) -> int:
    """The number of Levenshtein canvas positions, ``max_target_len + 2`` (BOS and EOS)."""
    return self.max_target_len + 2

  @property
  def canvas_ids(self) -> CanvasIds:
    return CanvasIds(self.vocab_size)

  @property
  def max_insertions(self) -> int:
    """``K``: the most placeholders one slot can receive."""
    return self.max_target_len


class Memory(NamedTuple):
  """Encoder output: ``states float32[B, S, d_model]``, ``mask bool[B, S]`` (valid positions)."""

  states: jax.Array
  mask: jax.Array


def _dense(features: int, names, name: str):
  return nn.Dense(features, use_bias=False, name=name,
                  kernel_init=layers.logical(layers.default_init, names))


def _embed(rows: int, d: int, name: str):
  return nn.Embed(rows, d, name=name,
                  embedding_init=layers.logical(layers.default_init, ("vocab", "embed")))


class _Attention(nn.Module):
  cfg: NATConfig

  @nn.compact
  def __call__(self, x, context, mask):
    cfg = self.cfg
    proj = lambda name: layers.head_projection(cfg.num_heads, cfg.head_dim, "heads",  # noqa
                                               jnp.float32, name)
    heads_major = lambda y: y.transpose(0, 2, 1, 3)  # noqa: E731 - [B, T, H, D] -> [B, H, T, D]
    out = attention_lib.attention(proj("q")(x), heads_major(proj("k")(context)),
                                  heads_major(proj("v")(context)), mask)
    return layers.output_projection(cfg.d_model, jnp.float32, "o")(out)


class _Block(nn.Module):
  """Pre-norm block: self-attention, optional cross-attention, SwiGLU."""

  cfg: NATConfig
  cross: bool

  @nn.compact
  def __call__(self, x, self_mask, memory=None):
    h = layers.RMSNorm(name="self_norm")(x)
    x = x + _Attention(self.cfg, name="self_attn")(h, h, self_mask)
    if self.cross:
      x = x + _Attention(self.cfg, name="cross_attn")(
          layers.RMSNorm(name="cross_norm")(x), memory.states, memory.mask[:, None, :])
    return x + layers.SwiGLU(self.cfg.mlp_dim, name="mlp")(layers.RMSNorm(name="mlp_norm")(x))


def _pair_mask(valid):
  """``bool[B, T, T]``: valid queries attend to valid keys (padding rows see nothing)."""
  return valid[:, :, None] & valid[:, None, :]


class TransformerStack(nn.Module):
  """Position embeddings, ``num_layers`` pre-norm blocks and a final norm (shared by the NAT
  networks and the Edit Flows rate model).

  ``__call__(x float[B, T, d], valid bool[B, T], memory=None) -> float[B, T, d]``; ``cross``
  adds cross-attention to ``memory [B, S, d]``. Raises ValueError when ``T > max_len``.
  """

  cfg: NATConfig
  num_layers: int
  max_len: int
  cross: bool

  @nn.compact
  def __call__(self, x, valid, memory=None):
    if x.shape[1] > self.max_len:
      raise ValueError(f"{self.name}: {x.shape[1]} positions exceed the {self.max_len} the "
                       f"position table holds (NATConfig max_source_len / max_target_len)")
    positions = _embed(self.max_len, self.cfg.d_model, "positions")(jnp.arange(x.shape[1]))
    x = x + positions[None]
    mask = _pair_mask(valid)
    for i in range(self.num_layers):
      x = _Block(self.cfg, self.cross, name=f"block_{i}")(x, mask, memory)
    return layers.RMSNorm(name="final_norm")(x)


class _Encoder(nn.Module):
  cfg: NATConfig

  @nn.compact
  def __call__(self, src, src_len) -> Memory:
    cfg = self.cfg
    valid = jnp.arange(src.shape[1])[None, :] < src_len[:, None]
    x = _embed(cfg.vocab_size + 1, cfg.d_model, "embed")(src)
    states = TransformerStack(cfg, cfg.num_encoder_layers, cfg.max_source_len, False,
                              name="stack")(x, valid)
    return Memory(states, valid)


class CTCTransformer(nn.Module):
  """``(src int32[B, S], src_len int32[B], glance=None) -> logits float32[B, lambda S, V + 1]``.

  ``glance``: optional ``(symbols int32[B, lambda S], mask bool[B, lambda S])``: decoder inputs
  at ``mask`` are the embeddings of ``symbols`` (``0 .. V``, ``V`` the blank).
  """

  cfg: NATConfig

  @nn.compact
  def __call__(self, src, src_len, glance=None):
    cfg = self.cfg
    memory = _Encoder(cfg, name="encoder")(src, src_len)
    b, s, d = memory.states.shape
    x = _dense(cfg.upsampling * d, ("embed", "mlp"), "upsample")(memory.states)
    x = x.reshape(b, s * cfg.upsampling, d)  # state i -> decoder positions lambda i .. + lambda-1
    if glance is not None:
      symbols, mask = glance
      target = _embed(cfg.vocab_size + 1, d, "glance_embed")(symbols)
      x = jnp.where(mask[..., None], target, x)
    valid = jnp.arange(x.shape[1])[None, :] < (cfg.upsampling * src_len)[:, None]
    h = TransformerStack(cfg, cfg.num_decoder_layers, cfg.decoder_len, True, name="decoder")(
        x, valid, memory)
    return _dense(cfg.vocab_size + 1, ("embed", "vocab"), "head")(h).astype(jnp.float32)


class LevenshteinTransformer(nn.Module):
  """``encode(src, src_len) -> Memory``; ``edits(memory, canvas int32[B, L]) -> EditLogits``;
  ``__call__(src, src_len, canvas)`` is both (used to initialise)."""

  cfg: NATConfig

  def setup(self):
    """Builds the encoder, the canvas embedding, the decoder and the three classifier heads."""
    cfg = self.cfg
    self.encoder = _Encoder(cfg)
    self.canvas_embed = _embed(cfg.canvas_ids.num_embeddings, cfg.d_model, "canvas_embed")
    self.decoder = TransformerStack(cfg, cfg.num_decoder_layers, cfg.canvas_size, True)
    self.delete_head = _dense(2, ("embed", None), "delete_head")
    self.insert_head = _dense(cfg.max_insertions + 1, ("mlp", None), "insert_head")
    self.token_head = _dense(cfg.vocab_size, ("embed", "vocab"), "token_head")

  def encode(self, src, src_len) -> Memory:
    return self.encoder(src, src_len)

  def edits(self, memory: Memory, canvas) -> EditLogits:
    valid = canvas != self.cfg.canvas_ids.pad
    h = self.decoder(self.canvas_embed(canvas), valid, memory)
    pairs = jnp.concatenate([h[:, :-1], h[:, 1:]], axis=-1)
    return EditLogits(self.delete_head(h).astype(jnp.float32),
                      self.insert_head(pairs).astype(jnp.float32),
                      self.token_head(h).astype(jnp.float32))

  def __call__(self, src, src_len, canvas) -> EditLogits:
    return self.edits(self.encode(src, src_len), canvas)


def init_params(rng_key, cfg: NATConfig, kind: str):
  """Random parameters of the ``kind`` (``"ctc"`` or ``"levenshtein"``) network (unboxed)."""
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r} is not one of {KINDS}")
  src = jnp.zeros((1, cfg.max_source_len), jnp.int32)
  src_len = jnp.ones((1,), jnp.int32)
  if kind == "ctc":  # with an empty glance, so that the glancing embeddings exist too
    glance = (jnp.zeros((1, cfg.decoder_len), jnp.int32), jnp.zeros((1, cfg.decoder_len), bool))
    variables = CTCTransformer(cfg).init(rng_key, src, src_len, glance)
  else:
    canvas = jnp.full((1, cfg.canvas_size), cfg.canvas_ids.pad, jnp.int32)
    variables = LevenshteinTransformer(cfg).init(rng_key, src, src_len, canvas)
  return layers.unbox(variables["params"])


@dataclasses.dataclass(frozen=True)
class CTCApply:
  """Hashable ``(params, src, src_len, glance=None) -> logits`` (the function of a Partial)."""

  cfg: NATConfig

  def __call__(self, params, src, src_len, glance=None):
    return CTCTransformer(self.cfg).apply({"params": params}, src, src_len, glance)


@dataclasses.dataclass(frozen=True)
class LevenshteinApply:
  """Hashable ``(params, *args) -> LevenshteinTransformer.<method>(*args)``: ``method="encode"``
  (``(src, src_len) -> Memory``) or ``"edits"`` (``(memory, canvas) -> EditLogits``)."""

  cfg: NATConfig
  method: str

  def __call__(self, params, *args):
    return LevenshteinTransformer(self.cfg).apply({"params": params}, *args, method=self.method)


def make_ctc_fn(cfg: NATConfig, params) -> jax.tree_util.Partial:
  """The ``ctc_fn(src, src_len) -> logits`` of :func:`partext_jax.nat.one_shot.one_shot`, as a
  ``Partial`` over ``params`` (traced: new parameters reuse the compiled decoder)."""
  return jax.tree_util.Partial(CTCApply(cfg), params)


def make_levenshtein_fns(cfg: NATConfig, params):
  """``(encode_fn, edit_fn)`` of :func:`partext_jax.nat.levenshtein.levenshtein`, as Partials."""
  return (jax.tree_util.Partial(LevenshteinApply(cfg, "encode"), params),
          jax.tree_util.Partial(LevenshteinApply(cfg, "edits"), params))


def count_params(params) -> int:
  """The number of scalars in the pytree ``params`` (every leaf's ``size``, summed).

  Args:
    params: a pytree of arrays.
  """
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
