"""Trains Medusa heads on a frozen LM's own greedy continuations (self-distillation).

Cai et al. (2024), "Medusa"; the objective is ``docs/algorithms.md#drafters`` (Medusa training).
Data (Medusa-2's self-distillation, small enough for a CPU). Chat prompts are built from fixed
templates (general topics, and names / docstrings of the Python standard library); the frozen
target greedily answers each (``max_new_tokens``, stopping at EOS). For an answer
``y_0 .. y_{n-1}`` after prompt ``x``, the target's final hidden state ``h_j`` at the position
that predicts ``y_j`` (``j = 0`` is the last prompt token) satisfies ``argmax h_j W = y_j``; head
``k`` is trained to predict ``y_{j+k}``::

    L(theta) = sum_k  w_k  mean_{j : j + k < n}  -log softmax(logits_k(h_j; theta))[y_{j+k}],
    w_k = decay^(k-1)

(Medusa weights later, harder heads less). Because the targets are the target model's own greedy
tokens, a head's top-1 accuracy is the probability that its guess would be accepted by greedy
verification (given the earlier guesses were). The prompts, the greedy answers and the data
cache are :mod:`partext_jax.training.distill`'s: the hidden states are computed once (one
forward pass over prompt + answer) and cached in the workdir as ``medusa_data_<hash>.npz``
(``hash`` = the data fields of the config), written atomically.

Training is the trainer core's (:mod:`partext_jax.training.core`): AdamW with warmup and cosine
decay, the frozen target's parameters passed to the jitted step as traced arguments, one
``metrics.jsonl`` line and one checkpoint (heads and optimiser state, resumable) per epoch in
``<workdir>/checkpoints``. Step ``k`` trains on the positions ``corpus.batch_indices(N, step=k,
seed=seed)`` (a seeded permutation per epoch).

Prompts are split into train / validation by a stable hash of the prompt text; the report gives
per-head top-1 / top-k accuracy on validation and the mean accepted length of a top-1 chain,
``E[1 + max{m : heads 1..m all right}]`` (the root token is always accepted).

Usage::

    result = train_and_evaluate(get_config(), "/tmp/medusa")     # configs/medusa.py
    mcfg, mparams, meta = load_heads("/tmp/medusa/checkpoints")
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
from partext_jax.models import medusa as medusa_heads
from partext_jax.training import distill
from partext_jax.training.config import ConfigError, check_positive, parse_dataclass
# The self-distillation data, public here before it moved to `distill` (shared by the trainers).
from partext_jax.training.distill import (build_prompts, corpus_bucket,  # noqa: F401
                                          is_validation_prompt, self_distill)

DATA_FIELDS = ("num_prompts", "max_new_tokens", "gen_batch_size", "num_heads")

MedusaConfigError = ConfigError  # The error of an invalid Medusa training config.


@dataclasses.dataclass(frozen=True)
class MedusaTrainConfig(distill.DistillConfig):
  """Medusa training hyper-parameters (``configs/medusa.py``).

  The fields of :class:`~partext_jax.training.distill.DistillConfig`: the optimiser (here:
  warmup 20 steps, cosine decay to 10%, no weight decay, AdamW's default betas) and the teacher
  data (128 prompts, answers of up to 128 tokens), plus:

  Attributes:
    num_heads: ``K``; head ``k`` guesses the token ``k`` places after the target's next one.
    num_layers: residual SiLU blocks per head (Medusa uses 1).
    batch_size: answer positions (hidden states) per optimiser step.
    num_epochs: passes over the training positions.
    head_decay: loss weight of head ``k`` is ``head_decay ** (k - 1)`` (Medusa: 0.8).
    topk_eval: ``k`` of the reported top-k validation accuracy.
    seed: seed of the data order (the heads start at zero, independent of it).
    progress_bar: show tqdm progress bars.
  """

  learning_rate: float = 1e-3
  warmup_steps: int = 20
  weight_decay: float = 0.0
  b2: float = 0.999
  num_heads: int = 4
  num_layers: int = 1
  batch_size: int = 256
  num_epochs: int = 3
  head_decay: float = 0.8
  topk_eval: int = 4
  seed: int = 0
  progress_bar: bool = True

  def __post_init__(self):
    self.check_distill()
    check_positive(self, "batch_size", "num_epochs", "topk_eval")
    try:  # MedusaConfig's own checks of num_heads / num_layers.
      self.heads_config(hidden_size=1)
    except ValueError as e:
      raise ConfigError(str(e)) from e
    if not 0.0 < self.head_decay <= 1.0:
      raise ConfigError(f"head_decay={self.head_decay} must be in (0, 1]")

  def heads_config(self, hidden_size: int) -> medusa_heads.MedusaConfig:
    """The heads' :class:`~partext_jax.models.medusa.MedusaConfig` on a base of this width."""
    return medusa_heads.MedusaConfig(num_heads=self.num_heads, hidden_size=hidden_size,
                                     num_layers=self.num_layers)


def parse_config(config: Any) -> MedusaTrainConfig:
  """A ``ConfigDict`` / mapping (or the config itself) -> :class:`MedusaTrainConfig`.

  Strict, as :func:`partext_jax.training.config.parse_dataclass`: unknown keys, wrong types and
  invalid values raise ``ConfigError`` (= :data:`MedusaConfigError`).
  """
  return parse_dataclass(MedusaTrainConfig, config, where="config")


# ------------------------------------------------------------------------- data (self-distill)


def hidden_and_targets(model, params, pairs, *, num_heads: int, batch_size: int = 8
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Stacks ``(hidden float32[N, E], targets int32[N, K])`` over every answer position.

  ``pairs``: ``[(prompt_ids, answer_ids)]`` (:func:`partext_jax.training.distill.self_distill`),
  run through the frozen ``model`` ``batch_size`` at a time. Row ``j`` of an answer ``y`` (length
  ``n >= 2``) holds ``h_j`` (the hidden state at prompt position ``P - 1 + j``) and
  ``targets[j, k - 1] = y_{j+k}`` for ``j + k < n``, else ``-1``.
  """
  width = distill.corpus_bucket(max(len(p) + len(a) for p, a in pairs))
  tokens, _ = distill.pack_rows([list(p) + list(a) for p, a in pairs], width)
  hidden = distill.hidden_states(model, params, tokens, batch_size=batch_size)
  hs, ts = [], []
  for r, (p, a) in enumerate(pairs):
    n = len(a)
    if n < 2:
      continue
    hs.append(hidden[r, len(p) - 1:len(p) - 1 + n])
    tgt = np.full((n, num_heads), -1, np.int32)
    for k in range(1, num_heads + 1):
      tgt[:n - k, k - 1] = a[k:]
    ts.append(tgt)
  return np.concatenate(hs).astype(np.float32), np.concatenate(ts)


def load_or_build_data(bundle, cfg: MedusaTrainConfig, workdir: str) -> dict[str, np.ndarray]:
  """The cached arrays ``{train,valid}_{hidden,targets}`` (built and saved on the first call).

  ``bundle``: ``(model, params, tokenizer)`` of the frozen target. ``*_hidden`` float32[N, E],
  ``*_targets`` int32[N, K] (:func:`hidden_and_targets`), cached as
  ``<workdir>/medusa_data_<hash>.npz`` (:func:`partext_jax.training.distill.cached_arrays`).
  Raises ``ConfigError`` if a split gets no prompt.
  """
  model, params, _ = bundle

  def build():
    pairs, held = distill.teacher_answers(bundle, cfg)
    splits = distill.split(pairs, held)
    distill.check_splits(splits)
    data = {}
    for split, sel in splits.items():
      data[f"{split}_hidden"], data[f"{split}_targets"] = hidden_and_targets(
          model, params, sel, num_heads=cfg.num_heads)
    return data

  key = distill.data_key(cfg, DATA_FIELDS, model_config=model.config,
                         validation_fraction=cfg.validation_fraction)
  return distill.cached_arrays(os.path.join(workdir, f"medusa_data_{key}.npz"), build,
                               label="Medusa", unit="positions")


# --------------------------------------------------------------------------------- training


def _head_nll(logits, tgt):
  """``-log softmax(logits)[tgt]`` float32[K, N] (a ``-1`` target reads token 0: mask it)."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, jnp.maximum(tgt, 0)[..., None], axis=-1)[..., 0]


def medusa_loss(params, hidden, targets, base_params, *, config: medusa_heads.MedusaConfig,
                base_config, head_decay: float):
  """The Medusa training loss of ``docs/algorithms.md#drafters`` on a batch of positions.

  Args:
    params: the heads' parameters.
    hidden: float32[N, E], the frozen target's final hidden states.
    targets: int32[N, K], ``targets[j, k - 1]`` the token head ``k`` must predict (``-1``: none,
      ignored).
    base_params, base_config: the frozen target (its LM head scores the heads' outputs).
    head_decay: head ``k``'s weight is ``head_decay ** (k - 1)``.
  Returns:
    ``(loss float32[], per-head mean cross-entropy float32[K])`` in nats.
  """
  logits = medusa_heads.head_logits(params, hidden, base_params, config=config,
                                    base_config=base_config)  # [K, N, V]
  tgt = targets.T  # [K, N]
  valid = tgt >= 0
  nll = _head_nll(logits, tgt)
  per_head = jnp.sum(nll * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1)
  weights = head_decay ** jnp.arange(config.num_heads, dtype=jnp.float32)
  return jnp.sum(weights * per_head), per_head


def _eval_stats(params, base_params, h, t, *, config, base_config, topk):
  logits = medusa_heads.head_logits(params, h, base_params, config=config, base_config=base_config)
  tgt = t.T
  _, top = jax.lax.top_k(logits, topk)  # [K, N, k]
  hit1 = top[..., 0] == tgt
  hitk = jnp.any(top == tgt[..., None], axis=-1)
  return hit1, hitk, _head_nll(logits, tgt)


_eval_stats_jit = jax.jit(_eval_stats, static_argnames=("config", "base_config", "topk"))


def evaluate_heads(params, base_params, hidden, targets, *, config: medusa_heads.MedusaConfig,
                   base_config, topk: int, batch_size: int = 512) -> dict[str, Any]:
  """Per-head top-1 / top-``topk`` accuracy, CE, and the mean accepted length of a top-1 chain.

  ``hidden`` float32[N, E] and ``targets`` int32[N, K] as for :func:`medusa_loss`, scored in
  padded batches of ``batch_size`` (one compilation). Returns ``positions``,
  ``head<k>_top1``, ``head<k>_top<topk>``, ``head<k>_ce`` (nats) and ``chain_accept_len``
  (``1 + E[max{m : heads 1..m right}]``, a missing target ending the chain).
  """

  def stats(h, t):
    return _eval_stats_jit(params, base_params, h, t, config=config, base_config=base_config,
                           topk=topk)

  hit1, hitk, nll = [], [], []
  for _, n, (h, t) in distill.padded_batches([hidden, targets], batch_size):
    a, b, c = (np.asarray(x).T[:n] for x in stats(jnp.asarray(h), jnp.asarray(t)))
    hit1.append(a)
    hitk.append(b)
    nll.append(c)
  hit1, hitk, nll = (np.concatenate(x) for x in (hit1, hitk, nll))  # [N, K]
  valid = targets >= 0
  out = {"positions": int(len(hidden))}
  for k in range(config.num_heads):
    v = valid[:, k]
    out[f"head{k + 1}_top1"] = float(hit1[v, k].mean())
    out[f"head{k + 1}_top{topk}"] = float(hitk[v, k].mean())
    out[f"head{k + 1}_ce"] = float(nll[v, k].mean())
  # Top-1 chain: heads 1..m right in a row (a missing target ends the chain).
  ok = hit1 & valid
  run = np.cumprod(ok, axis=1).sum(axis=1)
  out["chain_accept_len"] = float(1.0 + run.mean())
  return out


def train_heads(data: dict[str, np.ndarray], base_params, base_config, cfg: MedusaTrainConfig,
                *, workdir: str | None = None
                ) -> tuple[medusa_heads.MedusaConfig, Any, list[dict[str, float]]]:
  """Trains zero-initialised heads on the cached positions (:func:`medusa_loss`).

  Args:
    data: ``train_hidden`` float32[N, E] and ``train_targets`` int32[N, K] (``-1``: none).
    base_params: the frozen target's parameters (its LM head scores the heads' outputs).
    base_config: the target's config (``hidden_size`` = ``E``).
    cfg: hyper-parameters; ``num_epochs * max(N // batch_size, 1)`` steps.
    workdir: checkpoints (one per epoch; a rerun resumes) and ``metrics.jsonl`` go here;
      ``None`` keeps everything in memory.
  Returns:
    ``(heads config, heads params, per-epoch logs)``, each log ``{"epoch", "train_loss"}`` (the
    mean loss over the epoch).
  """
  mcfg = cfg.heads_config(base_config.hidden_size)
  loop = distill.epoch_loop(len(data["train_hidden"]), cfg)

  def loss_fn(params, batch, rng, base_params):
    del rng  # Deterministic.
    loss, per_head = medusa_loss(params, *batch, base_params, config=mcfg,
                                 base_config=base_config, head_decay=cfg.head_decay)
    return loss, {f"head{k + 1}_ce": per_head[k] for k in range(mcfg.num_heads)}

  result = distill.train_params(
      cfg, lambda key: medusa_heads.init_params(key, mcfg), loss_fn,
      (data["train_hidden"], data["train_targets"]), loop=loop, workdir=workdir,
      metadata={"medusa_config": dataclasses.asdict(mcfg), "train_config": cfg.to_dict()},
      frozen=(base_params,), desc="train Medusa heads")
  return mcfg, result.state.params, distill.epoch_logs(result.history, loop)


# ------------------------------------------------------------------------------ checkpoints


def save_heads(directory: str, params, config: medusa_heads.MedusaConfig, *, step: int,
               metadata: dict[str, Any] | None = None) -> str:
  """Exports the head parameters alone (atomically, orbax) under ``directory/<step>``.

  The format of the committed asset: a train state whose optimiser state and EMA are empty
  (:func:`partext_jax.training.distill.save_params`), float32. Returns the step directory.
  """
  return distill.save_params(directory, params, step=step, metadata={
      "medusa_config": dataclasses.asdict(config), **(metadata or {})})


def load_heads(directory: str) -> tuple[medusa_heads.MedusaConfig, Any, dict[str, Any]]:
  """``(config, params, metadata)`` of the latest checkpoint under ``directory``.

  Reads a training checkpoint (``<workdir>/checkpoints``) and a :func:`save_heads` export alike.
  Raises :class:`partext_jax.training.checkpoint.CheckpointError` naming the directory when it
  holds no checkpoint or a truncated / corrupt one.
  """
  return distill.load_params(
      directory, name="Medusa", fields="medusa_config",
      read_config=lambda meta: medusa_heads.MedusaConfig(**meta["medusa_config"]),
      init_params=lambda config: medusa_heads.init_params(jax.random.key(0), config))


def export_heads(report: dict[str, Any], destination: str, *, command: str) -> str:
  """Exports the heads of a finished run (``report``: :func:`train_and_evaluate`'s) alone.

  Replaces ``destination`` with a :func:`save_heads` export (step 0) whose metadata holds the
  train config, the validation metrics and ``command`` (how it was made). Returns the path.
  """
  config, params, meta = load_heads(os.path.dirname(report["checkpoint"]))
  if os.path.isdir(destination):
    shutil.rmtree(destination)
  save_heads(destination, params, config, step=0, metadata={
      "train_config": meta.get("train_config"), "valid": report["valid"], "command": command})
  return destination


def asset_directory() -> str:
  """Where the committed SmolLM2 heads live (``partext_jax/assets/medusa_smollm2``)."""
  return distill.asset_directory("medusa_smollm2")


# ------------------------------------------------------------------------------- entry point


def train_and_evaluate(config: Any, workdir: str, *, bundle=None) -> dict[str, Any]:
  """Self-distils data (cached), trains the heads (resumable), evaluates them, writes a report.

  Args:
    config: a ``ConfigDict`` (``configs/medusa.py``) or :class:`MedusaTrainConfig`.
    workdir: holds the data cache, ``checkpoints/`` (heads and optimiser state, read by
      :func:`load_heads`), ``metrics.jsonl`` / ``metrics.png`` and ``medusa_report.json``.
    bundle: the target ``ModelBundle`` (default: the embedded SmolLM2).
  Returns:
    the report dict (validation metrics of the trained and of the untrained heads, per-epoch
    losses, timings, sizes, the checkpoint's step directory).
  Raises:
    ConfigError: an invalid config.
  """
  cfg = parse_config(config)
  bundle = pretrained.load_bundle() if bundle is None else bundle
  model, base_params, _ = bundle
  data, t_data = distill.timed(load_or_build_data, bundle, cfg, workdir)
  (mcfg, params, logs), t_train = distill.timed(train_heads, data, base_params, model.config,
                                                cfg, workdir=workdir)
  distill.plot_cross_entropies(workdir, key="head", label="head", count=mcfg.num_heads)
  evaluate = lambda p: evaluate_heads(  # noqa: E731
      p, base_params, data["valid_hidden"], data["valid_targets"], config=mcfg,
      base_config=model.config, topk=cfg.topk_eval)
  step = distill.epoch_loop(len(data["train_hidden"]), cfg).num_steps
  report = {"config": cfg.to_dict(), "train_positions": int(len(data["train_hidden"])),
            "valid": evaluate(params),
            "valid_untrained": evaluate(medusa_heads.init_params(jax.random.key(0), mcfg)),
            "epochs": logs, "seconds_data": t_data, "seconds_train": t_train,
            "head_params": mcfg.num_params, "head_bytes": 4 * mcfg.num_params,
            "checkpoint": distill.checkpoint_path(workdir, step)}
  distill.write_report(workdir, "medusa_report.json", report)
  return report


def format_report(report: dict[str, Any]) -> str:
  """A markdown table of the per-head validation accuracy (trained vs untrained)."""
  k = report["config"]["num_heads"]
  topk = report["config"]["topk_eval"]
  lines = [f"| head (predicts t+k+1) | top-1 | top-{topk} | CE (nats) | top-1 untrained |",
           "|---|---|---|---|---|"]
  v, u = report["valid"], report["valid_untrained"]
  for h in range(1, k + 1):
    lines.append(f"| {h} | {v[f'head{h}_top1']:.3f} | {v[f'head{h}_top{topk}']:.3f} | "
                 f"{v[f'head{h}_ce']:.2f} | {u[f'head{h}_top1']:.3f} |")
  lines.append(f"\nTop-1 chain mean accepted length (root + heads): {v['chain_accept_len']:.2f} "
               f"(untrained {u['chain_accept_len']:.2f}); {v['positions']} validation positions.")
  return "\n".join(lines)

