"""The KV cache is updated in place by a decode step: the compiled decode loops hold no copy of
the cache and no fusion that rewrites the whole cache, with scanned or unrolled layers, so a
step's cost does not grow with the allocated cache length (issue 15; measured in
``experiments/bench_ar.py``, table "Allocated cache length").

The checks read XLA's optimized HLO (``jax.jit(f).lower(...).compile().as_text()``): every
instruction whose result has the cache's ``[layers, B, kv_heads, max_len, head_dim]`` shape, in
every computation that runs per step (loop bodies; for a one-step function with a donated cache,
the entry too), must be a pass-through (parameter, get-tuple-element, bitcast) or an in-place
update (a ``dynamic-update-slice`` / ``scatter``, bare or as the root of a fusion: XLA emits
those in the operand's buffer, writing only the updated rows). A ``copy``, or a fusion with any
other root (``select``, ``add``, ...), costs O(max_len) per step and fails the check; the checker
itself is shown to fire on a cache write that selects over the whole cache and on a step that
copies the cache (no donation). A donated step must also need no
temporary buffer as large as one layer of the cache (``Compiled.memory_analysis``). Exactness: a
greedy decode gives the same tokens whatever the allocated length, scanned or unrolled, and equal
to recomputing the whole sequence without a cache.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.ar import processors
from partext_jax.ar import sampling as ar
from partext_jax.models import attention, llama

MAX_LEN = 4096           # long enough that the cache's shape is unmistakable in the HLO
PROMPT = [5, 17, 3, 44, 9, 12, 70]

# Opcodes that produce a cache-shaped value without touching its contents, and the roots of
# fusions XLA:CPU emits in place (only the update's rows are written).
PASS_THROUGH = {"parameter", "get-tuple-element", "bitcast"}
IN_PLACE = {"dynamic-update-slice", "scatter"}

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?)(?:\{[^}]*\})? ([a-z-]+)\(")
_HEADER = re.compile(r"^(ENTRY )?%(\S+) .*\{$")


def _computations(hlo: str) -> dict[str, tuple[bool, list[str]]]:
  """``{name: (is_entry, instruction lines)}`` of an HLO module's text."""
  out, name = {}, None
  for line in hlo.splitlines():
    header = _HEADER.match(line)
    if header:
      name = header.group(2)
      out[name] = (bool(header.group(1)), [])
    elif name is not None and line.strip() == "}":
      name = None
    elif name is not None:
      out[name][1].append(line)
  return out


def cache_writes(hlo: str, shape: tuple[int, ...], *,
                 include_entry: bool) -> tuple[list[str], list[str]]:
  """``(in_place, rewrites)``: the instructions of ``hlo`` outside fused computations that produce
  a float32 array of ``shape`` by an in-place update, and those that produce one any other way
  than by a pass-through (see the module docstring). ``include_entry=False`` skips the entry
  computation (what runs once per call, not per step)."""
  comps = _computations(hlo)
  fused = {m for lines in (v[1] for v in comps.values()) for line in lines
           if " fusion(" in line for m in re.findall(r"calls=%([^\s,]+)", line)}
  roots = {}
  for name, (_, lines) in comps.items():
    for line in lines:
      m = _INSTRUCTION.match(line)
      if m and line.lstrip().startswith("ROOT"):
        roots[name] = m.group(3)
  target = "f32[" + ",".join(map(str, shape)) + "]"
  in_place, bad = [], []
  for name, (is_entry, lines) in comps.items():
    if name in fused or (is_entry and not include_entry):
      continue
    for line in lines:
      m = _INSTRUCTION.match(line)
      if not m or m.group(2) != target or m.group(3) in PASS_THROUGH:
        continue
      callee = re.search(r"calls=%([^\s,]+)", line)
      root = roots.get(callee.group(1)) if m.group(3) == "fusion" and callee else m.group(3)
      (in_place if root in IN_PLACE else bad).append(f"{name}: {line.strip()[:160]}")
  return in_place, bad


def _model(scan_layers: bool):
  config = llama.LlamaConfig.tiny(context_length=2 * MAX_LEN, scan_layers=scan_layers)
  params = jax.jit(llama.init_params, static_argnames="config")(
      jax.random.key(0), config=config.replace(scan_layers=True))
  return llama.LlamaLM(config), params if scan_layers else llama.unstack_layers(params)


def _cache_shape(model) -> tuple[int, ...]:
  c = model.config
  return (c.num_layers, 1, c.num_kv_heads, MAX_LEN, c.head_dim)


def _decode_step(model, *, donate: bool = True):
  """One greedy step scoring a block ``tok [1, T]`` at cache slots ``slot ..`` (``T = 1``: a
  decode step; ``T > 1``: a draft chain's verification forward), the cache donated as a serving
  loop does; returns the cache and the argmax after the block's last token."""
  def step(params, cache, tok, slot):
    q = slot + jnp.arange(tok.shape[1], dtype=jnp.int32)[None]
    out = model(params, tok, q, attention.causal_cache_mask(q, 0, cache.max_len), cache,
                jnp.full((1,), slot, jnp.int32))
    return out.cache, jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)[:, None]
  return jax.jit(step, donate_argnums=1 if donate else ())


_prefill = jax.jit(ar.prefill, static_argnums=(0, 4))


