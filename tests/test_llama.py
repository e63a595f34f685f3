"""Llama causal LM: cache/mask structure (tiny random model) and parity with transformers (real
SmolLM2-135M-Instruct GGUF)."""

import os
import time

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax import pretrained
from partext_jax.models import attention, llama

# Jitted forward: tiny-model calls compile in well under a second instead of dispatching op by op.
_fwd = jax.jit(llama.forward, static_argnames=("config", "return_hidden"))

# ----------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def tiny():
  config = llama.LlamaConfig.tiny()
  params = jax.jit(llama.init_params, static_argnames="config")(jax.random.key(0), config=config)
  return config, params


def _full_logits(config, params, tokens):
  pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return _fwd(params, tokens, pos, config=config)[0]


def _prefilled(tiny, seed, *, b, t, prefix, max_len, explicit_mask):
  """Random ``tokens [b, t]``, their full-forward logits, and the first ``prefix`` of them scored
  into a fresh cache (an explicit causal mask, or ``None``: the model's default mask)."""
  config, params = tiny
  tokens = jax.random.randint(jax.random.key(seed), (b, t), 0, config.vocab_size)
  pos = jnp.broadcast_to(jnp.arange(prefix), (b, prefix))
  mask = attention.causal_cache_mask(pos, 0, max_len) if explicit_mask else None
  logits, cache, _ = _fwd(params, tokens[:, :prefix], pos, mask,
                          llama.init_cache(config, b, max_len), jnp.zeros(b, jnp.int32),
                          config=config)
  full = _full_logits(config, params, tokens)
  np.testing.assert_allclose(logits, full[:, :prefix], atol=1e-5, rtol=1e-5)
  return tokens, full, cache


def test_cached_decoding_equals_full_forward(tiny):
  config, params = tiny
  b, t, prefix, max_len = 2, 10, 4, 16
  tokens, full, cache = _prefilled(tiny, 1, b=b, t=t, prefix=prefix, max_len=max_len,
                                   explicit_mask=True)
  step = jax.jit(lambda p, x, i, c: _fwd(
      p, x, jnp.full((b, 1), i), attention.causal_cache_mask(jnp.full((b, 1), i), 0, max_len),
      c, jnp.full((b,), i), config=config))
  for i in range(prefix, t):
    logits, cache, _ = step(params, tokens[:, i:i + 1], i, cache)
    np.testing.assert_allclose(logits[:, 0], full[:, i], atol=1e-5, rtol=1e-5)
  assert cache.k.shape == (config.num_layers, b, config.num_kv_heads, max_len, config.head_dim)
  # Slots after the last write stay zero: the cache holds exactly what was written.
  assert not np.any(np.asarray(cache.k[:, :, :, t:]))
  assert np.all(np.any(np.asarray(cache.k[:, :, :, :t]) != 0, axis=-1))


def test_block_with_causal_mask_equals_full_forward(tiny):
  config, params = tiny
  b, t, prefix, max_len = 2, 9, 3, 12
  tokens, full, cache = _prefilled(tiny, 2, b=b, t=t, prefix=prefix, max_len=max_len,
                                   explicit_mask=False)
  blk = jnp.broadcast_to(jnp.arange(prefix, t), (b, t - prefix))
  logits, _, _ = _fwd(params, tokens[:, prefix:], blk,
                      attention.causal_cache_mask(blk, 0, max_len), cache,
                      jnp.full((b,), prefix), config=config)
  np.testing.assert_allclose(logits, full[:, prefix:], atol=1e-5, rtol=1e-5)


