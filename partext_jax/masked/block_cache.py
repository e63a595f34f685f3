r"""Cached block decoding for masked-diffusion LMs: Fast-dLLM prefix / dual cache and exact mode.

Runs the adaptive samplers of :mod:`partext_jax.masked.adaptive` (any rule of
:data:`partext_jax.masked.rules.RULES`: ``topk``, ``threshold``, ``factor``, ``eb``) in
semi-autoregressive block mode (:mod:`partext_jax.masked.blocks`) with a key/value cache
(Wu et al. 2025, Fast-dLLM; ``docs/algorithms.md#block-caches``). The
window ``[L - gen_length, L)`` is cut into blocks ``[s_j, e_j)`` of ``block_length`` positions;
every step decodes positions of the current block only, with the same rule, randomness and
carry-over as the uncached sampler. What changes is how the logits of the block are computed.
With ``K_l, V_l`` the per-layer keys and values of a full forward pass, stored at the block's
first step (the *refresh*, a full forward pass whose logits serve that step):

* ``cache="prefix"`` (Fast-dLLM prefix cache): later steps of the block run only positions
  ``[s_j, L)`` (block and suffix) through the model; in every layer they attend to the stored
  ``K_l, V_l`` of the prefix ``[0, s_j)`` and to their own fresh keys and values. Cost per step
  ``(L - s_j) / L`` of a full pass.
* ``cache="dual"`` (Fast-dLLM dual cache): later steps run only the block ``[s_j, e_j)``; it
  attends to the stored rows of the prefix *and* the suffix ``[e_j, L)`` plus its own fresh rows
  (the reference overwrites the block's rows of the cache in place each step; here they are never
  read, only the fresh ones). Cost ``block_length / L``.
* ``cache="exact"``: refresh at every step (a full pass each step, so no stored row is ever
  read, and none is kept): token for token the uncached sampler.

In every layer ``l`` a cached step computes, for a query ``q`` of the block (or suffix),

    h_l(q) = sum_{k in C} softmax_k(q . K_l[k] / sqrt(D)) V_l[k]
             + (fresh rows of the queries themselves),

where ``C`` is the stored context. Prefix tokens do not change within a block (they are decoded)
and neither do suffix tokens (all MASK), but the *block* tokens do, and from layer 1 on the
stored rows of the context were computed while the block held its older tokens (and for a
time-conditioned model at an older ``t``): the cache is stale, which is the Fast-dLLM
approximation; its effect on quality is measured, not assumed
(``experiments/bench_block_cache.py``). Layer-0 rows depend only on their own token, so a
1-layer model without time conditioning decodes exactly with either cache.

Batches. With a cache all rows work on the same block ``j``, the first block any row still has a
MASK in (for ``topk`` block ``step // steps_per_block`` as uncached); a row that finished block
``j`` waits, without decoding, until every row has (a batch may take more steps than its slowest
row alone; exact mode, which only makes full passes, lets rows move on as uncached). A row's
randomness is indexed by its *own* step count (``fold_in(fold_in(key, row_step), row)``, which
equals the uncached sampler's global step for a row that never waits), and its context is sliced
from its own cache row, so a row's output does not depend on the other rows (the reference's
dual cache mixes rows at batch > 1). The refresh is a batch-level call at the block's first step.

Cost accounting (``info``, stacked along a leading step axis): ``nfe`` counts denoiser calls of
any kind, ``full_calls`` the refreshes (one per block for the caches, one per step for exact),
``cost`` the call's query positions over ``L`` (a full pass = 1; attention over the context is
not counted, it is the small part at these lengths).

The model is injected, never imported: ``kv_denoise_fn(tokens int32[B, T], t float32[B],
positions int32[B, T], context) -> (logits float32[B, T, V], kv)`` where ``context`` is ``None``
(a plain pass over the ``T`` positions) or ``(kv, ranges)``: a stored ``kv`` of a full pass and
the static ``ranges = ((start, stop), ...)`` of its rows the queries attend to (prefix; and
suffix for the dual cache); ``kv`` leaves are ``[layers, B, ..., L, D]`` (positions on the
second-to-last axis, as in :class:`~partext_jax.models.attention.KVCache`
``[layers, B, heads, L, head_dim]``).
:func:`partext_jax.models.denoiser.make_cached_denoise_fn` builds one for the project's
denoiser.

Example::

    from partext_jax.models.denoiser import make_cached_denoise_fn
    kv_fn = make_cached_denoise_fn(cfg, params)
    x = jnp.full((4, 128), cfg.mask_id, jnp.int32).at[:, :16].set(prompt)
    sampler = block_cache(kv_fn, mask_id=cfg.mask_id, cache="dual", rule="threshold",
                          threshold=0.9, block_length=16, gen_length=112)
    tokens, info = sampler.sample(jax.random.key(0), x)
    int(info.nfe.sum()), int(info.full_calls.sum()), float(info.cost.sum())
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from partext_jax.base import checked_callable, checked_choice, model_jit
from partext_jax.masked import driver
from partext_jax.masked.adaptive import (DecodeConfig, decode_chosen, decode_config,
                                         edit_committed, editable_positions, masked_fraction,
                                         plan_step)
from partext_jax.masked.driver import MaskedSampler

CACHE_MODES = ("exact", "prefix", "dual")


class CacheState(NamedTuple):
  """Carried state.

  Attributes:
    tokens: ``int32[B, L]`` current sequence.
    step: ``int32[]`` global step index.
    row_step: ``int32[B]`` steps in which each row decoded (its randomness index for the
      variable-count rules).
    block_count: ``int32[B]`` masked count of the block at its first step (``topk`` only).
    cache: the ``kv`` pytree of the last refresh, leaves ``[layers, B, L, ...]`` (zeros in
      exact mode, which never reads it).
    cache_block: ``int32[]`` the block the cache was refreshed for (``-1``: none yet).
    editable: ``bool[B, L]`` positions token editing may revise (``edit_threshold``), else
      ``None``.
  """
  tokens: jax.Array
  step: jax.Array
  row_step: jax.Array
  block_count: jax.Array
  cache: Any
  cache_block: jax.Array
  editable: Any = None


class CacheInfo(NamedTuple):
  """Per-step diagnostics (``sample`` stacks them on a leading ``[max_steps]`` axis; steps after
  the end read zeros, ``block = -1`` and the final tokens).

  Attributes:
    nfe: ``int32[]`` denoiser calls (0 or 1, batch level).
    full_calls: ``int32[]`` full forward passes (cache refreshes) among them.
    cost: ``float32[]`` query positions of the call over ``L`` (full pass = 1).
    num_decoded: ``int32[B]`` tokens decoded per row.
    block: ``int32[B]`` the block a row decoded in, ``-1`` if none.
    nfe_saved: ``int32[B]`` calls skipped by the EOS block early stop (``eos_ids``).
    tokens: ``int32[B, L]`` after the step if ``record_trajectory``, else ``None``.
    num_edited: ``int32[B]`` tokens replaced by token editing (``edit_threshold``), else ``None``.
  """
  nfe: jax.Array
  full_calls: jax.Array
  cost: jax.Array
  num_decoded: jax.Array
  block: jax.Array
  nfe_saved: jax.Array
  tokens: Any = None
  num_edited: Any = None


def _positions(b: int, start: int, stop: int):
  return jnp.broadcast_to(jnp.arange(start, stop, dtype=jnp.int32), (b, stop - start))


def _call(kv_denoise_fn, tokens, t, positions, context):
  """``kv_denoise_fn`` with a clear error when it is not a cached model."""
  try:
    out = kv_denoise_fn(tokens, t, positions, context)
  except TypeError as e:
    raise TypeError(
        "kv_denoise_fn must be a cached model kv_denoise_fn(tokens, t, positions, context) -> "
        "(logits, kv), e.g. models.denoiser.make_cached_denoise_fn(cfg, params); a plain "
        f"denoise_fn(tokens, t) does not fit ({e})") from e
  if not (isinstance(out, tuple) and len(out) == 2):
    raise TypeError(f"kv_denoise_fn must return (logits, kv), got {type(out).__name__}")
  return out


def _kv_shape(kv_denoise_fn, b: int, l: int):
  """The ``kv`` pytree of a full pass over ``[b, l]`` tokens, as ``ShapeDtypeStruct`` leaves."""
  return jax.eval_shape(
      lambda x: _call(kv_denoise_fn, x, jnp.zeros((b,), jnp.float32), _positions(b, 0, l),
                      None)[1], jax.ShapeDtypeStruct((b, l), jnp.int32))


def build_kernel(kv_denoise_fn, config: DecodeConfig, cache_mode: str, vocab_size: int):
  """The pure ``step(rng_key, state) -> (state, info)`` (static config, mode and ``V``)."""
  mask_id, rule = config.mask_id, config.rule

  def model_logits(x, t, j, refresh, cache):
    """``(logits [B, L, V], cache, cost)`` for block ``j``; logits outside the queried
    positions are zero (never eligible)."""
    b, l = x.shape
    layout = config.layout(l)

    def full():
      logits, kv = _call(kv_denoise_fn, x, t, _positions(b, 0, l), None)
      return logits.astype(jnp.float32), kv, jnp.float32(1.0)

    if cache_mode == "exact":   # nothing reads the cache: keep the (unused) old one
      logits, _, cost = full()
      return logits, cache, cost

    def cached(jj):
      s = layout.start + jj * layout.block_length
      e = s + layout.block_length
      # Stored rows the queries attend to: the prefix, and for the dual cache the suffix.
      if cache_mode == "prefix":
        q0, q1, ranges = s, l, ((0, s),)
      else:
        q0, q1, ranges = s, e, ((0, s), (e, l))
      ranges = tuple(r for r in ranges if r[1] > r[0])
      ctx = (cache, ranges) if ranges else None   # one block, no prompt: nothing to reuse
      logits, _ = _call(kv_denoise_fn, x[:, q0:q1], t, _positions(b, q0, q1), ctx)
      logits = jnp.zeros((b, l, vocab_size), jnp.float32).at[:, q0:q1].set(
          logits.astype(jnp.float32))
      return logits, cache, jnp.float32((q1 - q0) / l)

    branches = [functools.partial(cached, jj) for jj in range(layout.num_blocks)]
    return jax.lax.cond(
        refresh, full,
        lambda: jax.lax.switch(jnp.clip(j, 0, layout.num_blocks - 1), branches))

  def step(rng_key, state: CacheState):
    x = state.tokens
    b, l = x.shape
    masked = x == mask_id
    # The batch's block: the first one any row still has a MASK in (rows ahead wait). Exact
    # mode makes only full passes, so its rows move on independently, as uncached.
    plan = plan_step(config, masked, state.step, state.block_count,
                     shared_block=cache_mode != "exact")
    j = jnp.min(plan.block).astype(jnp.int32)
    need_call = jnp.any(plan.wants)
    refresh = need_call & ((j != state.cache_block) | (cache_mode == "exact"))
    t = masked_fraction(x, mask_id)
    logits, cache, cost = jax.lax.cond(
        need_call, lambda: model_logits(x, t, j, refresh, state.cache),
        lambda: (jnp.zeros((b, l, vocab_size), jnp.float32), state.cache, jnp.float32(0.0)))

    # The uncached sampler's draw, unchanged (exact mode reproduces it token for token); the
    # variable-count rules index a row's randomness by its own step count.
    key_index = state.step if rule.uses_count_schedule else state.row_step
    x_new, num_decoded, block = decode_chosen(rng_key, key_index, x, logits, plan, config)
    # Token editing reads the block's logits only, which every cache mode computes.
    x_new, num_edited = edit_committed(x, x_new, logits, plan, state.editable, config)
    x_new, nfe_saved = config.stop_at_eos(x_new, plan.block)
    new_state = state._replace(
        tokens=x_new, step=state.step + 1,
        row_step=state.row_step + plan.wants.astype(jnp.int32), block_count=plan.block_count,
        cache=cache, cache_block=jnp.where(refresh, j, state.cache_block).astype(jnp.int32))
    info = CacheInfo(nfe=need_call.astype(jnp.int32), full_calls=refresh.astype(jnp.int32),
                     cost=cost, num_decoded=num_decoded, block=block, nfe_saved=nfe_saved,
                     tokens=x_new if config.record_trajectory else None,
                     num_edited=num_edited)
    return new_state, info

  return step


def init_state(kv_denoise_fn, x_init, config: DecodeConfig | None = None) -> CacheState:
  """The state before step 0 (``x_init int[B, L]``), with a zero cache of the model's shape
  (and the editable positions if ``config`` has ``edit_threshold``)."""
  tokens = jnp.asarray(x_init).astype(jnp.int32)
  b, l = tokens.shape
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _kv_shape(kv_denoise_fn, b, l))
  zeros = jnp.zeros((b,), jnp.int32)
  editable = None if config is None else editable_positions(tokens, config)
  return CacheState(tokens, jnp.zeros((), jnp.int32), zeros, zeros, cache,
                    jnp.full((), -1, jnp.int32), editable)


def _sample_impl(rng_key, x_init, *, kv_denoise_fn, config, cache_mode, vocab_size):
  step = build_kernel(kv_denoise_fn, config, cache_mode, vocab_size)
  return config.run_loop(step, rng_key, init_state(kv_denoise_fn, x_init, config))


jitted_sample = model_jit(_sample_impl, static_argnames=("config", "cache_mode", "vocab_size"),
                          model_argnames=("kv_denoise_fn",))
"""The whole trajectory, compiled once per (shapes, config, mode, model) for every sampler."""


def make_cached_sampler(kv_denoise_fn, config: DecodeConfig, *, cache: str) -> MaskedSampler:
  """A :class:`MaskedSampler` running ``config``'s rule and blocks with the ``cache`` mode.

  ``config`` is the :class:`partext_jax.masked.adaptive.DecodeConfig` the uncached sampler
  takes (any rule object: ``TopKRule``, ``ThresholdRule``, ``FactorRule``, ``EntropyBoundRule``);
  ``cache`` is one of :data:`CACHE_MODES`. ``sample(rng_key, x_init) -> (tokens, CacheInfo)``;
  ``step`` is jit-compiled once per vocabulary size (it is the same function ``sample`` loops).
  """
  checked_callable("kv_denoise_fn", kv_denoise_fn)
  if not isinstance(config, DecodeConfig):
    raise TypeError(f"config must be a DecodeConfig, got {config!r}")
  checked_choice("cache", cache, CACHE_MODES)

  def plain(model):
    return lambda tokens, t: _call(model, tokens, t, _positions(tokens.shape[0], 0,
                                                                 tokens.shape[1]), None)[0]

  def check_shape(b, l, vocab_size):
    del vocab_size
    config.layout(l)
    for leaf in jax.tree.leaves(_kv_shape(kv_denoise_fn, b, l)):
      # The sampler stores kv and hands it back untouched: only its per-row, per-position
      # shape is checked (KVCache [layers, B, heads, T, D]; adapters may add e.g. tokens
      # [1, B, T]).
      if leaf.ndim < 3 or leaf.shape[1] != b or l not in leaf.shape[2:]:
        raise ValueError(f"kv_denoise_fn's kv leaves must be [layers, B={b}, ...] with a "
                         f"T={l} position axis (the KVCache layout is [layers, B, heads, T, "
                         f"D]); got a leaf of shape {leaf.shape}")

  @functools.lru_cache(maxsize=None)
  def jitted_kernel(model, vocab_size):
    # Compiled once: run eagerly, every lax.switch / cond branch would be retraced each call.
    return jax.jit(build_kernel(model, config, cache, vocab_size))

  return driver.assemble_sampler(
      kv_denoise_fn, config.mask_id,
      kernel=jitted_kernel,
      init_state=lambda x, v: init_state(kv_denoise_fn, x, config),
      sample=lambda key, x, m, v: jitted_sample(key, x, kv_denoise_fn=m, config=config,
                                                cache_mode=cache, vocab_size=v),
      as_denoise_fn=plain, check_shape=check_shape, check_input=config.check_input)


def block_cache(kv_denoise_fn, *, mask_id: int, cache: str = "dual", rule: str = "threshold",
                block_length=None, gen_length=None, num_steps=None, proxy=None,
                temperature: float = 0.0, threshold=None, factor=None, alg_temp=None, gamma=None,
                record_trajectory: bool = False, eos_ids=(),
                edit_threshold=None) -> MaskedSampler:
  """Builds a cached block-decoding :class:`MaskedSampler` (Fast-dLLM, Wu et al. 2025; math in
  the module docstring and ``docs/algorithms.md#block-caches``).

  Args:
    kv_denoise_fn: ``(tokens, t, positions, context) -> (logits, kv)``, e.g.
      :func:`partext_jax.models.denoiser.make_cached_denoise_fn`.
    mask_id: the MASK token id: ``>= V``, or inside ``[0, V)`` (never emitted, see base.py).
    cache: ``"dual"``, ``"prefix"`` (Fast-dLLM) or ``"exact"`` (refresh every step).
    rule: ``"topk"``, ``"threshold"``, ``"factor"`` (:mod:`partext_jax.masked.adaptive`)
      or ``"eb"`` (:mod:`partext_jax.masked.rules`).
    block_length, gen_length: the blocks (``gen_length % block_length == 0``); default one
      block over the whole sequence.
    num_steps: ``rule="topk"`` only (a multiple of the number of blocks).
    proxy: confidence proxy of the confidence rules.
    temperature: ``tau >= 0`` of the token draw (0: argmax).
    threshold: ``rule="threshold"`` (default 0.9) or ``"eb"`` (optional union).
    factor: ``rule="factor"`` only (default 1.0). alg_temp: ``rule="topk"`` only.
    gamma: ``rule="eb"`` only, entropy budget (default 0.0).
    record_trajectory: also return the tokens after every step.
    eos_ids: block early stop (:func:`partext_jax.masked.adaptive.confidence`).
    edit_threshold: LLaDA 2.1 token editing (``None``: off; else in ``[0, 1]``; see
      :func:`partext_jax.masked.adaptive.confidence`); edits stay inside the current block,
      whose logits every cache mode computes.

  The same arguments without ``cache`` build the uncached sampler (``confidence(...)`` or
  ``eb_sampler(...)`` on the plain model), which ``cache="exact"`` reproduces token for token.

  Returns:
    ``MaskedSampler``; ``sample(rng_key, x_init int32[B, L]) -> (tokens int32[B, L],
    CacheInfo)`` with a leading step axis.

  Raises:
    TypeError / ValueError: a bad hyper-parameter (named, with its valid values) before any
      compilation; at ``sample`` / ``init``, before compiling, a model that is not a cached
      model, ``kv`` leaves not shaped ``[layers, B, L, ...]``, or a bad ``x_init`` or key.
  """
  checked_choice("cache", cache, CACHE_MODES)
  config = decode_config(mask_id=mask_id, rule=rule, num_steps=num_steps, proxy=proxy,
                         temperature=temperature, threshold=threshold, factor=factor,
                         alg_temp=alg_temp, gamma=gamma, block_length=block_length,
                         gen_length=gen_length, record_trajectory=record_trajectory,
                         eos_ids=eos_ids, edit_threshold=edit_threshold)
  return make_cached_sampler(kv_denoise_fn, config, cache=cache)
