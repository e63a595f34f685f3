"""Tokenizers, chat templates and text for the diffusion LMs.

* :func:`load_hf_tokenizer` -- ``tokenizer.json`` (HF ``tokenizers``) with the special ids of
  ``tokenizer_config.json`` / ``config.json``, as a
  :class:`partext_jax.pretrained.tokenizer.GGUFTokenizer` (the GGUF path uses
  :func:`partext_jax.pretrained.tokenizer.load_tokenizer` itself).
* :func:`chat_prompt` -- an instruct prompt in the checkpoint's chat format, recognised from its
  template: LLaDA-Instruct's Llama-3 headers (``<|start_header_id|>``, BOS first, turns ended by
  ``<|eot_id|>``) or Dream-Instruct's ChatML (``<|im_start|>``, with the template's default system
  message). Rendered without Jinja; another template raises :class:`DLLMError` (pass
  ``chat=False`` and format the prompt yourself).
* :func:`prompt_batch` -- the sampler's ``x_init``: the prompt then ``gen_length`` MASKs.
* :func:`generated_text` -- the text of a generated row, ending at the first EOS / end of turn.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from partext_jax.pretrained.dllm.spec import DLLMError
from partext_jax.pretrained.tokenizer import (GGUFTokenizer, apply_chat_template,
                                              default_system_prompt)

LLAMA3_HEADER = "<|start_header_id|>"
LLAMA3_END_OF_TURN = "<|eot_id|>"
CHATML_START = "<|im_start|>"
CHATML_END_OF_TURN = "<|im_end|>"


def read_json(path: str) -> dict:
  """The JSON object in ``path``, or ``{}`` when the file does not exist."""
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def load_hf_tokenizer(directory: str, config: dict | None = None) -> GGUFTokenizer:
  """The tokenizer of an HF checkpoint directory (``tokenizer.json`` is required)."""
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  path = os.path.join(directory, "tokenizer.json")
  if not os.path.isfile(path):
    raise DLLMError(f"{directory!r} lacks tokenizer.json (the HF fast tokenizer file)")
  tok = Tokenizer.from_file(path)
  tc = read_json(os.path.join(directory, "tokenizer_config.json"))
  config = config or {}

  def special(name):
    value = tc.get(name)
    if isinstance(value, dict):   # {"content": "<|...|>", ...}
      value = value.get("content")
    token_id = tok.token_to_id(value) if isinstance(value, str) else None
    return token_id if token_id is not None else config.get(f"{name}_id")

  return GGUFTokenizer(tok, bos_id=special("bos_token"), eos_id=special("eos_token"),
                       pad_id=special("pad_token"), unk_id=special("unk_token"),
                       add_bos=bool(tc.get("add_bos_token", False)),
                       chat_template=tc.get("chat_template"))


def chat_format(template: str | None) -> str:
  """``"llama3"`` or ``"chatml"`` from a chat template's markers (:class:`DLLMError` if neither)."""
  if template and LLAMA3_HEADER in template:
    return "llama3"
  if template and CHATML_START in template:
    return "chatml"
  raise DLLMError("the checkpoint's chat template is neither Llama-3 style (LLaDA) nor ChatML "
                  f"(Dream) (template: {str(template)[:80]!r}); use chat=False and pass the "
                  "prompt already formatted")


def chat_prompt(tokenizer: GGUFTokenizer, user: str, *, system: str | None = None) -> str:
  """One user turn (after an optional system message) and the assistant header, as text."""
  fmt = chat_format(tokenizer.chat_template)
  messages = ([{"role": "system", "content": system}] if system else []) + [
      {"role": "user", "content": user}]
  if fmt == "chatml":
    template = (tokenizer.chat_template or "").replace("\\n", "\n")
    return apply_chat_template(messages, default_system=default_system_prompt(template))
  bos = "" if tokenizer.bos_id is None else tokenizer.tokenizer.id_to_token(tokenizer.bos_id)
  turns = "".join(f"{LLAMA3_HEADER}{m['role']}<|end_header_id|>\n\n{m['content'].strip()}"
                  f"{LLAMA3_END_OF_TURN}" for m in messages)
  return f"{bos}{turns}{LLAMA3_HEADER}assistant<|end_header_id|>\n\n"


def end_of_turn_ids(tokenizer: GGUFTokenizer) -> tuple[int, ...]:
  """The ids of ``<|eot_id|>`` / ``<|im_end|>`` when the vocabulary has them."""
  ids = (tokenizer.tokenizer.token_to_id(t) for t in (LLAMA3_END_OF_TURN, CHATML_END_OF_TURN))
  return tuple(i for i in ids if i is not None)


def prompt_batch(prompt_ids: Sequence[int], *, gen_length: int, batch: int,
                 mask_id: int) -> np.ndarray:
  """``int32[batch, len(prompt) + gen_length]``: the prompt, then ``gen_length`` MASKs, per row."""
  if gen_length < 1 or batch < 1:
    raise ValueError(f"gen_length={gen_length} and batch={batch} must be >= 1")
  row = np.concatenate([np.asarray(prompt_ids, np.int32), np.full(gen_length, mask_id, np.int32)])
  return np.broadcast_to(row, (batch, row.size)).copy()


def generated_text(tokenizer: GGUFTokenizer, tokens, *, prompt_length: int,
                   eos_ids: Sequence[int]) -> str:
  """The text of one generated row ``tokens int[L]``: positions ``prompt_length..`` up to (not
  including) the first id in ``eos_ids``, special tokens skipped."""
  gen = np.asarray(tokens)[prompt_length:]
  stops = np.flatnonzero(np.isin(gen, np.asarray(list(eos_ids), np.int64)))
  if stops.size:
    gen = gen[:stops[0]]
  return tokenizer.decode(gen.tolist())
