"""Self-distillation data and the run machinery shared by the drafter trainers.

The Medusa heads (:mod:`partext_jax.training.medusa`), the EAGLE feature head
(:mod:`~partext_jax.training.eagle`), the MTP predictors (:mod:`~partext_jax.training.mtp`) and
the diffusion drafter (:mod:`~partext_jax.training.diffusion_drafter`) all learn to guess what a
frozen target model would say next, from that model's own outputs: Medusa-2's self-distillation
(Cai et al. 2024, "Medusa"), which EAGLE (Li et al. 2024) also trains on. Each trainer keeps its
loss, evaluation and report; this module holds what they share
(``docs/algorithms.md#drafters``, Medusa training):

* **Prompts** (:func:`build_prompts`): deterministic chat prompts from fixed templates, half on
  general topics, half on functions of the Python standard library (name and first docstring
  line), interleaved in a stable hashed order. A prompt is held out for validation when a stable
  hash of its text falls below ``validation_fraction`` (:func:`is_validation_prompt`), so the
  split does not depend on the prompt list.
* **Teacher answers** (:func:`self_distill`, :func:`teacher_answers`): the frozen target's greedy
  answers (EOS included if emitted), batched ``gen_batch_size`` prompts per ``generate`` call.
* **Corpus rows** (:func:`corpus_rows`): consecutive token chunks of the embedded corpus (the
  standard library), extra training rows for the EAGLE head and the diffusion drafter.
* **Frozen features** (:func:`hidden_states`, :func:`hidden_and_greedy`): the target's final
  hidden states (and greedy next tokens) over right-padded rows in fixed-shape batches; causal
  attention means the padding never changes a real position.
* **Cache** (:func:`data_key`, :func:`cached_arrays`): the arrays of a trainer's data set, built
  once and saved in the workdir as ``<prefix>_<hash>.npz`` (``hash``: the data fields of the
  config, and the target's config where the arrays depend on it), written atomically; an
  unreadable file is rebuilt.
* **Loop** (:func:`epoch_loop`, :func:`step_loop`, :func:`train_params`): fresh parameters
  trained by the trainer core (:mod:`partext_jax.training.core`: AdamW, warmup + cosine,
  resumable checkpoints, ``metrics.jsonl``) on seeded minibatches of the cached arrays.
* **Exports** (:func:`save_params`, :func:`load_params`, :func:`asset_directory`): a drafter's
  parameters alone (no optimiser state), optionally in bfloat16, with its configs as checkpoint
  metadata: the format of the committed assets in ``partext_jax/assets/``.

The configs these functions read (``cfg``) are the trainers' frozen dataclasses, subclasses of
:class:`DistillConfig` (the optimiser and teacher-data fields and their checks); each function
names the fields it reads.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence, Sized

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from partext_jax.ar import sampling as ar
from partext_jax.data import corpus
from partext_jax.training import checkpoint as checkpoint_lib
from partext_jax.training import core
from partext_jax.training.config import (ConfigError, LoopConfig, OptimizerConfig,
                                         check_positive)

Pair = tuple[list[int], list[int]]  # (prompt token ids, answer token ids)

# ------------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class DistillConfig(OptimizerConfig):
  """The fields every drafter trainer's config shares (each trainer's config subclasses it).

  The optimiser fields of :class:`~partext_jax.training.config.OptimizerConfig`, plus the
  teacher data (:func:`teacher_answers`; a trainer's config adds ``seed`` and ``progress_bar``):

  Attributes:
    num_prompts: chat prompts answered greedily by the frozen target (:func:`build_prompts`:
      half general topics, half stdlib).
    max_new_tokens: longest greedy answer per prompt (stops earlier at EOS).
    gen_batch_size: prompts answered per batched greedy ``generate`` call.
    validation_fraction: fraction of the prompts held out (by a stable hash of the text,
      :func:`is_validation_prompt`).
  """

  num_prompts: int = 128
  max_new_tokens: int = 128
  gen_batch_size: int = 32
  validation_fraction: float = 0.125

  def check_distill(self) -> None:
    """Raises :class:`~partext_jax.training.config.ConfigError` for a value outside its range
    (the optimiser's and these fields'); a subclass's ``__post_init__`` calls it first."""
    self.check_optimizer()
    check_positive(self, "num_prompts", "max_new_tokens", "gen_batch_size")
    if not 0.0 < self.validation_fraction < 1.0:
      raise ConfigError(f"validation_fraction={self.validation_fraction} must be in (0, 1)")

  def __post_init__(self):
    self.check_distill()

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


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
    raise ConfigError(f"num_prompts={num_prompts} exceeds the {len(prompts)} available")
  return prompts[:num_prompts]


def is_validation_prompt(prompt: str, *, validation_fraction: float) -> bool:
  """Whether ``prompt`` is held out: a stable hash of the text below ``validation_fraction`` (in
  [0, 1]), so the split does not depend on the prompt list's order.
  """
  return corpus.stable_hash("medusa-split:" + prompt) / 2.0**64 < validation_fraction


# ----------------------------------------------------------------------------- teacher answers


def self_distill(bundle, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int,
                 progress: bool = False) -> list[Pair]:
  """``[(prompt_ids, answer_ids)]``: the target's greedy answers (EOS included, if emitted).

  ``bundle``: ``(model, params, tokenizer)`` of the frozen target; each prompt is wrapped in its
  chat template; ``batch_size`` prompts per ``generate`` call (the last batch padded with copies:
  one compilation); ``progress`` shows a tqdm bar.
  """
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


def teacher_answers(bundle, cfg) -> tuple[list[Pair], np.ndarray]:
  """The target's greedy answers to :func:`build_prompts` and the held-out flags.

  Reads ``cfg``'s :class:`DistillConfig` fields and ``progress_bar``. Returns ``(pairs, held)``:
  :func:`self_distill`'s ``[(prompt_ids, answer_ids)]`` in prompt order and
  ``held bool[num_prompts]`` (:func:`is_validation_prompt`). Raises ``ConfigError`` as
  :func:`build_prompts`.
  """
  prompts = build_prompts(cfg.num_prompts)
  pairs = self_distill(bundle, prompts, max_new_tokens=cfg.max_new_tokens,
                       batch_size=cfg.gen_batch_size, progress=cfg.progress_bar)
  held = np.array([is_validation_prompt(p, validation_fraction=cfg.validation_fraction)
                   for p in prompts], bool)
  return pairs, held


def split(items: Sequence[Any], held: Sequence[bool]) -> dict[str, list[Any]]:
  """``{"train": items not held out, "valid": items held out}``, each in the given order."""
  return {"train": [x for x, h in zip(items, held) if not h],
          "valid": [x for x, h in zip(items, held) if h]}


def check_splits(splits: Mapping[str, Sized]) -> None:
  """Raises ``ConfigError`` naming the first empty split of ``splits`` (``{name: rows}``)."""
  for name, rows in splits.items():
    if not len(rows):
      raise ConfigError(f"the {name} split is empty: change the data size (num_prompts, ...) "
                        "or validation_fraction")


# ----------------------------------------------------------------------------------- corpus


def corpus_rows(tokenizer, *, num_rows: int, seq_len: int) -> list[list[int]]:
  """``num_rows`` consecutive ``seq_len``-token chunks of the standard-library corpus (fewer if
  the corpus is shorter), tokenised with ``tokenizer`` (the target's)."""
  if num_rows == 0:
    return []
  docs = corpus.load_stdlib(max_bytes=num_rows * seq_len * 8)
  ids = []
  for d in docs:
    ids.extend(tokenizer.encode(d.text))
    if len(ids) >= num_rows * seq_len:
      break
  return [ids[i * seq_len:(i + 1) * seq_len] for i in range(min(num_rows, len(ids) // seq_len))]


def corpus_bucket(n: int) -> int:
  """Next multiple of 64 (few distinct shapes, little padding)."""
  return -(-n // 64) * 64


def pack_rows(rows: Sequence[Sequence[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
  """``(tokens int32[N, width], lengths int32[N])``: rows cut to ``width``, right-padded with 0."""
  tokens = np.zeros((len(rows), width), np.int32)
  lengths = np.zeros((len(rows),), np.int32)
  for i, r in enumerate(rows):
    r = list(r)[:width]
    tokens[i, :len(r)] = r
    lengths[i] = len(r)
  return tokens, lengths


# --------------------------------------------------------------------------- frozen features


def padded_batches(arrays: Sequence[np.ndarray], batch_size: int):
  """Yields ``(start, n, batch)`` over the rows of ``arrays`` (one leading axis ``N``): ``batch``
  is the tuple of ``arrays[start : start + n]``, zero-padded to ``batch_size`` rows (one shape,
  one compilation)."""
  for i in range(0, len(arrays[0]), batch_size):
    chunk = [a[i:i + batch_size] for a in arrays]
    n = len(chunk[0])
    yield i, n, tuple(np.concatenate([c, np.zeros((batch_size - n,) + c.shape[1:], c.dtype)])
                      for c in chunk)


@functools.partial(jax.jit, static_argnames=("model", "greedy"))
def _forward(params, tokens, *, model, greedy: bool):
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  out = model(params, tokens, positions, None, None, None, return_hidden=True)
  if greedy:
    return out.hidden, jnp.argmax(out.logits, axis=-1).astype(jnp.int32)
  return (out.hidden,)


def _frozen_forward(model, params, tokens, *, batch_size: int, greedy: bool):
  outs = []
  for _, n, (batch,) in padded_batches([np.asarray(tokens, np.int32)], batch_size):
    outs.append([np.asarray(x)[:n] for x in _forward(params, jnp.asarray(batch), model=model,
                                                       greedy=greedy)])
  return [np.concatenate(xs) for xs in zip(*outs)]


def hidden_states(model, params, tokens, *, batch_size: int = 8) -> np.ndarray:
  """The frozen model's final hidden states ``float32[N, T, E]`` over ``tokens int32[N, T]``.

  ``model`` is a :class:`~partext_jax.base.CausalLM` (``return_hidden``); rows are right padded
  (causal attention: padding never changes a real position) and run ``batch_size`` at a time.
  """
  (hidden,) = _frozen_forward(model, params, tokens, batch_size=batch_size, greedy=False)
  return hidden.astype(np.float32)


def hidden_and_greedy(model, params, tokens, *, batch_size: int = 8
                      ) -> tuple[np.ndarray, np.ndarray]:
  """``(hidden float32[N, T, E], greedy int32[N, T])``: :func:`hidden_states` and the model's
  greedy next token (argmax of its logits) at every position."""
  hidden, greedy = _frozen_forward(model, params, tokens, batch_size=batch_size, greedy=True)
  return hidden.astype(np.float32), greedy


# ------------------------------------------------------------------------------------- cache


def data_key(cfg, fields: Sequence[str], *, model_config=None, **extra: Any) -> str:
  """12 hex digits of SHA-256 over the JSON of ``cfg``'s ``fields`` (and ``extra`` entries;
  ``model_config``, a dataclass, under ``"model"``): the name of a data cache."""
  blob = {"fields": {f: getattr(cfg, f) for f in fields}, "version": 1, **extra}
  if model_config is not None:
    blob["model"] = dataclasses.asdict(model_config)
  return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def cached_arrays(path: str, build: Callable[[], dict[str, np.ndarray]], *, label: str,
                  unit: str) -> dict[str, np.ndarray]:
  """The arrays saved at ``path`` (an ``.npz``), or ``build()``'s, then saved there atomically.

  ``build`` returns ``{train,valid}_<name>`` arrays whose leading axis counts the split's
  ``unit`` (rows, positions); a line ``built <label> data in <s> s: <n> train / <m> validation
  <unit> -> <path>`` is printed. A cache that cannot be read is reported and rebuilt.
  """
  if os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - a truncated cache: say which file, rebuild.
      print(f"cached data {path!r} is unreadable ({type(e).__name__}: {e}); rebuilding")
  start = time.perf_counter()
  data = build()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **data)
  os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache under `path`
  count = {s: len(next(v for k, v in data.items() if k.startswith(s + "_")))
           for s in ("train", "valid")}
  print(f"built {label} data in {time.perf_counter() - start:.0f} s: {count['train']} train / "
        f"{count['valid']} validation {unit} -> {path}")
  return data


# -------------------------------------------------------------------------------------- loop


def epoch_loop(num_examples: int, cfg) -> LoopConfig:
  """``cfg.num_epochs`` passes of ``max(num_examples // cfg.batch_size, 1)`` steps: one log line
  and one checkpoint (the newest kept) per epoch, ``cfg.progress_bar``."""
  steps_per_epoch = max(num_examples // cfg.batch_size, 1)
  return LoopConfig(num_steps=steps_per_epoch * cfg.num_epochs, log_every=steps_per_epoch,
                    eval_every=steps_per_epoch * cfg.num_epochs,
                    checkpoint_every=steps_per_epoch, keep_checkpoints=1,
                    progress_bar=cfg.progress_bar)


def epoch_logs(history: Sequence[dict[str, Any]], loop: LoopConfig) -> list[dict[str, float]]:
  """``[{"epoch", "train_loss"}]``: the ``train/loss`` lines of an :func:`epoch_loop` run."""
  return [{"epoch": r["step"] // loop.log_every, "train_loss": r["train/loss"]}
          for r in history if "train/loss" in r]


def step_loop(cfg, *, log_every: int) -> LoopConfig:
  """``cfg.num_steps`` steps, a log line every ``log_every`` (at most ``num_steps``), a
  checkpoint every ``cfg.checkpoint_every`` (the newest kept), ``cfg.progress_bar``."""
  return LoopConfig(num_steps=cfg.num_steps, log_every=min(log_every, cfg.num_steps),
                    eval_every=cfg.num_steps, checkpoint_every=cfg.checkpoint_every,
                    keep_checkpoints=1, progress_bar=cfg.progress_bar)


def train_params(cfg, init_params: Callable[[jax.Array], Any], loss_fn: core.LossFn,
                 arrays: Any, *, loop: LoopConfig, workdir: str | None,
                 metadata: dict[str, Any], frozen: Sequence[Any] = (),
                 desc: str = "train") -> core.LoopResult:
  """Trains fresh parameters on minibatches of ``arrays`` with the trainer core.

  Args:
    cfg: the optimiser fields (:class:`~partext_jax.training.config.OptimizerConfig`), plus
      ``batch_size`` and ``seed`` (the parameters' key ``PRNGKey(seed)`` and the data order).
    init_params: ``key -> params``.
    loss_fn: ``(params, batch, rng, *frozen) -> (loss, aux)``
      (:func:`partext_jax.training.core.make_train_step`).
    arrays: a numpy array or a tuple of them sharing the leading axis ``N``; step ``k``'s batch
      is the same structure at the rows ``corpus.batch_indices(N, step=k, batch_size, seed)``.
    loop: lengths and intervals (:func:`epoch_loop`, :func:`step_loop`).
    workdir: checkpoints (a rerun resumes) and ``metrics.jsonl`` go here; ``None`` keeps
      everything in memory.
    metadata: JSON saved with every checkpoint.
    frozen: extra traced arguments of every step (a frozen model's parameters).
    desc: the progress bar's label.
  Returns:
    the core's :class:`~partext_jax.training.core.LoopResult` (``state.params``, ``history``).
  Raises:
    partext_jax.training.checkpoint.CheckpointError: an unreadable latest checkpoint.
  """
  optimizer = core.make_optimizer(cfg, loop.num_steps)
  n = len(jax.tree.leaves(arrays)[0])

  def batch_at(step):
    idx = corpus.batch_indices(n, step=step, batch_size=cfg.batch_size, seed=cfg.seed)
    return jax.tree.map(lambda a: jnp.asarray(a[idx]), arrays)

  state = core.init_train_state(jax.random.PRNGKey(cfg.seed), init_params, optimizer, ema=False)
  return core.train_loop(
      state, core.make_train_step(loss_fn, optimizer), batch_at, loop=loop,
      files=None if workdir is None else core.RunFiles(workdir), metadata=metadata,
      frozen=frozen, learning_rate=core.learning_rate_schedule(cfg, loop.num_steps), desc=desc)


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
  """``(fn(*args, **kwargs), the wall time it took in seconds)``."""
  start = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - start


def plot_cross_entropies(workdir: str, *, key: str, label: str, count: int) -> None:
  """Draws the training curves ``train/<key><k>_ce`` (``k = 1 .. count``, in nats) of
  ``<workdir>/metrics.jsonl`` into ``<workdir>/metrics.png``, labelled ``<label> <k>``."""
  files = core.RunFiles(workdir)
  core.plot_metrics(files.metrics_path, files.plot_path,
                    curves=[(f"train/{key}{k}_ce", f"{label} {k} CE (train)")
                            for k in range(1, count + 1)], ylabel="nats")


def checkpoint_path(workdir: str, step: int) -> str:
  """``<workdir>/checkpoints/<step>``: a run's checkpoint of step ``step``."""
  return os.path.join(core.RunFiles(workdir).checkpoint_dir, str(step))


def write_report(workdir: str, name: str, report: dict[str, Any]) -> None:
  """Writes ``report`` as indented JSON to ``<workdir>/<name>``."""
  with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)


# ----------------------------------------------------------------------------------- exports


def save_params(directory: str, params: Any, *, step: int, metadata: dict[str, Any],
                param_dtype: str | None = None) -> str:
  """Exports ``params`` alone (orbax, atomically) as step ``step`` of ``directory``.

  The format of the committed assets: a train state whose optimiser state and EMA are empty,
  ``metadata`` (JSON: the drafter's configs, ...) beside it. ``param_dtype`` (e.g.
  ``"bfloat16"``, half the size) casts the parameters and is recorded as metadata
  ``param_dtype`` (:func:`load_params` casts back to float32); ``None`` stores them as they are.
  Returns the step directory.
  """
  if param_dtype is not None:
    params = jax.tree.map(lambda x: jnp.asarray(x, param_dtype), params)
    metadata = {"param_dtype": param_dtype, **metadata}
  state = checkpoint_lib.TrainState(step=jnp.int32(step), params=params, ema_params={},
                                    opt_state={}, rng=jnp.zeros((2,), jnp.uint32))
  with checkpoint_lib.Checkpointer(directory, keep=1) as ckpt:
    ckpt.save(state, metadata=metadata)
    return ckpt.step_directory(step)


def load_params(directory: str, *, name: str, fields: str, read_config: Callable[[dict], Any],
                init_params: Callable[[Any], Any]) -> tuple[Any, Any, dict[str, Any]]:
  """``(config, params float32, metadata)`` of the latest checkpoint under ``directory``.

  Reads a training checkpoint (``<workdir>/checkpoints``) and a :func:`save_params` export
  alike, in the dtype of metadata ``param_dtype`` (float32 when absent).

  Args:
    directory: the checkpoint directory.
    name: the drafter's name in errors (``"no <name> checkpoint directory ..."``).
    fields: the metadata ``read_config`` needs, named in errors.
    read_config: ``metadata -> config`` (any object ``init_params`` takes); ``KeyError``,
      ``TypeError`` or ``ValueError`` mean invalid metadata.
    init_params: ``config -> params`` (only its shapes are used).
  Raises:
    partext_jax.training.checkpoint.CheckpointError: naming ``directory``, when it holds no
      checkpoint, invalid metadata, or a truncated / corrupt one.
  """
  if not os.path.isdir(directory):
    raise checkpoint_lib.CheckpointError(f"no {name} checkpoint directory {directory!r}")
  with checkpoint_lib.Checkpointer(directory, read_only=True) as ckpt:
    meta = ckpt.restore_metadata()
    try:
      config = read_config(meta)
      dtype = jnp.dtype(meta.get("param_dtype", "float32"))
    except (KeyError, TypeError, ValueError) as e:
      raise checkpoint_lib.CheckpointError(
          f"checkpoint under {directory!r} has no valid {fields} metadata: {e}") from e
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype),
                          jax.eval_shape(lambda: init_params(config)))
    params, meta = ckpt.restore_params(target)
  return config, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params), meta


def asset_directory(name: str) -> str:
  """``partext_jax/assets/<name>``: where a committed asset lives."""
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                      name)
