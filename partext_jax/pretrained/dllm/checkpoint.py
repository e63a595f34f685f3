"""LLaDA / Dream weights from GGUF or safetensors into the Flax Llama tree, tensor by tensor.

Every weight is named once, by a canonical ``(kind, layer)`` (:data:`LAYER_KINDS`,
:data:`GLOBAL_KINDS`), and each format maps that name in ONE function:

* :func:`gguf_name` -- llama.cpp's tensor names (``blk.{i}.attn_q.weight``, ...);
* :func:`hf_name` -- the published safetensors keys: LLaDA's OLMo names
  (``model.transformer.blocks.{i}.q_proj.weight``, ...) and Dream's Qwen2 names
  (``model.layers.{i}.self_attn.q_proj.weight``, ...);
* :func:`param_location` -- where it lives in the Flax tree of
  :class:`partext_jax.models.llama.Llama`: with ``scan_layers=True`` (the default) one stacked
  leaf ``("layers", "attn", "q", "kernel")`` with a leading layer axis, which :func:`load_params`
  fills layer by layer; with ``scan_layers=False`` the per-layer leaf
  ``("layers", "{i}", "attn", "q", "kernel")``.

Checkpoint tensors are in PyTorch ``(out, in)`` order; :func:`to_flax` reshapes them (and
:func:`load_params` undoes llama.cpp's Q/K permutation for LLaDA GGUF files,
:func:`partext_jax.pretrained.gguf.unpermute_qk`). Loading places each leaf on its devices as soon
as it is converted (``jax.make_array_from_callback`` / ``device_put`` with the leaf's
``NamedSharding`` from the logical-axis rules), so the host never holds more than one leaf: an
8B model loads onto a mesh whose devices could not hold it whole.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax import parallel
from partext_jax.models import llama
from partext_jax.pretrained.gguf import GGUFError, dequantize, unpermute_qk
from partext_jax.pretrained.dllm.spec import GGUF_PERMUTED_QK, DLLMError, DLLMSpec

LAYER_KINDS = ("attn_norm", "q", "k", "v", "q_bias", "k_bias", "v_bias", "o", "mlp_norm", "gate",
               "up", "down")
GLOBAL_KINDS = ("embed", "final_norm", "lm_head")

_GGUF_LAYER = {"attn_norm": "attn_norm.weight", "q": "attn_q.weight", "k": "attn_k.weight",
               "v": "attn_v.weight", "q_bias": "attn_q.bias", "k_bias": "attn_k.bias",
               "v_bias": "attn_v.bias", "o": "attn_output.weight", "mlp_norm": "ffn_norm.weight",
               "gate": "ffn_gate.weight", "up": "ffn_up.weight", "down": "ffn_down.weight"}
_GGUF_GLOBAL = {"embed": "token_embd.weight", "final_norm": "output_norm.weight",
                "lm_head": "output.weight"}
_HF_LAYER = {
    "llada": {"attn_norm": "attn_norm.weight", "q": "q_proj.weight", "k": "k_proj.weight",
              "v": "v_proj.weight", "q_bias": "q_proj.bias", "k_bias": "k_proj.bias",
              "v_bias": "v_proj.bias", "o": "attn_out.weight", "mlp_norm": "ff_norm.weight",
              "gate": "ff_proj.weight", "up": "up_proj.weight", "down": "ff_out.weight"},
    "dream": {"attn_norm": "input_layernorm.weight", "q": "self_attn.q_proj.weight",
              "k": "self_attn.k_proj.weight", "v": "self_attn.v_proj.weight",
              "q_bias": "self_attn.q_proj.bias", "k_bias": "self_attn.k_proj.bias",
              "v_bias": "self_attn.v_proj.bias", "o": "self_attn.o_proj.weight",
              "mlp_norm": "post_attention_layernorm.weight", "gate": "mlp.gate_proj.weight",
              "up": "mlp.up_proj.weight", "down": "mlp.down_proj.weight"},
}
_HF_LAYER_PREFIX = {"llada": "model.transformer.blocks.{}.", "dream": "model.layers.{}."}
_HF_GLOBAL = {
    "llada": {"embed": "model.transformer.wte.weight",
              "final_norm": "model.transformer.ln_f.weight",
              "lm_head": "model.transformer.ff_out.weight"},
    "dream": {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
              "lm_head": "lm_head.weight"},
}
_FLAX_LAYER = {"attn_norm": ("attn_norm", "scale"), "q": ("attn", "q", "kernel"),
               "k": ("attn", "k", "kernel"), "v": ("attn", "v", "kernel"),
               "q_bias": ("attn", "q", "bias"), "k_bias": ("attn", "k", "bias"),
               "v_bias": ("attn", "v", "bias"), "o": ("attn", "o", "kernel"),
               "mlp_norm": ("mlp_norm", "scale"), "gate": ("mlp", "gate", "kernel"),
               "up": ("mlp", "up", "kernel"), "down": ("mlp", "down", "kernel")}
_FLAX_GLOBAL = {"embed": ("embed", "embedding"), "final_norm": ("final_norm", "scale"),
                "lm_head": ("lm_head", "kernel")}


def gguf_name(kind: str, layer: int | None = None) -> str:
  """llama.cpp's GGUF tensor name of weight ``(kind, layer)`` (``layer=None``: global)."""
  if layer is None:
    return _GGUF_GLOBAL[kind]
  return f"blk.{layer}.{_GGUF_LAYER[kind]}"


