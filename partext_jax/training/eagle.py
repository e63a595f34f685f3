"""Trains the EAGLE feature head on a frozen LM's features (self-distillation + corpus).

Li et al. (2024), EAGLE-1; the optional second unrolled pass is EAGLE-3's "training-time test";
``docs/algorithms.md#eagle-feature-drafter``. Data: rows of tokens ``x_0 .. x_{L-1}`` with the
frozen target's features ``f_i`` and greedy labels ``y_i = argmax f_i W`` (the token the target
would put after ``x_i``), from (a) the target's own greedy answers to the chat prompts of
:mod:`partext_jax.training.distill` (the same prompts and answers as the Medusa heads: the same
data budget) and (b) chunks of the embedded corpus (the Python standard library). Loss per
pass ``r`` (``f^(0) = f``, the true features)::

    f^(r)_i = Head(f^(r-1)_{i-1}, x_i)                        (f_{-1} = 0; causal over i)
    L_r = mean_i SmoothL1(f^(r)_i, f_i) + w_p mean_i CE(f^(r)_i W_d, y_i)
    L = sum_{r=1..R} L_r                                      (R = unroll_steps)

(EAGLE-1's regression + classification losses, ``w_p = 0.1``; ``W_d`` the LM head on the draft
vocabulary, labels outside it are left out of the CE). Pass ``r > 1`` feeds the head its own
previous guesses (gradient stopped), as drafting does beyond depth 1. The features and labels
are computed once and cached in the workdir (``eagle_data_<hash>.npz``, written atomically).

Training is the trainer core's (:mod:`partext_jax.training.core`): AdamW with warmup and cosine
decay, checkpoints of the head and the optimiser every ``checkpoint_every`` steps (a rerun
resumes), ``metrics.jsonl``. Validation: held-out prompts (the Medusa split), top-1 agreement of
the draft head with the target's greedy token per pass, and the mean accepted length of a greedy
chain of depth ``D`` estimated by ``1 + sum_{d<=D} prod_{j<=d} acc_j`` with ``acc_1`` from
pass 1 and ``acc_{j>1}`` from the last pass.

Usage::

    report = train_and_evaluate(get_config(), "/tmp/eagle")     # configs/eagle.py
    ecfg, head, vocab_ids, meta = load_head("/tmp/eagle/checkpoints")
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax import pretrained
from partext_jax.models import eagle as eagle_lib
from partext_jax.training import distill
from partext_jax.training.config import ConfigError, check_positive, parse_dataclass

DATA_FIELDS = ("num_prompts", "max_new_tokens", "gen_batch_size", "corpus_rows", "seq_len",
               "validation_fraction")


@dataclasses.dataclass(frozen=True)
class EagleTrainConfig(distill.DistillConfig):
  """EAGLE head training hyper-parameters (``configs/eagle.py`` comments every field).

  The fields of :class:`~partext_jax.training.distill.DistillConfig` (the optimiser, the teacher
  data), plus the corpus rows (``corpus_rows``, ``seq_len``), the head (``draft_vocab_size``),
  the loss (``unroll_steps``, ``token_loss_weight``) and the loop (``batch_size`` rows per step,
  ``num_steps``, ``checkpoint_every``, ``eval_depth``, ``seed``, ``progress_bar``).
  """

  learning_rate: float = 5e-4
  warmup_steps: int = 10
  weight_decay: float = 0.0
  b2: float = 0.999
  grad_clip_norm: float = 0.5
  num_prompts: int = 64
  max_new_tokens: int = 96
  corpus_rows: int = 8
  seq_len: int = 160
  draft_vocab_size: int = 4096
  unroll_steps: int = 2
  token_loss_weight: float = 0.1
  batch_size: int = 8
  num_steps: int = 40
  checkpoint_every: int = 5
  eval_depth: int = 5
  seed: int = 0
  progress_bar: bool = True

  def __post_init__(self):
    self.check_distill()
    check_positive(self, "seq_len", "draft_vocab_size", "unroll_steps", "batch_size", "num_steps",
                   "checkpoint_every", "eval_depth")
    if self.corpus_rows < 0:
      raise ConfigError(f"corpus_rows={self.corpus_rows} must be >= 0")
    if self.token_loss_weight < 0:
      raise ConfigError(f"token_loss_weight={self.token_loss_weight} must be >= 0")


def parse_config(config: Any) -> EagleTrainConfig:
  """A ``ConfigDict`` / mapping -> :class:`EagleTrainConfig` (strict: ``ConfigError``)."""
  return parse_dataclass(EagleTrainConfig, config, where="config")


# --------------------------------------------------------------------------------------- data


def features_and_labels(model, params, rows, *, seq_len: int, batch_size: int = 8):
  """``(tokens int32[N, L], feats float32[N, L, E], labels int32[N, L], mask bool[N, L])``.

  ``rows`` are token lists (truncated to ``L = seq_len``, right padded); ``feats`` the frozen
  ``model``'s final hidden states, ``labels`` its greedy next token at every position
  (:func:`partext_jax.training.distill.hidden_and_greedy`, ``batch_size`` rows at a time),
  ``mask`` the real positions.
  """
  tokens, lengths = distill.pack_rows(rows, seq_len)
  feats, labels = distill.hidden_and_greedy(model, params, tokens, batch_size=batch_size)
  return tokens, feats, labels, np.arange(seq_len)[None] < lengths[:, None]


def load_or_build_data(bundle, cfg: EagleTrainConfig, workdir: str) -> dict[str, np.ndarray]:
  """``{train,valid}_{tokens,feats,labels,mask}`` (:func:`features_and_labels`), built and
  cached on the first call as ``<workdir>/eagle_data_<hash>.npz``.

  Validation rows are the held-out prompts' (:mod:`partext_jax.training.distill`'s split); the
  corpus rows all train. Raises ``ConfigError`` if a split has no row.
  """
  model, params, tok = bundle

  def build():
    pairs, held = distill.teacher_answers(bundle, cfg)
    rows = distill.split([p + a for p, a in pairs], held)
    rows["train"] += distill.corpus_rows(tok, num_rows=cfg.corpus_rows, seq_len=cfg.seq_len)
    distill.check_splits(rows)
    data = {}
    for split, rs in rows.items():
      out = features_and_labels(model, params, rs, seq_len=cfg.seq_len)
      for name, arr in zip(("tokens", "feats", "labels", "mask"), out):
        data[f"{split}_{name}"] = arr
    return data

  key = distill.data_key(cfg, DATA_FIELDS, model_config=model.config)
  return distill.cached_arrays(os.path.join(workdir, f"eagle_data_{key}.npz"), build,
                               label="EAGLE", unit="rows")


def draft_vocab(data: dict[str, np.ndarray], vocab_size: int, size: int) -> np.ndarray:
  """The ``size`` most frequent training tokens and labels
  (:func:`partext_jax.models.eagle.select_draft_vocab`)."""
  m = data["train_mask"]
  counts = np.bincount(np.concatenate([data["train_tokens"][m], data["train_labels"][m]]),
                       minlength=vocab_size)
  return eagle_lib.select_draft_vocab(counts, min(size, vocab_size))


# ------------------------------------------------------------------------------------ the loss


def _shift(feats):
  """``f_{i-1}`` at every position (zero at position 0)."""
  return jnp.pad(feats, ((0, 0), (1, 0), (0, 0)))[:, :-1]


def unrolled_features(dparams, tokens, feats, *, config: eagle_lib.EagleConfig, steps: int):
  """The head's guesses of every pass: a list of ``steps`` arrays ``float[B, L, E]``."""
  b, length = tokens.shape
  pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
  mask = jnp.tril(jnp.ones((length, length), bool))[None]
  out, prev = [], feats
  for _ in range(steps):
    guess, _ = eagle_lib.apply_head(dparams, _shift(prev), tokens, pos, mask, config=config)
    out.append(guess)
    prev = jax.lax.stop_gradient(guess)
  return out


