"""Skeleton-of-Thought: decomposition-and-fill decoding with a router.

Ning et al. (2024), "Skeleton-of-Thought: Prompting LLMs for efficient parallel generation"
(reference code imagination-research/sot); ``docs/algorithms.md#skeleton-of-thought``.

1. **Skeleton.** A few-shot chat prompt asks for a numbered list of 3 to 5 short points (the
   instruction as the system message, two worked examples as earlier chat turns: a 135M model
   copies a demonstrated format far more reliably than it follows an instruction). The
   assistant turn is pre-filled with ``"1."`` (as the reference pre-fills it), and decoding
   stops at EOS or a blank line.
2. **Parse** (:func:`parse_skeleton`) the numbered points, tolerant of what small models do:
   ``1.`` / ``1)`` / ``1:`` / ``Point 1:`` / bold ``**1.**`` numbering, bullets when nothing is
   numbered, several points on one line; it stops at a numbering restart or a repeated point
   and keeps at most ``max_points``. Fewer than ``min_points`` points: **fallback** to plain
   autoregressive decoding of the question.
3. **Fill.** One prompt per point (question, skeleton, "expand point i in one or two sentences")
   with the assistant turn pre-filled with the point's text; **all points of all questions are
   decoded as one padded batch** of :func:`partext_jax.ar.sampling.generate` (rows padded to a
   power of two by repeating the last prompt, so batches share compilations); an expansion
   stops at EOS or a newline.
4. **Compose** ``"i. <point><expansion>"`` lines.

**Router** (SoT-R; the reference trains a RoBERTa classifier or prompts GPT-4): here the rule of
:func:`route`, keyword heuristics from the paper's findings -- SoT suits questions whose answer
is a list of independent aspects (tips, reasons, steps, comparisons, explanations) and hurts
math, code, short facts and single creative pieces, which go to plain AR; a question matching
neither goes to plain AR.

**Latency accounting.** Each phase is one batched ``generate`` whose sequential target forwards
equal its ``info.num_steps``: the skeleton phase takes the longest skeleton's length, the fill
phase the longest point's; so a question costs ``len(skeleton) + max_i len(point_i)`` forwards
instead of the ``len(skeleton) + sum_i len(point_i)`` of filling the points one after another.
:func:`generate` asserts both equalities from the decode info.

Usage::

    bundle = pretrained.load_bundle()
    res = generate(bundle, ["What are some tips for saving money?"], router=route)
    res.answers[0], res.modes[0], res.info.forward_passes
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from partext_jax.ar import processors as lp
from partext_jax.ar import sampling as ar
from partext_jax.base import checked_int

SKELETON_SYSTEM = (
    "Answer with only the skeleton of an answer: a numbered list of 3 to 5 short points, each 3 "
    "to 6 words. Do not explain the points.")
SKELETON_SHOTS = (
    ("What are the benefits of regular exercise?",
     "1. Stronger heart and lungs\n2. Better mood and less stress\n3. Healthy body weight\n"
     "4. Deeper sleep"),
    ("How can I learn a new language?",
     "1. Practice a little every day\n2. Learn common words first\n3. Talk with native "
     "speakers\n4. Watch shows in the language"),
)
POINT_INSTRUCTION = (
    "Question: {question}\nOutline of the answer:\n{skeleton}\n\nWrite point {index} of the "
    "outline (\"{point}\") in one or two sentences. Write only this point.")

MODES = ("sot", "fallback", "ar")


@dataclasses.dataclass(frozen=True)
class SoTConfig:
  """Static settings of :func:`generate`.

  Attributes:
    max_points: points kept from a skeleton (the rest is dropped).
    min_points: fewer parsed points fall back to plain AR.
    skeleton_tokens: decode budget of the skeleton.
    point_tokens: decode budget of one point's expansion.
    answer_tokens: decode budget of a plain AR answer (router or fallback).
  """

  max_points: int = 5
  min_points: int = 2
  skeleton_tokens: int = 48
  point_tokens: int = 48
  answer_tokens: int = 160

  def __post_init__(self):
    for name in ("max_points", "min_points", "skeleton_tokens", "point_tokens", "answer_tokens"):
      checked_int(f"SoTConfig.{name}", getattr(self, name), minimum=1)
    if self.min_points > self.max_points:
      raise ValueError(f"SoTConfig.min_points={self.min_points} exceeds "
                       f"max_points={self.max_points}")


# ------------------------------------------------------------------------------- parsing

_NUMBERED = re.compile(
    r"(?:^|(?<=\s))(?:\*\*)?(?:point\s*)?(\d{1,2})\s*(?:[.):](?=\s|\*|$)|-(?=\s))(?:\*\*)?\s*",
    re.I)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\u2013)\s+(.+?)\s*$", re.M)


def _clean(text: str) -> str:
  text = re.sub(r"\*\*|__", "", text).strip()
  return text.strip(" \t-:;,").strip()


def parse_skeleton(text: str, *, max_points: int = 5) -> list[str]:
  """The points of a skeleton, in order (``[]`` when nothing parses: fall back to plain AR).

  Numbered items ``1.`` / ``1)`` / ``1:`` / ``1 -`` / ``Point 1:`` (optionally bold) are found
  anywhere in ``text`` (several may share a line; an item ends at the next item or line
  break); items must count up from 1 without gaps:
  parsing stops at the first number that breaks the sequence (a restart or a jump), at an
  empty item, or at a point equal to an earlier one (small models loop). Without any
  numbered item, ``-`` / ``*`` / ``•`` bullet lines are taken in order. At most ``max_points``
  are returned, each stripped of markdown emphasis and surrounding punctuation.
  """
  checked_int("max_points", max_points, minimum=1)
  if not isinstance(text, str):
    raise TypeError(f"text must be a str, got {type(text).__name__}")
  matches = list(_NUMBERED.finditer(text))
  points: list[str] = []
  expected = 1
  for i, m in enumerate(matches):
    if int(m.group(1)) != expected:
      if points:
        break
      continue  # leading noise before "1."
    end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
    item = _clean(text[m.end():end].split("\n")[0])
    if not item or item.lower() in (p.lower() for p in points):
      break
    points.append(item)
    expected += 1
  if not points:
    points = []
    for m in _BULLET.finditer(text):
      item = _clean(m.group(1))
      if not item or item.lower() in (p.lower() for p in points):
        break
      points.append(item)
  return points[:max_points]


# ------------------------------------------------------------------------------- prompts


def skeleton_prompt(tokenizer, question: str) -> str:
  """The few-shot skeleton prompt (chat template), assistant turn pre-filled with ``"1."``."""
  msgs = [{"role": "system", "content": SKELETON_SYSTEM}]
  for q, a in SKELETON_SHOTS:
    msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
  msgs.append({"role": "user", "content": question})
  return tokenizer.apply_chat_template(msgs) + "1."


def format_skeleton(points: Sequence[str]) -> str:
  """The skeleton as the model is shown it: ``points`` (strings, in order) as lines ``"1. ..."``.

  Args:
    points: the point texts, without their numbers.
  """
  return "\n".join(f"{i}. {p}" for i, p in enumerate(points, start=1))


def point_prompt(tokenizer, question: str, points: Sequence[str], index: int) -> str:
  """The expansion prompt of point ``index`` (1-based), pre-filled with the point's text."""
  msgs = [{"role": "user", "content": POINT_INSTRUCTION.format(
      question=question, skeleton=format_skeleton(points), index=index,
      point=points[index - 1])}]
  return tokenizer.apply_chat_template(msgs) + points[index - 1]


