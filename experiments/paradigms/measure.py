"""How each cell is measured: one function per family, each returning :class:`Measured` rows.

``MEASURES`` maps a cell's ``kind`` (``paradigms.cells``) to its measuring function and to the
``Settings`` fields its results depend on. Each function runs in the cell's own subprocess
(``paradigms.child``) and times the method beside its AR reference with
``paradigms.timing.side_by_side``:

* ``decoder``: a SmolLM2 decoder of ``tour.DECODERS`` (or the EAGLE / MTP assets) beside AR at
  the same temperature;
* ``sot``: Skeleton-of-Thought beside plain greedy AR;
* ``mdm`` / ``dllm``: a masked sampler on the shipped MDM / the tiny random LLaDA beside the same
  denoiser decoding left to right, one token per call;
* ``nat``: a NAT model beside an AR peer trained the same way on the copy task;
* ``external``: the rows of another benchmark's ``comparison_rows(quick)``.

This module and ``paradigms.timing`` are the measurement code: their digest is part of every
cell's cache key (``paradigms.cache``), so editing them remeasures every cell.
"""

# pylint: disable=import-outside-toplevel
# The measuring functions import what they use inside their bodies: a cell's code version is the
# set of repository files its subprocess imported, so it should import only its own family.

from __future__ import annotations

import functools
import importlib
import os
import tempfile
from typing import Callable, NamedTuple

import numpy as np

from paradigms import EXPERIMENTS
from paradigms.cells import Cell, Settings
from paradigms.timing import Side, side_by_side

#: Bump to remeasure every cell without another change to the code.
MEASUREMENT_VERSION = 1
SEED = 0
SMOLLM2 = "SmolLM2-135M-Instruct (f32)"


class Measured(NamedTuple):
  """What a cell's subprocess returns per row: the row (table fields) and, for the parent's
  quality scoring, decoded ``texts`` and generated ``token_ids`` (in the model's tokenizer)."""

  row: dict
  texts: list | None = None
  token_ids: list | None = None
  ignore_ids: tuple = ()


def _row(method: Side, ref: Side, *, model: str, per_forward: float, note: str,
         exact_match: float | None = None) -> dict:
  quality = {} if exact_match is None else {"exact_match": exact_match}
  return dict(model=model, tokens_per_forward=per_forward, seconds=method.seconds,
              ar_seconds=ref.seconds, peak_rss_mb=method.peak_rss_mb,
              loaded_rss_mb=method.loaded_rss_mb,
              ar_peak_rss_mb=ref.peak_rss_mb, cpu_seconds=method.cpu_seconds,
              ar_cpu_seconds=ref.cpu_seconds, quality=quality, note=note)


def _extra_decoders() -> dict[str, Callable]:
  """Decoders of SmolLM2 beyond :data:`tour.DECODERS`: the trained EAGLE head and the two MTP
  assets (builders ``bundle -> generate`` as the tour's)."""
  import tour
  from partext_jax.ar.speculative.drafters import eagle as eagle_drafter
  from partext_jax.ar.speculative.drafters import mtp as mtp_drafter
  from partext_jax.models import mtp
  from partext_jax.training import eagle as eagle_training
  from partext_jax.training import mtp as mtp_training

  def eagle(bundle):
    config, head, vocab_ids, _ = eagle_training.load_head(eagle_training.asset_directory())
    return tour.speculative(
        bundle, eagle_drafter.EagleDrafter(config, bundle.model, mode="eagle", gamma=5, top_k=4,
                                           num_nodes=11),
        eagle_drafter.drafter_params(head, bundle.params, vocab_ids,
                                     base_config=bundle.model.config))

  def mtp_chain(kind, bundle):
    config, params, _ = mtp_training.load_params(mtp_training.asset_directory(kind))
    return tour.speculative(
        bundle, mtp_drafter.MTPDrafter(config, bundle.model.config),
        mtp_drafter.drafter_params(bundle.params, base_config=bundle.model.config),
        model=mtp.MTPModel(bundle.model, config), params={"trunk": bundle.params, "mtp": params})

  return {"EAGLE head": eagle, "MTP gloeckle": functools.partial(mtp_chain, "gloeckle"),
          "MTP deepseek": functools.partial(mtp_chain, "deepseek")}


def _chat_ids(tok, text: str) -> list[int]:
  return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))


def _until_eos(ids, eos: int) -> list[int]:
  ids = [int(t) for t in ids]
  return ids[:ids.index(eos)] if eos in ids else ids


