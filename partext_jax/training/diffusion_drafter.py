"""Trains the masked-diffusion drafter of SmolLM2 (``docs/algorithms.md#diffusion-drafters``).

A small :class:`~partext_jax.models.denoiser.Denoiser` over the ``K`` most frequent SmolLM2
tokens reads a window ``[c_1 .. c_P, b_1 .. b_G]``: ``P = context_len`` committed tokens and a
block of ``G = block_len`` tokens after them, of which a suffix is masked.

* **Data** (Medusa-2-style self-distillation plus the embedded corpus): chat prompts
  (:func:`partext_jax.training.distill.build_prompts`) answered greedily by the frozen target,
  cut into windows whose block lies in the answer (the tokens the drafter will be asked for are
  the target's own), and windows of the standard-library corpus tokenised with SmolLM2's
  tokenizer. Prompts are split by their stable hash; the data is cached in the workdir
  (``diffusion_drafter_data_<hash>.npz``).
* **Loss** (the choice): the denoiser's cross-entropy at the masked block positions, masks
  restricted to the block -- the first ``j`` block tokens shown and the rest masked, ``j = 0``
  (the one-pass draft) with probability 1/2, else ``j ~ U{1 .. G - 1}`` (the states later
  passes of a left-to-right multi-pass draft see) -- averaged over the masked in-vocabulary
  positions. Unlike the MDLM NELBO (random masks anywhere, ``1/t`` weights) it trains only the
  conditionals the drafter is queried for, each with equal weight. Context tokens outside the
  draft vocabulary enter as MASK, as at drafting time.
* **Evaluation**: on held-out windows, per-position top-1 accuracy of the one-pass block and the
  mean accepted length of its greedy chain (``sum_k prod_{i <= k} [argmax_i = b_i]``, the
  acceptance of greedy verification against the target's own tokens).
* Training is the trainer core's (:mod:`partext_jax.training.core`), resumable; the export is a
  bfloat16 checkpoint with the configs and ``vocab_ids`` in its metadata
  (``partext_jax/assets/diffusion_drafter_smollm2``), read back by :func:`load_drafter`.

Usage::

    report = train_and_evaluate({"num_steps": 600}, "/tmp/dd")
    drafter, dparams = load_drafter(asset_directory(), gamma=4)
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax import pretrained
from partext_jax.ar.speculative.drafters.diffusion import DiffusionDrafter
from partext_jax.models import denoiser as denoiser_lib
from partext_jax.models.eagle import select_draft_vocab
from partext_jax.training import checkpoint as checkpoint_lib
from partext_jax.training import distill
from partext_jax.training.config import ConfigError, check_positive, parse_dataclass

DATA_FIELDS = ("num_prompts", "max_new_tokens", "gen_batch_size", "corpus_rows", "seq_len",
               "validation_fraction")
REPORT_FILE = "diffusion_drafter_report.json"


@dataclasses.dataclass(frozen=True)
class DiffusionDrafterTrainConfig(distill.DistillConfig):
  """Hyper-parameters of the drafter's training (the launcher's ``--config.<field>`` flags).

  The fields of :class:`~partext_jax.training.distill.DistillConfig` (the optimiser; the teacher
  data: ``num_prompts`` greedily answered chat prompts of up to ``max_new_tokens`` tokens,
  ``gen_batch_size`` per generate call, ``validation_fraction`` of the prompts held out); more
  data (``corpus_rows`` corpus chunks of ``seq_len`` tokens); the model (``draft_vocab_size``
  ``K``, ``context_len`` ``P``, ``block_len`` ``G``, ``d_model``, ``num_layers``, ``num_heads``,
  ``mlp_dim``); the loop (``batch_size`` windows per step, ``num_steps``, ``checkpoint_every``,
  ``seed``, ``progress_bar``).
  """

  learning_rate: float = 1e-3
  warmup_steps: int = 50
  weight_decay: float = 0.01
  grad_clip_norm: float = 1.0
  num_prompts: int = 256
  max_new_tokens: int = 96
  corpus_rows: int = 256
  seq_len: int = 160
  validation_fraction: float = 0.1
  draft_vocab_size: int = 4096
  context_len: int = 24
  block_len: int = 8
  d_model: int = 192
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 512
  batch_size: int = 64
  num_steps: int = 1200
  checkpoint_every: int = 200
  seed: int = 0
  progress_bar: bool = True

  def __post_init__(self):
    self.check_distill()
    check_positive(self, "seq_len", "draft_vocab_size", "context_len", "block_len", "d_model",
                   "num_layers", "num_heads", "mlp_dim", "batch_size", "num_steps",
                   "checkpoint_every")
    if self.corpus_rows < 0:
      raise ConfigError(f"corpus_rows={self.corpus_rows} must be >= 0")
    if self.context_len + self.block_len > self.seq_len:
      raise ConfigError(f"context_len + block_len = {self.context_len + self.block_len} must "
                        f"be <= seq_len={self.seq_len}")

  @property
  def window_len(self) -> int:
    return self.context_len + self.block_len

  def model_config(self) -> denoiser_lib.DenoiserConfig:
    return denoiser_lib.DenoiserConfig(
        vocab_size=self.draft_vocab_size, max_len=self.window_len, d_model=self.d_model,
        num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim)


def parse_config(config: Any) -> DiffusionDrafterTrainConfig:
  """A ``ConfigDict`` / mapping -> :class:`DiffusionDrafterTrainConfig` (strict:
  ``ConfigError`` naming a bad or unknown key)."""
  return parse_dataclass(DiffusionDrafterTrainConfig, config, where="config")


# --------------------------------------------------------------------------------------- data


def load_or_build_data(bundle, cfg: DiffusionDrafterTrainConfig, workdir: str
                       ) -> dict[str, np.ndarray]:
  """``{train,valid}_{tokens,lengths,answer_start}``: rows of SmolLM2 token ids (prompt +
  greedy answer, or a corpus chunk with ``answer_start = 0``), built once and cached as
  ``<workdir>/diffusion_drafter_data_<hash>.npz``: ``tokens int32[N, seq_len]`` (right padded),
  ``lengths int32[N]``, ``answer_start int32[N]``. Raises ``ConfigError`` if a split is empty."""

  def build():
    pairs, held = distill.teacher_answers(bundle, cfg)
    split = distill.split([(list(p) + list(a), len(p)) for p, a in pairs], held)
    split["train"] += [(r, 0) for r in distill.corpus_rows(
        bundle.tokenizer, num_rows=cfg.corpus_rows, seq_len=cfg.seq_len)]
    distill.check_splits(split)
    data = {}
    for name, rows in split.items():
      tokens, lengths = distill.pack_rows([r for r, _ in rows], cfg.seq_len)
      data.update({f"{name}_tokens": tokens, f"{name}_lengths": lengths,
                   f"{name}_answer_start": np.asarray([s for _, s in rows], np.int32)})
    return data

  key = distill.data_key(cfg, DATA_FIELDS)
  return distill.cached_arrays(os.path.join(workdir, f"diffusion_drafter_data_{key}.npz"), build,
                               label="diffusion drafter", unit="rows")


def window_starts(tokens_len, answer_start, *, context_len: int, block_len: int) -> np.ndarray:
  """``int32[n, 2]`` (row, offset) of every window whose block lies in the row's answer."""
  out = []
  for i, (n, a) in enumerate(zip(np.asarray(tokens_len), np.asarray(answer_start))):
    lo = max(0, int(a) - context_len)
    hi = int(n) - context_len - block_len
    out.extend((i, s) for s in range(lo, hi + 1))
  return np.asarray(out, np.int32).reshape(-1, 2)