def hf_name(arch: str, kind: str, layer: int | None = None) -> str:
  """The safetensors key of weight ``(kind, layer)`` in a published ``arch`` checkpoint."""
  if layer is None:
    return _HF_GLOBAL[arch][kind]
  return _HF_LAYER_PREFIX[arch].format(layer) + _HF_LAYER[arch][kind]


def param_location(kind: str, layer: int | None = None, *, scan_layers: bool = True
                   ) -> tuple[tuple[str, ...], int | None]:
  """``(path, index)``: weight ``(kind, layer)`` is the Flax leaf at ``path`` (``index`` along a
  leading stacked-layer axis when ``scan_layers``, ``None`` for a per-layer or global leaf);
  :func:`partext_jax.models.llama.layer_stack` defines both layouts."""
  if layer is None:
    return _FLAX_GLOBAL[kind], None
  if scan_layers:
    return ("layers",) + _FLAX_LAYER[kind], layer
  return ("layers", str(layer)) + _FLAX_LAYER[kind], None


def weights(config: llama.LlamaConfig) -> Iterator[tuple[str, int | None]]:
  """Every ``(kind, layer)`` a model of ``config`` has."""
  yield "embed", None
  for i in range(config.num_layers):
    for kind in LAYER_KINDS:
      if kind.endswith("_bias") and not config.qkv_bias:
        continue
      yield kind, i
  yield "final_norm", None
  if not config.tie_embeddings:
    yield "lm_head", None


def torch_shape(kind: str, config: llama.LlamaConfig) -> tuple[int, ...]:
  """The checkpoint (PyTorch ``(out, in)``) shape of a weight of ``kind``."""
  c = config
  e, f, q, kv = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim, \
      c.num_kv_heads * c.head_dim
  return {"embed": (c.vocab_size, e), "lm_head": (c.vocab_size, e), "final_norm": (e,),
          "attn_norm": (e,), "mlp_norm": (e,), "q": (q, e), "k": (kv, e), "v": (kv, e),
          "q_bias": (q,), "k_bias": (kv,), "v_bias": (kv,), "o": (e, q), "gate": (f, e),
          "up": (f, e), "down": (e, f)}[kind]


def to_flax(kind: str, w: np.ndarray, config: llama.LlamaConfig) -> np.ndarray:
  """A checkpoint tensor ``(out, in)`` in the Flax layout of
  :class:`~partext_jax.models.llama.Llama`: ``Dense`` kernels ``(in, out)``, q/k/v kernels
  ``(embed, heads, head_dim)``, their biases ``(heads, head_dim)``, the output projection
  ``(heads, head_dim, embed)``."""
  c = config
  heads = {"q": c.num_heads, "k": c.num_kv_heads, "v": c.num_kv_heads}
  if kind in heads:
    return w.T.reshape(c.hidden_size, heads[kind], c.head_dim)
  if kind.endswith("_bias"):
    return w.reshape(heads[kind[0]], c.head_dim)
  if kind == "o":
    return w.T.reshape(c.num_heads, c.head_dim, c.hidden_size)
  if kind in ("gate", "up", "down", "lm_head"):
    return w.T
  return w


# ------------------------------------------------------------------------------------ sources


class GGUFSource:
  """Dequantised float32 tensors of a GGUF file (``gguf.GGUFReader`` memory-maps it)."""

  def __init__(self, reader, path: str):
    self.path = path
    self.tensors = {t.name: t for t in reader.tensors}

  def __contains__(self, name: str) -> bool:
    return name in self.tensors

  def rows(self, name: str) -> int:
    return int(self.tensors[name].shape[-1])   # GGML order: fastest axis first

  def get(self, name: str) -> np.ndarray:
    try:
      return dequantize(self.tensors[name], path=self.path)
    except GGUFError as e:
      raise DLLMError(str(e)) from e


