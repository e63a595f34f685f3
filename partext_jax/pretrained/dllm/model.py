r"""The model adapter: a LLaDA / Dream checkpoint as the masked-diffusion model protocols.

:class:`DiffusionLM` is a hashable ``(params, tokens int32[B, L], t float32[B]) -> logits
float32[B, L, V]``; ``jax.tree_util.Partial(model, params)`` is the ``denoise_fn`` every sampler
takes (``docs/algorithms.md#real-diffusion-lms-llada-dream``). It runs the bidirectional Llama stack
(:class:`partext_jax.models.llama.Llama` with ``causal=False``) and hides the family's quirks, so
the samplers see one protocol:

* **Mask inside the vocabulary.** The output covers all ``V`` ids, MASK included;
  :attr:`DiffusionLM.exclude_ids` names the other never-generate ids, and the samplers set the
  logits of both to ``-inf`` (:func:`partext_jax.masked.driver.without_ids`).
* **Shifted logits** (Dream: the network's output at ``i`` predicts token ``i + 1``). Output
  position ``i`` returns the network's logits at ``i - 1``; position 0, which has no left
  neighbour, returns the network's own logits at 0, as the Dream reference does
  (``cat([logits[:, :1], logits[:, :-1]])``); in practice position 0 is a prompt token (BOS).
* **EOS penalty** (``eos_penalty = c > 0``; Dream-Coder's padding penalty, Xie et al. 2025):
  ``logits[..., e] += c log(1 - t + 1e-3)`` for every ``e`` in ``spec.eos_ids``, with ``t`` the
  time the sampler passes (1 when everything is masked, falling to ~0): a strong push away from
  EOS early, none at the end, against the early-EOS (empty answer) pathology of long canvases.
  The adaptive samplers pass the row's masked fraction as ``t``.

The cached variant (:meth:`DiffusionLM.cached`, wrapped as a ``Partial`` by
:func:`kv_denoise_fn`) is the protocol of :mod:`partext_jax.masked.block_cache`::

    kv_denoise_fn(tokens int32[B, T], t float32[B], positions int32[B, T], context)
        -> (logits float32[B, T, V], ContextCache)

``context = None``: a full pass over ``T = L`` positions that also returns every layer's
rotary-embedded keys / values and the tokens they came from (:class:`ContextCache`, leaves
``[layers or 1, B, L, ...]``). ``context = (ContextCache, ranges)``: only the ``T`` contiguous
query positions ``positions[b] = q0[b] + 0..T-1`` run; in every layer they attend to the stored
rows in the static ``ranges`` and to their own fresh rows (written over the stored ones in a copy
of the cache, then a dense mask over the ``L`` slots). With shifted logits the query block is
extended by the position ``q0 - 1`` on its left, whose token comes from the stored tokens, so
that output ``q0`` gets fresh logits of ``q0 - 1`` (the Fast-dLLM Dream code instead reads the
block's own first row there, and forces that position to be decoded at the refresh); the stored
cache is padded by one slot so that the extra row never overwrites a stored row when ``q0 = 0``.
The returned cache of a context call is the stored one, unchanged.

Sharding: with ``mesh`` set the adapter pins tokens and logits to the batch axes and the cache to
``(batch, kv_heads)`` (as :class:`partext_jax.parallel.MeshLM`), by the logical-axis ``rules``
(a dimension that does not divide stays replicated, e.g. a batch of 1 on an FSDP mesh).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from partext_jax.base import checked_float
from partext_jax.models import llama
from partext_jax.models.attention import KVCache
from partext_jax.parallel import mesh as mesh_lib
from partext_jax.pretrained.dllm.spec import DLLMSpec

EOS_PENALTY_EPS = 1e-3   # Dream's time floor ``eps``: the penalty at t = 1 is c log(1e-3)


class ContextCache(NamedTuple):
  """What a full cached pass stores: ``kv`` the :class:`~partext_jax.models.attention.KVCache`
  ``[layers, B, kv_heads, L, head_dim]``; ``tokens int32[1, B, L]`` the tokens it was computed
  from (the shifted-logit query needs the token left of the block)."""
  kv: KVCache
  tokens: jax.Array


def shift_right(logits):
  """``out[:, i] = logits[:, max(i - 1, 0)]``: Dream's shift (``[B, L, V]``)."""
  return jnp.concatenate([logits[:, :1], logits[:, :-1]], axis=1)


