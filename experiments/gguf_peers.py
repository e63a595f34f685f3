"""llama.cpp peers of the benchmarks: the embedded SmolLM2 GGUF re-encoded to another GGML type.

    python experiments/gguf_peers.py --type=Q8_0    # prints the path of the (cached) file

Imported as ``import gguf_peers`` by ``bench_ar.py`` (llama.cpp f32) and ``bench_eagle.py``
(llama.cpp f32 / Q8_0 / Q4_1 beside our f32 and int8 decode).

* :func:`reencode_gguf` writes a GGUF file with every tensor dequantised (``gguf.quants``) and
  re-encoded to one GGML type, metadata copied (``general.file_type`` set to match). Tensors
  llama.cpp keeps in float32 whatever the file type (1-D: norms, biases) stay F32, as do
  matrices whose rows are not a whole number of quantisation blocks.
* :func:`cached_gguf` does that once per source file: the result is kept in the temporary
  directory under a name keyed by the source's size and modification time.
* :func:`greedy_tokens`: llama.cpp (``llama-cpp-python``) greedy generation from token ids;
  :func:`first_divergence`: where two token sequences first differ.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from absl import flags
import numpy as np

import common

# GGML types a file can be re-encoded to -> the matching ``general.file_type``
# (``gguf.LlamaFileType`` member names).
FILE_TYPES = {
    "F32": "ALL_F32",
    "F16": "MOSTLY_F16",
    "BF16": "MOSTLY_BF16",
    "Q8_0": "MOSTLY_Q8_0",
    "Q5_0": "MOSTLY_Q5_0",
    "Q5_1": "MOSTLY_Q5_1",
    "Q4_0": "MOSTLY_Q4_0",
    "Q4_1": "MOSTLY_Q4_1",
}

CACHE_DIR = os.path.join(tempfile.gettempdir(), "partext_jax_gguf_peers")


def _check_type(qtype: str) -> None:
  if qtype not in FILE_TYPES:
    raise ValueError(f"qtype={qtype!r} is not supported; choose one of {sorted(FILE_TYPES)}")


def tensor_type(shape: tuple[int, ...], qtype: str) -> str:
  """The GGML type :func:`reencode_gguf` gives a tensor of numpy ``shape`` in a ``qtype`` file:
  ``F32`` for 1-D tensors (llama.cpp's converters keep norms in float32 in every file type) and
  for rows that are not whole quantisation blocks, else ``qtype``."""
  import gguf  # pylint: disable=import-outside-toplevel
  block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
  if len(shape) < 2 or shape[-1] % block:
    return "F32"
  return qtype


def reencode_gguf(src: str, dst: str, qtype: str) -> None:
  """Writes ``src`` to ``dst`` with every tensor re-encoded to the GGML type ``qtype``.

  Each tensor is dequantised to float32 (:func:`partext_jax.pretrained.gguf.dequantize`) and,
  where :func:`tensor_type` says so, quantised with ``gguf.quants.quantize`` (bit-exact with
  ggml's reference quantisers). Metadata is copied, except ``general.file_type`` which is set to
  :data:`FILE_TYPES` ``[qtype]``.

  Args:
    src: a GGUF file (any tensor types ``dequantize`` reads).
    dst: the file to write (overwritten).
    qtype: a key of :data:`FILE_TYPES`.

  Raises:
    ValueError: ``qtype`` is not a key of :data:`FILE_TYPES`.
    partext_jax.pretrained.gguf.GGUFError: ``src`` is not a readable GGUF file.
  """
  _check_type(qtype)
  import gguf  # pylint: disable=import-outside-toplevel
  from partext_jax.pretrained import gguf as pgguf  # pylint: disable=import-outside-toplevel
  reader = pgguf.open_gguf(src)
  arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
  writer = gguf.GGUFWriter(dst, arch)
  for field in reader.fields.values():
    if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
      continue
    if field.name == gguf.Keys.General.FILE_TYPE:
      writer.add_file_type(gguf.LlamaFileType[FILE_TYPES[qtype]])
      continue
    vtype = field.types[0]
    sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
    writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
  for t in reader.tensors:
    x = pgguf.dequantize(t, path=src)
    ttype = gguf.GGMLQuantizationType[tensor_type(x.shape, qtype)]
    # Quantised data is uint8 of a byte shape; raw_dtype tells the writer its real type.
    writer.add_tensor(t.name, gguf.quants.quantize(x, ttype), raw_dtype=ttype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def cached_gguf(src: str, qtype: str, *, cache_dir: str = CACHE_DIR) -> str:
  """Path of ``src`` re-encoded to ``qtype`` (:func:`reencode_gguf`), converted on first use.

  The file lives in ``cache_dir`` under a name keyed by ``src``'s name, size and modification
  time, so a changed source is converted again (older conversions of the same source and type
  are deleted then). The conversion time is printed to stderr when a conversion happens. The
  file is written under a temporary name and renamed, so an interrupted run leaves no partial
  file behind a valid name.

  Raises:
    ValueError: ``qtype`` is not a key of :data:`FILE_TYPES`.
    FileNotFoundError: ``src`` does not exist.
  """
  _check_type(qtype)
  st = os.stat(src)
  stem = os.path.splitext(os.path.basename(src))[0]
  os.makedirs(cache_dir, exist_ok=True)
  name = f"{stem}.{st.st_size}-{st.st_mtime_ns}.{qtype}.gguf"
  dst = os.path.join(cache_dir, name)
  if os.path.isfile(dst):
    return dst
  for old in os.listdir(cache_dir):
    if old.startswith(stem + ".") and old.endswith(f".{qtype}.gguf"):
      os.remove(os.path.join(cache_dir, old))
  start = time.perf_counter()
  partial = f"{dst}.partial-{os.getpid()}"
  try:
    reencode_gguf(src, partial, qtype)
    os.replace(partial, dst)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  print(f"gguf_peers: converted {os.path.basename(src)} to {qtype} in "
        f"{time.perf_counter() - start:.1f} s -> {dst} ({os.path.getsize(dst) / 2**20:.0f} MiB)",
        file=sys.stderr, flush=True)
  return dst


def greedy_tokens(llm, prompt_ids, n: int) -> list[int]:
  """The first ``n`` greedy tokens of ``llama_cpp.Llama`` ``llm`` after the token ids
  ``prompt_ids`` (fed as given: no BOS added), from an empty KV cache (no prefix reuse).

  Greedy is ``top_k=1, temp=0`` with every penalty off (``repeat_penalty=1``)."""
  llm.reset()
  gen = llm.generate(list(prompt_ids), top_k=1, temp=0.0, repeat_penalty=1.0)
  return [tok for _, tok in zip(range(n), gen)]


def first_divergence(tokens, reference) -> int:
  """Index of the first position where ``tokens`` and ``reference`` differ (the common length
  when one is a prefix of the other)."""
  a, b = np.asarray(tokens), np.asarray(reference)
  m = min(len(a), len(b))
  d = np.nonzero(a[:m] != b[:m])[0]
  return int(d[0]) if d.size else m


def main(argv):
  common.no_arguments(argv)
  from partext_jax import pretrained  # pylint: disable=import-outside-toplevel
  print(cached_gguf(_SRC.value or pretrained.smollm2_path(), _TYPE.value))


if __name__ == "__main__":
  # Flags only when run as a launcher: the benchmarks importing this module keep their own set.
  _TYPE = flags.DEFINE_enum("type", "Q8_0", sorted(FILE_TYPES), "GGML type to re-encode to.")
  _SRC = flags.DEFINE_string("src", None, "Source GGUF (default: the embedded SmolLM2 file).")
  common.check_flag("src", os.path.isfile, "must be an existing file")
  common.run(main)