def compose(points: Sequence[str], expansions: Sequence[str]) -> str:
  """The answer: one line ``"i. <point><expansion>"`` per point."""
  return "\n".join(f"{i}. {p}{e.rstrip()}" for i, (p, e) in
                   enumerate(zip(points, expansions), start=1))


# -------------------------------------------------------------------------------- router

_AR_CUES = re.compile(
    r"\b(\d+\s*(?:[-+*/x^]|times|plus|minus|divided by)\s*\d+|calculate|compute|solve|"
    r"equation|how many|how much is|write (?:a |an |the )?(?:python |short )?(?:function|"
    r"program|code|script|poem|haiku|story|letter|email|song|limerick)|translate|"
    r"what is the (?:capital|name|date|year|value)|who (?:is|was|wrote)|when (?:is|was|did)|"
    r"where (?:is|was))\b", re.I)
_SOT_CUES = re.compile(
    r"\b(tips|ways|steps|benefits|advantages|disadvantages|pros and cons|reasons|causes|"
    r"effects|factors|strategies|ideas|differences|compare|comparison|how (?:can|do|should|to)|"
    r"what are|why|describe|explain|list|suggest|recommend|important|improve)\b", re.I)


def route(question: str) -> bool:
  """The router: ``True`` = Skeleton-of-Thought, ``False`` = plain AR (module docstring).

  Plain AR when the question has a math / code / short-fact / single-creative-piece cue
  (checked first); SoT when it asks for several aspects (tips, steps, reasons, comparisons,
  "how can", "why", "explain", ...); plain AR otherwise.
  """
  if not isinstance(question, str):
    raise TypeError(f"question must be a str, got {type(question).__name__}")
  if _AR_CUES.search(question):
    return False
  return bool(_SOT_CUES.search(question))