@dataclasses.dataclass(frozen=True)
class DiffusionLM:
  """``(params, tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]`` of a LLaDA /
  Dream spec (module docstring). Frozen and hashable: the function of the ``Partial`` samplers
  take, so equal adapters share compiled programs.

  Attributes:
    spec: the checkpoint's :class:`~partext_jax.pretrained.dllm.spec.DLLMSpec`.
    eos_penalty: ``c >= 0`` of the EOS penalty (0: off).
    mesh: optional ``jax.sharding.Mesh`` whose batch axes the activations are pinned to.
    rules: the logical-axis rules of :mod:`partext_jax.parallel.mesh`.
  Raises:
    ValueError: ``eos_penalty`` negative or not finite.
  """
  spec: DLLMSpec
  eos_penalty: float = 0.0
  mesh: Any = None
  rules: tuple = mesh_lib.DEFAULT_RULES

  def __post_init__(self):
    object.__setattr__(self, "eos_penalty", checked_float("eos_penalty", self.eos_penalty,
                                                          lo=0.0))
    object.__setattr__(self, "rules", mesh_lib.normalize_rules(self.rules))

  @property
  def exclude_ids(self) -> tuple[int, ...]:
    """Never-generate ids besides the MASK id (read by the samplers)."""
    return self.spec.exclude_ids

  def __call__(self, params, tokens, t):
    c = self.spec.config
    tokens = self._pin(tokens, ("batch", "length"))
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    logits = llama.forward(params, tokens, positions, None, config=c).logits
    return self._output(shift_right(logits) if self.spec.shift_logits else logits, t)

  def cached(self, params, tokens, t, positions, context):
    """The cached protocol (module docstring): ``(logits [B, T, V], ContextCache)``."""
    c = self.spec.config
    tokens = self._pin(tokens, ("batch", "length"))
    b, n = tokens.shape
    positions = jnp.asarray(positions, jnp.int32)
    if context is None:
      kv = KVCache.zeros(c.num_layers, b, n, c.num_kv_heads, c.head_dim, c.compute_dtype)
      out = llama.forward(params, tokens, positions, None, kv, jnp.zeros((b,), jnp.int32),
                          config=c)
      logits = shift_right(out.logits) if self.spec.shift_logits else out.logits
      return self._output(logits, t), self._pin_cache(ContextCache(out.cache, tokens[None]))
    stored, ranges = context
    offset = int(self.spec.shift_logits)
    q0 = positions[:, 0]
    slot_position = jnp.arange(stored.kv.max_len + offset) - offset      # padded slot -> position
    first = q0[:, None] - offset
    fresh = (slot_position >= jnp.maximum(first, 0)) & (slot_position < q0[:, None] + n)
    mask = (jnp.asarray(_range_mask(ranges, stored.kv.max_len, offset))[None] | fresh)[:, None]
    kv = stored.kv
    if offset:
      left = jnp.take_along_axis(stored.tokens[0], jnp.maximum(q0 - 1, 0)[:, None], axis=1)
      tokens = jnp.concatenate([left, tokens], axis=1)
      positions = jnp.concatenate([positions[:, :1] - 1, positions], axis=1)
      pad = ((0, 0), (0, 0), (0, 0), (1, 0), (0, 0))   # KVCache [L, B, G, S, D]: one slot left
      kv = KVCache(jnp.pad(kv.k, pad), jnp.pad(kv.v, pad))
    # Query row j (position q0 - offset + j) is written to padded slot q0 + j.
    logits = llama.forward(params, tokens, positions, mask, kv, q0, config=c).logits
    if offset:   # output q0 + k <- position max(q0 + k - 1, 0): row k, or row 1 when q0 = 0
      head = jnp.where((q0 == 0)[:, None], logits[:, 1], logits[:, 0])
      logits = logits[:, :n].at[:, 0].set(head)
    return self._output(logits, t), stored

  def _output(self, logits, t):
    logits = logits.astype(jnp.float32)
    if self.eos_penalty and self.spec.eos_ids:
      t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), logits.shape[:1])
      bias = self.eos_penalty * jnp.log(1.0 - t + EOS_PENALTY_EPS)
      ids = jnp.asarray(self.spec.eos_ids, jnp.int32)
      logits = logits.at[:, :, ids].add(bias[:, None, None])
    return self._pin(logits, ("batch", "length", None))

  def _pin(self, x, names):
    if self.mesh is None:
      return x
    spec = mesh_lib.logical_to_spec(names, x.shape, self.mesh, rules=self.rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

  def _pin_cache(self, cache: ContextCache) -> ContextCache:
    names = (None, "batch", "kv_heads", "length", "head_dim")   # KVCache [L, B, G, S, D]
    return ContextCache(KVCache(*(self._pin(x, names) for x in cache.kv)),
                        self._pin(cache.tokens, (None, "batch", "length")))


def _range_mask(ranges, length: int, offset: int) -> np.ndarray:
  """``bool[length + offset]``: padded slot ``s`` holds a position inside the static ``ranges``."""
  try:
    ranges = tuple((int(a), int(b)) for a, b in ranges)
  except (TypeError, jax.errors.ConcretizationTypeError) as e:
    raise TypeError(f"context ranges must be static Python ints, got {ranges}") from e
  out = np.zeros(length + offset, bool)
  for a, b in ranges:
    if not 0 <= a <= b <= length:
      raise ValueError(f"context range {(a, b)} is not inside [0, {length}]")
    out[a + offset:b + offset] = True
  return out


@dataclasses.dataclass(frozen=True)
class CachedDiffusionLM:
  """Hashable ``(params, tokens, t, positions, context) -> (logits, ContextCache)``: the
  function of :func:`kv_denoise_fn`'s ``Partial`` (:meth:`DiffusionLM.cached`)."""
  model: DiffusionLM

  @property
  def exclude_ids(self) -> tuple[int, ...]:
    return self.model.exclude_ids

  def __call__(self, params, tokens, t, positions, context):
    return self.model.cached(params, tokens, t, positions, context)


def denoise_fn(model: DiffusionLM, params) -> jax.tree_util.Partial:
  """``denoise_fn(tokens, t) -> logits`` of ``model`` over ``params`` (traced by the samplers'
  jit)."""
  return jax.tree_util.Partial(model, params)


def kv_denoise_fn(model: DiffusionLM, params) -> jax.tree_util.Partial:
  """The cached ``kv_denoise_fn(tokens, t, positions, context) -> (logits, ContextCache)`` of
  :mod:`partext_jax.masked.block_cache`, of ``model`` over ``params``."""
  return jax.tree_util.Partial(CachedDiffusionLM(model), params)
