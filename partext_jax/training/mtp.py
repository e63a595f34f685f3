"""Trains MTP predictors (Gloeckle heads or DeepSeek-V3 modules) on a frozen trunk.

``docs/algorithms.md#multi-token-prediction``; the models are :mod:`partext_jax.models.mtp`.
The trunk is frozen: its final hidden states ``h`` over whole sequences are computed once and
cached, and only the predictors train (the trainer core, :mod:`partext_jax.training.core`: AdamW,
warmup + cosine, resumable checkpoints, ``metrics.jsonl``). Losses, with ``out_k`` the
teacher-forced LM-head inputs of :func:`partext_jax.models.mtp.sequence_forward`::

    Gloeckle:  L = sum_{k=1..D} mean_t CE(out_k(t) W, x_{t+k+1})         (heads 2 .. D+1)
    DeepSeek:  L = (1/D) sum_{k=1..D} mean_{t >= k} CE(out_k(t) W, x_{t+1})

(DeepSeek's weight ``lambda`` only rescales the learning rate when the trunk is frozen: 1 here.)
The means run over the positions whose target is a training token (``loss_mask``).

Data sources (``data``):

* ``"smollm2"``: self-distillation as the Medusa heads (:mod:`partext_jax.training.distill`'s
  prompt set and greedy answering): the frozen SmolLM2 answers ``num_prompts`` chat
  prompts greedily; sequences are prompt + answer, targets the answer tokens (the model's own
  greedy tokens, so top-1 accuracy is the greedy acceptance probability). Cached in the workdir
  as ``mtp_data_<hash>.npz``.
* ``"markov"``: sequences of a seeded random Markov chain
  (:class:`~partext_jax.data.synthetic.MarkovChain`, transition matrix ``P``) under the exact
  one-hot trunk :class:`OneHotMarkovLM` (``h_t = onehot(x_t)``, next-token law ``P[x_t]``). The
  Bayes-optimal Gloeckle head ``k + 1`` is ``P^{k+1}[x_t]`` and every DeepSeek module is
  ``P[x_t]``; :func:`markov_kl` measures the learned conditionals against them.

Usage::

    report = train_and_evaluate(get_config("deepseek"), "/tmp/mtp")      # configs/mtp.py
    cfg, params, meta = load_params("/tmp/mtp/checkpoints")
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
from partext_jax.base import LMOutput
from partext_jax.data.synthetic import MarkovChain
from partext_jax.models import mtp as mtp_lib
from partext_jax.models.attention import KVCache
from partext_jax.models.medusa import lm_head_logits
from partext_jax.training import distill
from partext_jax.training.config import (ConfigError, check_choice, check_positive,
                                         parse_dataclass)

DATA_SOURCES = ("smollm2", "markov")
SMOLLM2_DATA_FIELDS = ("num_prompts", "max_new_tokens", "gen_batch_size", "validation_fraction")
MARKOV_DATA_FIELDS = ("markov_seed", "num_states", "concentration", "num_sequences", "seq_len",
                      "validation_fraction")


@dataclasses.dataclass(frozen=True)
class MTPTrainConfig(distill.DistillConfig):
  """MTP training hyper-parameters (``configs/mtp.py``, ``configs/mtp_markov.py``).

  The fields of :class:`~partext_jax.training.distill.DistillConfig`: the optimiser, the teacher
  data (``num_prompts``, ``max_new_tokens``, ``gen_batch_size``: smollm2 only) and
  ``validation_fraction`` (prompts by a stable hash; markov: the last sequences), plus:

  Attributes:
    kind: ``"gloeckle"`` (independent heads) or ``"deepseek"`` (sequential modules).
    depth: ``D``, tokens predicted beyond the trunk's next token.
    mlp_dim: SwiGLU width of each block; 0 = the trunk's.
    data: ``"smollm2"`` (self-distilled SmolLM2 answers) or ``"markov"`` (a Markov chain).
    markov_seed, num_states, concentration: markov: the chain (``MarkovChain.random``).
    num_sequences, seq_len: markov: sampled sequences and their length.
    batch_size: sequences per optimiser step.
    num_epochs: passes over the training sequences.
    seed: seed of the predictors' initialisation and of the data order.
    progress_bar: show tqdm progress bars.
  """

  learning_rate: float = 1e-3
  warmup_steps: int = 10
  weight_decay: float = 0.0
  kind: str = "deepseek"
  depth: int = 2
  mlp_dim: int = 384
  data: str = "smollm2"
  markov_seed: int = 0
  num_states: int = 8
  concentration: float = 0.3
  num_sequences: int = 1024
  seq_len: int = 64
  batch_size: int = 4
  num_epochs: int = 6
  seed: int = 0
  progress_bar: bool = True

  def __post_init__(self):
    self.check_distill()
    check_choice("kind", self.kind, mtp_lib.MTP_KINDS)
    check_choice("data", self.data, DATA_SOURCES)
    check_positive(self, "depth", "num_states", "concentration", "num_sequences", "seq_len",
                   "batch_size", "num_epochs")
    if self.mlp_dim < 0:
      raise ConfigError(f"mlp_dim={self.mlp_dim} must be >= 0 (0: the trunk's)")
    if self.data == "markov" and self.seq_len <= self.depth + 1:
      raise ConfigError(f"seq_len={self.seq_len} leaves no target for depth={self.depth}")

  def model_config(self, trunk_config) -> mtp_lib.MTPConfig:
    """The predictors' :class:`~partext_jax.models.mtp.MTPConfig` on this trunk."""
    return mtp_lib.MTPConfig.for_trunk(trunk_config, kind=self.kind, depth=self.depth,
                                       mlp_dim=self.mlp_dim or None)


