r"""Adaptive (confidence-ordered) decoding: the frame, its rule registry, and the EB-sampler.

The common frame of LLaDA (Nie et al. 2025, ``ML-GSAI/LLaDA: generate.py``), Fast-dLLM (Wu et
al. 2025, ``NVlabs/Fast-dLLM: llada/generate.py``), Dream (Ye et al. 2025,
``generation_utils.py``) and the EB-sampler (Ben-Hamu et al. 2025); the math is in
``docs/algorithms.md#confidence-based-adaptive-decoding`` and ``docs/algorithms.md#eb-sampler``.
This module holds

* the **frame** (:class:`DecodeConfig`, :func:`build_kernel`, :func:`make_sampler`): what every
  step does whatever the rule;
* the **entry points** :func:`confidence` (any rule by name) and :func:`eb_sampler` (the
  EB rule); :mod:`partext_jax.masked.blocks` adds semi-autoregressive blocks and
  :mod:`partext_jax.masked.block_cache` the Fast-dLLM caches on the same frame;
* the shared step pieces :func:`plan_step` (eligibility and LLaDA's count schedule) and
  :func:`decode_chosen` (the draw and the update), used by the block caches too.

The **rules** (which positions a step decodes) live in :mod:`partext_jax.masked.rules`, one
frozen dataclass each, named in its :data:`~partext_jax.masked.rules.RULES` registry: ``"topk"``
(LLaDA, with Dream's ``alg_temp``), ``"threshold"`` and ``"factor"`` (Fast-dLLM), ``"eb"``
(EB-sampler). A new rule is one class there and one registry line; every entry point accepts it
by name.

The frame. At every step, with ``p = p_theta(. | x) = softmax(logits)`` the *untempered*
denoiser distribution:

1. ``x0_i ~ softmax(logits_i / tau)`` at every position (``tau`` = ``temperature``; ``tau = 0``:
   ``x0_i = argmax p_i``);
2. only *eligible* positions (masked, and inside the current block in block mode) can be chosen;
   the rule picks a set ``U`` of them from ``p`` (and ``x0`` for the ``sampled_prob`` proxy), at
   least one per step while any is eligible;
3. ``x_i <- x0_i`` for ``i in U``; every other position is copied (decoded tokens are never
   revisited; MASK is never emitted).

Loop. The ``"topk"`` rule runs exactly ``num_steps`` steps (per block ``num_steps /
num_blocks``; LLaDA's count schedule ``k_j = floor(n / S) + [j < n mod S]`` with ``n`` the
masked count of the block at its first step); the other rules run until the window has no MASK
(a ``lax.while_loop`` capped at ``gen_length`` steps, since every step decodes at least one
token of each unfinished row). Steps in which no row decodes anything (e.g. ``k_j = 0`` when
``n < S``, or after the end) do not call the denoiser. The (time-conditioned) model gets ``t`` =
the row's masked fraction.

Exactness with an exact denoiser. If exactly one token is decoded per step, ``tau = 1``, and the
chosen position depends only on the current state (and randomness independent of ``x0``) --
true for the ``max_prob``, ``margin`` and ``neg_entropy`` proxies with or without ``alg_temp``,
and for EB at ``gamma = 0`` -- the sampler draws the joint exactly: for a fixed outcome ``y``
each position order ``o`` has some probability ``pi(o | y)`` (a function of the values revealed
so far, all parts of ``y``), and each path contributes ``prod_k p(y_{o_k} | y_{o_<k}) = p(y)``
(chain rule), so ``P(y) = p(y) sum_o pi(o | y) = p(y)``. Several tokens per step draw them
independently from their marginals (the usual parallel-decoding error); ``sampled_prob`` picks
positions by the drawn values (biased).

EB at ``gamma = 0``. The rule decodes the largest entropy-sorted prefix whose entropies, except
the largest, sum to at most ``gamma``: at ``gamma = 0`` that is every eligible position whose
entropy is exactly 0 (as computed in float32) plus the lowest-entropy remaining one. Positions
of zero entropy are deterministic and carry no dependence, so this is still exact; it is *one*
token per step only when no eligible entropy is exactly 0.

Randomness: step ``i``, row ``r`` use ``fold_in(fold_in(rng_key, i), r)``
(:func:`partext_jax.masked.driver.row_keys`), split into the token key (at ``temperature > 0``
each position's proposal is a two-stage Gumbel-max draw,
:func:`partext_jax.ops.grouped_categorical`: the law of ``softmax(logits / temperature)`` from
``~2 sqrt(V)`` "high"-precision Gumbels, so rare tokens keep their probability) and the
position key (one Gumbel per position, used by ``alg_temp``): a row's sample depends only on
(key, row index, row contents), not on the rest of the batch. Pass the *same* key to every
``step`` call.

Example::

    sampler = confidence(denoise_fn, mask_id=V, rule="topk", num_steps=64, proxy="margin")
    x = jnp.full((8, 64), V, jnp.int32).at[:, :4].set(prompt)
    tokens, info = sampler.sample(jax.random.key(0), x)   # tau = 0: greedy tokens
    info.nfe.sum(), info.num_decoded                      # denoiser calls; tokens per step/row
    fast = confidence(denoise_fn, mask_id=V, rule="threshold", threshold=0.9, block_length=32)
    eb = eb_sampler(denoise_fn, mask_id=V, gamma=0.1)
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from partext_jax import ops
from partext_jax.base import (DenoiseFn, checked_bool, checked_float, checked_hashable,
                              checked_int, checked_optional_int, model_jit)
from partext_jax.masked import blocks, driver
from partext_jax.masked.driver import MaskedSampler
from partext_jax.masked.rules import (  # noqa: F401  (re-exported for users of this module)
    PROXIES, RULES, EntropyBoundRule, FactorRule, ThresholdRule, TopKRule, confidence_scores,
    llada_num_transfer, make_rule, sample_x0, select_factor, select_threshold, select_topk,
    token_edits)


class DecodeState(NamedTuple):
  """Carried state.

  Attributes:
    tokens: ``int32[B, L]`` current sequence (MASK at positions still to decode).
    step: ``int32[]`` index of the next step.
    block_count: ``int32[B]`` masked count of the current block at its first step (the ``n`` of
      LLaDA's count schedule; used by ``rule="topk"`` only).
    editable: ``bool[B, L]`` the positions token editing may revise (MASK in ``x_init``: never a
      prompt position), or ``None`` without token editing.
  """
  tokens: jax.Array
  step: jax.Array
  block_count: jax.Array
  editable: Any = None


class DecodeInfo(NamedTuple):
  """Per-step diagnostics (``sample`` stacks them along a leading ``[max_steps]`` axis; steps
  after the loop ended read ``nfe = 0``, ``num_decoded = 0``, ``block = -1``, final tokens).

  Attributes:
    nfe: ``int32[]`` denoiser calls of this step (0 or 1, batch level).
    num_decoded: ``int32[B]`` tokens decoded by this step, per row. A row's own NFE (what it
      would cost alone) is the number of steps with ``num_decoded > 0``.
    block: ``int32[B]`` the block the row decoded in, ``-1`` if it decoded nothing.
    nfe_saved: ``int32[B]`` model calls the row skips because its block ended in EOS
      (``eos_ids``, :func:`partext_jax.masked.blocks.stop_at_eos_block`); 0 otherwise.
    tokens: ``int32[B, L]`` tokens after the step if ``record_trajectory``, else ``None``.
    num_edited: ``int32[B]`` committed tokens replaced by token editing this step
      (``edit_threshold``), else ``None``.
  """
  nfe: jax.Array
  num_decoded: jax.Array
  block: jax.Array
  nfe_saved: jax.Array
  tokens: Any = None
  num_edited: Any = None


# Info fields whose rows for steps that never ran are not zero (see run_loop).
UNUSED_STEP_FILL = {"block": -1}


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Validated, hashable hyper-parameters of the frame (a static jit argument).

  ``rule`` is a frozen rule object with ``select(gumbel[L], logits[L, V], x0[L], eligible[L], k)
  -> bool[L]`` (one row; ``gumbel`` is standard Gumbel noise for a stochastic position choice,
  independent of the noise that drew ``x0``) and a class constant ``uses_count_schedule``
  (:mod:`partext_jax.masked.rules`). ``eos_ids`` (a tuple of ids, empty: off) enables the block
  early stop (:meth:`stop_at_eos`). ``edit_threshold`` (``None``: off, else in ``[0, 1]``)
  turns on LLaDA 2.1's token editing (:func:`edit_committed`). Raises ``TypeError`` /
  ``ValueError`` naming the argument.
  """
  mask_id: int
  rule: Any
  num_steps: Any = None
  temperature: float = 0.0
  block_length: Any = None
  gen_length: Any = None
  record_trajectory: bool = False
  eos_ids: tuple = ()
  edit_threshold: Any = None

  def __post_init__(self):
    set_ = functools.partial(object.__setattr__, self)
    set_("mask_id", driver.checked_mask_id(self.mask_id))
    if not (callable(getattr(self.rule, "select", None))
            and hasattr(self.rule, "uses_count_schedule")):
      raise TypeError(f"rule must be a rule object with select() (e.g. TopKRule()), got "
                      f"{self.rule!r}")
    checked_hashable("rule", self.rule)
    if self.rule.uses_count_schedule:
      set_("num_steps", checked_int("num_steps", self.num_steps, minimum=1,
                                    hint=" (required by a top-k rule)"))
    elif self.num_steps is not None:
      raise ValueError(
          f"num_steps={self.num_steps!r} is only used by rule='topk'; the {self.rule!r} rule "
          "runs until no MASK is left (at most gen_length steps): leave num_steps=None")
    set_("temperature", checked_float("temperature", self.temperature, lo=0.0))
    checked_optional_int("block_length", self.block_length)
    checked_optional_int("gen_length", self.gen_length)
    if (self.block_length is not None and self.gen_length is not None
        and self.gen_length % self.block_length):
      raise ValueError(f"gen_length={self.gen_length} must be a multiple of block_length="
                       f"{self.block_length}")
    checked_bool("record_trajectory", self.record_trajectory)
    try:
      set_("eos_ids", tuple(checked_int("eos_ids[]", i, minimum=0) for i in self.eos_ids or ()))
    except TypeError as e:
      raise TypeError(f"eos_ids must be a sequence of ints >= 0, got {self.eos_ids!r}") from e
    set_("edit_threshold", checked_float(
        "edit_threshold", self.edit_threshold, lo=0.0, hi=1.0, allow_none=True,
        hint=" (a probability; 1.0 never edits, None turns token editing off)"))

  def stop_at_eos(self, tokens, block):
    """:func:`partext_jax.masked.blocks.stop_at_eos_block` of a step's ``tokens`` (after its
    update) and the rows' ``block``: ``(tokens, nfe_saved int32[B])``."""
    layout = self.layout(tokens.shape[1])
    spb = self.num_steps // layout.num_blocks if self.rule.uses_count_schedule else None
    return blocks.stop_at_eos_block(tokens, block, layout, mask_id=self.mask_id,
                                    eos_ids=self.eos_ids, steps_per_block=spb)

  def layout(self, length: int) -> blocks.BlockLayout:
    """The block layout for sequences of ``length`` positions (``ValueError`` if the options do
    not fit it, or ``num_steps`` does not split evenly over its blocks)."""
    layout = blocks.resolve_layout(length, gen_length=self.gen_length,
                                   block_length=self.block_length)
    if self.rule.uses_count_schedule and self.num_steps % layout.num_blocks:
      raise ValueError(
          f"num_steps={self.num_steps} must be a multiple of the number of blocks "
          f"{layout.num_blocks} (gen_length={layout.gen_length} / block_length="
          f"{layout.block_length}): the steps are split evenly per block")
    return layout

  def max_steps(self, length: int) -> int:
    """Steps ``sample`` may take: ``num_steps`` (top-k) or ``gen_length`` (one token or more
    per step)."""
    if self.rule.uses_count_schedule:
      return self.num_steps
    return self.layout(length).gen_length

  def check_input(self, x_init, vocab_size=None) -> None:
    """Rejects an ``x_init`` with a MASK before the block window (concrete inputs only)."""
    del vocab_size
    blocks.check_prompt_region(x_init, self.mask_id, self.layout(x_init.shape[1]))

  def run_loop(self, step, rng_key, state):
    """Runs ``step`` from ``state`` until the window has no MASK (at most :meth:`max_steps`
    steps): ``(tokens int32[B, L], info)`` with info stacked on a ``[max_steps]`` axis."""
    length = state.tokens.shape[1]
    return driver.run_blockwise_loop(
        step, rng_key, state, num_steps=self.max_steps(length), mask_id=self.mask_id,
        in_window=jnp.asarray(self.layout(length).in_window()),
        record_trajectory=self.record_trajectory, fill=UNUSED_STEP_FILL)


