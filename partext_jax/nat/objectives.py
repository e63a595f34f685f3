"""Training objectives: CTC, glancing CTC (GLAT) and Levenshtein imitation learning.

Each is a ``loss_fn(params, batch, rng) -> (loss, aux)`` for
:func:`partext_jax.training.core.make_train_step`, over a :class:`TrainBatch`.

* :func:`ctc_loss` (Libovicky & Helcl 2018): ``mean_b -log p(y_b | x_b) / |y_b|``, the CTC
  negative log-likelihood per target token (PyTorch's ``reduction="mean"``), through
  ``optax.ctc_loss``.
* :func:`glat_loss` (Qian et al. 2021, CTC variant): a first pass without gradient; the Viterbi
  alignment ``a*`` of ``y`` under it; ``d = Hamming(argmax, a*)``; ``ceil(f d)`` random decoder
  positions take the embedding of ``a*_t`` (token or blank); the CTC loss of the second pass, on
  every position (the alignment marginal covers the revealed ones too).
* :func:`levenshtein_loss` (Gu et al. 2019, dual-policy learning as fairseq trains it, plus the
  paper's roll-in for insertion): ``y_del`` is, per row, ``y`` with a random subset deleted
  (:func:`~partext_jax.nat.edits.random_deletion`, fairseq's only choice) or, with probability
  ``roll_in``, ``y`` after the model's own deletion policy (the paper's ``E(y*, d~)``: without it
  the insertion classifier never sees a complete canvas and keeps inserting at decoding time).
  The oracle script ``y_del -> y`` gives the placeholder counts (loss on every slot of
  ``y_del``) and the masked target ``y_plh``; the token classifier on ``y_plh`` is scored at the
  placeholders; its argmax fills them (``y_pred``, no gradient) and the oracle script
  ``y_pred -> y`` gives the deletion labels (loss on the real tokens of ``y_pred``). The three
  mean cross-entropies are summed.

``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing``, ``#levenshtein-transformer``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from partext_jax.nat import ctc, edits, glancing
from partext_jax.nat.networks import CTCApply, LevenshteinApply, NATConfig
from partext_jax.nat.protocols import Seq2Seq


class TrainBatch(NamedTuple):
  """``data``: the pairs (:class:`Seq2Seq`); ``glancing_ratio``: ``float32[]`` ``f`` of this step
  (GLAT only; the others ignore it)."""

  data: Seq2Seq
  glancing_ratio: jax.Array


def _per_token_ctc(logits, batch: Seq2Seq, cfg: NATConfig):
  ll = ctc.log_likelihood(logits, cfg.upsampling * batch.source_lengths, batch.target,
                          batch.target_lengths, blank_id=cfg.vocab_size)
  return jnp.mean(-ll / jnp.maximum(batch.target_lengths, 1))


def ctc_loss(params, batch: TrainBatch, rng, *, cfg: NATConfig):
  """CTC negative log-likelihood per target token (module docstring)."""
  del rng
  data = batch.data
  logits = CTCApply(cfg)(params, data.source, data.source_lengths)
  return _per_token_ctc(logits, data, cfg), {}


def glat_loss(params, batch: TrainBatch, rng, *, cfg: NATConfig):
  """Glancing CTC (module docstring). ``aux``: ``hamming`` (mean ``d / T``) and ``revealed``
  (mean fraction of positions glanced)."""
  data = batch.data
  apply = CTCApply(cfg)
  first = jax.lax.stop_gradient(apply(params, data.source, data.source_lengths))
  lengths = cfg.upsampling * data.source_lengths
  alignment, _ = ctc.best_alignment(first, lengths, data.target, data.target_lengths,
                                    blank_id=cfg.vocab_size)
  distance = glancing.hamming(jnp.argmax(first, axis=-1), alignment, lengths)
  mask = glancing.glancing_mask(rng, distance, lengths, ratio=batch.glancing_ratio,
                                size=first.shape[1])
  logits = apply(params, data.source, data.source_lengths, (alignment, mask))
  per_position = lambda x: jnp.mean(x / jnp.maximum(lengths, 1))  # noqa: E731
  return _per_token_ctc(logits, data, cfg), {"hamming": per_position(distance),
                                             "revealed": per_position(jnp.sum(mask, axis=1))}


def _masked_ce(logits, labels, valid):
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1)


def levenshtein_loss(params, batch: TrainBatch, rng, *, cfg: NATConfig, roll_in: float = 0.5):
  """Imitation of the oracle edit script (module docstring). ``aux``: the three terms and
  ``model_roll_in`` (the fraction of rows whose insertion input came from the model)."""
  data = batch.data
  ids, size = cfg.canvas_ids, cfg.canvas_size
  memory = LevenshteinApply(cfg, "encode")(params, data.source, data.source_lengths)
  edit = lambda canvas: LevenshteinApply(cfg, "edits")(params, memory, canvas)  # noqa: E731
  y, y_len = edits.frame(data.target, data.target_lengths, ids=ids, size=size)

  k_drop, k_mix = jax.random.split(rng)
  dropped, dropped_len = edits.random_deletion(k_drop, y, y_len, ids=ids)
  own = jnp.argmax(jax.lax.stop_gradient(edit(y).delete), axis=-1) == 1
  rolled, rolled_len = edits.apply_deletions(y, y_len, own, ids=ids)
  use_model = jax.random.uniform(k_mix, y_len.shape) < roll_in
  y_del = jnp.where(use_model[:, None], rolled, dropped)
  del_len = jnp.where(use_model, rolled_len, dropped_len)
  to_y = edits.oracle_batch(y_del, del_len, y, y_len)
  slots = jnp.arange(size - 1)[None, :] < (del_len - 1)[:, None]
  insert_labels = jnp.minimum(to_y.insert[:, 1:size], cfg.max_insertions)
  insert_loss = _masked_ce(edit(y_del).insert, insert_labels, slots)

  y_plh = jnp.where(to_y.placeholder, ids.plh, y)
  token_logits = edit(y_plh).token
  token_loss = _masked_ce(token_logits, jnp.clip(y, 0, cfg.vocab_size - 1), to_y.placeholder)

  guess = jnp.argmax(jax.lax.stop_gradient(token_logits), axis=-1).astype(jnp.int32)
  y_pred = jnp.where(to_y.placeholder, guess, y)
  back = edits.oracle_batch(y_pred, y_len, y, y_len)
  real = ((jnp.arange(size)[None, :] < y_len[:, None]) & (y_pred != ids.bos)
          & (y_pred != ids.eos))
  delete_loss = _masked_ce(edit(y_pred).delete, back.delete.astype(jnp.int32), real)
  loss = insert_loss + token_loss + delete_loss
  return loss, {"insert_loss": insert_loss, "token_loss": token_loss,
                "delete_loss": delete_loss, "model_roll_in": jnp.mean(use_model)}
