"""The tokenizer built from SmolLM2's GGUF metadata."""

import os

import numpy as np
import pytest

from partext_jax import pretrained

TEXTS = [
    "Hello, world!",
    "  leading spaces,\ttabs\n\nand blank lines\n",
    "The year 2024 had 366 days; pi is 3.14159.",
    "naïve café — 日本語 😀 Ωmega",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "def f(x):\n    return x**2  # square\n",
    "I'm sure they'll've done it, haven't they?",
]

MESSAGES = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Tell me a joke."}],
]


@pytest.fixture(scope="module")
def tok():
  return pretrained.load_tokenizer(pretrained.smollm2_path())


@pytest.fixture(scope="module")
def hf_tok():
  try:
    import transformers
  except ImportError as e:
    print(f"\nSKIPPING tokenizer parity: transformers not installed ({e})")
    pytest.skip(f"tokenizer parity needs transformers: {e}")
  path = pretrained.smollm2_path()
  return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                    gguf_file=os.path.basename(path))


def test_special_ids_and_vocab(tok):
  assert tok.vocab_size == 49152
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
  assert tok.encode("<|im_start|>") == [1] and tok.encode("<|im_end|>") == [2]
  assert tok.encode("<|endoftext|>") == [0]
  assert not tok.add_bos


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
  ids = tok.encode(text)
  assert ids and all(0 <= i < tok.vocab_size for i in ids)
  assert tok.decode(ids, skip_special_tokens=False) == text


def test_digits_split_and_specials_skipped(tok):
  ids = tok.encode("12345")
  assert len(ids) == 5  # SmolLM's pre-tokenizer splits digits one by one
  assert tok.decode(tok.encode("<|im_start|>user\nHi<|im_end|>")) == "user\nHi"


def test_chat_template_format(tok):
  text = tok.apply_chat_template(MESSAGES[0])
  assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                  "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                  "<|im_start|>assistant\n")
  assert not tok.apply_chat_template(MESSAGES[1]).count("SmolLM")
  assert not tok.apply_chat_template(MESSAGES[0], add_generation_prompt=False).endswith(
      "assistant\n")
  with pytest.raises(ValueError, match="role"):
    tok.apply_chat_template([{"role": "robot", "content": "x"}])


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers(tok, hf_tok, text):
  assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)


def test_chat_template_matches_transformers(tok, hf_tok):
  for msgs in MESSAGES:
    for gen in (True, False):
      ours = tok.apply_chat_template(msgs, add_generation_prompt=gen)
      theirs = hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
      assert ours == theirs
      np.testing.assert_array_equal(tok.encode(ours),
                                    hf_tok.encode(theirs, add_special_tokens=False))


def test_bad_tokenizer_file(tmp_path):
  p = tmp_path / "bad.gguf"
  p.write_bytes(b"nope")
  with pytest.raises(pretrained.GGUFError, match="not a GGUF"):
    pretrained.load_tokenizer(p)