def windows(tokens, starts, width: int) -> np.ndarray:
  """``int32[n, width]``: ``tokens[row, offset : offset + width]`` per ``starts`` row."""
  return tokens[starts[:, :1], starts[:, 1:] + np.arange(width)[None]]


def to_draft_ids(tokens, vocab_ids, *, mask_id: int):
  """SmolLM2 ids -> denoiser ids (``mask_id`` outside the draft vocabulary ``vocab_ids``)."""
  table = np.full((int(tokens.max()) + 1 if tokens.size else 1,), mask_id, np.int32)
  inside = vocab_ids[vocab_ids < table.shape[0]]
  table[inside] = np.searchsorted(vocab_ids, inside)
  return table[tokens]


# --------------------------------------------------------------------------------------- loss


def block_loss(params, windows_ids, rng, *, config: denoiser_lib.DenoiserConfig,
               context_len: int):
  """The masked-block cross-entropy (module docstring): ``(nats per masked token, aux)``.

  ``windows_ids int32[B, P + G]`` in denoiser ids (``mask_id`` = out of vocabulary).
  """
  b, w = windows_ids.shape
  g = w - context_len
  k_half, k_j = jax.random.split(rng)
  shown = jnp.where(jax.random.bernoulli(k_half, 0.5, (b,)), 0,
                    jax.random.randint(k_j, (b,), 1, max(g, 2)))
  shown = jnp.minimum(shown, g - 1)
  pos = jnp.arange(w)[None]
  masked = pos >= context_len + shown[:, None]
  x = jnp.where(masked, config.mask_id, windows_ids)
  t = jnp.mean(masked.astype(jnp.float32), axis=1)
  logits = denoiser_lib.Denoiser(config).apply({"params": params}, x, t)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                             jnp.minimum(windows_ids, config.vocab_size - 1)[..., None],
                             axis=-1)[..., 0]
  weight = (masked & (windows_ids != config.mask_id)).astype(jnp.float32)
  loss = jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1.0)
  return loss, {"masked_tokens": jnp.sum(weight) / b}


