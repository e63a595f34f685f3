"""Tiny random LLaDA / Dream checkpoints written in the real formats (test doubles, demos).

No real diffusion-LM weights ship with the package; these stand in for them wherever the formats,
not the quality, matter: the launcher's default model (``experiments/dllm.py``), the parity tests
against ``transformers`` (``tests/test_dllm_loaders.py``) and the sampler tests. Each is a
2-layer model (hidden 32, 4 heads, 2 KV heads, MLP 48) over a byte-level BPE tokenizer of 256
bytes, a few merges and the family's special tokens; the embedding has a few rows more than the
tokenizer (as the published checkpoints' padded vocabularies), and the MASK id is a token inside
the vocabulary.

* :func:`random_state_dict` -- weights in PyTorch ``(out, in)`` layout under the published names
  (:func:`partext_jax.pretrained.dllm.checkpoint.hf_name`);
* :func:`write_hf` -- ``config.json``, ``tokenizer.json``, ``tokenizer_config.json`` and
  ``model.safetensors`` (or ``shards`` files and ``model.safetensors.index.json``);
* :func:`write_gguf` -- one GGUF file as llama.cpp's converter writes it (Q/K permuted for
  LLaDA, ``tokenizer.ggml.mask_token_id``, ``{arch}.attention.causal = false``,
  ``diffusion.shift_logits`` for LLaDA only, token list padded with UNUSED entries);
* :func:`write_tiny_checkpoint` -- both in one call.

Usage::

    path = write_tiny_checkpoint("/tmp/tiny_llada", arch="llada", fmt="hf")
    bundle = load_dllm(path)
"""

from __future__ import annotations

import json
import os

import numpy as np

from partext_jax.models.llama import LlamaConfig
from partext_jax.pretrained.dllm import checkpoint
from partext_jax.pretrained.gguf import permute_qk

SIZES = dict(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
             head_dim=8, context_length=256)
PADDED_VOCAB = 272   # embedding rows; the tokenizers below have fewer tokens
MERGES = (("t", "h"), ("th", "e"), ("\u0120", "the"), ("i", "n"), ("\u0120", "a"), ("e", "r"),
          ("o", "n"), ("\u0120", "s"))
SPECIALS = {
    "llada": ("<|endoftext|>", "<|startoftext|>", "<|eot_id|>", "<|start_header_id|>",
              "<|end_header_id|>", "<|mdm_mask|>"),
    "dream": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"),
}
MASK_TOKEN = {"llada": "<|mdm_mask|>", "dream": "<|mask|>"}
ROPE_THETA = {"llada": 500000.0, "dream": 1000000.0}
RMS_EPS = {"llada": 1e-5, "dream": 1e-6}
# Jinja chat templates in each family's format (what chat_prompt recognises and renders).
CHAT_TEMPLATES = {
    "llada": ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
              "'<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>"
              "\\n\\n' }}{% endif %}"),
    "dream": ("{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
              "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
              "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
              "{% endif %}"),
}


def tiny_config(arch: str) -> LlamaConfig:
  """The tiny model's :class:`LlamaConfig` (bidirectional; Dream with q/k/v biases)."""
  return LlamaConfig(vocab_size=PADDED_VOCAB, rope_theta=ROPE_THETA[arch], rms_eps=RMS_EPS[arch],
                     tie_embeddings=False, causal=False, qkv_bias=arch == "dream", **SIZES)


def tiny_tokenizer(arch: str):
  """A byte-level BPE ``tokenizers.Tokenizer``: 256 byte symbols, :data:`MERGES`, then the
  family's special tokens (control tokens)."""
  # pylint: disable-next=import-outside-toplevel
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
  symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
  vocab = {s: i for i, s in enumerate(symbols)}
  for a, b in MERGES:
    vocab[a + b] = len(vocab)
  tok = Tokenizer(models.BPE(vocab=vocab, merges=list(MERGES), fuse_unk=False))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS[arch]])
  return tok


