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
verification (given the earlier guesses were). The hidden states are computed once (one forward
pass over prompt + answer) and cached in the workdir as ``medusa_data_<hash>.npz``
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

import ast
import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from partext_jax import pretrained
from partext_jax.ar import sampling as ar
from partext_jax.data import corpus
from partext_jax.models import medusa as medusa_heads
from partext_jax.training import checkpoint as checkpoint_lib
from partext_jax.training import core
from partext_jax.training.config import (ConfigError, LoopConfig, OptimizerConfig,
                                         check_positive, parse_dataclass)

DATA_FIELDS = ("num_prompts", "max_new_tokens", "gen_batch_size", "num_heads")

MedusaConfigError = ConfigError  # The error of an invalid Medusa training config.


@dataclasses.dataclass(frozen=True)
class MedusaTrainConfig(OptimizerConfig):
  """Medusa training hyper-parameters (``configs/medusa.py``).

  The optimiser fields of :class:`~partext_jax.training.config.OptimizerConfig` (here: warmup
  20 steps, cosine decay to 10%, no weight decay, AdamW's default betas), plus:

  Attributes:
    num_heads: ``K``; head ``k`` guesses the token ``k`` places after the target's next one.
    num_layers: residual SiLU blocks per head (Medusa uses 1).
    num_prompts: chat prompts answered by the frozen model (half general topics, half stdlib).
    max_new_tokens: longest greedy answer per prompt (stops earlier at EOS).
    gen_batch_size: prompts answered per batched greedy ``generate`` call.
    validation_fraction: fraction of prompts (by a stable hash of the text) held out.
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
  num_prompts: int = 128
  max_new_tokens: int = 128
  gen_batch_size: int = 32
  validation_fraction: float = 0.125
  batch_size: int = 256
  num_epochs: int = 3
  head_decay: float = 0.8
  topk_eval: int = 4
  seed: int = 0
  progress_bar: bool = True

  def __post_init__(self):
    self.check_optimizer()
    check_positive(self, "num_prompts", "max_new_tokens", "gen_batch_size", "batch_size",
                   "num_epochs", "topk_eval")
    try:  # MedusaConfig's own checks of num_heads / num_layers.
      self.heads_config(hidden_size=1)
    except ValueError as e:
      raise ConfigError(str(e)) from e
    if not 0.0 < self.validation_fraction < 1.0:
      raise ConfigError(f"validation_fraction={self.validation_fraction} must be in (0, 1)")
    if not 0.0 < self.head_decay <= 1.0:
      raise ConfigError(f"head_decay={self.head_decay} must be in (0, 1]")

  def heads_config(self, hidden_size: int) -> medusa_heads.MedusaConfig:
    """The heads' :class:`~partext_jax.models.medusa.MedusaConfig` on a base of this width."""
    return medusa_heads.MedusaConfig(num_heads=self.num_heads, hidden_size=hidden_size,
                                     num_layers=self.num_layers)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def parse_config(config: Any) -> MedusaTrainConfig:
  """A ``ConfigDict`` / mapping (or the config itself) -> :class:`MedusaTrainConfig`.

  Strict, as :func:`partext_jax.training.config.parse_dataclass`: unknown keys, wrong types and
  invalid values raise ``ConfigError`` (= :data:`MedusaConfigError`).
  """
  return parse_dataclass(MedusaTrainConfig, config, where="config")


# ----------------------------------------------------------------------------------- prompts

_TOPICS = (
    "photosynthesis", "the water cycle", "black holes", "the French Revolution", "compound "
    "interest", "machine learning", "the immune system", "volcanoes", "the Roman Empire",
    "climate change", "prime numbers", "the printing press", "electric cars", "honey bees",
    "the moon landing", "recycling", "earthquakes", "the internet", "vaccines", "coffee",
    "the Great Wall of China", "renewable energy", "sleep", "the stock market", "DNA",
    "rainbows", "the Olympic Games", "gravity", "chess", "healthy breakfasts", "sorting "
    "algorithms", "recursion", "version control with git", "unit testing", "hash tables",
    "the Pythagorean theorem", "music theory", "public speaking", "time management", "bread "
    "baking")
_TEMPLATES = (
    "What is {}?", "Explain {} to a ten-year-old.", "Give me three facts about {}.",
    "Write a short paragraph about {}.", "Why is {} important?",
    "What are the pros and cons of {}?")