def _eval_stats(params, windows_ids, *, config, context_len: int):
  x = windows_ids.at[:, context_len:].set(config.mask_id)
  logits = denoiser_lib.Denoiser(config).apply({"params": params}, x,
                                               jnp.full((x.shape[0],), 1.0, jnp.float32))
  hit = jnp.argmax(logits[:, context_len:], axis=-1) == windows_ids[:, context_len:]
  return hit, jnp.sum(jnp.cumprod(hit.astype(jnp.int32), axis=1), axis=1)


def evaluate(params, windows_ids, *, config, context_len: int, batch_size: int = 256
             ) -> dict[str, Any]:
  """Held-out one-pass block statistics: ``top1_by_position`` (list over the ``G`` block
  positions), ``accepted_length`` (mean greedy-chain acceptance) and its standard error."""
  fn = jax.jit(lambda p, w: _eval_stats(p, w, config=config, context_len=context_len))
  hits, acc = [], []
  for i in range(0, len(windows_ids), batch_size):
    h, a = fn(params, jnp.asarray(windows_ids[i:i + batch_size]))
    hits.append(np.asarray(h))
    acc.append(np.asarray(a))
  hits, acc = np.concatenate(hits), np.concatenate(acc).astype(np.float64)
  return {"top1_by_position": hits.mean(axis=0).round(4).tolist(),
          "accepted_length": float(acc.mean()),
          "accepted_length_stderr": float(acc.std(ddof=1) / np.sqrt(len(acc))),
          "windows": int(len(acc))}


# ------------------------------------------------------------------------------ train / export


def _prepare(data, cfg: DiffusionDrafterTrainConfig, vocab_ids):
  mcfg = cfg.model_config()
  out = {}
  for split in ("train", "valid"):
    starts = window_starts(data[f"{split}_lengths"], data[f"{split}_answer_start"],
                           context_len=cfg.context_len, block_len=cfg.block_len)
    ids = to_draft_ids(data[f"{split}_tokens"], vocab_ids, mask_id=mcfg.mask_id)
    out[split] = windows(ids, starts, cfg.window_len)
  return out


def train_and_evaluate(config: Any, workdir: str, *, bundle=None) -> dict[str, Any]:
  """Builds (or reads) the data, trains (resumable), evaluates, writes
  ``<workdir>/diffusion_drafter_report.json`` and returns it. Raises ``ConfigError`` for an
  invalid config."""
  cfg = parse_config(config)
  bundle = pretrained.load_bundle() if bundle is None else bundle
  start = time.perf_counter()
  data = load_or_build_data(bundle, cfg, workdir)
  counts = np.bincount(data["train_tokens"][data["train_tokens"] > 0].ravel(),
                       minlength=bundle.model.config.vocab_size)
  vocab_ids = select_draft_vocab(counts, cfg.draft_vocab_size)
  win = _prepare(data, cfg, vocab_ids)
  t_data = time.perf_counter() - start
  mcfg = cfg.model_config()
  train = win["train"]

  def loss_fn(params, batch, rng):
    return block_loss(params, batch, rng, config=mcfg, context_len=cfg.context_len)

  result = distill.train_params(
      cfg, lambda key: denoiser_lib.init_params(key, mcfg), loss_fn, train,
      loop=distill.step_loop(cfg, log_every=50), workdir=workdir,
      metadata={"train_config": cfg.to_dict(), "vocab_ids": vocab_ids.tolist()},
      desc="train diffusion drafter")
  t_train = time.perf_counter() - start - t_data
  params = result.state.params
  ev = lambda p: evaluate(p, win["valid"], config=mcfg, context_len=cfg.context_len)  # noqa
  report = {"config": cfg.to_dict(), "train_windows": int(len(train)),
            "valid": ev(params),
            "valid_untrained": ev(denoiser_lib.init_params(jax.random.PRNGKey(cfg.seed), mcfg)),
            "draft_vocab_coverage": float(np.isin(
                data["valid_tokens"][data["valid_tokens"] > 0], vocab_ids).mean()),
            "train_log": [r for r in result.history if "train/loss" in r],
            "seconds_data": t_data, "seconds_train": t_train,
            "params": int(denoiser_lib.count_params(params)),
            "checkpoint": distill.checkpoint_path(workdir, cfg.num_steps)}
  distill.write_report(workdir, REPORT_FILE, report)
  return report