def parse_config(config: Any) -> MTPTrainConfig:
  """A ``ConfigDict`` / mapping (or the config itself) -> :class:`MTPTrainConfig` (strict:
  unknown keys, wrong types and invalid values raise ``ConfigError``)."""
  return parse_dataclass(MTPTrainConfig, config, where="config")


# ------------------------------------------------------------------------ the Markov trunk


@dataclasses.dataclass(frozen=True)
class MarkovTrunkConfig:
  """Shape of :class:`OneHotMarkovLM` (and, through ``MTPConfig.for_trunk``, of its small
  predictor blocks: 2 query heads, 1 KV head of width 8, SwiGLU ``4 V``)."""

  vocab_size: int
  num_heads: int = 2
  num_kv_heads: int = 1
  head_dim: int = 8
  rope_theta: float = 10000.0
  rms_eps: float = 1e-5
  context_length: int = 4096
  tie_embeddings: bool = False
  dtype: str = "float32"

  @property
  def hidden_size(self) -> int:
    return self.vocab_size

  @property
  def intermediate_size(self) -> int:
    return 4 * self.vocab_size


@dataclasses.dataclass(frozen=True)
class OneHotMarkovLM:
  """The exact trunk of a first-order Markov chain, as a :class:`~partext_jax.base.CausalLM`.

  ``h_t = onehot(x_t)`` (``params["embed"]["embedding"]``, the identity) and logits
  ``h_t log P`` (``params["lm_head"]["kernel"] = log P``): the next-token law is exactly
  ``P[x_t]``. The "cache" is a placeholder :class:`~partext_jax.models.attention.KVCache` (the
  model needs no context). Build it with :func:`markov_trunk`.
  """

  config: MarkovTrunkConfig

  @property
  def context_length(self) -> int:
    return self.config.context_length

  @property
  def vocab_size(self) -> int:
    return self.config.vocab_size

  eos_id = None
  pad_id = 0

  def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
    del dtype
    return KVCache.zeros(1, batch, max_len, 1, 1, jnp.float32)

  def __call__(self, params, tokens, positions, attn_mask=None, cache=None, write_slots=None, *,
               logits_at=None, return_hidden=False):
    del positions, attn_mask, write_slots
    if logits_at is not None:
      tokens = jnp.take_along_axis(tokens, jnp.asarray(logits_at, jnp.int32), axis=1)
    hidden = jnp.take(params["embed"]["embedding"], tokens, axis=0)
    logits = hidden @ params["lm_head"]["kernel"]
    return LMOutput(logits.astype(jnp.float32), cache, hidden if return_hidden else None)