# ------------------------------------------------------------------------------- decoding


class SoTInfo(NamedTuple):
  """Latency accounting of :func:`generate` (sequential target forwards, host ints).

  ``forward_passes = skeleton_steps + expansion_steps + answer_steps``; for one question that
  took the SoT path it is ``len(skeleton) + max_i len(point_i)``. :meth:`question_forwards` is
  the count of question ``i`` alone (what it costs at batch 1).
  """

  skeleton_steps: int  # forwards of the skeleton batch (= the longest skeleton, in tokens)
  expansion_steps: int  # forwards of the fill batch (= the longest point expansion)
  answer_steps: int  # forwards of the plain-AR batch (router / fallback questions)
  forward_passes: int
  sequential_fill_passes: int  # skeleton_steps + the sum of every point's length (no batching)
  skeleton_lengths: list  # tokens per skeleton (None for questions routed to AR)
  point_lengths: list  # per question, tokens per point expansion
  answer_lengths: list  # tokens of the plain AR answer (None for questions that took SoT)
  batch_rows: int  # rows of the fill batch (points, padded to a power of two)

  def question_forwards(self, i: int) -> int:
    """Sequential forwards of question ``i`` decoded alone: its skeleton (if any) plus its
    longest point, or plus its plain answer (fallback / routed)."""
    skel = self.skeleton_lengths[i] or 0
    if self.answer_lengths[i] is not None:
      return skel + self.answer_lengths[i]
    return skel + max(self.point_lengths[i])


class SoTResult(NamedTuple):
  """What :func:`generate` returns (one entry per question)."""

  answers: list  # str: the composed (or plain AR) answer
  modes: list  # "sot" | "fallback" (no points parsed) | "ar" (routed)
  skeletons: list  # str skeleton text ("1." included), "" when routed to AR
  points: list  # list[str] parsed points
  expansions: list  # list[str] decoded expansion of every point
  expansion_ids: list  # list[list[int]] its token ids (the stop token included)
  info: SoTInfo
  seconds: float  # wall time of the whole call (compilation included on a first call)


SKELETON_STOPS = ("\n\n",)  # a skeleton ends at EOS or a blank line
POINT_STOPS = ("\n", "\n\n")  # an expansion ends at EOS or a line break


def stop_ids(tok, *texts) -> tuple:
  """EOS and the ids of those ``texts`` that are single tokens (the phases' stop tokens)."""
  ids = [tok.eos_id] if tok.eos_id is not None else []
  for text in texts:
    enc = tok.encode(text, add_bos=False)
    if len(enc) == 1:
      ids.append(enc[0])
  return tuple(ids)


def _batch_generate(bundle, prompts: Sequence[str], *, max_new_tokens: int, stop, processor,
                    rng_key):
  """Greedy/sampled generation of ``prompts`` in one batch padded to a power of two rows."""
  model, params, tok = bundle
  ids = [tok.encode(p) for p in prompts]
  rows = ar.bucket_length(len(ids), min_bucket=1)
  ids = ids + [ids[-1]] * (rows - len(ids))
  tokens, info = ar.generate(rng_key, model, params, ids, max_new_tokens=max_new_tokens,
                             processor=processor, eos_id=stop)
  out = ar.trim(jax.block_until_ready(tokens), info)[:len(prompts)]
  steps = int(info.num_steps)
  lengths = np.asarray(info.lengths)[:len(prompts)]
  # The loop runs until every row stopped: its forwards are the longest row's tokens.
  if steps != int(lengths.max()):
    raise RuntimeError(f"decode loop ran {steps} forwards, the longest row has "
                       f"{int(lengths.max())} tokens")
  return out, lengths.tolist(), steps, rows


