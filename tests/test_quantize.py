"""Weight-only int8 quantization (``docs/algorithms.md#weight-only-quantization``): the rounding
bound, which tensors are quantized, the model's dequantising forward and the loader option."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.ar import sampling as ar
from partext_jax.models import llama
from partext_jax.pretrained import quantize

CFG = llama.LlamaConfig.tiny()
MODEL = llama.LlamaLM(CFG)


@pytest.fixture(scope="module")
def params():
  return MODEL.init(jax.random.key(0))


def test_int8_rounding_bound_and_zero_channels():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((16, 3, 5)).astype(np.float32) * np.array([1.0, 10.0, 0.1])[:, None]
  w[:, 2, 4] = 0.0  # an all-zero output channel
  q = quantize.quantize_int8(w, (0,))
  assert q.values.dtype == jnp.int8 and q.scale.shape == (1, 3, 5)
  np.testing.assert_allclose(q.scale, np.abs(w).max(0, keepdims=True) / 127 + (w == 0).all(
      0, keepdims=True), rtol=1e-6)
  err = np.abs(w - np.asarray(q.dequantize()))
  assert np.all(err <= np.asarray(q.scale) / 2 + 1e-7)
  assert int(np.abs(np.asarray(q.values)).max()) == 127  # the largest entry of a channel
  np.testing.assert_array_equal(np.asarray(q.values)[:, 2, 4], 0)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_only_decoder_kernels_are_quantized(params, scan_layers):
  # Both layer layouts of models/llama.py: stacked [L, ...] leaves (scan) or one tree per layer.
  params = params if scan_layers else llama.unstack_layers(params)
  qp = quantize.quantize_params(params, "int8")
  leaves = jax.tree_util.tree_leaves_with_path(qp, is_leaf=lambda x: isinstance(
      x, quantize.QuantizedTensor))
  names = sorted({jax.tree_util.keystr(p).split("'")[-4] for p, x in leaves
                  if isinstance(x, quantize.QuantizedTensor)})
  assert names == ["down", "gate", "k", "o", "q", "up", "v"]
  per_layer = 1 if scan_layers else CFG.num_layers
  assert sum(isinstance(x, quantize.QuantizedTensor) for _, x in leaves) == 7 * per_layer
  np.testing.assert_array_equal(qp["embed"]["embedding"], params["embed"]["embedding"])
  np.testing.assert_array_equal(qp["lm_head"]["kernel"], params["lm_head"]["kernel"])
  # o contracts over (heads, head_dim): one scale per output feature (and per layer).
  if scan_layers:
    assert qp["layers"]["attn"]["o"]["kernel"].scale.shape == (CFG.num_layers, 1, 1,
                                                                CFG.hidden_size)
  else:
    assert qp["layers"]["0"]["attn"]["o"]["kernel"].scale.shape == (1, 1, CFG.hidden_size)
  assert quantize.quantize_params(params, None) is params
  with pytest.raises(ValueError, match="quantization='int4'"):
    quantize.quantize_params(params, "int4")


def test_quantized_forward_equals_dense_dequantised_forward(params):
  qp = quantize.quantize_params(params, "int8")
  is_q = lambda x: isinstance(x, quantize.QuantizedTensor)  # noqa: E731
  dense = jax.tree_util.tree_map(lambda x: x.dequantize() if is_q(x) else x, qp, is_leaf=is_q)
  toks = jnp.asarray([[1, 5, 9, 4, 3, 7]])
  pos = jnp.arange(6)[None]
  fwd = jax.jit(lambda p: MODEL(p, toks, pos, None, None, None).logits)
  got, want, ref = fwd(qp), fwd(dense), fwd(params)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Close to the float32 model: logit error well below the logits' spread.
  assert float(jnp.abs(got - ref).max()) < 0.05 * float(ref.std()), (got - ref)
  err = quantize.quantization_error(params, qp)
  assert err["num_tensors"] == 7 * (1 if CFG.scan_layers else CFG.num_layers)   # stacked: 7
  assert 0 < err["total_rel_error"] < 0.02 and err["max_rel_error"] >= err["mean_rel_error"]
  assert err["bytes_after"] < 0.5 * err["bytes_before"] + 4 * CFG.vocab_size * CFG.hidden_size * 2


def test_quantized_params_decode_under_one_compilation(params):
  """New quantized weights are traced arguments: a second set reuses the compilation."""
  qp = quantize.quantize_params(params, "int8")
  prompts = [[1, 5, 9], [1, 7]]
  a, _ = ar.generate(jax.random.key(0), MODEL, qp, prompts, max_new_tokens=8, eos_id=None)
  size = ar._generate_jit._cache_size()  # pylint: disable=protected-access
  b, _ = ar.generate(jax.random.key(0), MODEL, quantize.quantize_params(
      jax.tree_util.tree_map(lambda x: x * 1.01, params), "int8"), prompts, max_new_tokens=8,
      eos_id=None)
  assert ar._generate_jit._cache_size() == size  # pylint: disable=protected-access
  assert a.shape == b.shape == (2, 8)
  with pytest.raises(ValueError, match="no quantized tensor"):
    quantize.quantization_error(params, params)


@pytest.mark.slow
def test_loader_option_on_smollm2():
  from partext_jax import pretrained  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="quantization='int4'"):
    pretrained.load_bundle(quantization="int4")
  model, qp, tok = pretrained.load_bundle(quantization="int8")
  q = qp["layers"]["mlp"]["up"]["kernel"]   # stacked layers (scan): [30, 576, 1536]
  assert isinstance(q, quantize.QuantizedTensor) and q.values.shape == (30, 576, 1536)
  assert quantize.param_bytes(qp) < 0.45 * 538e6