def random_state_dict(arch: str, *, seed: int = 0, scale: float = 1.2) -> dict[str, np.ndarray]:
  """Random float32 weights of the tiny model under ``arch``'s published names, ``(out, in)``.

  Matrices are ``N(0, scale^2 / fan_in)`` (the embedding ``N(0, 1)``), norms ``1 + N(0, 0.1^2)``,
  biases ``N(0, 0.1^2)``: large enough that the logits are far from uniform.
  """
  config = tiny_config(arch)
  rng = np.random.default_rng(seed)
  out = {}
  for kind, layer in checkpoint.weights(config):
    shape = checkpoint.torch_shape(kind, config)
    if kind.endswith("norm"):
      w = 1.0 + 0.1 * rng.standard_normal(shape)
    elif kind.endswith("_bias"):
      w = 0.1 * rng.standard_normal(shape)
    else:
      w = rng.standard_normal(shape) * (1.0 if kind == "embed" else scale / np.sqrt(shape[1]))
    out[checkpoint.hf_name(arch, kind, layer)] = w.astype(np.float32)
  return out


def _special_ids(arch: str, tok) -> dict[str, int]:
  ids = {"mask": tok.token_to_id(MASK_TOKEN[arch]), "eos": tok.token_to_id("<|endoftext|>")}
  ids["bos"] = tok.token_to_id("<|startoftext|>" if arch == "llada" else "<|endoftext|>")
  ids["eot"] = tok.token_to_id("<|eot_id|>" if arch == "llada" else "<|im_end|>")
  return ids


def hf_config(arch: str, tok) -> dict:
  """``config.json`` of the tiny model in the family's own field names."""
  c, ids = tiny_config(arch), _special_ids(arch, tok)
  if arch == "llada":
    return {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": c.hidden_size,
            "n_heads": c.num_heads, "n_kv_heads": c.num_kv_heads, "n_layers": c.num_layers,
            "mlp_hidden_size": c.intermediate_size, "rope_theta": c.rope_theta,
            "rms_norm_eps": c.rms_eps, "vocab_size": c.vocab_size,
            "embedding_size": c.vocab_size, "max_sequence_length": c.context_length,
            "mask_token_id": ids["mask"], "eos_token_id": ids["eos"], "pad_token_id": ids["eos"],
            "weight_tying": False, "block_type": "llama", "layer_norm_type": "rms",
            "activation_type": "silu", "include_bias": False}
  return {"model_type": "Dream", "architectures": ["DreamModel"], "hidden_size": c.hidden_size,
          "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
          "num_hidden_layers": c.num_layers, "intermediate_size": c.intermediate_size,
          "rope_theta": c.rope_theta, "rms_norm_eps": c.rms_eps, "vocab_size": c.vocab_size,
          "max_position_embeddings": c.context_length, "mask_token_id": ids["mask"],
          "eos_token_id": ids["eos"], "pad_token_id": ids["eos"], "bos_token_id": ids["bos"],
          "tie_word_embeddings": False, "is_causal": False}


def _dump(path: str, obj) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1)


