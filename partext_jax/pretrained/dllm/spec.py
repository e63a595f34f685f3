"""What a LLaDA / Dream checkpoint is: :class:`DLLMSpec`, read from GGUF metadata or config.json.

A diffusion LM of either family is the Llama block stack of
:class:`partext_jax.models.llama.Llama` with ``causal=False`` (bidirectional attention), plus
the facts the samplers need (``docs/algorithms.md#real-diffusion-lms-llada-dream``):

==============  ==========================================  =========================================
field           LLaDA (Nie et al. 2025)                     Dream (Ye et al. 2025)
==============  ==========================================  =========================================
blocks          Llama, no biases (OLMo names)               Qwen2: q/k/v biases
``mask_id``     ``mask_token_id`` (126336, in the vocab)    ``mask_token_id`` (151666, in the vocab)
shift           none: logits at ``i`` predict ``i``         logits at ``i`` predict ``i + 1``
GGUF Q/K        llama.cpp permutation (undone)              stored as is (NEOX RoPE in llama.cpp)
==============  ==========================================  =========================================

The GGUF keys are llama.cpp's (``general.architecture`` = ``llada`` / ``dream``,
``tokenizer.ggml.mask_token_id``, ``diffusion.shift_logits``, ``{arch}.attention.causal``); the
config.json fields are LLaDA's OLMo-style ones (``d_model``, ``n_heads``, ...) and Dream's Qwen2
ones (``hidden_size``, ``num_attention_heads``, ...). Anything the spec cannot be built from
raises :class:`DLLMError` naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from partext_jax.models.llama import LlamaConfig
from partext_jax.pretrained import llama as llama_gguf
from partext_jax.pretrained.gguf import GGUFError

ARCHITECTURES = ("llada", "dream")
# Whether llama.cpp stores the architecture's Q/K rows permuted for its interleaved RoPE.
GGUF_PERMUTED_QK = {"llada": True, "dream": False}
# ``diffusion.shift_logits`` when the file lacks it (llama.cpp's diffusion example defaults it on).
DEFAULT_SHIFT = {"llada": False, "dream": True}
# config.json ``model_type`` of the causal LMs a dLLM is often confused with.
CAUSAL_MODEL_TYPES = ("llama", "qwen2", "mistral", "gemma", "phi3")


class DLLMError(ValueError):
  """A checkpoint that is not a LLaDA / Dream model we can load (the message names the field)."""


@dataclasses.dataclass(frozen=True)
class DLLMSpec:
  """Static description of a diffusion LM (hashable: part of the model adapter's jit key).

  Attributes:
    arch: ``"llada"`` or ``"dream"``.
    config: the :class:`~partext_jax.models.llama.LlamaConfig` (``causal=False``).
    mask_id: the MASK id, inside ``[0, config.vocab_size)``.
    shift_logits: the model's logits at ``i`` predict token ``i + 1`` (Dream).
    eos_ids: ids that end the generated text (EOS / end of turn); decoding stops at the first.
    exclude_ids: never-generate ids besides ``mask_id`` (e.g. embedding rows the tokenizer does
      not use); the samplers set their logits to ``-inf`` (:mod:`partext_jax.base`).
  """
  arch: str
  config: LlamaConfig
  mask_id: int
  shift_logits: bool
  eos_ids: tuple[int, ...] = ()
  exclude_ids: tuple[int, ...] = ()

  def __post_init__(self):
    if self.arch not in ARCHITECTURES:
      raise DLLMError(f"arch={self.arch!r} is not one of {ARCHITECTURES}")
    if self.config.causal:
      raise DLLMError("a diffusion LM needs LlamaConfig(causal=False)")
    v = self.config.vocab_size
    for name, ids in (("mask_id", (self.mask_id,)), ("eos_ids", self.eos_ids),
                      ("exclude_ids", self.exclude_ids)):
      bad = [i for i in ids if not 0 <= int(i) < v]
      if bad:
        raise DLLMError(f"{name} {bad} outside the model's vocabulary [0, {v})")
    object.__setattr__(self, "eos_ids", tuple(sorted({int(i) for i in self.eos_ids})))
    object.__setattr__(self, "exclude_ids", tuple(sorted({int(i) for i in self.exclude_ids})))

  def replace(self, **changes) -> "DLLMSpec":
    return dataclasses.replace(self, **changes)

  @property
  def vocab_size(self) -> int:
    return self.config.vocab_size


def _require(mapping: Mapping[str, Any], key: str, where: str):
  if mapping.get(key) is None:
    raise DLLMError(f"{where} lacks the field {key!r}")
  return mapping[key]


def _ids(value) -> tuple[int, ...]:
  if value is None:
    return ()
  return tuple(int(i) for i in (value if isinstance(value, (list, tuple)) else [value]))


# ------------------------------------------------------------------------------------ GGUF


def spec_from_gguf_metadata(meta: Mapping[str, Any], *, vocab_size: int, tied: bool,
                            path: str) -> DLLMSpec:
  """The spec of a GGUF file from its metadata (:func:`partext_jax.pretrained.gguf.read_metadata`).

  ``vocab_size`` is the row count of ``token_embd`` (llama.cpp's Dream converter writes no
  ``{arch}.vocab_size``); ``tied``: the file has no ``output.weight``. Raises :class:`DLLMError`
  for a causal model (``llama`` or ``{arch}.attention.causal = true``), an unknown architecture
  or a missing ``tokenizer.ggml.mask_token_id``.
  """
  arch = meta.get("general.architecture")
  where = f"GGUF file {path!r}"
  if arch not in ARCHITECTURES:
    kind = "a causal LM" if arch in CAUSAL_MODEL_TYPES else "an unknown architecture"
    raise DLLMError(f"{where} has general.architecture={arch!r}, {kind}; a diffusion LM must be "
                    f"one of {ARCHITECTURES}")
  if meta.get(f"{arch}.attention.causal", False):
    raise DLLMError(f"{where} has {arch}.attention.causal=true: a causal model, not a diffusion "
                    "LM (llama.cpp's converters write false for llada / dream)")
  meta = {**meta, f"{arch}.vocab_size": meta.get(f"{arch}.vocab_size", vocab_size)}
  try:
    config = llama_gguf.config_from_metadata(meta, path=path, architectures=ARCHITECTURES)
  except GGUFError as e:
    raise DLLMError(str(e)) from e
  if config.vocab_size != vocab_size:
    raise DLLMError(f"{where}: {arch}.vocab_size={config.vocab_size} but token_embd.weight has "
                    f"{vocab_size} rows")
  mask_id = _require(meta, "tokenizer.ggml.mask_token_id", where)
  eos = (_ids(meta.get("tokenizer.ggml.eos_token_id"))
         + _ids(meta.get("tokenizer.ggml.eot_token_id")))
  config = config.replace(causal=False, qkv_bias=arch == "dream", tie_embeddings=tied)
  shift = meta.get("diffusion.shift_logits", DEFAULT_SHIFT[arch])
  return DLLMSpec(arch, config, int(mask_id), bool(shift), eos_ids=eos)


# ------------------------------------------------------------------------------------ config.json


def arch_of_hf_config(cfg: Mapping[str, Any], *, path: str) -> str:
  """``"llada"`` or ``"dream"`` from config.json's ``model_type`` / ``architectures``."""
  names = [str(cfg.get("model_type", ""))] + [str(a) for a in cfg.get("architectures") or []]
  low = " ".join(names).lower()
  for arch in ARCHITECTURES:
    if arch in low:
      return arch
  model_type = cfg.get("model_type")
  kind = "a causal LM" if str(model_type).lower() in CAUSAL_MODEL_TYPES else "not a known dLLM"
  raise DLLMError(f"{path!r}: config.json model_type={model_type!r} (architectures="
                  f"{cfg.get('architectures')}) is {kind}; supported diffusion LMs: "
                  f"{ARCHITECTURES} (model_type 'llada' / 'Dream')")


def _llada_config(cfg, where) -> tuple[LlamaConfig, int]:
  for key, supported in (("block_type", "llama"), ("layer_norm_type", "rms"),
                         ("activation_type", "silu")):
    if cfg.get(key, supported) != supported:
      raise DLLMError(f"{where}: {key}={cfg[key]!r} is not supported (LLaDA uses {supported!r})")
  for key in ("alibi", "include_bias", "attention_layer_norm", "input_emb_norm", "scale_logits",
              "clip_qkv"):
    if cfg.get(key):
      raise DLLMError(f"{where}: {key}={cfg[key]!r} is not supported (LLaDA-8B has it off)")
  hidden, heads = int(_require(cfg, "d_model", where)), int(_require(cfg, "n_heads", where))
  vocab = int(cfg.get("embedding_size") or _require(cfg, "vocab_size", where))
  config = LlamaConfig(
      vocab_size=vocab, hidden_size=hidden,
      intermediate_size=int(_require(cfg, "mlp_hidden_size", where)),
      num_layers=int(_require(cfg, "n_layers", where)), num_heads=heads,
      num_kv_heads=int(cfg.get("n_kv_heads") or heads), head_dim=hidden // heads,
      rope_theta=float(cfg.get("rope_theta", 10000.0)),
      rms_eps=float(cfg.get("rms_norm_eps", 1e-5)),
      context_length=int(cfg.get("max_sequence_length", 4096)),
      tie_embeddings=bool(cfg.get("weight_tying", False)), causal=False,
      qkv_bias=bool(cfg.get("include_qkv_bias", False)))
  return config, vocab


def _dream_config(cfg, where) -> tuple[LlamaConfig, int]:
  if cfg.get("use_sliding_window"):
    raise DLLMError(f"{where}: use_sliding_window=true is not supported")
  if cfg.get("rope_scaling"):
    raise DLLMError(f"{where}: rope_scaling={cfg['rope_scaling']!r} is not supported")
  hidden = int(_require(cfg, "hidden_size", where))
  heads = int(_require(cfg, "num_attention_heads", where))
  vocab = int(_require(cfg, "vocab_size", where))
  config = LlamaConfig(
      vocab_size=vocab, hidden_size=hidden,
      intermediate_size=int(_require(cfg, "intermediate_size", where)),
      num_layers=int(_require(cfg, "num_hidden_layers", where)), num_heads=heads,
      num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
      head_dim=int(cfg.get("head_dim") or hidden // heads),
      rope_theta=float(cfg.get("rope_theta", 10000.0)),
      rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
      context_length=int(cfg.get("max_position_embeddings", 4096)),
      tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), causal=False, qkv_bias=True)
  return config, vocab


def spec_from_hf_config(cfg: Mapping[str, Any], *, path: str,
                        generation_config: Mapping[str, Any] | None = None) -> DLLMSpec:
  """The spec of an HF-style checkpoint from its config.json (and generation_config.json).

  Raises :class:`DLLMError` for a causal or unknown ``model_type``, a missing size field, an
  unsupported option, or a missing ``mask_token_id`` (required: both families keep the MASK id
  inside the vocabulary and nothing else tells where).
  """
  arch = arch_of_hf_config(cfg, path=path)
  where = f"{path!r} config.json"
  if cfg.get("is_causal") is True:
    raise DLLMError(f"{where} has is_causal=true: a causal model, not a diffusion LM")
  config, _ = (_llada_config if arch == "llada" else _dream_config)(cfg, where)
  mask_id = cfg.get("mask_token_id")
  if mask_id is None:
    raise DLLMError(f"{where} lacks mask_token_id: a {arch} checkpoint must name its MASK id "
                    "(e.g. 126336 for LLaDA-8B, 151666 for Dream-7B)")
  eos = _ids(cfg.get("eos_token_id")) + _ids((generation_config or {}).get("eos_token_id"))
  return DLLMSpec(arch, config, int(mask_id), arch == "dream", eos_ids=eos)


# ------------------------------------------------------------------------------------ presets


def llada_8b(dtype: str = "bfloat16") -> DLLMSpec:
  """LLaDA-8B (Base / Instruct) as published (``GSAI-ML/LLaDA-8B-*`` config.json): for memory
  plans and shape checks, in ``dtype``; the weights are not shipped."""
  config = LlamaConfig(vocab_size=126464, hidden_size=4096, intermediate_size=12288,
                       num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                       rope_theta=500000.0, rms_eps=1e-5, context_length=4096,
                       tie_embeddings=False, dtype=dtype, causal=False)
  return DLLMSpec("llada", config, mask_id=126336, shift_logits=False, eos_ids=(126081, 126348))


def dream_7b(dtype: str = "bfloat16") -> DLLMSpec:
  """Dream-v0-7B (Qwen2.5-7B sizes) as published (``Dream-org/Dream-v0-*-7B`` config.json), in
  ``dtype``."""
  config = LlamaConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
                       rope_theta=1000000.0, rms_eps=1e-6, context_length=131072,
                       tie_embeddings=False, dtype=dtype, causal=False, qkv_bias=True)
  return DLLMSpec("dream", config, mask_id=151666, shift_logits=True, eos_ids=(151643,))