def test_tree_block_with_ancestor_mask(tiny):
  """Tree nodes x1 -> x2 and sibling y1 after a prefix, scored in one call."""
  config, params = tiny
  prefix = jnp.array([[5, 17, 33, 8]])
  x1, x2, y1 = 40, 41, 60
  max_len = 8
  cache = llama.init_cache(config, 1, max_len)
  pos = jnp.arange(4)[None]
  _, cache, _ = _fwd(params, prefix, pos, None, cache, jnp.zeros(1, jnp.int32),
                           config=config)
  block = jnp.array([[x1, x2, y1]])
  block_pos = jnp.array([[4, 5, 4]])
  mask = np.zeros((1, 3, max_len), bool)
  mask[0, :, :4] = True  # the prefix
  mask[0, 0, 4] = True  # x1: itself
  mask[0, 1, [4, 5]] = True  # x2: x1 and itself
  mask[0, 2, 6] = True  # y1: itself only
  logits, _, _ = _fwd(params, block, block_pos, jnp.asarray(mask), cache,
                            jnp.array([4]), config=config)
  path_x = _full_logits(config, params, jnp.array([[5, 17, 33, 8, x1, x2]]))
  path_y = _full_logits(config, params, jnp.array([[5, 17, 33, 8, y1]]))
  np.testing.assert_allclose(logits[0, 0], path_x[0, 4], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(logits[0, 1], path_x[0, 5], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(logits[0, 2], path_y[0, 4], atol=1e-5, rtol=1e-5)


def test_logits_at_and_hidden(tiny):
  config, params = tiny
  tokens = jax.random.randint(jax.random.key(3), (2, 7), 0, config.vocab_size)
  pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
  full, _, hidden = _fwd(params, tokens, pos, config=config, return_hidden=True)
  at = jnp.array([[6], [2]])
  part, _, _ = _fwd(params, tokens, pos, config=config, logits_at=at)
  np.testing.assert_allclose(part[:, 0], full[jnp.arange(2), at[:, 0]], atol=1e-6)
  assert hidden.shape == (2, 7, config.hidden_size)
  np.testing.assert_allclose(hidden @ params["lm_head"]["kernel"], full, atol=1e-5, rtol=1e-5)


def test_scanned_layers_equal_unrolled_layers():
  """The ``nn.scan`` layer stack (stacked parameters) gives the logits (<= 1e-6) and the cache of
  the unrolled layers (``scan_layers=False``, per-layer parameters from ``unstack_layers``), for
  a prefill and decode steps over a cache of several attention chunks, including a last chunk
  that overlaps the one before (``cache_attention`` with 600 slots, chunks of 256)."""
  config = llama.LlamaConfig.tiny(num_layers=3, context_length=1024)
  params = jax.jit(llama.init_params, static_argnames="config")(jax.random.key(7), config=config)
  unrolled, params_u = config.replace(scan_layers=False), llama.unstack_layers(params)
  assert params_u["layers"]["2"]["attn"]["q"]["kernel"].shape == (32, 4, 8)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), params,
                                   llama.stack_layers(params_u)))
  b, p, max_len = 2, 5, 600
  tokens = jax.random.randint(jax.random.key(8), (b, p), 0, config.vocab_size)
  first = jnp.array([0, 2])
  slots = jnp.broadcast_to(jnp.arange(p), (b, p))
  pos = jnp.maximum(slots - first[:, None], 0)
  caches = [llama.init_cache(config, b, max_len)] * 2
  calls = [(tokens, pos, attention.causal_cache_mask(slots, first, max_len), jnp.zeros(b, int))]
  for s in (5, 200, 299, 599):      # decode steps whose visible spans need 1 .. 3 chunks
    q = jnp.full((b, 1), s)
    calls.append((tokens[:, :1], q - first[:, None], attention.causal_cache_mask(q, first, max_len),
                  jnp.full((b,), s)))
  for tok, position, mask, write in calls:
    out = _fwd(params, tok, position, mask, caches[0], write, config=config)
    want = _fwd(params_u, tok, position, mask, caches[1], write, config=unrolled)
    np.testing.assert_allclose(out.logits, want.logits, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(out.cache.k, want.cache.k, atol=1e-6)
    np.testing.assert_allclose(out.cache.v, want.cache.v, atol=1e-6)
    caches = [out.cache, want.cache]


def test_scanned_and_unrolled_give_identical_greedy_tokens():
  from partext_jax.ar import sampling as ar
  config = llama.LlamaConfig.tiny(num_layers=3, vocab_size=257)
  params = jax.jit(llama.init_params, static_argnames="config")(jax.random.key(9), config=config)
  prompts = [[5, 9, 200, 31], [7, 8]]
  got = [np.asarray(ar.generate(jax.random.key(0), llama.LlamaLM(c), p, prompts,
                                max_new_tokens=24, eos_id=None)[0])
         for c, p in ((config, params),
                      (config.replace(scan_layers=False), llama.unstack_layers(params)))]
  np.testing.assert_array_equal(got[0], got[1])
  assert len(set(got[0][0].tolist())) > 1        # not a degenerate constant continuation


def test_cache_attention_equals_dense_attention():
  """The chunked online softmax over the visible span == softmax over every slot of the layer
  (random mask with holes, a row that sees nothing, spans crossing chunk borders)."""
  rng = np.random.default_rng(0)
  b, t, h, g, d, s_len = 3, 4, 6, 2, 8, 40
  q = jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((2, b, g, s_len, d)), jnp.float32) for _ in range(2))
  cache = attention.KVCache(k, v)
  mask = rng.random((b, t, s_len)) < 0.3
  mask[:, :, :7] = False
  mask[:, :, 33:] = False
  mask[1, 2] = False                                   # sees nothing: zeros
  mask = jnp.asarray(mask)
  span = attention.visible_span(mask, s_len)
  assert (int(span[0]), int(span[1])) == (int(np.argmax(mask.any((0, 1)))),
                                          s_len - int(np.argmax(mask.any((0, 1))[::-1])))
  for chunk in (8, 16, 40):                            # 16: the last chunk overlaps
    got, same = jax.jit(lambda q, c, m, sp, chunk=chunk: attention.cache_attention(
        q, c, 1, m, sp, chunk=chunk))(q, cache, mask, span)
    np.testing.assert_array_equal(same.k, k)
    want = attention.xla_attention(q, k[1], v[1], mask)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(got[1, 2], 0.0)