def markov_trunk(chain: MarkovChain) -> tuple[OneHotMarkovLM, dict]:
  """``(model, params)`` of the exact one-hot trunk of ``chain``."""
  v = chain.num_states
  params = {"embed": {"embedding": jnp.eye(v, dtype=jnp.float32)},
            "lm_head": {"kernel": jnp.asarray(np.log(chain.transition), jnp.float32)}}
  return OneHotMarkovLM(MarkovTrunkConfig(vocab_size=v)), params


def markov_chain(cfg: MTPTrainConfig) -> MarkovChain:
  """The random Markov chain of the toy MTP task (exact entropy known), from ``cfg``'s
  ``markov_seed``, ``num_states`` and ``concentration``.

  Args:
    cfg: the training configuration.
  """
  return MarkovChain.random(seed=cfg.markov_seed, num_states=cfg.num_states,
                            concentration=cfg.concentration)


# ----------------------------------------------------------------------------------- data


trunk_hidden = distill.hidden_states  # The frozen trunk's h over whole sequences.


def _smollm2_sequences(bundle, cfg: MTPTrainConfig):
  pairs, valid = distill.teacher_answers(bundle, cfg)
  width = distill.corpus_bucket(max(len(p) + len(a) for p, a in pairs))
  tokens, _ = distill.pack_rows([list(p) + list(a) for p, a in pairs], width)
  loss_mask = np.zeros(tokens.shape, bool)
  for i, (p, a) in enumerate(pairs):
    loss_mask[i, len(p):len(p) + len(a)] = True  # the answer tokens are the targets
  return tokens, loss_mask, valid


def load_or_build_data(cfg: MTPTrainConfig, workdir: str, *, trunk, trunk_params, bundle=None
                       ) -> dict[str, np.ndarray]:
  """``{train,valid}_{tokens,hidden,loss_mask}`` (cached in ``workdir`` for smollm2).

  ``tokens int32[N, T]`` (right padded), ``hidden float32[N, T, E]`` (the trunk's ``h``),
  ``loss_mask bool[N, T]`` (positions whose token is a training target). smollm2: the target's
  greedy answers to :mod:`partext_jax.training.distill`'s prompts, cached as
  ``<workdir>/mtp_data_<hash>.npz``. Raises ``ConfigError`` if a split is empty.
  """

  def build():
    if cfg.data == "markov":
      seqs = markov_chain(cfg).sample_numpy(np.random.default_rng(cfg.markov_seed + 1),
                                            num_sequences=cfg.num_sequences, length=cfg.seq_len)
      n_valid = int(round(cfg.validation_fraction * len(seqs)))
      valid = np.arange(len(seqs)) >= len(seqs) - n_valid
      tokens, loss_mask = seqs, np.ones(seqs.shape, bool)
    else:
      tokens, loss_mask, valid = _smollm2_sequences(bundle, cfg)
    hidden = trunk_hidden(trunk, trunk_params, tokens)
    splits = {"train": ~valid, "valid": valid}
    distill.check_splits({name: np.flatnonzero(keep) for name, keep in splits.items()})
    return {f"{name}_{k}": v[keep] for name, keep in splits.items()
            for k, v in (("tokens", tokens), ("hidden", hidden), ("loss_mask", loss_mask))}

  if cfg.data == "markov":  # Cheap to sample: not cached.
    return build()
  key = distill.data_key(cfg, SMOLLM2_DATA_FIELDS, model_config=trunk.config, data=cfg.data)
  return distill.cached_arrays(os.path.join(workdir, f"mtp_data_{key}.npz"), build, label="MTP",
                               unit="sequences")


# ----------------------------------------------------------------------------------- loss


