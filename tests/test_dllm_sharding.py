"""Tiny LLaDA / Dream on 8 simulated CPU devices: meshes (8,), (4, 2), (2, 4) give one device's
tokens, and loading puts every parameter straight onto its shards.

The 8 devices exist only in a fresh process (the device count is fixed when JAX starts): the test
runs this file as a script (``python tests/test_dllm_sharding.py --out=report.json``) with
``--xla_force_host_platform_device_count=8`` and checks its JSON report. A mesh ``(f, t)`` is
``data=1 x fsdp=f x tensor=t`` (FSDP x tensor parallelism, ``partext_jax.parallel.mesh``); the
8 rows of the batch split over ``fsdp``. ``docs/algorithms.md#real-diffusion-lms-llada-dream``.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MESHES = {"(8,)": (1, 8, 1), "(4, 2)": (1, 4, 2), "(2, 4)": (1, 2, 4)}
BATCH, PROMPT, GEN, BLOCK = 8, 3, 8, 4
# arch -> sampler name -> (SAMPLERS entry, hyper-parameters); temperature 1: random draws.
SAMPLERS = {
    "llada": {
        "tau_leaping": ("tau_leaping", dict(num_steps=4)),
        "block_cache_dual": ("block_cache", dict(cache="dual", rule="threshold", threshold=0.3,
                                                 temperature=1.0, block_length=BLOCK,
                                                 gen_length=GEN)),
    },
    "dream": {
        "confidence_topk_semi_ar": ("confidence", dict(num_steps=4, temperature=1.0,
                                                       block_length=BLOCK, gen_length=GEN)),
        "block_cache_prefix": ("block_cache", dict(cache="prefix", rule="threshold",
                                                   threshold=0.3, temperature=1.0,
                                                   block_length=BLOCK, gen_length=GEN)),
    },
}


def test_meshes_match_one_device(tmp_path):
  out = tmp_path / "report.json"
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
                       "--xla_backend_optimization_level=0 "
                       "--xla_llvm_disable_expensive_passes=true")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--out={out}"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = json.loads(out.read_text())
  assert report["num_devices"] == 8
  for arch, meshes in report["archs"].items():
    assert set(meshes) == set(MESHES), arch
    for label, m in meshes.items():
      assert m["tokens_equal"] == {name: True for name in SAMPLERS[arch]}, (arch, label, m)
      assert m["logits_max_diff"] < 1e-5, (arch, label, m["logits_max_diff"])
      # Loaded straight onto the shards: every leaf has its rule sharding, and every device
      # holds exactly its ideal share (size / shards, summed over leaves).
      assert m["misplaced_leaves"] == [], (arch, label)
      assert m["param_bytes_per_device"] == [m["param_bytes_expected"]], (arch, label)
      assert m["param_bytes_expected"] < m["param_bytes_total"] / 3, (arch, label)
      assert m["tokens_rows_split_over"] == "fsdp", (arch, label)


def _samplers(bundle, arch):
  from partext_jax import masked  # pylint: disable=import-outside-toplevel
  out = {}
  for name, (entry, kwargs) in SAMPLERS[arch].items():
    model = bundle.kv_denoise_fn if entry == "block_cache" else bundle.denoise_fn
    out[name] = masked.SAMPLERS[entry](model, mask_id=bundle.mask_id, **kwargs)
  return out


def run(out_path: str) -> None:
  import tempfile  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from partext_jax import parallel  # pylint: disable=import-outside-toplevel
  from partext_jax.models import llama  # pylint: disable=import-outside-toplevel
  from partext_jax.pretrained import dllm  # pylint: disable=import-outside-toplevel

  report = {"num_devices": jax.device_count(), "archs": {}}
  root = tempfile.mkdtemp()
  key = jax.random.key(3)
  for arch in SAMPLERS:
    path = dllm.write_tiny_checkpoint(os.path.join(root, arch), arch=arch)
    one = dllm.load_dllm(path)
    prompt = np.random.default_rng(1).integers(0, 256, (BATCH, PROMPT))
    x = np.full((BATCH, PROMPT + GEN), one.mask_id, np.int32)
    x[:, :PROMPT] = prompt
    ref_logits = np.asarray(one.denoise_fn(jax.numpy.asarray(x), jax.numpy.ones(BATCH)))
    ref = {name: np.asarray(s.sample(key, jax.numpy.asarray(x))[0])
           for name, s in _samplers(one, arch).items()}
    report["archs"][arch] = {}
    for label, (d, f, t) in MESHES.items():
      mesh = parallel.make_mesh(data=d, fsdp=f, tensor=t)
      bundle = dllm.load_dllm(path, mesh=mesh)
      specs = parallel.param_specs(llama.param_logical_axes(bundle.spec.config), bundle.params,
                                   mesh)
      misplaced = [jax.tree_util.keystr(p) for p, leaf in
                   jax.tree_util.tree_leaves_with_path(bundle.params)
                   if leaf.sharding.spec != _at(specs, p)]
      xs = parallel.shard_batch(x, mesh)
      logits = parallel.to_host(bundle.denoise_fn(xs, jax.numpy.ones(BATCH)))
      m = {"mesh": parallel.describe(mesh), "misplaced_leaves": misplaced,
           "param_bytes_per_device": sorted(set(parallel.bytes_per_device(bundle.params)
                                                .values())),
           "param_bytes_expected": parallel.expected_bytes_per_device(bundle.params, specs, mesh),
           "param_bytes_total": int(sum(a.nbytes for a in jax.tree.leaves(bundle.params))),
           "logits_max_diff": float(np.max(np.abs(logits - ref_logits))), "tokens_equal": {}}
      for name, sampler in _samplers(bundle, arch).items():
        tokens, _ = sampler.sample(key, xs)
        m["tokens_equal"][name] = bool(np.array_equal(parallel.to_host(tokens), ref[name]))
        m["tokens_rows_split_over"] = str(tokens.sharding.spec[0])
      report["archs"][arch][label] = m
  with open(out_path, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)


def _at(tree, path):
  for entry in path:
    tree = tree[entry.key]
  return tree


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  run(sys.argv[1].split("=", 1)[1])