def test_logical_axes_and_tied_embeddings():
  config = llama.LlamaConfig.tiny(tie_embeddings=True)
  axes = llama.param_logical_axes(config)
  assert tuple(axes["embed"]["embedding"]) == ("vocab", "embed")
  # Scanned layers: one stacked tree with a leading "layers" axis.
  assert tuple(axes["layers"]["attn"]["k"]["kernel"]) == ("layers", "embed", "kv_heads",
                                                          "head_dim")
  assert tuple(axes["layers"]["mlp"]["down"]["kernel"]) == ("layers", "mlp", "embed")
  assert tuple(axes["layers"]["attn_norm"]["scale"]) == ("layers", "embed")
  assert "lm_head" not in axes
  params = llama.init_params(jax.random.key(0), config)
  tokens = jnp.array([[3, 4, 5]])
  logits, _, hidden = _fwd(params, tokens, jnp.arange(3)[None], config=config,
                                    return_hidden=True)
  np.testing.assert_allclose(logits, hidden @ params["embed"]["embedding"].T, atol=1e-5)


def test_qk_permutation_roundtrip():
  w = np.random.default_rng(0).normal(size=(3 * 8, 5)).astype(np.float32)
  np.testing.assert_array_equal(pretrained.unpermute_qk(pretrained.permute_qk(w, 3), 3), w)
  assert not np.array_equal(pretrained.permute_qk(w, 3), w)


def test_config_validation():
  with pytest.raises(ValueError, match="num_kv_heads"):
    llama.LlamaConfig.tiny(num_heads=3, num_kv_heads=2)
  with pytest.raises(ValueError, match="dtype"):
    llama.LlamaConfig.tiny(dtype="float8")


# ----------------------------------------------------------------------------- bad GGUF files


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    pretrained.load_gguf(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path):
  p = tmp_path / "x.gguf"
  p.write_bytes(b"PK\x03\x04 definitely a zip")
  with pytest.raises(pretrained.GGUFError, match="not a GGUF file"):
    pretrained.load_gguf(p)


def test_non_llama_architecture(tmp_path):
  p = str(tmp_path / "gpt2.gguf")
  w = gguf.GGUFWriter(p, "gpt2")
  w.add_block_count(1)
  w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(pretrained.GGUFError, match=r"gpt2.*supported architectures.*llama"):
    pretrained.load_gguf(p)


def _tiny_llama_gguf(path, *, qtype=None, drop=()):
  """A 1-layer llama GGUF with random F32 tensors (and optionally one odd-typed tensor)."""
  e, f, h, g, d, v = 8, 16, 2, 1, 4, 11
  w = gguf.GGUFWriter(path, "llama")
  w.add_block_count(1)
  w.add_context_length(32)
  w.add_embedding_length(e)
  w.add_feed_forward_length(f)
  w.add_head_count(h)
  w.add_head_count_kv(g)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_rope_freq_base(10000.0)
  w.add_vocab_size(v)
  rng = np.random.default_rng(0)
  shapes = {"token_embd.weight": (v, e), "output_norm.weight": (e,),
            "blk.0.attn_norm.weight": (e,), "blk.0.ffn_norm.weight": (e,),
            "blk.0.attn_q.weight": (h * d, e), "blk.0.attn_k.weight": (g * d, e),
            "blk.0.attn_v.weight": (g * d, e), "blk.0.attn_output.weight": (e, h * d),
            "blk.0.ffn_gate.weight": (f, e), "blk.0.ffn_up.weight": (f, e),
            "blk.0.ffn_down.weight": (e, f)}
  for name, shape in shapes.items():
    if name in drop:
      continue
    arr = rng.normal(size=shape).astype(np.float32)
    if qtype is not None and name == "blk.0.ffn_up.weight":
      w.add_tensor(name, arr.astype(np.int8), raw_dtype=qtype)
    else:
      w.add_tensor(name, arr)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def test_small_llama_gguf_loads_and_missing_tensor(tmp_path):
  p = str(tmp_path / "ok.gguf")
  _tiny_llama_gguf(p)
  config, params = pretrained.load_gguf(p)
  assert config.num_layers == 1 and config.num_kv_heads == 1 and config.tie_embeddings
  logits, _, _ = llama.forward(params, jnp.array([[1, 2, 3]]), jnp.arange(3)[None], config=config)
  assert logits.shape == (1, 3, 11) and np.all(np.isfinite(logits))
  p2 = str(tmp_path / "missing.gguf")
  _tiny_llama_gguf(p2, drop=("blk.0.ffn_gate.weight",))
  with pytest.raises(pretrained.GGUFError, match="blk.0.ffn_gate.weight"):
    pretrained.load_gguf(p2)