def targets(tokens, loss_mask, *, config: mtp_lib.MTPConfig):
  """``(target int32[D, B, T], weight bool[D, B, T])`` aligned with ``sequence_forward``'s
  outputs: Gloeckle head ``k + 1`` at ``t`` targets ``x_{t+k+1}``; DeepSeek module ``k`` at
  ``t >= k`` targets ``x_{t+1}``; the weight is the target's ``loss_mask``."""
  b, t = tokens.shape
  tgt, w = [], []
  pos = jnp.arange(t)
  for k in range(1, config.depth + 1):
    shift = k + 1 if config.kind == "gloeckle" else 1
    tk = jnp.pad(tokens[:, shift:], ((0, 0), (0, shift)))
    wk = jnp.pad(loss_mask[:, shift:], ((0, 0), (0, shift)))
    if config.kind == "deepseek":
      wk = wk & (pos >= k)[None]
    tgt.append(tk)
    w.append(wk)
  return jnp.stack(tgt).astype(jnp.int32), jnp.stack(w)


def predictor_logits(params, hidden, tokens, trunk_params, *, config, trunk_config):
  """``float32[D, B, T, V]``: every predictor's logits, teacher-forced."""
  outs = mtp_lib.sequence_forward(params, hidden, tokens, trunk_params, config=config)
  return lm_head_logits(outs, trunk_params, base_config=trunk_config)


def mtp_loss(params, batch, trunk_params, *, config: mtp_lib.MTPConfig, trunk_config):
  """The loss of the module docstring on ``batch = (tokens, hidden, loss_mask)``.

  Returns ``(loss float32[], per-predictor mean CE float32[D])`` in nats.
  """
  tokens, hidden, loss_mask = batch
  logits = predictor_logits(params, hidden, tokens, trunk_params, config=config,
                            trunk_config=trunk_config)
  tgt, w = targets(tokens, loss_mask, config=config)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tgt[..., None], axis=-1)[..., 0]
  per = jnp.sum(nll * w, axis=(1, 2)) / jnp.maximum(jnp.sum(w, axis=(1, 2)), 1)
  loss = jnp.sum(per) if config.kind == "gloeckle" else jnp.mean(per)
  return loss, per


_logits_jit = jax.jit(predictor_logits, static_argnames=("config", "trunk_config"))


@jax.jit
def _probs(logits):
  return jax.nn.softmax(logits, axis=-1)


def _batched_logits(params, data, split, trunk_params, *, config, trunk_config,
                    batch_size: int = 8):
  arrays = [data[f"{split}_tokens"], data[f"{split}_hidden"]]
  for i, n, (t, h) in distill.padded_batches(arrays, batch_size):
    yield i, n, _logits_jit(params, jnp.asarray(h), jnp.asarray(t), trunk_params,
                            config=config, trunk_config=trunk_config)


def evaluate(params, data, trunk_params, *, config: mtp_lib.MTPConfig, trunk_config,
             split: str = "valid") -> dict[str, float]:
  """Per-predictor CE and top-1 accuracy, and the mean accepted length of a greedy chain.

  ``pred<k>_top1`` is the teacher-forced top-1 accuracy of the depth-``k`` draft (its greedy
  acceptance probability given correct earlier drafts); ``chain_accept_len`` =
  ``1 + E[max{m : drafts 1..m right}]`` over the nodes a chain could start at (a missing target
  ends the chain), the tokens per target forward of a greedy chain drafter on this data.
  """
  d = config.depth
  ce, hits, weights = [], [], []
  for i, n, logits in _batched_logits(params, data, split, trunk_params, config=config,
                                      trunk_config=trunk_config):
    tokens = jnp.asarray(data[f"{split}_tokens"][i:i + n])
    mask = jnp.asarray(data[f"{split}_loss_mask"][i:i + n])
    tgt, w = targets(tokens, mask, config=config)
    lg = logits[:, :n]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(lg, -1), tgt[..., None], -1)[..., 0]
    ce.append(np.asarray(nll))
    hits.append(np.asarray(jnp.argmax(lg, -1) == tgt))
    weights.append(np.asarray(w))
  ce, hits, w = (np.concatenate(x, axis=1) for x in (ce, hits, weights))  # [D, N, T]
  out = {}
  for k in range(d):
    out[f"pred{k + 1}_ce"] = float((ce[k] * w[k]).sum() / max(w[k].sum(), 1))
    out[f"pred{k + 1}_top1"] = float((hits[k] & w[k]).sum() / max(w[k].sum(), 1))
  # Align every depth on the node t the chain starts from (DeepSeek module k sits at t + k).
  t_len = hits.shape[-1]
  aligned = np.zeros((d, hits.shape[1], t_len), bool)
  ok = np.zeros_like(aligned)
  for k in range(d):
    s = k + 1 if config.kind == "deepseek" else 0
    aligned[k, :, :t_len - s] = hits[k][:, s:] & w[k][:, s:]
    ok[k, :, :t_len - s] = w[k][:, s:]
  start = ok[0]
  run = np.cumprod(aligned, axis=0).sum(axis=0)
  out["chain_accept_len"] = float(1.0 + run[start].mean()) if start.any() else 1.0
  return out