def measure_decoder(settings: Settings, *, decoder: str, temperature: float = 0.0,
                    rule: str | None = None) -> list[Measured]:
  """A decoder of SmolLM2 (``tour.DECODERS`` or :func:`_extra_decoders`) beside AR at the same
  temperature, on the first ``settings.prompts`` tour prompts at batch 1, ``new_tokens`` tokens
  each without an EOS stop (quality is scored on the text up to the first EOS)."""
  import jax
  import tour
  from partext_jax import pretrained
  from partext_jax.ar import processors
  from partext_jax.ar import sampling as ar

  bundle = pretrained.load_bundle()
  tok = bundle.tokenizer
  prompts = [_chat_ids(tok, p) for p in list(tour.PROMPTS.values())[:settings.prompts]]
  kwargs = dict(max_new_tokens=settings.new_tokens, eos_id=None,
                min_bucket=max(len(p) for p in prompts))
  reference = functools.partial(ar.generate, jax.random.key(SEED), bundle.model, bundle.params,
                                processor=processors.build(temperature=temperature), **kwargs)
  if decoder == "greedy AR":
    generate = reference
  else:
    builders = {**tour.DECODERS, **_extra_decoders()}
    sampled = dict(temperature=temperature, rule=rule) if temperature else {}
    generate = functools.partial(builders[decoder](bundle), **kwargs, **sampled)
  method, ref = side_by_side([functools.partial(generate, [p]) for p in prompts],
                             [functools.partial(reference, [p]) for p in prompts],
                             settings.repeats)
  tokens = [np.asarray(out[0])[0, :int(np.asarray(out[1].lengths)[0])] for out in method.outputs]
  calls = sum(int(np.asarray(getattr(out[1], "target_calls", out[1].lengths))[0])
              for out in method.outputs)
  same = [np.array_equal(t, np.asarray(r[0])[0, :len(t)]) for t, r in zip(tokens, ref.outputs)]
  ids = [_until_eos(t, tok.eos_id) for t in tokens]
  note = (f"{len(prompts)} chat prompt(s) x {settings.new_tokens} tokens, batch 1, no EOS stop"
          + (f"; sampled at T={temperature:g} (AR reference too)" if temperature else
             "; exact match: tokens identical to greedy AR"))
  row = _row(method, ref, model=SMOLLM2, per_forward=sum(map(len, tokens)) / max(calls, 1),
             note=note, exact_match=None if temperature else float(np.mean(same)))
  return [Measured(row, [tok.decode(i) for i in ids], ids)]


SOT_QUESTIONS = ("What are some tips for saving money?", "How can I improve my sleep?")


def measure_sot(settings: Settings) -> list[Measured]:
  """Skeleton-of-Thought (every question through SoT) beside plain greedy AR answering with a
  budget of three points, one question at a time."""
  import jax
  from partext_jax import pretrained
  from partext_jax.ar import sampling as ar
  from partext_jax.ar import sot

  bundle = pretrained.load_bundle()
  tok = bundle.tokenizer
  n = settings.sot_tokens
  config = sot.SoTConfig(max_points=3, skeleton_tokens=n, point_tokens=n, answer_tokens=3 * n)
  questions = SOT_QUESTIONS[:settings.sot_questions]
  plain = lambda q: ar.generate(jax.random.key(SEED), bundle.model, bundle.params,
                                [_chat_ids(tok, q)], max_new_tokens=config.answer_tokens,
                                eos_id=sot.stop_ids(tok))
  method, ref = side_by_side([functools.partial(sot.generate, bundle, [q], config=config)
                              for q in questions],
                             [functools.partial(plain, q) for q in questions], settings.repeats,
                             warm_all=True)
  answers = [res.answers[0] for res in method.outputs]
  forwards = sum(res.info.question_forwards(0) for res in method.outputs)
  ids = [tok.encode(a) for a in answers]
  compliant = sum(res.modes[0] == "sot" for res in method.outputs)
  note = (f"{len(questions)} question(s), batch 1; skeleton and points <= {n} tokens, up to 3 "
          f"points; AR answers <= {config.answer_tokens} tokens (EOS stop); tokens / forward: "
          f"answer tokens over sequential forwards; {compliant}/{len(questions)} skeletons "
          "parsed")
  row = _row(method, ref, model=SMOLLM2, note=note,
             per_forward=sum(map(len, ids)) / max(forwards, 1))
  return [Measured(row, answers, ids)]


def _generated(tokens, start: int) -> list[list[int]]:
  return [[int(t) for t in row[start:]] for row in np.asarray(tokens)]


def _nfe(info) -> int:
  """Denoiser calls of one batched run (one call serves every row)."""
  nfe = np.asarray(info.nfe)
  return int(nfe.sum()) if nfe.ndim <= 1 else int(nfe.sum(axis=0).max())


