"""experiments/gguf_peers.py: GGUF re-encoding for the llama.cpp peers of the benchmarks.

Q8_0 stores each block of 32 consecutive weights of a row as int8 ``q`` times one float16 scale:
``d = max|x| / 127``, ``q = round(x / d)``, written as ``fp16(d)``. So a weight comes back as
``q * fp16(d)`` with ``|x - q d| <= d / 2`` (rounding to the nearest integer) and
``|q (d - fp16(d))| <= 127 |d - fp16(d)|`` (the scale's own rounding), which bounds the error
per block (plus float32 rounding of the products, a few ulps of ``max|x|``).
"""

from __future__ import annotations

import os
import pathlib
import sys

import gguf
import numpy as np
import pytest

from partext_jax import pretrained
from partext_jax.pretrained import gguf as pgguf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "experiments"))
import gguf_peers  # pylint: disable=wrong-import-position

BLOCK = 32


def q8_0_bound(x: np.ndarray) -> np.ndarray:
  """Largest error Q8_0 may make on each weight of ``x`` (float32[..., K], K % 32 == 0)."""
  blocks = x.reshape(*x.shape[:-1], -1, BLOCK).astype(np.float64)
  d = np.abs(blocks).max(axis=-1, keepdims=True) / 127
  d16 = d.astype(np.float16).astype(np.float64)
  slack = 4 * np.finfo(np.float32).eps * 127 * np.maximum(d, d16)
  bound = d / 2 + 127 * np.abs(d - d16) + slack
  return np.broadcast_to(bound, blocks.shape).reshape(x.shape)


def _tensors(path):
  reader = pgguf.open_gguf(path)
  return reader, {t.name: t for t in reader.tensors}


def _write_toy(path):
  """A small GGUF: a Q4_1 matrix, a 1-D F32 vector, a matrix whose rows (48) are not whole
  32-blocks, and one extra metadata key."""
  rng = np.random.default_rng(0)
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
  writer.add_string("test.note", "kept")
  q41 = gguf.GGMLQuantizationType.Q4_1
  writer.add_tensor("blk.0.ffn_up.weight",
                    gguf.quants.quantize(rng.normal(size=(64, 96)).astype(np.float32), q41),
                    raw_dtype=q41)
  writer.add_tensor("blk.0.attn_norm.weight", rng.normal(size=96).astype(np.float32))
  writer.add_tensor("odd.weight", rng.normal(size=(8, 48)).astype(np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_toy_file_types_metadata_and_values(tmp_path, qtype):
  src, dst = tmp_path / "toy.gguf", tmp_path / f"toy-{qtype}.gguf"
  _write_toy(src)
  gguf_peers.reencode_gguf(str(src), str(dst), qtype)
  _, before = _tensors(str(src))
  reader, after = _tensors(str(dst))
  assert reader.fields["general.file_type"].contents() == int(
      gguf.LlamaFileType[gguf_peers.FILE_TYPES[qtype]])
  assert reader.fields["test.note"].contents() == "kept"
  expected = {"blk.0.ffn_up.weight": qtype, "blk.0.attn_norm.weight": "F32", "odd.weight": "F32"}
  assert {k: t.tensor_type.name for k, t in after.items()} == expected
  for name, t in after.items():
    x = pgguf.dequantize(before[name], path=str(src))
    y = pgguf.dequantize(t, path=str(dst))
    assert y.shape == x.shape
    if expected[name] == "F32":
      np.testing.assert_array_equal(y, x)
    else:
      assert np.all(np.abs(y - x) <= q8_0_bound(x)), name
      assert np.abs(y - x).max() > 0  # really re-quantised


def test_unknown_type_names_the_choices(tmp_path):
  with pytest.raises(ValueError, match=r"qtype='Q3_K'.*'Q8_0'"):
    gguf_peers.reencode_gguf("unused.gguf", str(tmp_path / "x.gguf"), "Q3_K")
  with pytest.raises(ValueError, match="choose one of"):
    gguf_peers.cached_gguf("unused.gguf", "q8", cache_dir=str(tmp_path))


def test_cache_converts_once_per_source_version(tmp_path, capsys):
  src = tmp_path / "toy.gguf"
  _write_toy(src)
  cache = str(tmp_path / "cache")
  first = gguf_peers.cached_gguf(str(src), "Q8_0", cache_dir=cache)
  assert "converted toy.gguf to Q8_0" in capsys.readouterr().err
  assert gguf_peers.cached_gguf(str(src), "Q8_0", cache_dir=cache) == first
  assert capsys.readouterr().err == ""  # no second conversion
  f32 = gguf_peers.cached_gguf(str(src), "F32", cache_dir=cache)
  st = os.stat(src)
  os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a changed source
  again = gguf_peers.cached_gguf(str(src), "Q8_0", cache_dir=cache)
  assert again != first and "converted" in capsys.readouterr().err
  assert sorted(os.listdir(cache)) == sorted(map(os.path.basename, (again, f32)))


def test_smollm2_q8_0_within_half_a_step(tmp_path):
  """The embedded SmolLM2 file (Q4_1) re-encoded to Q8_0: types as llama.cpp's Q8_0 files have
  them, and two matrices (a Q4_1 layer weight, the Q8_0 embedding) within the Q8_0 bound."""
  src = pretrained.smollm2_path()
  dst = gguf_peers.cached_gguf(src, "Q8_0", cache_dir=str(tmp_path))
  _, before = _tensors(src)
  reader, after = _tensors(dst)
  assert reader.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
  assert sorted(after) == sorted(before)
  for t in after.values():
    assert t.tensor_type.name == ("F32" if len(t.shape) == 1 else "Q8_0"), t.name
  err = {}
  for name in ("blk.0.ffn_down.weight", "token_embd.weight"):
    x = pgguf.dequantize(before[name], path=src)
    err[name] = np.abs(pgguf.dequantize(after[name], path=dst) - x)
    assert np.all(err[name] <= q8_0_bound(x)), (name, float(err[name].max()))
  # The layer weight was Q4_1 (16 levels per block): Q8_0 does not hold it exactly.
  assert err["blk.0.ffn_down.weight"].max() > 0
