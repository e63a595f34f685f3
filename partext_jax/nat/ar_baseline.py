"""The autoregressive peer: a small causal Llama trained on the same sequence-to-sequence task.

What the NAT models are compared with (``experiments/bench_nat.py``): a decoder-only
:class:`~partext_jax.models.llama.LlamaLM` reads ``source SEP target EOS`` and is trained by
next-token cross-entropy on the target tokens and the EOS; it decodes greedily with
:func:`partext_jax.ar.sampling.generate` (KV cache, one forward per generated token, the prompt's
prefill producing the first). Ids: the ``V`` real tokens, then ``SEP = V``, ``EOS = V + 1``,
``PAD = V + 2``.

Usage::

    config = llama_config(vocab_size=8, max_source_len=16, max_target_len=16, d_model=128,
                          num_heads=4, num_layers=4, mlp_dim=256)
    loss, aux = ar_loss(params, batch, rng, config=config)
    output, forwards = decode(params, Source(src, src_len), config=config, max_target_len=16)

Compared in ``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from partext_jax.ar import sampling as ar
from partext_jax.models.llama import LlamaConfig, LlamaLM
from partext_jax.nat.protocols import Output, Seq2Seq, Source


def llama_config(*, vocab_size: int, max_source_len: int, max_target_len: int, d_model: int,
                 num_heads: int, num_layers: int, mlp_dim: int) -> LlamaConfig:
  """A ``LlamaConfig.tiny``-style model over ``V + 3`` ids (module docstring)."""
  return LlamaConfig.tiny(
      vocab_size=vocab_size + 3, hidden_size=d_model, intermediate_size=mlp_dim,
      num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_heads,
      head_dim=d_model // num_heads,
      # ar.generate pads prompts to a power-of-two bucket (>= 16) before the new tokens.
      context_length=2 * max(16, 1 << max_source_len.bit_length()) + max_target_len + 1,
      bos_id=None, eos_id=vocab_size + 1, pad_id=vocab_size + 2)


def sequences(batch: Seq2Seq, *, vocab_size: int):
  """``(tokens int32[B, S + T + 2], weights float32[B, S + T + 1])``: ``source SEP target EOS``
  right-padded, and the weight of each next-token label (1 on target tokens and the EOS)."""
  src, n, tgt, m = (jnp.asarray(x, jnp.int32) for x in batch)
  s, t = src.shape[1], tgt.shape[1]
  p = jnp.arange(s + t + 2)[None, :]
  n_, m_ = n[:, None], m[:, None]
  from_src = jnp.take_along_axis(src, jnp.clip(p, 0, s - 1), axis=1)
  from_tgt = jnp.take_along_axis(tgt, jnp.clip(p - n_ - 1, 0, t - 1), axis=1)
  tokens = jnp.where(p < n_, from_src, jnp.where(p == n_, vocab_size, jnp.where(
      p <= n_ + m_, from_tgt, jnp.where(p == n_ + m_ + 1, vocab_size + 1, vocab_size + 2))))
  label_pos = p[:, 1:]
  weights = ((label_pos > n_) & (label_pos <= n_ + m_ + 1)).astype(jnp.float32)
  return tokens.astype(jnp.int32), weights


def ar_loss(params, batch, rng, *, config: LlamaConfig):
  """Mean next-token cross-entropy over target tokens and EOS (``batch``: a
  :class:`~partext_jax.nat.objectives.TrainBatch` or :class:`Seq2Seq`)."""
  del rng
  data = getattr(batch, "data", batch)
  tokens, weights = sequences(data, vocab_size=config.vocab_size - 3)
  inputs = tokens[:, :-1]
  positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
  logits = LlamaLM(config)(params, inputs, positions, None, None, None).logits
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0), {}


def decode(params, source: Source, *, config: LlamaConfig, max_target_len: int):
  """Greedy decoding: ``(Output, forwards int32[B])``, ``forwards`` = tokens generated per row
  (EOS included; one model call each). Outputs past ``max_target_len`` tokens are cut."""
  vocab = config.vocab_size - 3
  src, n = np.asarray(source.tokens), np.asarray(source.lengths)
  prompts = [list(src[i, :n[i]]) + [vocab] for i in range(len(n))]
  tokens, info = ar.generate(jax.random.key(0), LlamaLM(config), params, prompts,
                             max_new_tokens=max_target_len + 1, eos_id=vocab + 1,
                             pad_id=vocab + 2)
  tokens = np.asarray(tokens)
  forwards = np.asarray(info.lengths)
  body = tokens[:, :max_target_len]
  ended = (body == vocab + 1) | (body == vocab + 2)
  lengths = np.where(ended.any(1), ended.argmax(1), max_target_len).astype(np.int32)
  out = np.where(np.arange(max_target_len)[None] < lengths[:, None], body, vocab)
  return Output(out.astype(np.int32), lengths), forwards