def masked_side_by_side(sampler, denoise_fn, x_init, *, mask_id: int, gen_length: int,
                        temperature: float, repeats: int):
  """Times a masked ``sampler`` on ``x_init`` beside its AR reference: the same network
  decoding the last ``gen_length`` positions left to right, one per call (semi-autoregressive
  blocks of one). Returns ``(method Side, reference Side, tokens, NFE)``."""
  import jax
  from partext_jax import masked
  reference = masked.semi_ar(masked.confidence, denoise_fn, mask_id=mask_id, block_length=1,
                             gen_length=gen_length, rule="topk", num_steps=gen_length,
                             temperature=temperature)
  key = jax.random.key(SEED)
  method, ref = side_by_side([functools.partial(sampler.sample, key, x_init)],
                             [functools.partial(reference.sample, key, x_init)], repeats)
  tokens, info = method.outputs[0]
  return method, ref, tokens, _nfe(info)


def measure_mdm(settings: Settings, *, sampler: str) -> list[Measured]:
  """A sampler of ``tour.MASKED_SAMPLERS`` on the shipped MDM: ``mdm_samples`` continuations
  of the tour's Python prefix to the end of the 128-token window, temperature 1."""
  import jax.numpy as jnp
  import tour
  from partext_jax.models.denoiser import count_params, make_denoise_fn
  from partext_jax.training import runs

  run = runs.load_shipped("mdm_small")
  mask_id, seq = run.model_config.mask_id, run.config.data.seq_len
  prefix = np.asarray(run.encode(tour.INFILL_PREFIX), np.int32)
  gen = seq - len(prefix)
  row = np.concatenate([prefix, np.full(gen, mask_id, np.int32)])
  x_init = jnp.asarray(np.tile(row, (settings.mdm_samples, 1)))
  denoise_fn = make_denoise_fn(run.model_config, run.state.ema_params)
  built, _ = tour.MASKED_SAMPLERS[sampler](denoise_fn, mask_id,
                                           run.config.diffusion.masking_schedule(),
                                           settings.mdm_steps)
  method, ref, tokens, nfe = masked_side_by_side(built, denoise_fn, x_init, mask_id=mask_id,
                                                 gen_length=gen, temperature=1.0,
                                                 repeats=settings.repeats)
  note = (f"MDM {count_params(run.state.ema_params) / 1e6:.1f} M params (step {run.step}); "
          f"{settings.mdm_samples} rows continue a {len(prefix)}-token Python prefix by {gen} "
          f"tokens; NFE {nfe} (step budget {settings.mdm_steps}); AR reference: the same MDM "
          f"left to right, one token per call ({gen} calls)")
  out = _row(method, ref, model="shipped MDM (mdm_small)", per_forward=gen / max(nfe, 1),
             note=note)
  return [Measured(out, [run.decode(t) for t in np.asarray(tokens)],
                   _generated(tokens, len(prefix)), (mask_id,))]


DLLM_PROMPT = "Write a haiku about the sea."