def eagle_loss(dparams, tokens, feats, labels, mask, *, config: eagle_lib.EagleConfig,
               steps: int, token_loss_weight: float):
  """The loss of the module docstring on a batch of rows.

  Args:
    dparams: :func:`partext_jax.models.eagle.draft_params` (only ``"head"`` is trained) plus
      ``"label_index"`` ``int32[V]`` (draft-vocabulary column of every token, ``-1`` if absent).
    tokens, labels: ``int32[B, L]``; feats ``float32[B, L, E]``; mask ``bool[B, L]``.
  Returns:
    ``(loss, {"feat_l1_<r>", "ce_<r>", "top1_<r>"})`` per pass ``r`` (float32 scalars).
  """
  guesses = unrolled_features(dparams, tokens, feats, config=config, steps=steps)
  col = dparams["label_index"][labels]
  m = mask.astype(jnp.float32)
  mc = m * (col >= 0)
  total, metrics = 0.0, {}
  for r, g in enumerate(guesses, start=1):
    diff = jnp.abs(g - feats)
    l1 = jnp.where(diff < 1.0, 0.5 * diff * diff, diff - 0.5).mean(-1)
    logits = eagle_lib.draft_logits(dparams, g)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(col, 0)[..., None], axis=-1)[..., 0]
    l1 = jnp.sum(l1 * m) / jnp.maximum(m.sum(), 1)
    ce = jnp.sum(nll * mc) / jnp.maximum(mc.sum(), 1)
    hit = (jnp.argmax(logits, axis=-1) == col) & (col >= 0)
    total = total + l1 + token_loss_weight * ce
    metrics.update({f"feat_l1_{r}": l1, f"ce_{r}": ce,
                    f"top1_{r}": jnp.sum(hit * m) / jnp.maximum(m.sum(), 1)})
  return total, metrics