def write_hf(directory: str, arch: str, state: dict[str, np.ndarray], *, shards: int = 1,
             config: dict | None = None) -> str:
  """Writes an HF-style checkpoint directory of the tiny ``arch`` model with weights ``state``
  (``shards > 1``: that many safetensors files and ``model.safetensors.index.json``);
  ``config`` overrides config.json. Returns ``directory``."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  os.makedirs(directory, exist_ok=True)
  tok = tiny_tokenizer(arch)
  tok.save(os.path.join(directory, "tokenizer.json"))
  bos = "<|startoftext|>" if arch == "llada" else None
  _dump(os.path.join(directory, "tokenizer_config.json"),
        {"chat_template": CHAT_TEMPLATES[arch], "bos_token": bos, "eos_token": "<|endoftext|>",
         "add_bos_token": False})
  _dump(os.path.join(directory, "config.json"), hf_config(arch, tok) if config is None else config)
  names = list(state)
  if shards == 1:
    save_file(state, os.path.join(directory, "model.safetensors"))
    return directory
  weight_map = {}
  for s in range(shards):
    file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    part = {n: state[n] for n in names[s::shards]}
    save_file(part, os.path.join(directory, file))
    weight_map.update({n: file for n in part})
  _dump(os.path.join(directory, "model.safetensors.index.json"),
        {"metadata": {"total_size": int(sum(w.nbytes for w in state.values()))},
         "weight_map": weight_map})
  return directory


def write_gguf(path: str, arch: str, state: dict[str, np.ndarray], *,
               mask_token: bool = True, architecture: str | None = None) -> str:
  """Writes the tiny ``arch`` model with weights ``state`` (HF names) as a GGUF file, as
  llama.cpp's converter does (module docstring); weights missing from ``state`` are not
  written. ``mask_token=False`` omits
  ``tokenizer.ggml.mask_token_id``; ``architecture`` overrides ``general.architecture`` (bad-input
  tests). Returns ``path``."""
  import gguf  # pylint: disable=import-outside-toplevel
  config, tok = tiny_config(arch), tiny_tokenizer(arch)
  ids = _special_ids(arch, tok)
  name = architecture or arch
  w = gguf.GGUFWriter(path, name)
  w.add_block_count(config.num_layers)
  w.add_context_length(config.context_length)
  w.add_embedding_length(config.hidden_size)
  w.add_feed_forward_length(config.intermediate_size)
  w.add_head_count(config.num_heads)
  w.add_head_count_kv(config.num_kv_heads)
  w.add_layer_norm_rms_eps(config.rms_eps)
  w.add_rope_freq_base(config.rope_theta)
  w.add_causal_attention(name not in ("llada", "dream"))
  if arch == "llada":
    w.add_vocab_size(config.vocab_size)
    w.add_diffusion_shift_logits(False)
  if mask_token:
    w.add_mask_token_id(ids["mask"])
  vocab = tok.get_vocab(with_added_tokens=True)
  tokens = sorted(vocab, key=vocab.get)
  n = len(tokens)
  specials = set(SPECIALS[arch])
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("default")
  w.add_token_list(tokens + [f"[PAD{i}]" for i in range(n, config.vocab_size)])
  w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL
                     for t in tokens] + [gguf.TokenType.UNUSED] * (config.vocab_size - n))
  w.add_token_merges([f"{a} {b}" for a, b in MERGES])
  w.add_bos_token_id(ids["bos"])
  w.add_eos_token_id(ids["eos"])
  w.add_eot_token_id(ids["eot"])
  w.add_pad_token_id(ids["eos"])
  w.add_chat_template(CHAT_TEMPLATES[arch])
  permuted = arch == "llada"
  for kind, layer in checkpoint.weights(config):
    if checkpoint.hf_name(arch, kind, layer) not in state:
      continue   # a deliberately incomplete checkpoint (bad-input tests)
    t = state[checkpoint.hf_name(arch, kind, layer)]
    if permuted and kind in ("q", "k"):
      t = permute_qk(t, config.num_heads if kind == "q" else config.num_kv_heads)
    w.add_tensor(checkpoint.gguf_name(kind, layer), np.ascontiguousarray(t, np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def write_tiny_checkpoint(path: str, *, arch: str = "llada", fmt: str = "hf", seed: int = 0,
                          shards: int = 1) -> str:
  """A tiny random ``arch`` checkpoint at ``path`` in ``fmt`` (``"hf"``: a directory,
  ``"gguf"``: a file), weights drawn from ``seed``, ``shards`` safetensors files (HF only).
  Returns ``path``; a ``ValueError`` names an unknown ``fmt``."""
  state = random_state_dict(arch, seed=seed)
  if fmt == "gguf":
    return write_gguf(path, arch, state)
  if fmt != "hf":
    raise ValueError(f"fmt={fmt!r} is not one of ('hf', 'gguf')")
  return write_hf(path, arch, state, shards=shards)