def markov_kl(params, data, chain: MarkovChain, trunk_params, *, config: mtp_lib.MTPConfig,
              trunk_config, split: str = "train") -> dict[str, np.ndarray]:
  """The learned conditionals against the analytic ones on Markov data.

  For every predictor ``k`` and state ``x``: ``q_k(x)`` = the mean of its predicted law over the
  positions ``t`` of ``split`` with ``x_t = x`` (where it has a target), ``n_k(x)`` their count,
  and ``KL(analytic || q_k(x))`` with analytic ``P^{k+1}[x]`` (Gloeckle head ``k + 1``) or
  ``P[x]`` (DeepSeek module ``k``). At the training optimum the mean of the predicted laws equals
  the empirical conditional, whatever context the blocks attend to. Returns ``{"q": [D, V, V],
  "analytic": [D, V, V], "count": [D, V], "kl": [D, V]}``.
  """
  v, d = chain.num_states, config.depth
  sums = np.zeros((d, v, v))
  counts = np.zeros((d, v))
  for i, n, logits in _batched_logits(params, data, split, trunk_params, config=config,
                                      trunk_config=trunk_config):
    tokens = jnp.asarray(data[f"{split}_tokens"][i:i + n])
    _, w = targets(tokens, jnp.asarray(data[f"{split}_loss_mask"][i:i + n]), config=config)
    probs = np.asarray(_probs(logits[:, :n]), np.float64)  # [D, n, T, V]
    x = np.asarray(tokens)
    w = np.asarray(w)
    for k in range(d):
      np.add.at(sums[k], x[w[k]], probs[k][w[k]])
      np.add.at(counts[k], x[w[k]], 1)
  q = sums / np.maximum(counts, 1)[..., None]
  powers = [np.linalg.matrix_power(chain.transition, k + 2 if config.kind == "gloeckle" else 1)
            for k in range(d)]
  analytic = np.stack(powers)
  kl = np.sum(np.where(analytic > 0, analytic * (np.log(np.maximum(analytic, 1e-300))
                                                 - np.log(np.maximum(q, 1e-300))), 0.0), -1)
  return {"q": q, "analytic": analytic, "count": counts, "kl": kl}


# --------------------------------------------------------------------------------- training


def train_predictors(data, trunk_params, trunk_config, cfg: MTPTrainConfig, *,
                     workdir: str | None = None):
  """Trains the predictors on ``data`` (:func:`load_or_build_data`) with the trainer core.

  ``num_epochs * max(N // batch_size, 1)`` steps; step ``k`` trains on the sequences
  ``corpus.batch_indices(N, step=k, ...)``. ``workdir``: checkpoints (one per epoch; a rerun
  resumes) and ``metrics.jsonl``; ``None`` keeps everything in memory. Returns
  ``(MTPConfig, params, per-epoch logs)``.
  """
  mcfg = cfg.model_config(trunk_config)
  loop = distill.epoch_loop(len(data["train_tokens"]), cfg)

  def loss_fn(params, batch, rng, trunk_params):
    del rng  # Deterministic.
    loss, per = mtp_loss(params, batch, trunk_params, config=mcfg, trunk_config=trunk_config)
    return loss, {f"pred{k + 1}_ce": per[k] for k in range(mcfg.depth)}

  result = distill.train_params(
      cfg, lambda key: mtp_lib.init_params(key, mcfg), loss_fn,
      tuple(data[f"train_{k}"] for k in ("tokens", "hidden", "loss_mask")), loop=loop,
      workdir=workdir,
      metadata={"mtp_config": dataclasses.asdict(mcfg), "train_config": cfg.to_dict()},
      frozen=(trunk_params,), desc=f"train {mcfg.kind} MTP")
  return mcfg, result.state.params, distill.epoch_logs(result.history, loop)


