"""Shared fixtures and checks of the masked-diffusion sampler tests.

Fixtures: one enumerable joint over V = 3 tokens, L = 3 positions, and its exact denoiser (test
modules using them define ``V, L = 3, 3`` and ``MASK = V`` to match).

Helpers (imported as ``from conftest import ...``): the bad-argument cases every sampler shares
(:data:`COMMON_BAD_ARGUMENTS`), the input checks every sampler shares
(:func:`assert_rejects_bad_inputs`), the compile-once check (:func:`assert_compiles_once`), the
one-token-per-step trajectory check (:func:`assert_decodes_best_position_each_step`), a float64
subprocess (:func:`run_with_x64`) and a small cached denoiser (:func:`cached_toy_denoiser`).
"""

import ctypes
import gc
import os
import subprocess
import sys
import tempfile

# XLA executables are shared through jax's persistent compilation cache by both xdist workers and
# every subprocess a test starts (launchers, README blocks, notebooks, the tour), which compile the
# same SmolLM2 and denoiser functions again and again: a cached executable loads in a fraction of
# the seconds its compilation takes on a 2-core machine. Keys cover the program, jax version and
# flags, so a hit is the executable a compilation would produce. An existing
# JAX_COMPILATION_CACHE_DIR is respected; eviction (at 2 GiB) holds a file lock around every read
# and write, so concurrent processes never read a half-written entry.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
      tempfile.gettempdir(), f"partext-jax-tests-xla-cache-{os.getuid()}")
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

import partext_jax
from partext_jax import testing

V, L = 3, 3
MASK = V


# A pytest-xdist worker runs hundreds of tests in one process; every jit cache entry keeps its
# compiled executable (and the constants closed over) alive: a worker held 5.7 GB halfway through
# the suite, and late in a CI run on the 2-core machine both workers died. After each module the
# worker drops its compilation caches once its resident memory passes this many bytes, and asks
# glibc to hand the freed pages back (without malloc_trim the resident size would stay put).
_RSS_LIMIT_BYTES = 2 << 30


def _resident_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_code():
  yield
  if os.path.exists("/proc/self/statm") and _resident_bytes() > _RSS_LIMIT_BYTES:
    gc.collect()
    jax.clear_caches()
    gc.collect()
    try:
      ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # Not glibc: the caches are still dropped.
      pass


@pytest.fixture(scope="module")
def joint():
  return testing.random_joint(0, vocab_size=V, length=L, concentration=0.5)


@pytest.fixture(scope="module")
def denoiser(joint):
  return testing.exact_denoiser(joint, mask_id=MASK)


# (kwargs, exception, match) cases that every sampler taking these arguments must reject before
# compiling, naming the argument; each test file adds its own.
COMMON_BAD_ARGUMENTS = [
    (dict(mask_id=-1), ValueError, "mask_id"),
    (dict(mask_id=3.0), TypeError, "mask_id"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(record_trajectory="yes"), TypeError, "record_trajectory"),
]


def assert_rejects_bad_inputs(make, model, *, mask_id: int, length: int):
  """The input checks every masked sampler shares, raised before compiling.

  ``make(model, mask_id)`` builds the sampler. Checked: a float ``x_init``, a rank-1 ``x_init``,
  ids outside the vocabulary that are not MASK (at ``sample``) and negative ids (at ``init``), a
  raw float key and a batch of keys, and a model that is not callable. A ``mask_id`` inside the
  model's vocabulary (``mask_id=1``) is valid (``partext_jax.base``): the sampler runs and never
  emits it.
  """
  sampler = make(model, mask_id)
  key = jax.random.key(0)
  masked = jnp.full((2, length), mask_id, jnp.int32)
  with pytest.raises(TypeError, match="x_init"):
    sampler.sample(key, masked.astype(jnp.float32))
  with pytest.raises(ValueError, match="x_init"):
    sampler.sample(key, masked[0])
  with pytest.raises(ValueError, match="x_init"):
    sampler.sample(key, jnp.full((2, length), mask_id + 2))       # not a token, not MASK
  with pytest.raises(ValueError, match="x_init"):
    sampler.init(jnp.full((2, length), -1))
  with pytest.raises((TypeError, ValueError), match="rng_key"):
    sampler.sample(jnp.zeros((3,), jnp.float32), masked)
  with pytest.raises((TypeError, ValueError), match="rng_key"):
    sampler.sample(jax.random.split(key, 2), masked)
  inside, _ = make(model, 1).sample(key, jnp.full((2, length), 1))  # MASK inside the vocabulary
  assert not np.any(np.asarray(inside) == 1), np.asarray(inside)
  with pytest.raises(TypeError, match="denoise_fn"):
    make(None, mask_id)


class _Counting:
  """A model function that records the input shape each time it is traced (or called)."""

  def __init__(self, func, traces):
    self.func, self.traces = func, traces

  def __call__(self, *args):
    self.traces.append(np.shape(args[-2]))       # the tokens (second to last: (..., tokens, t))
    return self.func(*args)