class SafetensorsSource:
  """The tensors of an HF checkpoint directory: ``model.safetensors.index.json``'s weight map if
  present (sharded checkpoints), else every ``*.safetensors`` file."""

  def __init__(self, directory: str):
    try:
      from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError("reading an HF checkpoint directory needs the `safetensors` package: "
                        "pip install 'partext-jax[dllm]' (GGUF files need nothing more)") from e
    self._open = safe_open
    self.path = directory
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
      with open(index, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
      self.files = {k: os.path.join(directory, v) for k, v in weight_map.items()}
      missing = sorted({f for f in self.files.values() if not os.path.isfile(f)})
      if missing:
        raise DLLMError(f"{index} names shard files that do not exist: {missing}")
    else:
      paths = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
      if not paths:
        raise DLLMError(f"{directory!r} holds no *.safetensors file")
      self.files = {}
      for p in paths:
        with safe_open(p, framework="numpy") as f:
          self.files.update({k: p for k in f.keys()})

  def __contains__(self, name: str) -> bool:
    return name in self.files

  def get(self, name: str) -> np.ndarray:
    with self._open(self.files[name], framework="numpy") as f:
      return np.asarray(f.get_tensor(name), np.float32)


# ------------------------------------------------------------------------------------ loading


def tensor_reader(source, spec: DLLMSpec) -> Callable[[str, int | None], np.ndarray]:
  """``read(kind, layer) -> float32 (out, in)`` from ``source`` (:class:`GGUFSource` or
  :class:`SafetensorsSource`), checked against the spec's shapes and with llama.cpp's Q/K
  permutation undone; :class:`DLLMError` names a missing tensor or a shape mismatch."""
  gguf = isinstance(source, GGUFSource)
  c = spec.config

  def read(kind, layer):
    name = gguf_name(kind, layer) if gguf else hf_name(spec.arch, kind, layer)
    if name not in source:
      raise DLLMError(f"{source.path!r} lacks the tensor {name!r} of a {c.num_layers}-layer "
                      f"{spec.arch} model")
    w = source.get(name)
    want = torch_shape(kind, c)
    if w.shape != want:
      raise DLLMError(f"{source.path!r}: tensor {name!r} has shape {w.shape}, expected {want} "
                      f"from the config (hidden={c.hidden_size}, heads={c.num_heads}, "
                      f"kv_heads={c.num_kv_heads}, head_dim={c.head_dim}, "
                      f"intermediate={c.intermediate_size}, vocab={c.vocab_size})")
    if gguf and GGUF_PERMUTED_QK[spec.arch] and kind in ("q", "k", "q_bias", "k_bias"):
      heads = c.num_heads if kind[0] == "q" else c.num_kv_heads
      w = unpermute_qk(w.reshape(w.shape[0], -1), heads).reshape(w.shape)
    return w

  return read


def load_params(read: Callable[[str, int | None], np.ndarray], config: llama.LlamaConfig, *,
                dtype, mesh=None, rules=parallel.DEFAULT_RULES):
  """The parameter tree of ``config``, each leaf converted (:func:`to_flax`), cast to ``dtype``
  and placed as soon as it is read: on ``mesh`` with the sharding of the logical-axis ``rules``
  (:func:`partext_jax.parallel.param_shardings`), else on the default device.

  ``read(kind, layer)`` gives the checkpoint tensor (:func:`tensor_reader`). The host holds one
  leaf at a time (for a stacked leaf, its layers).
  """
  shapes = jax.eval_shape(lambda: llama.init_params(jax.random.key(0), config))
  shardings = None
  if mesh is not None:
    shardings = parallel.param_shardings(llama.param_logical_axes(config), shapes, mesh,
                                         rules=rules)
  groups: dict[tuple[str, ...], list] = {}
  for kind, layer in weights(config):
    path, index = param_location(kind, layer, scan_layers=config.scan_layers)
    groups.setdefault(path, []).append((index, kind, layer))
  flat = {}
  for path, members in groups.items():
    target = _at(shapes, path)
    parts = [to_flax(kind, read(kind, layer), config) for _, kind, layer in sorted(
        members, key=lambda m: -1 if m[0] is None else m[0])]
    host = np.stack(parts) if members[0][0] is not None else parts[0]
    if host.shape != target.shape:   # a mapping error, not a checkpoint one
      raise DLLMError(f"parameter {'/'.join(path)} converts to {host.shape}, the model expects "
                      f"{target.shape}")
    host = np.asarray(host, jnp.dtype(dtype))
    flat[path] = (jax.device_put(host) if shardings is None
                  else parallel.put(host, _at(shardings, path)))
    del host, parts
  return _unflatten(flat)


def _at(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for path, leaf in flat.items():
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return out