# ------------------------------------------------------------------------------ checkpoints


PARAM_DTYPES = ("float32", "bfloat16")


def save_params(directory: str, params, config: mtp_lib.MTPConfig, *,
                metadata: dict[str, Any] | None = None, param_dtype: str = "float32") -> str:
  """Exports the predictors' parameters alone (orbax, atomically) as step 0 of ``directory``
  (replaced), stored as ``param_dtype`` (``"bfloat16"`` halves the size of a committed asset;
  :func:`load_params` casts back to float32). Returns the step directory. Raises
  ``ConfigError`` for another ``param_dtype``."""
  check_choice("param_dtype", param_dtype, PARAM_DTYPES)
  if os.path.isdir(directory):
    shutil.rmtree(directory)
  return distill.save_params(directory, params, step=0, param_dtype=param_dtype,
                             metadata={"mtp_config": dataclasses.asdict(config),
                                       **(metadata or {})})


def _read_config(meta) -> mtp_lib.MTPConfig:
  check_choice("param_dtype", meta.get("param_dtype", "float32"), PARAM_DTYPES)
  return mtp_lib.MTPConfig(**meta["mtp_config"])


def load_params(directory: str) -> tuple[mtp_lib.MTPConfig, Any, dict[str, Any]]:
  """``(config, params, metadata)`` of the latest checkpoint under ``directory`` (a training
  run's ``checkpoints/`` or a :func:`save_params` export); ``params`` are float32 whatever
  dtype they were stored in (metadata ``param_dtype``, float32 when absent). Raises
  :class:`~partext_jax.training.checkpoint.CheckpointError` naming the directory when it holds
  no valid checkpoint."""
  return distill.load_params(
      directory, name="MTP", fields="mtp_config / param_dtype", read_config=_read_config,
      init_params=lambda config: mtp_lib.init_params(jax.random.key(0), config))


def asset_directory(kind: str) -> str:
  """Where the committed SmolLM2 predictors live: ``partext_jax/assets/mtp_smollm2_<kind>``."""
  check_choice("kind", kind, mtp_lib.MTP_KINDS)
  return distill.asset_directory(f"mtp_smollm2_{kind}")


# ------------------------------------------------------------------------------- entry point