_CODE_TEMPLATES = (
    "What does the Python function `{mod}.{name}` do?",
    "Write a short Python example that uses `{mod}.{name}`.",
    "Explain this Python docstring in plain words: \"{doc}\"")


def _stdlib_functions(limit: int) -> list[tuple[str, str, str]]:
  """``(module, function, first docstring line)`` from top-level stdlib modules, sorted."""
  root = corpus.stdlib_root()
  names = sorted(n for n in os.listdir(root) if n.endswith(".py") and not n.startswith("_"))
  out = []
  for fname in names:
    try:
      with open(os.path.join(root, fname), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError):
      continue
    for node in tree.body:
      if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
        doc = (ast.get_docstring(node) or "").strip().splitlines()
        if doc and 20 <= len(doc[0]) <= 120:
          out.append((fname[:-3], node.name, doc[0]))
          break  # one function per module: spread over modules
    if len(out) >= limit:
      break
  return out


def build_prompts(num_prompts: int) -> list[str]:
  """``num_prompts`` distinct chat prompts, deterministic (half general topics, half stdlib).

  Raises ``ConfigError`` if ``num_prompts`` exceeds the prompts the templates make.
  """
  general = [t.format(topic) for topic in _TOPICS for t in _TEMPLATES]
  code = [t.format(mod=m, name=n, doc=d) for (m, n, d) in _stdlib_functions(200)
          for t in _CODE_TEMPLATES]
  # Interleave the two pools in a stable hashed order.
  general.sort(key=lambda s: corpus.stable_hash("p:" + s))
  code.sort(key=lambda s: corpus.stable_hash("p:" + s))
  prompts = []
  for a, b in zip(general, code):
    prompts += [a, b]
  if num_prompts > len(prompts):
    raise MedusaConfigError(f"num_prompts={num_prompts} exceeds the {len(prompts)} available")
  return prompts[:num_prompts]


def is_validation_prompt(prompt: str, *, validation_fraction: float) -> bool:
  """Whether ``prompt`` is held out: a stable hash of the text below ``validation_fraction`` (in
  [0, 1]), so the split does not depend on the prompt list's order.
  """
  return corpus.stable_hash("medusa-split:" + prompt) / 2.0**64 < validation_fraction


# ------------------------------------------------------------------------- data (self-distill)


def self_distill(bundle, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int,
                 progress: bool = False) -> list[tuple[list[int], list[int]]]:
  """``[(prompt_ids, answer_ids)]``: the target's greedy answers (EOS included, if emitted)."""
  model, params, tok = bundle
  ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}]))
         for p in prompts]
  out = []
  batches = range(0, len(ids), batch_size)
  if progress:
    batches = tqdm.tqdm(batches, desc="self-distill (greedy answers)", unit="batch")
  for i in batches:
    chunk = ids[i:i + batch_size]
    # Pad the last batch with copies so every batch has one shape (one compilation).
    padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
    toks, info = ar.generate(jax.random.key(0), model, params, padded,
                             max_new_tokens=max_new_tokens, eos_id=tok.eos_id)
    for row in ar.trim(toks, info)[:len(chunk)]:
      out.append(row)
  return list(zip(ids, out))


def _forward_hidden(model, params, tokens):
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  _, _, hidden = model(params, tokens, positions, None, None, None, return_hidden=True)
  return hidden


_forward_hidden_jit = jax.jit(_forward_hidden, static_argnames=("model",))