def measure_dllm(settings: Settings, *, sampler: str) -> list[Measured]:
  """A sampler on the tiny random LLaDA (no real diffusion-LM weights ship with the package:
  the cell measures the sampler's cost, not text quality)."""
  from partext_jax import masked
  from partext_jax.pretrained import dllm

  with tempfile.TemporaryDirectory() as tmp:
    path = dllm.write_tiny_checkpoint(os.path.join(tmp, "tiny.gguf"), arch="llada", fmt="gguf")
    bundle = dllm.load_dllm(path)
  gen, block = settings.dllm_gen, 8
  ids = bundle.prompt_ids(DLLM_PROMPT)
  x_init = bundle.x_init(ids, gen_length=gen)
  common_args = dict(mask_id=bundle.mask_id, block_length=block, gen_length=gen)
  if sampler == "low-confidence":
    built = masked.semi_ar(masked.confidence, bundle.denoise_fn, rule="topk",
                           num_steps=gen // 2, temperature=0.0, **common_args)
  else:
    built = masked.SAMPLERS["block_cache"](bundle.kv_denoise_fn, cache="dual", rule="threshold",
                                           threshold=0.9, **common_args)
  method, ref, tokens, nfe = masked_side_by_side(built, bundle.denoise_fn, x_init,
                                                 mask_id=bundle.mask_id, gen_length=gen,
                                                 temperature=0.0, repeats=settings.repeats)
  config = bundle.spec.config
  note = (f"tiny RANDOM LLaDA ({config.num_layers} layers, hidden {config.hidden_size}; no real "
          f"dLLM weights here: quality is meaningless, cost only); {gen} positions after the "
          f"prompt, blocks of {block}, greedy; NFE {nfe}; AR reference: the same model left "
          "to right, one token per call")
  text = [bundle.text(row, prompt_length=len(ids)) for row in np.asarray(tokens)]
  out = _row(method, ref, model="tiny random LLaDA", per_forward=gen / max(nfe, 1), note=note)
  return [Measured(out, [t if t.strip() else " " for t in text], _generated(tokens, len(ids)),
                   (bundle.mask_id,))]


NAT_TASK = dict(name="copy", vocab_size=8, min_length=16, max_length=16, num_valid=256)


def _nat_experiment(kind: str, steps: int):
  """The copy task (length 16, 8 symbols) with ``experiments/bench_nat.py``'s small sizes."""
  from partext_jax.nat import config as nat_config
  config = nat_config.default_config()
  config.task.update(NAT_TASK)
  config.model.update(kind=kind, d_model=64, mlp_dim=128, num_encoder_layers=1,
                      num_decoder_layers=1)
  config.train.update(num_steps=steps, batch_size=32, learning_rate=3e-3,
                      warmup_steps=min(20, steps), eval_every=steps, checkpoint_every=steps,
                      log_every=max(steps, 1), progress_bar=False)
  return nat_config.parse_config(config)


def measure_nat(settings: Settings, *, kind: str) -> list[Measured]:
  """A NAT model (``ctc``: one-shot; ``levenshtein``: edit-based) and its AR peer, both trained
  for ``nat_steps`` on the copy task; decoding of 256 held-out sources timed."""
  from partext_jax.models.denoiser import count_params
  from partext_jax.nat import trainer
  from partext_jax.nat.protocols import Source

  steps = settings.nat_steps
  data = trainer.build_data(_nat_experiment("ctc", steps), None)
  peer = trainer.train_and_evaluate(_nat_experiment("ar", steps), None, data=data)
  model = trainer.train_and_evaluate(_nat_experiment(kind, steps), None, data=data)
  valid = data.valid
  source = Source(np.asarray(valid.source), np.asarray(valid.source_lengths))
  method, ref = side_by_side([functools.partial(model.family.decode, model.params, source)],
                             [functools.partial(peer.family.decode, peer.params, source)],
                             settings.repeats)
  (output, forwards), = method.outputs
  per_forward = float(np.mean(np.asarray(output.lengths)) / np.mean(np.asarray(forwards)))
  note = (f"copy task (length 16, 8 symbols), {len(source.lengths)} held-out sources decoded "
          f"as one batch; width 64, 1 + 1 layers, {steps} training steps; AR reference: a "
          f"2-layer causal peer trained the same way (exact match "
          f"{peer.metrics['exact_match']:.3f}, {peer.metrics['forwards_per_sequence']:.1f} "
          f"forwards / sequence, {count_params(peer.params) / 1e6:.2f} M params)")
  row = _row(method, ref, model=f"{kind} NAT ({count_params(model.params) / 1e6:.2f} M params)",
             per_forward=per_forward,
             note=note, exact_match=float(model.metrics["exact_match"]))
  return [Measured(row)]


def measure_external(settings: Settings, *, modules: tuple) -> list[Measured]:
  """Rows of another family's benchmark: the first of ``modules`` (in ``experiments/``) that
  defines ``comparison_rows(quick) -> list[dict]``."""
  module = next(m for m in modules if defines_rows(m))
  rows = importlib.import_module(module).comparison_rows(settings.quick)
  return [Measured(dict(r)) for r in rows]


#: ``kind -> (measuring function, the Settings fields its results depend on)``.
MEASURES: dict[str, tuple[Callable[..., list[Measured]], tuple[str, ...]]] = {
    "decoder": (measure_decoder, ("prompts", "new_tokens", "repeats")),
    "sot": (measure_sot, ("sot_questions", "sot_tokens", "repeats")),
    "mdm": (measure_mdm, ("mdm_steps", "mdm_samples", "repeats")),
    "dllm": (measure_dllm, ("dllm_gen", "repeats")),
    "nat": (measure_nat, ("nat_steps", "repeats")),
    "external": (measure_external, ("quick",)),
}


def defines_rows(module: str) -> bool:
  """Whether ``experiments/<module>.py`` exists and defines ``comparison_rows``."""
  path = os.path.join(EXPERIMENTS, module + ".py")
  if not os.path.exists(path):
    return False
  with open(path, encoding="utf-8") as f:
    return "def comparison_rows(" in f.read()


def missing_external(cell: Cell) -> str | None:
  """Why an external cell cannot run (``None`` when it can)."""
  modules = cell.kwargs.get("modules", ()) if cell.kind == "external" else ()
  if not modules or any(defines_rows(m) for m in modules):
    return None
  return f"not measured: {' / '.join(modules)} not present (no comparison_rows)"