def test_unsupported_tensor_type(tmp_path):
  p = str(tmp_path / "i8.gguf")
  _tiny_llama_gguf(p, qtype=gguf.GGMLQuantizationType.I8)
  with pytest.raises(pretrained.GGUFError, match=r"blk.0.ffn_up.weight.*I8.*not supported"):
    pretrained.load_gguf(p)


def test_truncated_file(tmp_path):
  src = tmp_path / "ok.gguf"
  _tiny_llama_gguf(str(src))
  data = src.read_bytes()
  for n in (12, len(data) // 2, len(data) - 8):
    p = tmp_path / f"trunc{n}.gguf"
    p.write_bytes(data[:n])
    with pytest.raises(pretrained.GGUFError, match="truncated"):
      pretrained.load_gguf(p)


# ----------------------------------------------------------------------------- real model

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers.",
    "How do I reverse a list in Python?",
]


@pytest.fixture(scope="module")
def smollm2():
  try:
    path = pretrained.smollm2_path()
  except FileNotFoundError as e:
    pytest.fail(str(e))
  config, params = pretrained.load_gguf(path)
  return path, config, params, pretrained.load_tokenizer(path)


@pytest.fixture(scope="module")
def hf_model(smollm2):
  try:
    import torch
    import transformers
  except ImportError as e:
    print(f"\nSKIPPING transformers parity: transformers/torch not installed ({e})")
    pytest.skip(f"transformers parity needs torch + transformers + accelerate: {e}")
  path = smollm2[0]
  # One intra-op thread: on a loaded 2-core machine torch's OpenMP threads spin-wait on each
  # other and run 5-10x slower than single-threaded (measured).
  torch.set_num_threads(1)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
  model.eval()
  return model


@pytest.mark.slow
def test_smollm2_config(smollm2):
  _, config, params, _ = smollm2
  assert (config.num_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
  assert (config.num_heads, config.num_kv_heads, config.head_dim) == (9, 3, 64)
  assert config.rope_theta == 100000.0 and config.tie_embeddings and config.eos_id == 2
  n = sum(x.size for x in jax.tree.leaves(params))
  assert 134_000_000 < n < 135_000_000


@pytest.mark.slow
def test_prompt_logits_match_transformers(smollm2, hf_model):
  import torch
  path, config, params, tok = smollm2
  ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": PROMPTS[2]}]))
  tokens = np.array([ids])
  ours = np.asarray(jax.jit(lambda p, t: llama.forward(
      p, t, jnp.arange(t.shape[1])[None], config=config)[0])(params, tokens))
  with torch.no_grad():
    theirs = hf_model(torch.tensor(tokens)).logits.numpy()
  diff = float(np.abs(ours - theirs).max())
  print(f"\nmax |logit diff| vs transformers over {tokens.shape[1]} positions: {diff:.2e}")
  assert diff < 1e-3
  assert np.array_equal(ours.argmax(-1), theirs.argmax(-1))


@pytest.mark.slow
def test_greedy_continuations_match_transformers(smollm2, hf_model):
  import torch
  from partext_jax.ar import sampling as ar
  path, config, params, tok = smollm2
  n = 64
  prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}]))
             for p in PROMPTS]
  # All five prompts in one left-padded batch on both sides (one compilation here, one generate
  # call there; both sides also agree with unbatched runs prompt by prompt).
  ours, info = ar.generate(jax.random.key(0), llama.LlamaLM(config), params, prompts,
                           max_new_tokens=n, eos_id=None)
  ours = np.asarray(ours)
  assert int(info.num_steps) == n
  width = max(map(len, prompts))
  x = torch.tensor([[0] * (width - len(q)) + q for q in prompts])
  # An explicit attention mask: the prompt contains <|im_end|> (id 2) = pad_token_id, which
  # transformers would otherwise take for padding and mask out.
  am = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in prompts])
  start = time.perf_counter()
  with torch.no_grad():
    out = hf_model.generate(x, attention_mask=am, max_new_tokens=n, do_sample=False,
                            eos_token_id=None, pad_token_id=0)
  theirs = out[:, width:].numpy()
  print(f"\ntransformers generate: {time.perf_counter() - start:.1f} s")
  agree = [ours[i].tolist() == theirs[i].tolist() for i in range(len(prompts))]
  print(f"\ngreedy {n}-token continuations identical to transformers: {sum(agree)}/{len(agree)}")
  for i, ok in enumerate(agree):
    assert ok, (i, tok.decode(ours[i]), tok.decode(theirs[i]))