def _label_index(vocab_ids, vocab_size: int):
  return jnp.full((vocab_size,), -1, jnp.int32).at[jnp.asarray(vocab_ids)].set(
      jnp.arange(len(vocab_ids), dtype=jnp.int32))


def _frozen(base_params, vocab_ids, base_config):
  d = eagle_lib.draft_params(None, base_params, vocab_ids, base_config=base_config)
  del d["head"]
  d["label_index"] = _label_index(vocab_ids, base_config.vocab_size)
  return d


def evaluate_head(head, frozen, data, *, config, cfg: EagleTrainConfig) -> dict[str, float]:
  """Validation top-1 per pass and the estimated greedy chain length (module docstring)."""
  steps = max(cfg.unroll_steps, 2)
  fn = jax.jit(lambda h, t, f, y, m: eagle_loss({**frozen, "head": h}, t, f, y, m,
                                                config=config, steps=steps,
                                                token_loss_weight=cfg.token_loss_weight)[1])
  sums: dict[str, float] = {}
  arrays = [data[f"valid_{k}"] for k in ("tokens", "feats", "labels", "mask")]
  for _, _, batch in distill.padded_batches(arrays, cfg.batch_size):
    w = float(batch[-1].sum())  # The padding rows are masked out.
    out = fn(head, *(jnp.asarray(x) for x in batch))
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + float(v) * w
  total = float(data["valid_mask"].sum())
  out = {k: v / total for k, v in sums.items()}
  acc1, acc2 = out["top1_1"], out[f"top1_{steps}"]
  out["chain_accept_len"] = 1.0 + sum(acc1 * acc2 ** (d - 1) for d in range(1, cfg.eval_depth + 1))
  return out


def train_head(data, base_params, base_config, cfg: EagleTrainConfig, *,
               workdir: str | None = None):
  """Trains a fresh head (:func:`eagle_loss`). Returns ``(config, head, vocab_ids, logs)``."""
  ecfg = eagle_lib.EagleConfig.from_base(base_config)
  vocab_ids = draft_vocab(data, base_config.vocab_size, cfg.draft_vocab_size)
  frozen = _frozen(base_params, vocab_ids, base_config)

  def loss_fn(params, batch, rng, frozen):
    del rng
    return eagle_loss({**frozen, "head": params}, *batch, config=ecfg, steps=cfg.unroll_steps,
                      token_loss_weight=cfg.token_loss_weight)

  result = distill.train_params(
      cfg, lambda key: eagle_lib.init_params(key, ecfg), loss_fn,
      tuple(data[f"train_{k}"] for k in ("tokens", "feats", "labels", "mask")),
      loop=distill.step_loop(cfg, log_every=cfg.checkpoint_every), workdir=workdir,
      metadata={"eagle_config": dataclasses.asdict(ecfg), "train_config": cfg.to_dict(),
                "vocab_ids": vocab_ids.tolist()},
      frozen=(frozen,), desc="train EAGLE head")
  logs = [r for r in result.history if "train/loss" in r]
  return ecfg, result.state.params, vocab_ids, logs