class StepPlan(NamedTuple):
  """What a step may decode, per row (:func:`plan_step`).

  Attributes:
    block: ``int32[B]`` the block each row works on (``num_blocks`` once the window is done).
    eligible: ``bool[B, L]`` masked positions of that block.
    k: ``int32[B]`` LLaDA's count ``k_j`` (``"topk"``), else the number of eligible positions.
    block_count: ``int32[B]`` the block's masked count at its first step (``"topk"``).
    wants: ``bool[B]`` the row decodes something this step.
  """
  block: jax.Array
  eligible: jax.Array
  k: jax.Array
  block_count: jax.Array
  wants: jax.Array


def plan_step(config: DecodeConfig, masked, step, block_count, *,
              shared_block: bool = False) -> StepPlan:
  """Eligibility and counts of one step (``docs/algorithms.md#semi-autoregressive-blocks``).

  Args:
    config: the frame's config (its rule and block layout).
    masked: ``bool[B, L]`` MASK positions before the step.
    step: ``int32[]`` the step index (the ``"topk"`` rule's block is ``step // steps_per_block``).
    block_count: ``int32[B]`` carried from the previous step (``"topk"``).
    shared_block: variable-count rules only: every row works on the first block any row still
      has a MASK in (the block caches), instead of its own first such block.
  """
  b, l = masked.shape
  layout = config.layout(l)
  if config.rule.uses_count_schedule:
    spb = config.num_steps // layout.num_blocks
    current = jnp.full((b,), jnp.minimum(step // spb, layout.num_blocks), jnp.int32)
    eligible = blocks.eligible_positions(masked, layout, current)
    count_now = jnp.sum(eligible, axis=1, dtype=jnp.int32)
    j = step % spb
    block_count = jnp.where(j == 0, count_now, block_count)
    k = block_count // spb + (j < block_count % spb).astype(jnp.int32)
    k = jnp.minimum(k, count_now)
  else:
    current = blocks.first_masked_block(masked, layout)
    if shared_block:
      current = jnp.full((b,), jnp.min(current), jnp.int32)
    eligible = blocks.eligible_positions(masked, layout, current)
    k = jnp.sum(eligible, axis=1, dtype=jnp.int32)
  wants = jnp.any(eligible, axis=1) & (k > 0)
  return StepPlan(current, eligible, k, block_count, wants)


def select_row(row_key, logits, eligible, k, *, rule, temperature: float):
  """One row's proposal ``x0 int32[L]`` and chosen positions ``bool[L]`` for a step.

  ``row_key`` splits into the token key (``tau > 0``: :func:`sample_x0`, two-stage Gumbel-max
  at every position, ``~2 sqrt(V)`` "high"-precision Gumbels each) and the position key (one
  Gumbel per position for a stochastic position choice).
  """
  key_token, key_position = jax.random.split(row_key)
  x0 = sample_x0(key_token, logits, temperature)
  position_gumbel = ops.gumbel_noise(key_position, logits.shape[:1])
  return x0, rule.select(position_gumbel, logits, x0, eligible, k)


def decode_chosen(rng_key, key_index, tokens, logits, plan: StepPlan, config: DecodeConfig):
  """The step's update: draw each row's proposal and choice, write the chosen tokens.

  Args:
    rng_key: the trajectory's key; row ``r`` draws from ``fold_in(fold_in(rng_key,
      key_index[r]), r)``.
    key_index: ``int32[]`` or ``int32[B]``, the randomness index (the step, or a row's own step
      count for the block caches).
    tokens: ``int32[B, L]``; logits: ``float32[B, L, V]``; plan: the step's :class:`StepPlan`.

  Returns:
    ``(tokens int32[B, L], num_decoded int32[B], block int32[B])`` (``block = -1`` for a row
    that decoded nothing).
  """
  row_select = functools.partial(select_row, rule=config.rule, temperature=config.temperature)
  keys = driver.row_keys(rng_key, key_index, tokens.shape[0])
  x0, chosen = jax.vmap(row_select)(keys, logits, plan.eligible, plan.k)
  chosen = chosen & plan.eligible & plan.wants[:, None]
  num_decoded = jnp.sum(chosen, axis=1, dtype=jnp.int32)
  return (jnp.where(chosen, x0, tokens), num_decoded,
          jnp.where(num_decoded > 0, plan.block, -1).astype(jnp.int32))


def edit_committed(tokens, x_new, logits, plan: StepPlan, editable, config: DecodeConfig):
  """LLaDA 2.1's token-to-token editing after a step's unmasking (Bie et al. 2026,
  ``docs/algorithms.md#token-editing``).

  With the step's logits (computed from ``tokens``, the state before the step), every position
  that is editable (MASK in ``x_init``, so never a prompt position), already decoded before the
  step and inside the row's current block (``plan.block``) takes the model's top token when it
  differs and its probability exceeds ``config.edit_threshold``
  (:func:`partext_jax.masked.rules.token_edits`); rows that decode nothing this step are left
  alone. Positions unmasked by this step are not edited (they were MASK in ``tokens``).

  Args:
    tokens: ``int32[B, L]`` before the step; x_new: ``int32[B, L]`` after its unmasking.
    logits: ``float32[B, L, V]``; plan: the step's :class:`StepPlan`; editable: ``bool[B, L]``.
    config: the frame's config (``edit_threshold``, ``mask_id``, block layout).

  Returns:
    ``(tokens int32[B, L], num_edited int32[B])``; without ``edit_threshold``, ``(x_new, None)``.
  """
  if config.edit_threshold is None:
    return x_new, None
  layout = config.layout(tokens.shape[1])
  in_block = blocks.eligible_positions(jnp.ones(tokens.shape, bool), layout, plan.block)
  candidates = editable & in_block & (tokens != config.mask_id) & plan.wants[:, None]
  edited_tokens, edited = token_edits(tokens, logits, candidates, config.edit_threshold)
  return (jnp.where(edited, edited_tokens, x_new),
          jnp.sum(edited, axis=1, dtype=jnp.int32))


def masked_fraction(tokens, mask_id: int):
  """``float32[B]``: the masked fraction of each row, the time the adaptive samplers give the
  model (they have no time grid)."""
  return jnp.mean((tokens == mask_id).astype(jnp.float32), axis=1)


def build_kernel(denoise_fn: DenoiseFn, config: DecodeConfig, vocab_size: int):
  """The pure ``step(rng_key, state) -> (state, info)`` for a fixed vocabulary size."""

  def step(rng_key, state: DecodeState):
    x = state.tokens
    b, l = x.shape
    plan = plan_step(config, x == config.mask_id, state.step, state.block_count)
    need_call = jnp.any(plan.wants)
    logits = jax.lax.cond(
        need_call,
        lambda: denoise_fn(x, masked_fraction(x, config.mask_id)).astype(jnp.float32),
        lambda: jnp.zeros((b, l, vocab_size), jnp.float32))
    x_new, num_decoded, block = decode_chosen(rng_key, state.step, x, logits, plan, config)
    x_new, num_edited = edit_committed(x, x_new, logits, plan, state.editable, config)
    x_new, nfe_saved = config.stop_at_eos(x_new, plan.block)
    new_state = state._replace(tokens=x_new, step=state.step + 1,
                               block_count=plan.block_count)
    info = DecodeInfo(nfe=need_call.astype(jnp.int32), num_decoded=num_decoded, block=block,
                      nfe_saved=nfe_saved, tokens=x_new if config.record_trajectory else None,
                      num_edited=num_edited)
    return new_state, info

  return step


def editable_positions(tokens, config: DecodeConfig):
  """``bool[B, L]``: the positions token editing may revise (MASK in ``tokens = x_init``), or
  ``None`` without ``config.edit_threshold``."""
  return None if config.edit_threshold is None else tokens == config.mask_id


def init_state(x_init, config: DecodeConfig | None = None) -> DecodeState:
  """The state before step 0 (``x_init int[B, L]``; a ``config`` with ``edit_threshold`` also
  records the editable positions)."""
  tokens = jnp.asarray(x_init).astype(jnp.int32)
  editable = None if config is None else editable_positions(tokens, config)
  return DecodeState(tokens, jnp.zeros((), jnp.int32), jnp.zeros((tokens.shape[0],), jnp.int32),
                     editable)


def _sample_impl(rng_key, x_init, *, denoise_fn, config, vocab_size):
  return config.run_loop(build_kernel(denoise_fn, config, vocab_size), rng_key,
                         init_state(x_init, config))


jitted_sample = model_jit(_sample_impl, static_argnames=("config", "vocab_size"))
"""The whole trajectory, compiled once per (shapes, config, model) for every sampler built here."""


def make_sampler(denoise_fn: DenoiseFn, config: DecodeConfig) -> MaskedSampler:
  """A :class:`MaskedSampler` running the frame with ``config`` (its rule and block layout).

  ``sample(rng_key, x_init int32[B, L]) -> (tokens int32[B, L], info)``, ``info`` a
  :class:`DecodeInfo` with a leading ``[config.max_steps(L)]`` axis; compiled once per (shapes,
  config, model). Raises ``TypeError`` for a bad ``config``; ``sample`` / ``init`` raise before
  compiling for a bad ``x_init`` (e.g. a MASK before the block window) or key.
  """
  if not isinstance(config, DecodeConfig):
    raise TypeError(f"config must be a DecodeConfig, got {config!r}")

  return driver.assemble_sampler(
      denoise_fn, config.mask_id,
      kernel=lambda m, v: build_kernel(m, config, v),
      init_state=lambda x, v: init_state(x, config),
      sample=lambda key, x, m, v: jitted_sample(key, x, denoise_fn=m, config=config,
                                                vocab_size=v),
      check_shape=lambda b, l, v: config.layout(l), check_input=config.check_input)


def decode_config(*, mask_id: int, rule: str, num_steps=None, proxy=None,
                  temperature: float = 0.0, threshold=None, factor=None, alg_temp=None,
                  gamma=None, block_length=None, gen_length=None,
                  record_trajectory: bool = False, eos_ids=(),
                  edit_threshold=None) -> DecodeConfig:
  """The :class:`DecodeConfig` of :func:`confidence`'s keyword arguments (also used by
  :func:`partext_jax.masked.block_cache.block_cache`): ``rule`` by name through
  :func:`partext_jax.masked.rules.make_rule`; ``proxy`` defaults to ``"max_prob"`` and is not
  accepted by ``"eb"``."""
  if rule == "eb" and proxy not in (None, "max_prob"):
    raise ValueError(f"proxy={proxy!r} is not used by rule='eb' (it ranks by entropy)")
  rule_obj = make_rule(rule, proxy=None if rule == "eb" else proxy, threshold=threshold,
                       factor=factor, alg_temp=alg_temp, gamma=gamma)
  return DecodeConfig(mask_id=mask_id, rule=rule_obj, num_steps=num_steps,
                      temperature=temperature, block_length=block_length,
                      gen_length=gen_length, record_trajectory=record_trajectory,
                      eos_ids=eos_ids, edit_threshold=edit_threshold)


def confidence(denoise_fn: DenoiseFn, *, mask_id: int, rule: str = "topk", num_steps=None,
               proxy=None, temperature: float = 0.0, threshold=None, factor=None,
               alg_temp=None, gamma=None, block_length=None, gen_length=None,
               record_trajectory: bool = False, eos_ids=(),
               edit_threshold=None) -> MaskedSampler:
  """Builds a confidence-ordered :class:`MaskedSampler` (LLaDA / Fast-dLLM / Dream / EB; math in
  the module docstring and ``docs/algorithms.md#confidence-based-adaptive-decoding``).

  Args:
    denoise_fn: ``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]``;
      ``t`` is given the masked fraction of each row.
    mask_id: the MASK token id: ``>= V``, or inside ``[0, V)`` (never emitted, see base.py).
    rule: a name in :data:`partext_jax.masked.rules.RULES`: ``"topk"`` (LLaDA count schedule),
      ``"threshold"`` or ``"factor"`` (Fast-dLLM), ``"eb"`` (EB-sampler, as :func:`eb_sampler`).
    num_steps: ``S``, required for ``"topk"`` (a multiple of the number of blocks); must be
      ``None`` otherwise (those rules run until no MASK is left).
    proxy: ``"max_prob"`` (default), ``"margin"``, ``"neg_entropy"`` or ``"sampled_prob"``
      (not used by ``"eb"``, which ranks by entropy).
    temperature: ``tau >= 0`` for the token draw (``0``: argmax); never for the confidence.
    threshold: ``rule="threshold"`` only (default 0.9).
    factor: ``rule="factor"`` only, ``> 0`` (default 1.0).
    alg_temp: ``rule="topk"`` only: ``None``/deterministic top-k, or ``> 0`` to draw positions
      from ``softmax(conf / alg_temp)`` without replacement (Dream).
    gamma: ``rule="eb"`` only, entropy budget in nats (default 0).
    block_length, gen_length: semi-autoregressive blocks (see
      :mod:`partext_jax.masked.blocks`); default one block over the whole sequence.
    record_trajectory: also return the tokens after every step in ``info.tokens``.
    eos_ids: block early stop: once a row's block is complete and all its ids are in
      ``eos_ids``, its later blocks are filled without model calls (``info.nfe_saved``).
    edit_threshold: LLaDA 2.1 token editing (``docs/algorithms.md#token-editing``): ``None``
      (default) off; a probability in ``[0, 1]``: after each step's unmasking, a decoded
      non-prompt position of the current block takes the model's top token when it differs and
      its probability is ``> edit_threshold`` (``1.0`` never edits). The mask-to-token threshold
      is the rule's own (``rule="threshold"``'s ``threshold``); every rule works.
      ``info.num_edited`` counts the edits per step and row.

  Returns:
    ``MaskedSampler``; ``sample(rng_key, x_init int32[B, L]) -> (tokens int32[B, L],
    DecodeInfo)`` with a leading ``[num_steps]`` (``"topk"``) or ``[gen_length]`` step axis.

  Raises:
    TypeError / ValueError: a bad or unused hyper-parameter (named, with its valid values or the
      rules that use it), before any compilation; ``sample`` / ``init`` likewise for a bad
      ``x_init`` or key.
  """
  return make_sampler(denoise_fn, decode_config(
      mask_id=mask_id, rule=rule, num_steps=num_steps, proxy=proxy, temperature=temperature,
      threshold=threshold, factor=factor, alg_temp=alg_temp, gamma=gamma,
      block_length=block_length, gen_length=gen_length, record_trajectory=record_trajectory,
      eos_ids=eos_ids, edit_threshold=edit_threshold))


def eb_sampler(denoise_fn: DenoiseFn, *, mask_id: int, gamma: float = 0.0, threshold=None,
               temperature: float = 0.0, block_length=None, gen_length=None,
               record_trajectory: bool = False, eos_ids=(),
               edit_threshold=None) -> MaskedSampler:
  """Builds an EB-sampler :class:`MaskedSampler` (Ben-Hamu et al. 2025,
  ``docs/algorithms.md#eb-sampler``): :func:`confidence` with ``rule="eb"``.

  Each step decodes the largest prefix of the eligible positions sorted by entropy (ascending)
  whose entropies, all but the largest, sum to at most ``gamma``.

  Args:
    denoise_fn: ``denoise_fn(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]``.
    mask_id: the MASK token id: ``>= V``, or inside ``[0, V)`` (never emitted, see base.py).
    gamma: entropy budget ``>= 0`` (nats). ``gamma = 0`` decodes the lowest-entropy eligible
      position plus every eligible position whose entropy is exactly 0 (deterministic ones,
      which cost nothing): one token per step unless some entropy is exactly 0.
    threshold: optional; also decode every eligible position with max prob ``>= threshold``.
    temperature: ``tau >= 0`` of the token draw (0: argmax); the entropy uses ``tau = 1``.
    block_length, gen_length: semi-autoregressive blocks (:mod:`partext_jax.masked.blocks`).
    record_trajectory: also return the tokens after every step in ``info.tokens``.
    eos_ids: block early stop, as :func:`confidence`.
    edit_threshold: token editing, as :func:`confidence` (``None``: off).

  Returns:
    ``MaskedSampler``; ``sample`` returns ``(tokens int32[B, L], DecodeInfo)`` with a leading
    ``[gen_length]`` step axis.

  Raises:
    TypeError / ValueError: as :func:`confidence` (e.g. ``gamma < 0``, ``num_steps`` given).
  """
  return confidence(denoise_fn, mask_id=mask_id, rule="eb", gamma=gamma, threshold=threshold,
                    temperature=temperature, block_length=block_length, gen_length=gen_length,
                    record_trajectory=record_trajectory, eos_ids=eos_ids,
                    edit_threshold=edit_threshold)