def generate(bundle, questions, *, config: SoTConfig = SoTConfig(),
             router: Callable[[str], bool] | None = None, rng_key=None,
             temperature: float = 0.0) -> SoTResult:
  """Answers ``questions`` with Skeleton-of-Thought (module docstring).

  Args:
    bundle: ``ModelBundle(model, params, tokenizer)`` (``pretrained.load_bundle()``).
    questions: a str or a non-empty list of str.
    config: :class:`SoTConfig`.
    router: ``question -> bool`` (``True``: SoT), e.g. :func:`route`; ``None`` sends every
      question to SoT.
    rng_key: required when ``temperature > 0``; every phase uses ``fold_in(rng_key, phase)``.
    temperature: 0 (greedy) or the sampling temperature of every phase.
  Returns:
    :class:`SoTResult`.
  Raises:
    TypeError, ValueError: bad ``questions``, ``config``, ``temperature`` or missing
      ``rng_key``, before anything is compiled.
  """
  if isinstance(questions, str):
    questions = [questions]
  if not questions or not all(isinstance(q, str) and q.strip() for q in questions):
    raise TypeError("questions must be a non-empty str or a non-empty list of non-empty str")
  if not isinstance(config, SoTConfig):
    raise TypeError(f"config must be a SoTConfig, got {type(config).__name__}")
  processor = lp.build(temperature=temperature)
  if rng_key is None:
    if temperature != 0:
      raise ValueError("rng_key is required when temperature > 0; pass jax.random.key(seed)")
    rng_key = jax.random.key(0)  # unused by greedy decoding
  tok = bundle.tokenizer
  start = time.perf_counter()
  n = len(questions)
  modes = ["sot" if router is None or router(q) else "ar" for q in questions]
  skeletons, points = [""] * n, [[] for _ in range(n)]
  skel_len: list = [None] * n
  skel_steps = exp_steps = ans_steps = rows = 0
  sot_idx = [i for i in range(n) if modes[i] == "sot"]
  if sot_idx:
    out, lengths, skel_steps, _ = _batch_generate(
        bundle, [skeleton_prompt(tok, questions[i]) for i in sot_idx],
        max_new_tokens=config.skeleton_tokens, stop=stop_ids(tok, *SKELETON_STOPS),
        processor=processor, rng_key=jax.random.fold_in(rng_key, 0))
    for i, ids, length in zip(sot_idx, out, lengths):
      skeletons[i] = "1." + tok.decode(ids)
      skel_len[i] = length
      points[i] = parse_skeleton(skeletons[i], max_points=config.max_points)
      if len(points[i]) < config.min_points:
        modes[i], points[i] = "fallback", []
  expansions = [[] for _ in range(n)]
  expansion_ids = [[] for _ in range(n)]
  point_len = [[] for _ in range(n)]
  jobs = [(i, j) for i in range(n) if modes[i] == "sot" for j in range(1, len(points[i]) + 1)]
  if jobs:
    out, lengths, exp_steps, rows = _batch_generate(
        bundle, [point_prompt(tok, questions[i], points[i], j) for i, j in jobs],
        max_new_tokens=config.point_tokens, stop=stop_ids(tok, *POINT_STOPS),
        processor=processor, rng_key=jax.random.fold_in(rng_key, 1))
    for (i, _), ids, length in zip(jobs, out, lengths):
      expansions[i].append(tok.decode(ids))
      expansion_ids[i].append(ids)
      point_len[i].append(length)
  answers = [compose(points[i], expansions[i]) if modes[i] == "sot" else "" for i in range(n)]
  plain = [i for i in range(n) if modes[i] != "sot"]
  answer_len: list = [None] * n
  if plain:
    prompts = [tok.apply_chat_template([{"role": "user", "content": questions[i]}])
               for i in plain]
    out, lengths, ans_steps, _ = _batch_generate(
        bundle, prompts, max_new_tokens=config.answer_tokens, stop=stop_ids(tok),
        processor=processor, rng_key=jax.random.fold_in(rng_key, 2))
    for i, ids, length in zip(plain, out, lengths):
      answers[i] = tok.decode(ids)
      answer_len[i] = length
  info = SoTInfo(skeleton_steps=skel_steps, expansion_steps=exp_steps, answer_steps=ans_steps,
                 forward_passes=skel_steps + exp_steps + ans_steps,
                 sequential_fill_passes=skel_steps + sum(sum(p) for p in point_len),
                 skeleton_lengths=skel_len, point_lengths=point_len, answer_lengths=answer_len,
                 batch_rows=rows)
  return SoTResult(answers, modes, skeletons, points, expansions, expansion_ids, info,
                   time.perf_counter() - start)