def _generate_hlo(model, params, max_new_tokens):
  batch = ar.prepare_batch(model, [PROMPT], max_new_tokens=max_new_tokens,
                           processor=processors.greedy(), eos_id=None)
  fn = jax.jit(ar.generate_impl, static_argnames=ar.STATIC_ARGNAMES)
  return fn.lower(jax.random.key(0), params, jnp.asarray(batch.tokens),
                  jnp.asarray(batch.lengths), model=model, max_new_tokens=max_new_tokens,
                  processor=processors.greedy(), eos_ids=(), pad_id=0, padding="left",
                  stream_callback=None).compile()


@pytest.fixture(scope="module", params=[True, False], ids=["scanned", "unrolled"])
def tiny(request):
  return _model(request.param)


@pytest.mark.parametrize("block", [1, 8])
def test_decode_step_updates_the_cache_in_place(tiny, block):
  model, params = tiny
  cache = model.init_cache(1, MAX_LEN)
  compiled = _decode_step(model).lower(params, cache, jnp.ones((1, block), jnp.int32),
                                       jnp.int32(len(PROMPT))).compile()
  in_place, rewrites = cache_writes(compiled.as_text(), _cache_shape(model), include_entry=True)
  assert len(in_place) >= 2 and rewrites == [], (in_place, rewrites)     # K and V written
  # The donated cache is the output's buffer; nothing near one layer's K is allocated on top.
  memory = compiled.memory_analysis()
  layer_bytes = cache.k.nbytes // model.config.num_layers
  assert memory.alias_size_in_bytes >= cache.nbytes
  assert memory.temp_size_in_bytes < layer_bytes, (memory.temp_size_in_bytes, layer_bytes)


def test_generate_loop_updates_the_cache_in_place(tiny):
  model, params = tiny
  p = ar.bucket_length(len(PROMPT))
  compiled = _generate_hlo(model, params, MAX_LEN - p)
  in_place, rewrites = cache_writes(compiled.as_text(), _cache_shape(model), include_entry=False)
  assert len(in_place) >= 2 and rewrites == [], (in_place, rewrites)


def test_checker_fires_on_a_copying_cache_write(monkeypatch):
  """A cache write that selects over the whole cache (O(max_len) per step, the kind of defect
  the checks above exist for) is reported, scanned and unrolled."""
  def write_by_select(self, layer, write_slots, k, v):
    slots = jnp.arange(self.max_len)[None, None, None, :, None]
    layers = jnp.arange(self.k.shape[0])[:, None, None, None, None]
    hit = (layers == layer) & (slots == jnp.asarray(write_slots)[None, :, None, None, None])
    new = lambda x, old: jnp.where(hit, x[:, :1].transpose(0, 2, 1, 3)[None], old)
    return attention.KVCache(new(k, self.k), new(v, self.v))

  monkeypatch.setattr(attention.KVCache, "write", write_by_select)
  for scan_layers in (True, False):
    model, params = _model(scan_layers)
    compiled = _decode_step(model).lower(params, model.init_cache(1, MAX_LEN),
                                         jnp.ones((1, 1), jnp.int32), jnp.int32(3)).compile()
    _, rewrites = cache_writes(compiled.as_text(), _cache_shape(model), include_entry=True)
    assert len(rewrites) >= 2, rewrites   # the K and the V rewrite (per layer when unrolled)


def test_checker_fires_on_a_copied_cache():
  """Without donation the step must copy the cache into a fresh output buffer: reported."""
  model, params = _model(True)
  compiled = _decode_step(model, donate=False).lower(
      params, model.init_cache(1, MAX_LEN), jnp.ones((1, 1), jnp.int32), jnp.int32(3)).compile()
  _, rewrites = cache_writes(compiled.as_text(), _cache_shape(model), include_entry=True)
  assert any(" copy(" in r for r in rewrites), rewrites


def test_greedy_tokens_do_not_depend_on_the_allocated_length():
  """Scanned and unrolled, caches of 32 and ``MAX_LEN`` slots: the same greedy tokens, equal to
  the argmax of an uncached forward over the whole sequence at every step."""
  n = 12
  runs = {}
  for scan_layers in (True, False):
    model, params = _model(scan_layers)
    for s_len in (32, MAX_LEN):
      tok = jnp.asarray([[PROMPT[-1]]], jnp.int32)
      cache = _prefill(model, params, jnp.asarray([PROMPT[:-1]]), jnp.zeros(1, jnp.int32),
                       s_len, logits_at=jnp.zeros((1, 1), jnp.int32)).cache
      step, out = _decode_step(model), []
      for i in range(n):
        cache, tok = step(params, cache, tok, jnp.int32(len(PROMPT) - 1 + i))
        out.append(int(tok[0, 0]))
      runs[scan_layers, s_len] = out
  assert len({tuple(v) for v in runs.values()}) == 1, runs
  model, params = _model(True)
  seq = PROMPT + runs[True, MAX_LEN]
  pos = jnp.arange(len(seq))[None]
  logits = jax.jit(model)(params, jnp.asarray([seq]), pos, None, None, None).logits[0]
  recomputed = np.argmax(np.asarray(logits[len(PROMPT) - 1:-1]), axis=-1).tolist()
  assert recomputed == runs[True, MAX_LEN]