def counting_model(model, traces: list):
  """``model`` recording each trace in ``traces``; a ``Partial`` stays a ``Partial`` (same
  function, same parameters), so its parameters stay traced."""
  if isinstance(model, jax.tree_util.Partial):
    return jax.tree_util.Partial(_Counting(model.func, traces), *model.args, **model.keywords)
  return _Counting(model, traces)


def assert_compiles_once(make, model, x, *, new_prompt, jitted=None, new_shape=None):
  """``make(model)`` builds a sampler; checks that ``sample`` compiles once.

  A second call with a new key, a new prompt of the same shape (``new_prompt``) and a new sampler
  with equal hyper-parameters do not compile again; nor does, for a ``Partial`` model, a model
  with new parameters of the same shapes. Compilation is detected by the cache of ``jitted``
  (the module's compiled function) and, for a closure model, by the model's traces (a
  ``Partial`` is also traced abstractly, without compiling, when a new sampler checks its output
  shape, so its traces are not counted). With ``new_shape`` (an input of another shape) the
  model is traced again.
  """
  if isinstance(model, jax.tree_util.Partial) and jitted is None:
    raise ValueError("a Partial model needs `jitted` to detect compilation")
  traces = []
  counted = counting_model(model, traces)
  make(counted).sample(jax.random.key(0), x)
  first = len(traces)
  assert first >= 1
  size = None if jitted is None else jitted._cache_size()
  make(counted).sample(jax.random.key(1), x)
  make(counted).sample(jax.random.key(2), new_prompt)
  if isinstance(counted, jax.tree_util.Partial):
    params = jax.tree.map(lambda a: a + 1.0, counted.args)
    make(jax.tree_util.Partial(counted.func, *params)).sample(jax.random.key(3), x)
  else:
    assert len(traces) == first
  if jitted is not None:
    assert jitted._cache_size() == size
  if new_shape is not None:
    make(counted).sample(jax.random.key(2), new_shape)
    assert len(traces) > first


def assert_decodes_best_position_each_step(denoise_fn, x_init, info, *, mask_id: int, score):
  """Along ``info.tokens`` (``record_trajectory=True``): every step changes exactly one position of
  each row that still has a MASK -- the masked position of highest ``score(p)`` (``p`` the model's
  ``softmax`` on the previous tokens, ``float64[B, L, V] -> [B, L]``) -- and writes its argmax;
  finished rows do not change. Returns the trajectory ``[steps + 1, B, L]``."""
  traj = np.concatenate([np.asarray(x_init)[None], np.asarray(info.tokens)])
  for i, (prev, cur) in enumerate(zip(traj[:-1], traj[1:])):
    p = np.asarray(jax.nn.softmax(denoise_fn(jnp.asarray(prev), None), -1), np.float64)
    best = np.argmax(np.where(prev == mask_id, score(p), -np.inf), axis=1)
    for r in range(prev.shape[0]):
      changed = np.flatnonzero(cur[r] != prev[r])
      if not np.any(prev[r] == mask_id):
        assert changed.size == 0, (i, r)
        continue
      assert changed.tolist() == [int(best[r])], (i, r)
      assert cur[r, changed[0]] == int(np.argmax(p[r, changed[0]])), (i, r)
  return traj


def run_with_x64(script: str) -> None:
  """Runs ``script`` in a fresh Python with ``JAX_ENABLE_X64=1`` (x64 must be on before JAX
  creates arrays); asserts it exits 0 and prints ``ok``."""
  root = os.path.dirname(os.path.dirname(partext_jax.__file__))
  env = {**os.environ, "JAX_ENABLE_X64": "1",
         "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
  res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                       timeout=300)
  assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


def cached_toy_denoiser(num_layers: int, time_conditioning: bool, *, vocab_size: int,
                        max_len: int, scale: float = 5.0):
  """A small random denoiser ``(cfg, denoise_fn, kv_denoise_fn)``; weights scaled up so
  confidences spread over (0, 1). With time conditioning the FiLM weights are perturbed so ``t``
  matters (they start at zero, as before training)."""
  from partext_jax.models import denoiser  # pylint: disable=import-outside-toplevel
  cfg = denoiser.DenoiserConfig(vocab_size=vocab_size, max_len=max_len, d_model=16,
                                num_layers=num_layers, num_heads=2, mlp_dim=32,
                                time_conditioning=time_conditioning)
  params = jax.tree.map(lambda a: scale * a, denoiser.init_params(jax.random.key(0), cfg))
  if time_conditioning:
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: a + 0.3 if "film" in jax.tree_util.keystr(p) else a, params)
  return cfg, denoiser.make_denoise_fn(cfg, params), denoiser.make_cached_denoise_fn(cfg, params)
