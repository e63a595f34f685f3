"""LLaDA / Dream loaders: logit parity with transformers, formats, tokenizers and bad inputs.

The references are transformers' own ``LlamaForCausalLM`` (LLaDA is a Llama stack without the
causal mask) and ``Qwen2ForCausalLM`` (Dream), run with an all-ones 4-D attention mask (full
bidirectional attention), on the same random weights that the tiny checkpoints hold under the
published key names (``partext_jax.pretrained.dllm.tiny``); Dream's reference logits are shifted
as Dream's generation code shifts them. ``docs/algorithms.md#real-diffusion-lms-llada-dream``.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax import parallel
from partext_jax.models import llama
from partext_jax.pretrained import dllm
from partext_jax.pretrained import gguf as gguf_lib
from partext_jax.pretrained.dllm import checkpoint, text, tiny

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PARITY_TOL = 1e-4   # f32, the acceptance bound

# LLaDA's OLMo names -> transformers' Llama names, written out independently of dllm.checkpoint.
LLADA_TO_LLAMA = {
    "model.transformer.wte.weight": "model.embed_tokens.weight",
    "model.transformer.ln_f.weight": "model.norm.weight",
    "model.transformer.ff_out.weight": "lm_head.weight",
}
LLADA_BLOCK_TO_LLAMA = {
    "attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj", "ff_norm":
    "post_attention_layernorm", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
}


def _llama_name(name: str) -> str:
  if name in LLADA_TO_LLAMA:
    return LLADA_TO_LLAMA[name]
  _, _, _, layer, module, param = name.split(".")       # model.transformer.blocks.{i}.{m}.weight
  return f"model.layers.{layer}.{LLADA_BLOCK_TO_LLAMA[module]}.{param}"


def reference_logits(arch: str, state: dict, tokens: np.ndarray) -> np.ndarray:
  """transformers' forward with full attention; Dream's output shifted right by one."""
  c = tiny.tiny_config(arch)
  common = dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
                num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                rope_theta=c.rope_theta, rms_norm_eps=c.rms_eps, tie_word_embeddings=False,
                max_position_embeddings=c.context_length, attn_implementation="eager")
  if arch == "llada":
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    weights = {_llama_name(k): v for k, v in state.items()}
  else:
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    weights = state
  model.load_state_dict({k: torch.tensor(v) for k, v in weights.items()}, strict=True)
  x = torch.tensor(tokens, dtype=torch.long)
  full = torch.ones(x.shape[0], 1, x.shape[1], x.shape[1], dtype=torch.bool)
  with torch.no_grad():
    logits = model.eval()(x, attention_mask=full).logits.numpy()
  if arch == "dream":
    logits = np.concatenate([logits[:, :1], logits[:, :-1]], axis=1)
  return logits


def _tokens(seed=0, shape=(2, 11)):
  return np.random.default_rng(seed).integers(0, 270, shape).astype(np.int32)


def _write(tmp_path, arch, fmt, state, **kwargs):
  if fmt == "gguf":
    return tiny.write_gguf(str(tmp_path / f"{arch}.gguf"), arch, state, **kwargs)
  return tiny.write_hf(str(tmp_path / f"{arch}_{fmt}"), arch, state,
                       shards=3 if fmt == "hf_sharded" else 1, **kwargs)


def parity_error(path, arch, state) -> float:
  """Max |ours - reference| of the logits (the parity check of the acceptance list)."""
  x = _tokens()
  ours = np.asarray(dllm.load_dllm(path).denoise_fn(jnp.asarray(x), jnp.ones(2)))
  return float(np.max(np.abs(ours - reference_logits(arch, state, x))))


@pytest.mark.parametrize("fmt", ["gguf", "hf", "hf_sharded"])
@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_logits_match_transformers(tmp_path, arch, fmt):
  state = tiny.random_state_dict(arch, seed=1)
  err = parity_error(_write(tmp_path, arch, fmt, state), arch, state)
  assert err < PARITY_TOL, err
  if fmt == "hf_sharded":
    assert os.path.isfile(tmp_path / f"{arch}_{fmt}" / "model.safetensors.index.json")


@pytest.mark.parametrize("fmt", ["gguf", "hf"])
@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_parity_check_catches_a_transposed_tensor(tmp_path, arch, fmt):
  """Layer 1's q_proj (square: 32 x 32, so no shape error) transposed in the file: the same
  parity check fails by orders of magnitude. A non-square tensor transposed is a load error."""
  state = tiny.random_state_dict(arch, seed=1)
  name = checkpoint.hf_name(arch, "q", 1)
  tampered = {**state, name: np.ascontiguousarray(state[name].T)}
  assert parity_error(_write(tmp_path, arch, fmt, tampered), arch, state) > 100 * PARITY_TOL
  gate = checkpoint.hf_name(arch, "gate", 0)
  bad = {**state, gate: np.ascontiguousarray(state[gate].T)}
  os.makedirs(tmp_path / "t")
  with pytest.raises(dllm.DLLMError, match=r"has shape \(32, 48\), expected \(48, 32\)"):
    dllm.load_dllm(_write(tmp_path / "t", arch, fmt, bad))


def test_gguf_stores_llada_qk_permuted_and_dream_qk_as_is(tmp_path):
  """llama.cpp permutes LLaDA's Q/K rows (Llama RoPE) but not Dream's (NEOX RoPE): both files
  load to the same parameters as their safetensors twins."""
  for arch in ("llada", "dream"):
    state = tiny.random_state_dict(arch, seed=2)
    path = _write(tmp_path, arch, "gguf", state)
    stored = {t.name: t for t in gguf_lib.open_gguf(path).tensors}["blk.0.attn_q.weight"]
    raw = gguf_lib.dequantize(stored, path=path)
    q = state[checkpoint.hf_name(arch, "q", 0)]
    assert np.array_equal(raw, gguf_lib.permute_qk(q, 4) if arch == "llada" else q), arch
    a = dllm.load_dllm(path).params
    b = dllm.load_dllm(_write(tmp_path, arch, "hf", state)).params
    assert jax.tree.all(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), a, b)), arch


def test_spec_fields(tmp_path):
  for arch in ("llada", "dream"):
    path = dllm.write_tiny_checkpoint(str(tmp_path / arch), arch=arch)
    b = dllm.load_dllm(path)
    tok = tiny.tiny_tokenizer(arch)
    n = tok.get_vocab_size(with_added_tokens=True)
    assert b.spec.arch == arch and b.spec.config.causal is False
    assert b.spec.shift_logits == (arch == "dream")
    assert b.spec.config.qkv_bias == (arch == "dream")
    assert b.mask_id == tok.token_to_id(tiny.MASK_TOKEN[arch]) and b.mask_id < b.spec.vocab_size
    assert b.spec.exclude_ids == tuple(range(n, tiny.PADDED_VOCAB))     # padded rows
    eot = "<|eot_id|>" if arch == "llada" else "<|im_end|>"
    assert set(b.spec.eos_ids) == {tok.token_to_id("<|endoftext|>"), tok.token_to_id(eot)}
    assert b.model.exclude_ids == b.spec.exclude_ids


def test_bfloat16_loading(tmp_path):
  path = dllm.write_tiny_checkpoint(str(tmp_path / "l"), arch="llada")
  f32, bf16 = dllm.load_dllm(path), dllm.load_dllm(path, dtype="bfloat16")
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16.params))
  assert bf16.spec.config.dtype == "bfloat16"
  x = jnp.asarray(_tokens())
  a, b = f32.denoise_fn(x, jnp.ones(2)), bf16.denoise_fn(x, jnp.ones(2))
  assert b.dtype == jnp.float32
  # bf16 keeps 8 mantissa bits: relative error ~ 2^-8 per op, a few percent of the logit scale.
  scale = float(jnp.std(a))
  assert float(jnp.max(jnp.abs(a - b))) < 0.25 * scale
  assert float(jnp.max(jnp.abs(a - b))) > 0          # it really computed in bf16


def test_tokenizers_agree_across_formats_and_chat_templates(tmp_path):
  for arch in ("llada", "dream"):
    state = tiny.random_state_dict(arch)
    g = dllm.load_dllm(_write(tmp_path, arch, "gguf", state))
    h = dllm.load_dllm(_write(tmp_path, arch, "hf", state))
    sample = "the answer is 42, then <|endoftext|>"
    assert g.tokenizer.encode(sample) == h.tokenizer.encode(sample)
    assert h.tokenizer.decode(h.tokenizer.encode("hello there")) == "hello there"
    prompt = h.tokenizer.decode(h.prompt_ids("Hi?"), skip_special_tokens=False)
    assert g.prompt_ids("Hi?") == h.prompt_ids("Hi?")
    if arch == "llada":
      assert prompt == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHi?"
                        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    else:
      assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                        "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
  with pytest.raises(dllm.DLLMError, match="chat=False"):
    text.chat_format("{{ messages }}")


def test_generated_text_ends_at_the_first_eos(tmp_path):
  b = dllm.load_dllm(dllm.write_tiny_checkpoint(str(tmp_path / "l"), arch="llada"))
  prompt = b.tokenizer.encode("hi ")
  eot = b.tokenizer.tokenizer.token_to_id("<|eot_id|>")
  eos = b.tokenizer.tokenizer.token_to_id("<|endoftext|>")
  row = prompt + b.tokenizer.encode("the end") + [eot] + b.tokenizer.encode("junk") + [eos]
  assert b.text(row, prompt_length=len(prompt)) == "the end"
  assert b.text(prompt + b.tokenizer.encode("no stop"), prompt_length=len(prompt)) == "no stop"
  x = b.x_init(prompt, gen_length=5, batch=2)
  assert x.shape == (2, len(prompt) + 5) and (x[:, len(prompt):] == b.mask_id).all()


# ------------------------------------------------------------------------------- bad inputs


def test_a_causal_llama_gguf_is_not_a_dllm(tmp_path):
  path = tiny.write_gguf(str(tmp_path / "llama.gguf"), "llada", tiny.random_state_dict("llada"),
                         architecture="llama")
  with pytest.raises(dllm.DLLMError, match=r"general.architecture='llama', a causal LM"):
    dllm.load_dllm(path)
  path = tiny.write_gguf(str(tmp_path / "bert.gguf"), "llada", tiny.random_state_dict("llada"),
                         architecture="bert")
  with pytest.raises(dllm.DLLMError, match=r"'bert', an unknown architecture"):
    dllm.load_dllm(path)
  try:   # the real causal GGUF the project ships with (when installed)
    smollm2 = gguf_lib.smollm2_path()
  except FileNotFoundError:
    return
  with pytest.raises(dllm.DLLMError, match=r"general.architecture='llama', a causal LM"):
    dllm.load_dllm(smollm2)


def test_a_dream_checkpoint_without_mask_token_id(tmp_path):
  state = tiny.random_state_dict("dream")
  path = tiny.write_gguf(str(tmp_path / "d.gguf"), "dream", state, mask_token=False)
  with pytest.raises(dllm.DLLMError, match=r"tokenizer.ggml.mask_token_id"):
    dllm.load_dllm(path)
  config = tiny.hf_config("dream", tiny.tiny_tokenizer("dream"))
  del config["mask_token_id"]
  with pytest.raises(dllm.DLLMError, match=r"lacks mask_token_id"):
    dllm.load_dllm(tiny.write_hf(str(tmp_path / "d"), "dream", state, config=config))


def test_config_errors_name_the_field(tmp_path):
  state = tiny.random_state_dict("llada")
  tok = tiny.tiny_tokenizer("llada")
  cases = [
      (dict(vocab_size=200, embedding_size=200, mask_token_id=5, eos_token_id=2),
       r"tokenizer has 270 tokens .* vocab_size is 200"),
      (dict(model_type="llama", architectures=["LlamaForCausalLM"]),
       r"model_type='llama' .* is a causal LM"),
      (dict(model_type="gpt2", architectures=["GPT2LMHeadModel"]), r"not a known dLLM"),
      (dict(n_heads=None), r"lacks the field 'n_heads'"),
      (dict(include_bias=True), r"include_bias=True is not supported"),
      (dict(mask_token_id=300), r"mask_id \[300\] outside the model's vocabulary \[0, 272\)"),
      (dict(mask_token_id=271), r"mask_token_id=271 is not a token of the tokenizer"),
  ]
  for i, (change, match) in enumerate(cases):
    config = {**tiny.hf_config("llada", tok), **change}
    path = tiny.write_hf(str(tmp_path / f"c{i}"), "llada", state, config=config)
    with pytest.raises(dllm.DLLMError, match=match):
      dllm.load_dllm(path)
  dream = {**tiny.hf_config("dream", tiny.tiny_tokenizer("dream")), "is_causal": True}
  path = tiny.write_hf(str(tmp_path / "dc"), "dream", tiny.random_state_dict("dream"),
                       config=dream)
  with pytest.raises(dllm.DLLMError, match="is_causal=true"):
    dllm.load_dllm(path)


def test_missing_tensor_and_files(tmp_path):
  state = tiny.random_state_dict("llada")
  del state["model.transformer.blocks.1.up_proj.weight"]
  with pytest.raises(dllm.DLLMError, match=r"lacks the tensor "
                     r"'model.transformer.blocks.1.up_proj.weight' of a 2-layer llada model"):
    dllm.load_dllm(tiny.write_hf(str(tmp_path / "m"), "llada", state))
  with pytest.raises(dllm.DLLMError, match=r"lacks the tensor 'blk.1.ffn_up.weight'"):
    dllm.load_dllm(tiny.write_gguf(str(tmp_path / "m.gguf"), "llada", state))
  with pytest.raises(FileNotFoundError):
    dllm.load_dllm(str(tmp_path / "nothing"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(dllm.DLLMError, match="lacks config.json"):
    dllm.load_dllm(str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="dtype"):
    dllm.load_dllm(str(tmp_path / "empty"), dtype="float16")


def test_loading_onto_a_mesh_places_every_leaf_by_the_rules(tmp_path):
  """One device here (the 8-device meshes are in test_dllm_sharding.py): the loaded leaves
  carry the rule shardings and the adapter pins its activations."""
  path = dllm.write_tiny_checkpoint(str(tmp_path / "d"), arch="dream")
  mesh = parallel.make_mesh()
  b = dllm.load_dllm(path, mesh=mesh)
  specs = parallel.param_specs(llama.param_logical_axes(b.spec.config), b.params, mesh)
  got = jax.tree.map(lambda x: x.sharding.spec, b.params)
  assert jax.tree.structure(got) == jax.tree.structure(specs)
  x = jnp.asarray(_tokens())
  plain = dllm.load_dllm(path)
  np.testing.assert_allclose(b.denoise_fn(x, jnp.ones(2)), plain.denoise_fn(x, jnp.ones(2)),
                             atol=1e-6)