# ------------------------------------------------------------------------------ checkpoints


def save_head(directory: str, params, config: eagle_lib.EagleConfig, vocab_ids, *, step: int,
              metadata: dict[str, Any] | None = None, dtype=jnp.bfloat16) -> str:
  """Exports the head alone (``dtype``: bfloat16 halves the asset), atomically, under
  ``directory/<step>``; the draft vocabulary goes into the metadata. Returns the step dir."""
  return distill.save_params(directory, params, step=step, param_dtype=jnp.dtype(dtype).name,
                             metadata={"eagle_config": dataclasses.asdict(config),
                                       "vocab_ids": np.asarray(vocab_ids).tolist(),
                                       **(metadata or {})})


def _read_config(meta) -> tuple[eagle_lib.EagleConfig, np.ndarray]:
  return eagle_lib.EagleConfig(**meta["eagle_config"]), np.asarray(meta["vocab_ids"], np.int32)


def load_head(directory: str):
  """``(config, params float32, vocab_ids int32[V_d], metadata)`` of the latest checkpoint.

  Reads a training checkpoint (``<workdir>/checkpoints``) and a :func:`save_head` export alike.
  Raises :class:`~partext_jax.training.checkpoint.CheckpointError` naming the directory when it
  holds no (or a corrupt) checkpoint.
  """
  (config, vocab_ids), params, meta = distill.load_params(
      directory, name="EAGLE", fields="eagle_config / vocab_ids", read_config=_read_config,
      init_params=lambda c: eagle_lib.init_params(jax.random.key(0), c[0]))
  return config, params, vocab_ids, meta


def asset_directory() -> str:
  """Where the committed SmolLM2 head lives (``partext_jax/assets/eagle_smollm2``)."""
  return distill.asset_directory("eagle_smollm2")


def export_head(report: dict[str, Any], destination: str, *, command: str) -> str:
  """Replaces ``destination`` with a bfloat16 :func:`save_head` export (step 0) of a finished
  run, its metadata holding the train config, validation metrics and ``command``."""
  config, params, vocab_ids, meta = load_head(os.path.dirname(report["checkpoint"]))
  if os.path.isdir(destination):
    shutil.rmtree(destination)
  save_head(destination, params, config, vocab_ids, step=0, metadata={
      "train_config": meta.get("train_config"), "valid": report["valid"], "command": command,
      "seconds_data": report["seconds_data"], "seconds_train": report["seconds_train"]})
  return destination


# ------------------------------------------------------------------------------- entry point


def train_and_evaluate(config: Any, workdir: str, *, bundle=None) -> dict[str, Any]:
  """Builds (or reads) the data, trains (resumable), evaluates, writes ``eagle_report.json``.

  Raises ``ConfigError`` for an invalid config.
  """
  cfg = parse_config(config)
  bundle = pretrained.load_bundle() if bundle is None else bundle
  model, base_params, _ = bundle
  data, t_data = distill.timed(load_or_build_data, bundle, cfg, workdir)
  (ecfg, head, vocab_ids, logs), t_train = distill.timed(train_head, data, base_params,
                                                         model.config, cfg, workdir=workdir)
  frozen = _frozen(base_params, vocab_ids, model.config)
  evaluate = lambda h: evaluate_head(h, frozen, data, config=ecfg, cfg=cfg)  # noqa: E731
  report = {"config": cfg.to_dict(), "train_rows": int(len(data["train_tokens"])),
            "train_positions": int(data["train_mask"].sum()),
            "valid": evaluate(head),
            "valid_untrained": evaluate(eagle_lib.init_params(jax.random.key(cfg.seed), ecfg)),
            "draft_vocab_coverage": float(np.isin(data["valid_labels"][data["valid_mask"]],
                                                  vocab_ids).mean()),
            "train_log": logs, "seconds_data": t_data, "seconds_train": t_train,
            "head_params": ecfg.num_params, "draft_vocab_size": int(len(vocab_ids)),
            "checkpoint": distill.checkpoint_path(workdir, cfg.num_steps)}
  distill.write_report(workdir, "eagle_report.json", report)
  return report
