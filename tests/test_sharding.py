"""Meshes, logical-axis rules, and sharded training / sampling against one device.

The 8-device and two-process checks run ``tests/sharding_worker.py`` in subprocesses (the
simulated CPU device count is fixed when JAX starts); everything else runs here on one device.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from partext_jax import parallel
from partext_jax.models import denoiser, llama
from partext_jax.training import config as config_lib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "sharding_worker.py")


def _worker_module():
  spec = importlib.util.spec_from_file_location("sharding_worker", WORKER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _env():
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # The worker sets its own device count.
  return env


def _mesh(data, fsdp, tensor):
  return AbstractMesh((data, fsdp, tensor), parallel.AXIS_NAMES)


# --------------------------------------------------------------------------------------------
# Meshes and rules (no devices needed).


def test_resolve_mesh_shape_fills_minus_one_and_rejects_bad_shapes():
  assert parallel.resolve_mesh_shape(8) == (8, 1, 1)
  assert parallel.resolve_mesh_shape(8, data=2, fsdp=-1, tensor=2) == (2, 2, 2)
  assert parallel.resolve_mesh_shape(8, data=1, fsdp=4, tensor=2) == (1, 4, 2)
  with pytest.raises(ValueError, match=r"has 3 devices but 8 are available"):
    parallel.resolve_mesh_shape(8, data=3, fsdp=1, tensor=1)
  with pytest.raises(ValueError, match=r"do not divide the 8 devices"):
    parallel.resolve_mesh_shape(8, data=-1, fsdp=3, tensor=1)
  with pytest.raises(ValueError, match=r"at most one mesh axis may be -1"):
    parallel.resolve_mesh_shape(8, data=-1, fsdp=-1)
  with pytest.raises(ValueError, match=r"tensor=0 must be an int >= 1 or -1"):
    parallel.resolve_mesh_shape(8, tensor=0)


def test_make_mesh_has_auto_axes_and_checks_the_device_count():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == parallel.AXIS_NAMES
  assert parallel.mesh_shape(mesh) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
  # Auto, not make_mesh's Explicit default: with_sharding_constraint must work inside jit.
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match=r"are available"):
    parallel.make_mesh(data=jax.device_count() + 1)


def test_denoiser_specs_follow_the_rules():
  cfg = denoiser.DenoiserConfig(vocab_size=31, max_len=16, d_model=32, num_layers=1,
                                num_heads=4, mlp_dim=64)
  params = jax.eval_shape(lambda: denoiser.init_params(jax.random.key(0), cfg))
  specs = parallel.param_specs(denoiser.param_logical_axes(cfg), params, _mesh(2, 2, 2))
  block = specs["blocks"]                        # stacked blocks: the leading layer axis replicated
  assert block["attn"]["q"]["kernel"] == P(None, "fsdp", "tensor", None)  # embed, heads, head_dim
  assert block["attn"]["o"]["kernel"] == P(None, "tensor", None, "fsdp")  # heads, head_dim, embed
  assert block["mlp"]["gate"]["kernel"] == P(None, "fsdp", "tensor")      # embed, mlp
  assert block["mlp"]["down"]["kernel"] == P(None, "tensor", "fsdp")      # mlp, embed
  assert block["attn_norm"]["norm"]["scale"] == P(None, "fsdp")           # embed
  assert specs["embed"]["embedding"] == P("tensor", "fsdp")          # 32 = V + 1 rows
  assert specs["head"]["kernel"] == P("fsdp", None)                  # V = 31: replicated
  # Size-1 axes shard nothing and are dropped.
  specs = parallel.param_specs(denoiser.param_logical_axes(cfg), params, _mesh(8, 1, 1))
  assert all(s == P(*([None] * len(s)))
             for s in jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, P)))


def test_llama_specs_replicate_indivisible_kv_heads():
  config = llama.LlamaConfig.tiny()  # 4 heads, 2 KV heads, hidden 32.
  params = jax.eval_shape(lambda: llama.init_params(jax.random.key(0), config))
  specs = parallel.param_specs(llama.param_logical_axes(config), params, _mesh(1, 2, 4))
  attn = specs["layers"]["attn"]                            # stacked: the layer axis replicated
  assert attn["q"]["kernel"] == P(None, "fsdp", "tensor", None)  # 4 heads on tensor=4
  assert attn["k"]["kernel"] == P(None, "fsdp", None, None)      # 2 KV heads: replicated
  assert specs["layers"]["mlp"]["down"]["kernel"] == P(None, "tensor", "fsdp")


def test_batch_and_rule_errors_are_clear():
  mesh = _mesh(2, 2, 2)
  parallel.check_batch(8, mesh)
  with pytest.raises(ValueError, match=r"batch size 6 is not divisible by the batch mesh axes "
                                       r"\('data', 'fsdp'\) \(product 4\)"):
    parallel.check_batch(6, mesh)
  with pytest.raises(ValueError, match=r"unknown logical axis 'experts'; the rules know"):
    parallel.logical_to_spec(("experts", "embed"), (8, 8), mesh)
  with pytest.raises(ValueError, match=r"names mesh axis 'model', not one of"):
    parallel.logical_to_spec(("mlp",), (8,), mesh, rules={"mlp": "model"})
  assert parallel.batch_spec(mesh, 3) == P(("data", "fsdp"), None, None)


def test_mesh_config_section_is_strict():
  cfg = config_lib.parse_config({"mesh": {"data": 2, "fsdp": -1}})
  assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (2, -1, 1)
  with pytest.raises(config_lib.ConfigError, match=r"unknown config key config.mesh.'dta'"):
    config_lib.parse_config({"mesh": {"dta": 2}})
  with pytest.raises(config_lib.ConfigError, match=r"mesh.tensor=0 must be >= 1 or -1"):
    config_lib.parse_config({"mesh": {"tensor": 0}})
  with pytest.raises(config_lib.ConfigError, match=r"at most one mesh axis may be -1"):
    config_lib.parse_config({"mesh": {"data": -1, "tensor": -1}})


# --------------------------------------------------------------------------------------------
# 8 simulated devices, one process.


def test_eight_devices_match_one_device(tmp_path):
  out = tmp_path / "report.json"
  proc = subprocess.run([sys.executable, WORKER, "meshes", f"--out={out}"], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = json.loads(out.read_text())
  assert report["num_devices"] == 8
  assert set(report["meshes"]) == {"1x8", "2x4", "8x1"}
  lines = ["mesh | param bytes / device (denoiser) | of total | llama tiny / device | of total"]
  for label, m in report["meshes"].items():
    # Training: an unreduced gradient or a mis-sharded update would move parameters by O(lr) =
    # 1e-2 per step; summation-order rounding moves them by ~1e-6 (f32 eps x update sizes).
    assert m["train_max_param_diff"] < 1e-4, (label, m["train_max_param_diff"])
    assert m["train_max_loss_diff"] < 1e-4, (label, m["train_max_loss_diff"])
    assert m["denoiser_logits_max_diff"] < 1e-5, (label, m["denoiser_logits_max_diff"])
    bad = [name for name, same in m["tokens_equal"].items() if not same]
    assert not bad, f"mesh {label}: samplers differ from one device: {bad}"
    assert len(m["tokens_equal"]) == (8 if label == "1x8" else 7), m["tokens_equal"]
    assert m["token_sharding"] in ("P('data', None)", "P('fsdp', None)",
                                   "P(('data', 'fsdp'), None)"), m["token_sharding"]
    # KV cache: rows with the batch axes, KV heads with tensor when it divides the 2 heads.
    assert m["cache_spec"].replace(", None)", ")").replace(", None)", ")") == {
        "1x8": "P(None, 'fsdp', 'tensor')", "2x4": "P(None, 'data')",
        "8x1": "P(None, 'data')"}[label].replace(", None)", ")"), (label, m["cache_spec"])
    # Memory: every device holds exactly the ideal share (size / shards of each leaf).
    assert m["param_bytes_per_device"] == [m["param_bytes_expected"]], label
    lines.append(f"{label} | {m['param_bytes_per_device'][0]} | "
                 f"{m['param_bytes_per_device'][0] / m['param_bytes_total']:.3f} | "
                 f"{m['llama_bytes_per_device'][0]} | "
                 f"{m['llama_bytes_per_device'][0] / m['llama_bytes_total']:.3f}")
  meshes = report["meshes"]
  total = meshes["8x1"]["param_bytes_total"]
  assert meshes["8x1"]["param_bytes_per_device"] == [total]       # pure data parallel
  assert meshes["1x8"]["param_bytes_per_device"][0] <= total / 6   # fsdp=4 x tensor=2
  assert meshes["2x4"]["param_bytes_per_device"][0] <= total / 3   # tensor=4
  print("\n".join(lines))
  errors = report["errors"]
  assert "has 3 devices but 8 are available" in errors["mesh_not_dividing"]
  assert "x_init batch size 6 is not divisible" in errors["batch_not_divisible"]
  assert "prompts batch size 3 is not divisible" in errors["generate_batch_not_divisible"]
  assert "unknown logical axis 'mlp'" in errors["unknown_logical_axis"]
  assert "batch size 4 is not divisible" in errors["train_batch_not_divisible"]


# --------------------------------------------------------------------------------------------
# Two processes on localhost through jax.distributed (gloo CPU collectives).


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_a_single_process(tmp_path):
  port = _free_port()
  out = tmp_path / "multi.json"
  procs = [subprocess.Popen(
      [sys.executable, WORKER, "multi", f"--process_id={i}", "--num_processes=2",
       f"--port={port}", f"--out={out}"], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  logs = []
  try:
    for p in procs:
      _, err = p.communicate(timeout=600)
      logs.append(err)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert all(p.returncode == 0 for p in procs), "\n----\n".join(e[-3000:] for e in logs)
  result = json.loads(out.read_text())
  assert result["process_count"] == 2 and result["local_devices"] == 4
  assert result["mesh"] == "data=2 x fsdp=2 x tensor=2 (8 devices, 2 processes)"
  # The single-process, single-device reference, computed here.
  worker = _worker_module()
  ref = worker.reference_masked("tau_leaping", worker.IntegerModel.init())
  np.testing.assert_array_equal(np.asarray(result["tau_leaping"]), ref)
  model = worker.llama_model()
  ref_ar = worker.reference_generate(model.init(jax.random.key(2)))
  np.testing.assert_array_equal(np.asarray(result["ar_generate"]), ref_ar)
