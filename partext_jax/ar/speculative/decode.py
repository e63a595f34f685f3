"""Draft-and-verify decoding: one jit-compiled ``lax.while_loop`` per generation.

Leviathan et al. (2023), Chen et al. (2023); token trees after SpecInfer (Miao et al. 2024) and
EAGLE-2 (Li et al. 2024). The rules are in ``docs/algorithms.md#speculative-decoding``.

Layout (as :mod:`partext_jax.ar.sampling`, left padding). Prompts are padded to a
bucket ``P``; the caches have ``S = P + N + T`` slots (``N = max_new_tokens``, ``T`` = drafted
tree size). Row ``b``'s prompt occupies slots ``[first_b, P)``; a token at slot ``s`` has position
``s - first_b``. The *root* is the last committed token; its K/V is not yet in the cache (slots
``< root_slot`` hold the prefix). Initially the root is the last prompt token (``root_slot =
P - 1``; the prefill writes it too, and the first tree forward rewrites the same K/V).

Step (``key_i = fold_in(rng_key, i)``):

1. draft a tree rooted at the root (:mod:`~partext_jax.ar.speculative.drafters` protocol); if no
   active row drafted a valid node (e.g. prompt lookup found no match) and ``cheap_empty_step``
   is on, step 2 is a 1-token forward of the root (a ``lax.cond``: about one AR step instead of a
   ``T``-token forward);
2. score it in **one** target forward: node ``i`` is written at slot ``root_slot + i`` with
   position ``root_position + depth[i]`` and attends to the prefix and to its ancestors
   (:func:`~partext_jax.ar.speculative.trees.tree_mask`, a structured
   :class:`~partext_jax.models.attention.CacheBlockMask`: a Llama target with
   ``attention_impl="pallas"`` scores it with the tree-attention kernel);
3. ``p = softmax(processor(logits))`` at every node (the same processing as the AR sampler),
   verify (:mod:`~partext_jax.ar.speculative.verify`) with the rule matching the drafter's
   siblings (greedy: exact match);
4. commit the accepted path and the residual / bonus token: move the path's K/V into slots
   ``root_slot + j`` in path order (``cache.compact``; the rotary phases are already right since
   position = prefix + depth) -- the cache then equals what AR decoding builds; tokens after an
   EOS and beyond ``N`` are dropped; the drafter rolls back (``drafter.commit``).

Rows accept different numbers of tokens (ragged); finished rows idle. The loop ends when every
row is finished. One compilation per (prompt bucket, batch, drafter, processor, ``N``).

The target is any :class:`partext_jax.base.CausalLM` whose cache has a
``compact(src, dst)`` method (:class:`~partext_jax.models.attention.KVCache`,
:class:`~partext_jax.testing.function_lm.TokenCache`).

Usage::

    drafter = drafters.PromptLookupDrafter(gamma=6)
    tokens, info = generate(jax.random.key(0), model, params, [[1, 2, 3]], drafter=drafter,
                            max_new_tokens=64)
    info.accepted_per_call          # mean tokens committed per target forward
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax.ar import processors as lp
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import drafters as drafters_lib
from partext_jax.ar.speculative import trees as trees_lib
from partext_jax.ar.speculative import verify as verify_lib
from partext_jax.base import checked_choice, vocab_size_of_lm
from partext_jax.models.attention import causal_cache_mask


class SpecInfo(NamedTuple):
  """Diagnostics of :func:`generate` (device arrays)."""

  lengths: jax.Array  # int32[B]: generated tokens per row (EOS included)
  prompt_lengths: jax.Array  # int32[B]
  finished: jax.Array  # bool[B]: emitted an EOS
  num_steps: jax.Array  # int32[]: loop iterations = target forwards after the prefill
  target_calls: jax.Array  # int32[B]: target forwards while the row was active
  accepted: jax.Array  # int32[B]: accepted draft tokens (excluding residual / bonus tokens)
  cache: Any = None  # the final target cache with ``generate(..., return_cache=True)``

  @property
  def accepted_per_call(self):
    """Mean tokens committed per target forward (``lengths / target_calls``), per row."""
    return np.asarray(self.lengths) / np.maximum(np.asarray(self.target_calls), 1)


class SpecState(NamedTuple):
  """The ``while_loop`` carry."""

  step: jax.Array  # int32[]
  out: jax.Array  # int32[B, N]: committed tokens, pad_id after the last
  n_out: jax.Array  # int32[B]: committed tokens so far
  cache: Any  # the target cache (valid on [first, root_slot))
  dstate: Any  # the drafter's state
  root: jax.Array  # int32[B]: last committed token (tree node 0)
  root_slot: jax.Array  # int32[B]
  history: jax.Array  # int32[B, S]: token at every slot (DraftContext.history)
  hidden: Any  # float32[B, E] or [B, 1]: DraftContext.hidden
  done: jax.Array  # bool[B]: EOS or N tokens
  finished: jax.Array  # bool[B]: EOS
  calls: jax.Array  # int32[B]: target forwards while active
  accepted: jax.Array  # int32[B]: accepted draft tokens


def generate_impl(rng_key, params, drafter_params, tokens, prompt_lengths, *, model, drafter,
                  max_new_tokens: int, processor, eos_ids: tuple, pad_id: int, rule: str,
                  greedy: bool, cheap_empty_step: bool = False):
  """The traced body of :func:`generate` (module docstring); jit it with
  ``static_argnames=STATIC_ARGNAMES``. Returns ``(tokens, SpecInfo without cache, cache)``."""
  b, p_len = tokens.shape
  n = max_new_tokens
  t = drafter.tree_size
  d_max = drafter.max_depth
  s_len = p_len + n + t
  first = (p_len - prompt_lengths).astype(jnp.int32)
  root_slot = jnp.full((b,), p_len - 1, jnp.int32)
  prefill = ar.prefill(model, params, tokens, first, s_len,
                       logits_at=jnp.maximum(root_slot - 1, 0)[:, None],
                       return_hidden=drafter.needs_hidden)
  if not hasattr(prefill.cache, "compact"):
    raise TypeError(f"speculative decoding moves accepted cache rows with cache.compact(src, "
                    f"dst); the model's cache ({type(prefill.cache).__name__}) has no such method")
  hidden = prefill.hidden[:, 0] if drafter.needs_hidden else jnp.zeros((b, 1), jnp.float32)
  dstate = drafter.init(drafter_params, tokens, first, cache_len=s_len)
  history = jnp.zeros((b, s_len), jnp.int32).at[:, :p_len].set(tokens)
  zeros = jnp.zeros((b,), jnp.int32)
  state = SpecState(jnp.int32(0), jnp.full((b, n), pad_id, jnp.int32), zeros, prefill.cache,
                    dstate, tokens[:, -1], root_slot, history, hidden, jnp.zeros((b,), bool),
                    jnp.zeros((b,), bool), zeros, zeros)
  rows = jnp.arange(b)[:, None]

  def cond(st):
    return ~jnp.all(st.done)

  def body(st: SpecState):
    k_draft, k_ver = jax.random.split(jax.random.fold_in(rng_key, st.step))
    root_pos = st.root_slot - first
    ctx = drafters_lib.DraftContext(st.root, st.root_slot, root_pos, first, st.history, st.hidden)
    dstate, draft = drafter.draft(k_draft, drafter_params, st.dstate, ctx, processor=processor)
    tree = draft.tree
    tree = tree._replace(tokens=tree.tokens.at[:, 0].set(st.root))

    def tree_forward(c):
      mask = trees_lib.tree_mask(trees_lib.ancestor_mask(tree.parent), root_slot=st.root_slot,
                                 first_slot=first)
      return model(params, tree.tokens, root_pos[:, None] + tree.depth, mask, c, st.root_slot,
                   return_hidden=drafter.needs_hidden)

    def root_forward(c):
      # Nothing drafted: score the root alone (one AR step) and replicate its row over the T
      # nodes; every child is invalid, so the verifier reads node 0 only -> same outcome.
      out = model(params, st.root[:, None], root_pos[:, None],
                  causal_cache_mask(st.root_slot[:, None], first, s_len), c, st.root_slot,
                  return_hidden=drafter.needs_hidden)
      widen = lambda x: None if x is None else jnp.broadcast_to(x, (b, t) + x.shape[2:])
      return out._replace(logits=widen(out.logits), hidden=widen(out.hidden))

    if cheap_empty_step and t > 1:
      drafted = jnp.any(tree.valid[:, 1:] & ~st.done[:, None])
      fwd = jax.lax.cond(drafted, tree_forward, root_forward, st.cache)
    else:
      fwd = tree_forward(st.cache)
    v = fwd.logits.shape[-1]
    probs = jax.nn.softmax(processor(fwd.logits.reshape(b * t, v)), axis=-1).reshape(b, t, v)
    res = verify_lib.verify(k_ver, tree, probs, draft.draft_probs, rule=rule, greedy=greedy,
                            max_depth=d_max)
    # Tokens committed this step: the accepted drafts in path order, then the residual / bonus.
    path_tok = jnp.take_along_axis(tree.tokens, jnp.maximum(res.path, 0), axis=1)  # [B, D+1]
    emitted = jnp.concatenate([path_tok[:, 1:], jnp.full((b, 1), pad_id, jnp.int32)], axis=1)
    emitted = emitted.at[jnp.arange(b), res.num_accepted].set(res.next_token)
    count = res.num_accepted + 1
    j = jnp.arange(d_max + 1)[None]
    eos = ar.is_eos(emitted, eos_ids) & (j < count[:, None])
    first_eos = jnp.where(eos.any(1), jnp.argmax(eos, axis=1), d_max + 1)
    count = jnp.minimum(jnp.minimum(count, first_eos + 1), n - st.n_out)
    active = ~st.done
    count = jnp.where(active, count, 0)
    keep = j < count[:, None]
    out = st.out.at[rows, jnp.where(keep, st.n_out[:, None] + j, n)].set(emitted, mode="drop")
    history = st.history.at[rows, jnp.where(keep, st.root_slot[:, None] + 1 + j, s_len)].set(
        emitted, mode="drop")
    # K/V of the accepted path (root + accepted drafts) into slots root_slot + j, path order.
    acc_path = (res.path >= 0) & keep
    cache = fwd.cache.compact(st.root_slot[:, None] + jnp.maximum(res.path, 0),
                              jnp.where(acc_path, st.root_slot[:, None] + j, s_len))
    last = jnp.take_along_axis(emitted, jnp.maximum(count - 1, 0)[:, None], axis=1)[:, 0]
    n_out = st.n_out + count
    hit_eos = active & (first_eos < count)
    info = drafters_lib.CommitInfo(tree, res.path, res.num_accepted, st.root_slot, first, active,
                                   fwd.logits)
    dstate = drafter.commit(drafter_params, dstate, info)
    hidden = st.hidden
    if drafter.needs_hidden:
      hidden = jnp.take_along_axis(fwd.hidden, res.last_node[:, None, None], axis=1)[:, 0]
      hidden = jnp.where(active[:, None], hidden, st.hidden)
    return SpecState(st.step + 1, out, n_out, cache, dstate, jnp.where(active, last, st.root),
                     st.root_slot + count, history, hidden, st.done | hit_eos | (n_out >= n),
                     st.finished | hit_eos, st.calls + active.astype(jnp.int32),
                     st.accepted + jnp.where(active, jnp.minimum(res.num_accepted, count - 1), 0))

  st = jax.lax.while_loop(cond, body, state)
  info = SpecInfo(st.n_out, prompt_lengths, st.finished, st.step, st.calls, st.accepted)
  return st.out, info, st.cache


STATIC_ARGNAMES = ("model", "drafter", "max_new_tokens", "processor", "eos_ids", "pad_id", "rule",
                   "greedy", "cheap_empty_step")
_generate_jit = jax.jit(generate_impl, static_argnames=STATIC_ARGNAMES)


@functools.lru_cache(maxsize=None)
def _generate_jit_with(compiler_options: tuple):
  return jax.jit(generate_impl, static_argnames=STATIC_ARGNAMES,
                 compiler_options=dict(compiler_options))


def resolve_processor(processor, temperature, top_k, top_p):
  """``processor`` if given, else :func:`partext_jax.ar.processors.build` of the knobs
  (``ValueError`` for a negative or missing temperature)."""
  if processor is not None:
    return processor
  return lp.build(temperature=temperature, top_k=top_k, top_p=top_p)


def generate(rng_key, model, params, prompts, *, drafter, drafter_params=None,
             max_new_tokens: int, processor: Callable | None = None, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, rule: str | None = None,
             eos_id="model", pad_id: int | None = None, min_bucket: int = 16,
             cheap_empty_step: bool | None = None, compiler_options: dict | None = None,
             return_cache: bool = False):
  """Speculative generation of up to ``max_new_tokens`` tokens per prompt.

  Args:
    rng_key: PRNG key (unused under greedy processing).
    model, params: the target :class:`~partext_jax.base.CausalLM` (its cache must have
      ``compact(src, dst)``, see the module docstring) and its parameters.
    prompts: ragged list of token-id lists (or ``int[B, T]``).
    drafter, drafter_params: a :class:`~partext_jax.ar.speculative.drafters.Drafter` and its
      parameters (``None`` for training-free drafters).
    processor: a logits processor; default
      :func:`partext_jax.ar.processors.build` ``(temperature, top_k, top_p)``.
    rule: verification rule (:data:`verify.RULES`); default the drafter's ``sibling_rule``
      (``"match"`` with ``greedy`` under a greedy processor). ``"typical"`` is lossy;
      ``"block"`` (block verification, Sun et al. 2025) takes chain drafters only.
    eos_id, pad_id, min_bucket: as :func:`partext_jax.ar.sampling.generate`.
    cheap_empty_step: when no active row has a valid drafted node, run a 1-token forward of
      the root instead of the ``T``-token tree forward (a ``lax.cond``; same outcome, about one
      AR step). Default: the drafter's ``may_draft_nothing`` attribute (``False`` if absent;
      ``True`` for prompt lookup). It compiles both forwards, so leave it off for drafters that
      always propose something.
    compiler_options: XLA options for this compilation (one cache per distinct dict), e.g.
      ``{"xla_backend_optimization_level": 0}`` trades some run time for a much shorter CPU
      compile (toy models, tests).
    return_cache: also return the final target cache, as ``info.cache`` (tests).
  Returns:
    ``(tokens int32[B, N], SpecInfo)``.
  Raises:
    TypeError, ValueError: bad arguments (those of :func:`partext_jax.ar.sampling.prepare_batch`,
      an unknown ``rule``, ``"block"`` with a tree drafter, a drafter lacking protocol
      attributes or with another vocabulary, a tree that does not fit in ``context_length``),
      before compiling.
  """
  processor = resolve_processor(processor, temperature, top_k, top_p)
  for attr in ("sibling_rule", "tree_size", "max_depth", "needs_hidden"):
    if not hasattr(drafter, attr):
      raise TypeError(f"drafter {drafter!r} lacks `{attr}` (see the drafters protocol)")
  greedy = lp.is_greedy(processor)
  if cheap_empty_step is None:
    cheap_empty_step = bool(getattr(drafter, "may_draft_nothing", False))
  if rule is None:
    rule = "match" if greedy else drafter.sibling_rule
  checked_choice("rule", rule, verify_lib.RULES)
  if rule in verify_lib.CHAIN_RULES and drafter.tree_size != drafter.max_depth + 1:
    raise ValueError(f"rule={rule!r} verifies chains; the drafter drafts trees of "
                     f"{drafter.tree_size} nodes and depth {drafter.max_depth} (use a chain "
                     "drafter, e.g. LMDrafter(mode='chain') or PromptLookupDrafter)")
  tv, dv = vocab_size_of_lm(model), getattr(drafter, "vocab_size", None)
  if tv is not None and dv is not None and tv != dv:
    raise ValueError(f"drafter vocab_size={dv} differs from the target's vocab_size={tv}: "
                     "draft and target must share one tokenizer")
  batch = ar.prepare_batch(model, prompts, max_new_tokens=max_new_tokens, processor=processor,
                           eos_id=eos_id, pad_id=pad_id, padding="left", min_bucket=min_bucket)
  ctx = getattr(model, "context_length", None)
  if ctx is not None:
    trees_lib.check_headroom(drafter.tree_size, cache_len=ctx,
                             prefix_len=int(batch.lengths.max()),
                             max_new_tokens=int(max_new_tokens))
  fn = (_generate_jit if not compiler_options
        else _generate_jit_with(tuple(sorted(compiler_options.items()))))
  out, info, cache = fn(rng_key, params, drafter_params, jnp.asarray(batch.tokens),
                        jnp.asarray(batch.lengths), model=model, drafter=drafter,
                        max_new_tokens=int(max_new_tokens), processor=processor,
                        eos_ids=batch.eos_ids, pad_id=batch.pad_id, rule=rule, greedy=greedy,
                        cheap_empty_step=bool(cheap_empty_step))
  return out, info._replace(cache=cache if return_cache else None)