def train_and_evaluate(config: Any, workdir: str, *, bundle=None) -> dict[str, Any]:
  """Builds the data (cached), trains (resumable), evaluates and writes ``mtp_report.json``.

  Args:
    config: a ``ConfigDict`` (``configs/mtp.py`` / ``configs/mtp_markov.py``) or
      :class:`MTPTrainConfig`.
    workdir: data cache, ``checkpoints/``, ``metrics.jsonl`` / ``metrics.png``, the report.
    bundle: the SmolLM2 ``ModelBundle`` (default: loaded when ``data == "smollm2"``).
  Returns:
    the report: validation metrics of the trained and untrained predictors, per-epoch losses,
    timings, sizes, the final checkpoint's directory; markov: ``markov_kl`` (per predictor, the
    largest KL to the analytic law over states, and the smallest state count).
  Raises:
    ConfigError: an invalid config.
  """
  cfg = parse_config(config)
  start = time.perf_counter()
  if cfg.data == "markov":
    chain = markov_chain(cfg)
    trunk, trunk_params = markov_trunk(chain)
  else:
    bundle = pretrained.load_bundle() if bundle is None else bundle
    trunk, trunk_params = bundle.model, bundle.params
  data = load_or_build_data(cfg, workdir, trunk=trunk, trunk_params=trunk_params, bundle=bundle)
  t_data = time.perf_counter() - start
  mcfg, params, logs = train_predictors(data, trunk_params, trunk.config, cfg, workdir=workdir)
  t_train = time.perf_counter() - start - t_data
  distill.plot_cross_entropies(workdir, key="pred", label="predictor", count=mcfg.depth)
  ev = lambda p: evaluate(p, data, trunk_params, config=mcfg,  # noqa: E731
                          trunk_config=trunk.config)
  steps = distill.epoch_loop(len(data["train_tokens"]), cfg).num_steps
  report = {"config": cfg.to_dict(), "mtp_config": dataclasses.asdict(mcfg),
            "train_sequences": int(len(data["train_tokens"])), "valid": ev(params),
            "valid_untrained": ev(mtp_lib.init_params(jax.random.key(cfg.seed), mcfg)),
            "epochs": logs, "seconds_data": t_data, "seconds_train": t_train,
            "params": mcfg.num_params, "bytes": 4 * mcfg.num_params,
            "checkpoint": distill.checkpoint_path(workdir, steps)}
  if cfg.data == "markov":
    kl = markov_kl(params, data, chain, trunk_params, config=mcfg, trunk_config=trunk.config)
    report["markov_kl"] = {"max_kl": kl["kl"].max(axis=1).tolist(),
                           "min_count": kl["count"].min(axis=1).tolist()}
  distill.write_report(workdir, "mtp_report.json", report)
  return report


def export_params(report: dict[str, Any], destination: str, *, command: str,
                  depth: int | None = None, param_dtype: str = "bfloat16") -> str:
  """Exports the predictors of a finished run (:func:`train_and_evaluate`'s ``report``) alone to
  ``destination``: the first ``depth`` of them (default all; a DeepSeek module chain or a set of
  Gloeckle heads stays valid when cut), stored as ``param_dtype``, with the train config, the
  run's validation metrics of the kept predictors (measured in float32; ``chain_accept_len``
  only when nothing is cut) and ``command`` as metadata. Raises ``ConfigError`` for ``depth``
  outside ``1 .. D``."""
  config, params, meta = load_params(os.path.dirname(report["checkpoint"]))
  depth = config.depth if depth is None else depth
  if not isinstance(depth, int) or not 1 <= depth <= config.depth:
    raise ConfigError(f"depth={depth!r} must be an int in 1..{config.depth} (the run's depth)")
  keep = [f"pred{k}_" for k in range(1, depth + 1)]
  valid = {k: v for k, v in report["valid"].items()
           if any(k.startswith(p) for p in keep) or depth == config.depth}
  save_params(destination, {f"layers_{k}": params[f"layers_{k}"] for k in range(depth)},
              dataclasses.replace(config, depth=depth), param_dtype=param_dtype, metadata={
                  "train_config": meta.get("train_config"), "valid": valid, "command": command,
                  "trained_depth": config.depth})
  return destination


def format_report(report: dict[str, Any]) -> str:
  """A markdown table of the per-predictor validation metrics (trained vs untrained)."""
  d = report["mtp_config"]["depth"]
  v, u = report["valid"], report["valid_untrained"]
  lines = ["| predictor (draft depth) | top-1 | CE (nats) | top-1 untrained |", "|---|---|---|---|"]
  for k in range(1, d + 1):
    lines.append(f"| {k} | {v[f'pred{k}_top1']:.3f} | {v[f'pred{k}_ce']:.2f} | "
                 f"{u[f'pred{k}_top1']:.3f} |")
  lines.append(f"\nGreedy chain mean accepted length (root + drafts): {v['chain_accept_len']:.2f} "
               f"(untrained {u['chain_accept_len']:.2f}).")
  if "markov_kl" in report:
    lines.append(f"Markov: largest KL(analytic || learned) per predictor "
                 f"{report['markov_kl']['max_kl']}.")
  return "\n".join(lines)
