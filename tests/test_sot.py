"""Skeleton-of-Thought: the parser and router on fixed strings, then SmolLM2 end to end
(``docs/algorithms.md#skeleton-of-thought``)."""

import jax
import numpy as np
import pytest

from partext_jax.ar import sampling as ar
from partext_jax.ar import sot


@pytest.mark.parametrize("text,want", [
    ("1. Use coupons\n2. Buy used\n3. Shop second-hand",
     ["Use coupons", "Buy used", "Shop second-hand"]),
    ("1) Plan ahead\n2) Pack light", ["Plan ahead", "Pack light"]),
    ("**1.** Stronger heart\n**2.** Better mood", ["Stronger heart", "Better mood"]),
    ("Point 1: Sleep well\nPoint 2: Eat well", ["Sleep well", "Eat well"]),
    ("1. Egg 2. Larva 3. Pupa 4. Adult", ["Egg", "Larva", "Pupa", "Adult"]),  # one line
    ("Sure! Here is the skeleton:\n1. Research the company\n2. Dress well.",
     ["Research the company", "Dress well."]),
    ("1. Arrive early\n2. Dress well\n3. Arrive early\n4. Smile", ["Arrive early", "Dress well"]),
    ("1. Fuels\n2. Industry\n1. Fuels again", ["Fuels", "Industry"]),  # numbering restarts
    ("1. Fuels\n3. Industry", ["Fuels"]),  # a gap ends the list
    ("1. Use Python 3.11 features\n2. Test it", ["Use Python 3.11 features", "Test it"]),
    ("1. First point\nThese points matter.\n2. Second", ["First point", "Second"]),
    ("- Towels\n- Sunscreen\n* Hat", ["Towels", "Sunscreen", "Hat"]),  # bullets, no numbers
    ("The ocean is salty because rivers carry minerals.", []),  # nothing parses: fallback
    ("", []),
    ("1.\n2.", []),
])
def test_parse_skeleton(text, want):
  assert sot.parse_skeleton(text) == want


def test_parse_skeleton_keeps_max_points_and_rejects_bad_input():
  text = "\n".join(f"{i}. point {i}" for i in range(1, 9))
  assert sot.parse_skeleton(text, max_points=3) == ["point 1", "point 2", "point 3"]
  with pytest.raises(ValueError, match="max_points"):
    sot.parse_skeleton(text, max_points=0)
  with pytest.raises(TypeError, match="str"):
    sot.parse_skeleton(None)


@pytest.mark.parametrize("question,use_sot", [
    ("What are some tips for saving money?", True),
    ("How can I improve my sleep?", True),
    ("Why is the sky blue?", True),
    ("Compare cats and dogs as pets.", True),
    ("What is 17 times 23?", False),
    ("Write a Python function that reverses a string.", False),
    ("Write a haiku about the sea.", False),
    ("What is the capital of France?", False),
    ("Who wrote Hamlet?", False),
    ("Hello there.", False),  # no cue either way: plain AR
])
def test_router(question, use_sot):
  assert sot.route(question) is use_sot


def test_bad_config_and_input():
  with pytest.raises(ValueError, match="min_points"):
    sot.SoTConfig(min_points=4, max_points=3)
  with pytest.raises(ValueError, match="point_tokens"):
    sot.SoTConfig(point_tokens=0)
  with pytest.raises(TypeError, match="questions"):
    sot.generate(None, [])
  with pytest.raises(TypeError, match="SoTConfig"):
    sot.generate(None, ["Why?"], config={"max_points": 3})
  with pytest.raises(ValueError, match="rng_key"):
    sot.generate(None, ["Why?"], temperature=0.7)


# ------------------------------------------------------------------------ SmolLM2, greedy

CONFIG = sot.SoTConfig(max_points=4, skeleton_tokens=40, point_tokens=24, answer_tokens=24)
TIPS = "What are some tips for saving money?"


@pytest.fixture(scope="module")
def bundle():
  from partext_jax import pretrained  # pylint: disable=import-outside-toplevel
  return pretrained.load_bundle()


@pytest.mark.slow
def test_batched_points_equal_points_decoded_alone_and_latency_accounting(bundle):
  """Every point expanded in the fill batch equals the same prompt decoded alone, token for
  token; the sequential forwards are ``len(skeleton) + max_i len(point_i)``; a second call
  compiles nothing."""
  res = sot.generate(bundle, [TIPS], config=CONFIG)
  assert res.modes == ["sot"] and len(res.points[0]) >= 2, res.skeletons
  info = res.info
  assert info.forward_passes == info.skeleton_lengths[0] + max(info.point_lengths[0])
  assert info.sequential_fill_passes == info.skeleton_lengths[0] + sum(info.point_lengths[0])
  assert info.forward_passes < info.sequential_fill_passes
  assert info.question_forwards(0) == info.forward_passes and info.answer_lengths == [None]
  assert info.batch_rows >= len(res.points[0])
  model, params, tok = bundle
  for j, want in enumerate(res.expansion_ids[0], start=1):
    ids = tok.encode(sot.point_prompt(tok, TIPS, res.points[0], j))
    alone, alone_info = ar.generate(jax.random.key(0), model, params, [ids],
                                    max_new_tokens=CONFIG.point_tokens,
                                    eos_id=sot.stop_ids(tok, *sot.POINT_STOPS))
    assert ar.trim(alone, alone_info)[0] == want, j
  assert res.answers[0].startswith("1. " + res.points[0][0])
  size = ar._generate_jit._cache_size()  # pylint: disable=protected-access
  again = sot.generate(bundle, [TIPS], config=CONFIG)
  assert again.answers == res.answers
  assert ar._generate_jit._cache_size() == size  # pylint: disable=protected-access


@pytest.mark.slow
def test_fallback_and_router_take_plain_ar(bundle):
  """A skeleton with fewer than ``min_points`` points falls back to plain AR, as does a question
  the router sends there; both answers equal plain greedy decoding of the question."""
  model, params, tok = bundle
  questions = [TIPS, "What is 17 times 23?"]
  cfg = sot.SoTConfig(max_points=8, min_points=8, skeleton_tokens=40, answer_tokens=24)
  res = sot.generate(bundle, questions, config=cfg, router=sot.route)
  assert res.modes == ["fallback", "ar"], res.skeletons
  assert res.points == [[], []] and res.skeletons[1] == ""
  assert res.info.forward_passes == res.info.skeleton_steps + res.info.answer_steps
  ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in questions]
  out, info = ar.generate(jax.random.key(0), model, params, ids, max_new_tokens=24,
                          eos_id=sot.stop_ids(tok))
  assert res.answers == [tok.decode(r) for r in ar.trim(out, info)]
  assert int(np.asarray(info.num_steps)) == res.info.answer_steps
  assert res.info.answer_lengths == np.asarray(info.lengths).tolist()
  assert res.info.question_forwards(0) == res.info.skeleton_lengths[0] + res.info.answer_lengths[0]
  assert res.info.question_forwards(1) == res.info.answer_lengths[1]