def save_drafter(directory: str, params, cfg: DiffusionDrafterTrainConfig, vocab_ids, *,
                 step: int, metadata: dict[str, Any] | None = None, dtype=jnp.bfloat16) -> str:
  """Exports the denoiser alone in ``dtype`` under ``directory/<step>`` (atomic), the train
  config and ``vocab_ids`` in the metadata. Returns the step directory."""
  return distill.save_params(directory, params, step=step, param_dtype=jnp.dtype(dtype).name,
                             metadata={"train_config": cfg.to_dict(),
                                       "vocab_ids": np.asarray(vocab_ids).tolist(),
                                       **(metadata or {})})


def _read_config(meta) -> tuple[DiffusionDrafterTrainConfig, np.ndarray]:
  return parse_config(meta["train_config"]), np.asarray(meta["vocab_ids"], np.int32)


def _load(directory: str):
  """``((train config, vocab_ids int32[K]), float32 params, metadata)`` of a checkpoint."""
  return distill.load_params(
      directory, name="diffusion drafter", fields="train_config / vocab_ids",
      read_config=_read_config,
      init_params=lambda c: denoiser_lib.init_params(jax.random.key(0), c[0].model_config()))


def load_drafter(directory: str | None = None, *, gamma: int = 4, passes: int = 1,
                 vocab_size: int = 49152):
  """``(DiffusionDrafter, params)`` from a training checkpoint directory or an export
  (default: the committed SmolLM2 asset, :func:`asset_directory`).

  ``params = {"denoiser": float32 tree, "vocab_ids": int32[K]}``; ``gamma <= block_len`` drafts
  per step (the window always holds the trained block of ``block_len`` masks, the first
  ``gamma`` are drafted); ``passes`` as :class:`DiffusionDrafter`. Raises
  :class:`~partext_jax.training.checkpoint.CheckpointError` naming the directory when it holds no
  valid checkpoint, ``ValueError`` for ``gamma > block_len``.
  """
  (cfg, vocab_ids), params, _ = _load(asset_directory() if directory is None else directory)
  if gamma > cfg.block_len:
    raise ValueError(f"gamma={gamma} exceeds the trained block_len={cfg.block_len}")
  mcfg = cfg.model_config()
  drafter = DiffusionDrafter(denoiser_lib.DenoiserApply(mcfg), vocab_size=vocab_size,
                             mask_id=mcfg.mask_id, gamma=gamma, context_len=cfg.context_len,
                             passes=passes, block_len=cfg.block_len)
  return drafter, {"denoiser": params, "vocab_ids": jnp.asarray(vocab_ids)}


def drafter_metadata(directory: str | None = None) -> dict[str, Any]:
  """The metadata of a drafter checkpoint or export (default: the committed asset)."""
  directory = asset_directory() if directory is None else directory
  with checkpoint_lib.Checkpointer(directory, keep=1) as ckpt:
    return ckpt.restore_metadata()


def asset_directory() -> str:
  """Where the committed SmolLM2 drafter lives (``partext_jax/assets/diffusion_drafter_smollm2``)."""
  return distill.asset_directory("diffusion_drafter_smollm2")


def export_drafter(report: dict[str, Any], destination: str, *, command: str) -> str:
  """Replaces ``destination`` with a bfloat16 :func:`save_drafter` export (step 0) of a
  finished run, its metadata holding the validation metrics and ``command``."""
  (cfg, vocab_ids), params, _ = _load(os.path.dirname(report["checkpoint"]))
  if os.path.isdir(destination):
    shutil.rmtree(destination)
  save_drafter(destination, params, cfg, vocab_ids, step=0, metadata={
      "valid": report["valid"], "command": command, "seconds_data": report["seconds_data"],
      "seconds_train": report["seconds_train"]})
  return destination
