"""The tokenizer a GGUF file describes, as a Hugging Face ``tokenizers.Tokenizer``.

A GGUF carries no ``tokenizer.json``; it stores the vocabulary (``tokenizer.ggml.tokens``), the
BPE merges (``tokenizer.ggml.merges``), token types (3 = control, 4 = user-defined), the special
ids and the Jinja chat template. For ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE) we build

* ``models.BPE(vocab, merges)`` straight from the file (no hand-written BPE),
* the pre-tokenizer llama.cpp uses for ``tokenizer.ggml.pre`` (:data:`PRE_TOKENIZERS`): for
  ``"smollm"`` (StarCoder family) digits are split one by one, then the GPT-2 byte-level regex,
* the byte-level decoder, and the control tokens (``<|im_start|>``, ...) as special tokens.

:func:`apply_chat_template` renders ChatML (SmolLM2's template) without Jinja.

Usage::

    tok = load_tokenizer(smollm2_path())
    ids = tok.encode(apply_chat_template([{"role": "user", "content": "Hi"}]))
    text = tok.decode(ids)
"""

from __future__ import annotations

import os
import re
from typing import Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from partext_jax.pretrained.gguf import GGUFError, open_gguf

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level():
  return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_byte_level():
  return pre_tokenizers.Sequence(
      [pre_tokenizers.Digits(individual_digits=True), _byte_level()])


def _llama3():
  return pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# ``tokenizer.ggml.pre`` -> pre-tokenizer (llama.cpp's llama-vocab.cpp regex lists).
PRE_TOKENIZERS = {
    "default": _byte_level,
    "gpt2": _byte_level,
    "smollm": _digits_then_byte_level,
    "starcoder": _digits_then_byte_level,
    "refact": _digits_then_byte_level,
    "llama-bpe": _llama3,
    "llama3": _llama3,
}

SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


class GGUFTokenizer:
  """A ``tokenizers.Tokenizer`` plus the GGUF's special ids and chat template.

  Attributes:
    tokenizer: the HF fast tokenizer (``encode``/``decode`` on it work too).
    bos_id, eos_id, pad_id, unk_id: special ids from the metadata (``None`` when absent).
    add_bos: whether the file asks for a BOS token to be prepended.
    chat_template: the Jinja template string from the file (``None`` when absent).
  """

  def __init__(self, tokenizer: Tokenizer, *, bos_id=None, eos_id=None, pad_id=None, unk_id=None,
               add_bos=False, chat_template=None):
    self.tokenizer = tokenizer
    self.bos_id, self.eos_id, self.pad_id, self.unk_id = bos_id, eos_id, pad_id, unk_id
    self.add_bos = add_bos
    self.chat_template = chat_template

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
    """Token ids of ``text``; special-token strings in ``text`` become their ids."""
    ids = self.tokenizer.encode(text, add_special_tokens=False).ids
    if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, messages, *, add_generation_prompt: bool = True) -> str:
    return apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                               default_system=default_system_prompt(self.chat_template))


def default_system_prompt(template: str | None) -> str | None:
  """The system message a ChatML template inserts when the first message is not a system one."""
  if not template:
    return None
  m = re.search(r"'<\|im_start\|>system\n(.*?)<\|im_end\|>", template, flags=re.S)
  return m.group(1) if m else None


def apply_chat_template(messages, *, add_generation_prompt: bool = True,
                        default_system: str | None = SMOLLM2_DEFAULT_SYSTEM) -> str:
  """ChatML, as SmolLM2's GGUF template renders it::

      [<|im_start|>system\\n{default_system}<|im_end|>\\n]   # only if messages[0] is not system
      <|im_start|>{role}\\n{content}<|im_end|>\\n             # for every message
      [<|im_start|>assistant\\n]                             # if add_generation_prompt

  Args:
    messages: ``[{"role": "system" | "user" | "assistant", "content": str}, ...]``.
    add_generation_prompt: end with the assistant header, for generation.
    default_system: the system message inserted when ``messages[0]`` is not one (``None``:
      none).

  Raises:
    ValueError: ``messages`` empty or not a list of dicts with a valid ``role`` and ``content``.
  """
  if isinstance(messages, (str, bytes)) or not messages:
    raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
  parts = []
  for i, msg in enumerate(messages):
    if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
      raise ValueError(f"messages[{i}]={msg!r} must be a dict with 'role' and 'content'")
    if msg["role"] not in ("system", "user", "assistant"):
      raise ValueError(f"messages[{i}]['role']={msg['role']!r} is not one of "
                       "('system', 'user', 'assistant')")
    if i == 0 and msg["role"] != "system" and default_system is not None:
      parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    parts.append(f"<|im_start|>{msg['role']}\n{msg['content']}<|im_end|>\n")
  if add_generation_prompt:
    parts.append("<|im_start|>assistant\n")
  return "".join(parts)


def _field(reader, name, path, *, required=True):
  f = reader.fields.get(name)
  if f is None:
    if required:
      raise GGUFError(f"{path!r} lacks the tokenizer field {name!r}")
    return None
  return f.contents()


def load_tokenizer(path: str) -> GGUFTokenizer:
  """Builds the tokenizer described by the GGUF file at ``path`` (byte-level BPE only); a
  :class:`~partext_jax.pretrained.gguf.GGUFError` names an unsupported model or pre-tokenizer."""
  path = os.fspath(path)
  reader = open_gguf(path)
  kind = _field(reader, "tokenizer.ggml.model", path)
  if kind != "gpt2":
    raise GGUFError(f"{path!r}: tokenizer model {kind!r} is not supported; supported: ['gpt2'] "
                    "(byte-level BPE)")
  pre = _field(reader, "tokenizer.ggml.pre", path, required=False) or "default"
  if pre not in PRE_TOKENIZERS:
    raise GGUFError(f"{path!r}: pre-tokenizer {pre!r} is not supported; supported: "
                    f"{sorted(PRE_TOKENIZERS)}")
  tokens = _field(reader, "tokenizer.ggml.tokens", path)
  merges = _field(reader, "tokenizer.ggml.merges", path)
  types = _field(reader, "tokenizer.ggml.token_type", path, required=False) or [1] * len(tokens)
  vocab = {t: i for i, t in enumerate(tokens)}
  bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                   fuse_unk=False, byte_fallback=False)
  tok = Tokenizer(bpe)
  tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
  tok.decoder = decoders.ByteLevel()
  control = [AddedToken(t, special=True, normalized=False)
             for t, ty in zip(tokens, types) if int(ty) == 3]
  user = [AddedToken(t, special=False, normalized=False)
          for t, ty in zip(tokens, types) if int(ty) == 4]
  if control:
    tok.add_special_tokens(control)
  if user:
    tok.add_tokens(user)

  def tid(key):
    v = _field(reader, f"tokenizer.ggml.{key}", path, required=False)
    return None if v is None else int(v)

  return GGUFTokenizer(
      tok, bos_id=tid("bos_token_id"), eos_id=tid("eos_token_id"),
      pad_id=tid("padding_token_id"), unk_id=tid("unknown_token_id"),
      add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", path, required=False) or False),
      chat_template=_field(reader, "tokenizer.chat_template", path, required=False))