def hidden_and_targets(model, params, pairs, *, num_heads: int, batch_size: int = 8
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Stacks ``(hidden float32[N, E], targets int32[N, K])`` over every answer position.

  Row ``j`` of an answer ``y`` (length ``n``) holds ``h_j`` (the hidden state at prompt position
  ``P - 1 + j``) and ``targets[j, k - 1] = y_{j+k}`` for ``j + k < n``, else ``-1``.
  """
  lengths = [len(p) + len(a) for p, a in pairs]
  seq_len = corpus_bucket(max(lengths))
  hs, ts = [], []
  pad = 0
  for i in range(0, len(pairs), batch_size):
    chunk = pairs[i:i + batch_size]
    tokens = np.full((batch_size, seq_len), pad, np.int32)
    for r, (p, a) in enumerate(chunk):
      row = list(p) + list(a)
      tokens[r, :len(row)] = row  # right padding: causal attention never sees it
    hidden = np.asarray(_forward_hidden_jit(model, params, jnp.asarray(tokens)))
    for r, (p, a) in enumerate(chunk):
      n = len(a)
      if n < 2:
        continue
      hs.append(hidden[r, len(p) - 1:len(p) - 1 + n])
      tgt = np.full((n, num_heads), -1, np.int32)
      for k in range(1, num_heads + 1):
        tgt[:n - k, k - 1] = a[k:]
      ts.append(tgt)
  return np.concatenate(hs).astype(np.float32), np.concatenate(ts)


def corpus_bucket(n: int) -> int:
  """Next multiple of 64 (few distinct shapes, little padding)."""
  return -(-n // 64) * 64


def _data_key(cfg: MedusaTrainConfig, model_config) -> str:
  blob = json.dumps({"fields": {f: getattr(cfg, f) for f in DATA_FIELDS},
                     "validation_fraction": cfg.validation_fraction,
                     "model": dataclasses.asdict(model_config), "version": 1}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_or_build_data(bundle, cfg: MedusaTrainConfig, workdir: str) -> dict[str, np.ndarray]:
  """The cached arrays ``{train,valid}_{hidden,targets}`` (built and saved on the first call).

  ``bundle``: ``(model, params, tokenizer)`` of the frozen target. ``*_hidden`` float32[N, E],
  ``*_targets`` int32[N, K] (:func:`hidden_and_targets`). Raises ``ConfigError`` if a split gets
  no prompt.
  """
  model, params, _ = bundle
  path = os.path.join(workdir, f"medusa_data_{_data_key(cfg, model.config)}.npz")
  if os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - a truncated cache: say which file, rebuild.
      print(f"cached data {path!r} is unreadable ({type(e).__name__}: {e}); rebuilding")
  prompts = build_prompts(cfg.num_prompts)
  start = time.perf_counter()
  pairs = self_distill(bundle, prompts, max_new_tokens=cfg.max_new_tokens,
                       batch_size=cfg.gen_batch_size, progress=cfg.progress_bar)
  valid = [is_validation_prompt(p, validation_fraction=cfg.validation_fraction) for p in prompts]
  data = {}
  for split, keep in (("train", [not v for v in valid]), ("valid", valid)):
    sel = [pair for pair, k in zip(pairs, keep) if k]
    if not sel:
      raise MedusaConfigError(f"the {split} split has no prompts: change num_prompts or "
                              "validation_fraction")
    h, t = hidden_and_targets(model, params, sel, num_heads=cfg.num_heads)
    data[f"{split}_hidden"], data[f"{split}_targets"] = h, t
  os.makedirs(workdir, exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **data)
  os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache under `path`
  print(f"built Medusa data in {time.perf_counter() - start:.0f} s: "
        f"{len(data['train_hidden'])} train / {len(data['valid_hidden'])} validation positions "
        f"-> {path}")
  return data


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
  n = len(hidden)
  for i in range(0, n, batch_size):
    h = np.zeros((batch_size, hidden.shape[1]), np.float32)
    t = np.full((batch_size, targets.shape[1]), -1, np.int32)
    h[:min(batch_size, n - i)] = hidden[i:i + batch_size]
    t[:min(batch_size, n - i)] = targets[i:i + batch_size]
    a, b, c = (np.asarray(x) for x in stats(jnp.asarray(h), jnp.asarray(t)))
    hit1.append(a.T[:n - i])
    hitk.append(b.T[:n - i])
    nll.append(c.T[:n - i])
  hit1, hitk, nll = (np.concatenate(x) for x in (hit1, hitk, nll))  # [N, K]
  valid = targets >= 0
  out = {"positions": int(n)}
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
  hidden, targets = data["train_hidden"], data["train_targets"]
  n = len(hidden)
  steps_per_epoch = max(n // cfg.batch_size, 1)
  loop = LoopConfig(num_steps=steps_per_epoch * cfg.num_epochs, log_every=steps_per_epoch,
                    eval_every=steps_per_epoch * cfg.num_epochs,
                    checkpoint_every=steps_per_epoch, keep_checkpoints=1,
                    progress_bar=cfg.progress_bar)
  optimizer = core.make_optimizer(cfg, loop.num_steps)

  def loss_fn(params, batch, rng, base_params):
    del rng  # Deterministic.
    loss, per_head = medusa_loss(params, *batch, base_params, config=mcfg,
                                 base_config=base_config, head_decay=cfg.head_decay)
    return loss, {f"head{k + 1}_ce": per_head[k] for k in range(mcfg.num_heads)}

  def batch_at(step):
    idx = corpus.batch_indices(n, step=step, batch_size=cfg.batch_size, seed=cfg.seed)
    return jnp.asarray(hidden[idx]), jnp.asarray(targets[idx])

  state = core.init_train_state(jax.random.PRNGKey(cfg.seed),
                                lambda key: medusa_heads.init_params(key, mcfg), optimizer,
                                ema=False)
  result = core.train_loop(
      state, core.make_train_step(loss_fn, optimizer), batch_at, loop=loop,
      files=None if workdir is None else core.RunFiles(workdir),
      metadata={"medusa_config": dataclasses.asdict(mcfg), "train_config": cfg.to_dict()},
      frozen=(base_params,), learning_rate=core.learning_rate_schedule(cfg, loop.num_steps),
      desc="train Medusa heads")
  logs = [{"epoch": r["step"] // steps_per_epoch, "train_loss": r["train/loss"]}
          for r in result.history if "train/loss" in r]
  return mcfg, result.state.params, logs


# ------------------------------------------------------------------------------ checkpoints


def save_heads(directory: str, params, config: medusa_heads.MedusaConfig, *, step: int,
               metadata: dict[str, Any] | None = None) -> str:
  """Exports the head parameters alone (atomically, orbax) under ``directory/<step>``.

  The format of the committed asset: a train state whose optimiser state and EMA are empty.
  Returns the step directory.
  """
  state = checkpoint_lib.TrainState(step=jnp.int32(step), params=params, ema_params={},
                                    opt_state={}, rng=jnp.zeros((2,), jnp.uint32))
  meta = {"medusa_config": dataclasses.asdict(config), **(metadata or {})}
  with checkpoint_lib.Checkpointer(directory, keep=1) as ckpt:
    ckpt.save(state, metadata=meta)
    return ckpt.step_directory(step)


def load_heads(directory: str) -> tuple[medusa_heads.MedusaConfig, Any, dict[str, Any]]:
  """``(config, params, metadata)`` of the latest checkpoint under ``directory``.

  Reads a training checkpoint (``<workdir>/checkpoints``) and a :func:`save_heads` export alike.
  Raises :class:`partext_jax.training.checkpoint.CheckpointError` naming the directory when it
  holds no checkpoint or a truncated / corrupt one.
  """
  if not os.path.isdir(directory):
    raise checkpoint_lib.CheckpointError(f"no Medusa checkpoint directory {directory!r}")
  with checkpoint_lib.Checkpointer(directory, read_only=True) as ckpt:
    meta = ckpt.restore_metadata()
    try:
      config = medusa_heads.MedusaConfig(**meta["medusa_config"])
    except (KeyError, TypeError, ValueError) as e:
      raise checkpoint_lib.CheckpointError(
          f"checkpoint under {directory!r} has no valid medusa_config metadata: {e}") from e
    params, meta = ckpt.restore_params(
        jax.eval_shape(lambda: medusa_heads.init_params(jax.random.key(0), config)))
  return config, params, meta


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
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                      "medusa_smollm2")


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
  start = time.perf_counter()
  data = load_or_build_data(bundle, cfg, workdir)
  t_data = time.perf_counter() - start
  mcfg, params, logs = train_heads(data, base_params, model.config, cfg, workdir=workdir)
  t_train = time.perf_counter() - start - t_data
  files = core.RunFiles(workdir)
  core.plot_metrics(files.metrics_path, files.plot_path,
                    curves=[(f"train/head{k}_ce", f"head {k} CE (train)")
                            for k in range(1, mcfg.num_heads + 1)], ylabel="nats")
  evaluate = lambda p: evaluate_heads(  # noqa: E731
      p, base_params, data["valid_hidden"], data["valid_targets"], config=mcfg,
      base_config=model.config, topk=cfg.topk_eval)
  step = max(len(data["train_hidden"]) // cfg.batch_size, 1) * cfg.num_epochs
  report = {"config": cfg.to_dict(), "train_positions": int(len(data["train_hidden"])),
            "valid": evaluate(params),
            "valid_untrained": evaluate(medusa_heads.init_params(jax.random.key(0), mcfg)),
            "epochs": logs, "seconds_data": t_data, "seconds_train": t_train,
            "head_params": mcfg.num_params, "head_bytes": 4 * mcfg.num_params,
            "checkpoint": os.path.join(files.checkpoint_dir, str(step))}
  with open(os.path.join(workdir, "medusa_report.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
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

