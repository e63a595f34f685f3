"""Draft-and-verify decoding: one jit-compiled ``lax.while_loop`` per generation.

Layout (as :mod:`partext_jax.ar.sampling`, left padding). Prompts are padded to a
bucket ``P``; the caches have ``S = P + N + T`` slots (``N = max_new_tokens``, ``T`` = drafted
tree size). Row ``b``'s prompt occupies slots ``[first_b, P)``; a token at slot ``s`` has position
``s - first_b``. The *root* is the last committed token; its K/V is not yet in the cache (slots
``< root_slot`` hold the prefix). Initially the root is the last prompt token (``root_slot =
P - 1``; the prefill writes it too, and the first tree forward rewrites the same K/V).

Step (``key_i = fold_in(rng_key, i)``):

1. draft a tree rooted at the root (:mod:`drafters` protocol); if no active row drafted a valid
   node (e.g. prompt lookup found no match) and ``cheap_empty_step`` is on, step 2 is a 1-token
   forward of the root (a ``lax.cond``: about one AR step instead of a ``T``-token forward);
2. score it in **one** target forward: node ``i`` is written at slot ``root_slot + i`` with
   position ``root_position + depth[i]`` and attends to the prefix and to its ancestors
   (mask ``prefix | anc``);
3. ``p = softmax(processor(logits))`` at every node (the same processing as the AR sampler),
   verify (:mod:`verify`) with the rule matching the drafter's siblings (greedy: exact match);
4. commit the accepted path and the residual / bonus token: gather the path's K/V into slots
   ``root_slot + j`` in path order (the rotary phases are already right since position =
   prefix + depth) -- the cache then equals what AR decoding builds; tokens after an EOS and
   beyond ``N`` are dropped; the drafter rolls back (``drafter.commit``).

Rows accept different numbers of tokens (ragged); finished rows idle. The loop ends when every
row is finished. One compilation per (prompt bucket, batch, drafter, processor, ``N``).

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

from partext_jax.models import attention as attention_lib
from partext_jax.base import resolve_special_ids, vocab_size_of_lm
from partext_jax.models.llama import KVCache
from partext_jax.ar import sampling as ar
from partext_jax.ar import processors as lp
from partext_jax.ar.speculative import drafters as drafters_lib
from partext_jax.ar.speculative import trees as trees_lib
from partext_jax.ar.speculative import verify as verify_lib


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
  step: jax.Array
  out: jax.Array  # int32[B, N]
  n_out: jax.Array  # int32[B]
  cache: Any
  dstate: Any
  root: jax.Array  # int32[B]
  root_slot: jax.Array  # int32[B]
  history: jax.Array  # int32[B, S]
  hidden: Any
  done: jax.Array
  finished: jax.Array
  calls: jax.Array
  accepted: jax.Array


def compact_cache(model, cache, src, dst):
  """Moves cache slot ``src[b, j]`` to ``dst[b, j]`` (reads before writes; ``dst >= S`` drops)."""
  if hasattr(model, "compact_cache"):
    return model.compact_cache(cache, src, dst)
  if isinstance(cache, KVCache):
    rows = jnp.arange(cache.k.shape[1])[:, None]
    k = cache.k[:, rows, src]
    v = cache.v[:, rows, src]
    return KVCache(cache.k.at[:, rows, dst].set(k, mode="drop"),
                   cache.v.at[:, rows, dst].set(v, mode="drop"))
  raise TypeError(f"cannot compact a cache of type {type(cache).__name__}: give the model a "
                  "compact_cache(cache, src, dst) method")


def tree_attention_mask(tree: trees_lib.Tree, *, root_slot, first_slot, cache_len: int):
  """``bool[B, T, S]``: node ``i`` sees slots ``[first, root_slot)`` and its ancestors' slots."""
  t = tree.size
  anc = trees_lib.ancestor_mask(tree.parent)  # [B, T, T]
  s = jnp.arange(cache_len)[None, None, :]
  rel = s - root_slot[:, None, None]
  in_tree = (rel >= 0) & (rel < t)
  relc = jnp.broadcast_to(jnp.clip(rel, 0, t - 1), (anc.shape[0], t, cache_len))
  tree_part = in_tree & jnp.take_along_axis(anc, relc, axis=2)
  prefix = (s >= first_slot[:, None, None]) & (s < root_slot[:, None, None])
  return prefix | tree_part


def _is_eos(tok, eos_ids):
  if not eos_ids:
    return jnp.zeros(tok.shape, bool)
  return functools.reduce(jnp.logical_or, [tok == e for e in eos_ids])


def _generate_impl(rng_key, params, drafter_params, tokens, prompt_lengths, *, model, drafter,
                   max_new_tokens: int, processor, eos_ids: tuple, pad_id: int, rule: str,
                   greedy: bool, cheap_empty_step: bool = False):
  b, p_len = tokens.shape
  n = max_new_tokens
  t = drafter.tree_size
  d_max = drafter.max_depth
  s_len = p_len + n + t
  first = (p_len - prompt_lengths).astype(jnp.int32)
  slots = jnp.broadcast_to(jnp.arange(p_len, dtype=jnp.int32)[None], (b, p_len))
  positions = jnp.maximum(slots - first[:, None], 0)
  cache = model.init_cache(b, s_len)
  mask = ((jnp.arange(s_len)[None, None, :] >= first[:, None, None])
          & (jnp.arange(s_len)[None, None, :] <= slots[:, :, None]))
  root_slot = jnp.full((b,), p_len - 1, jnp.int32)
  if drafter.needs_hidden:
    prefill = model(params, tokens, positions, mask, cache, jnp.zeros((b,), jnp.int32),
                    logits_at=jnp.maximum(root_slot - 1, 0)[:, None], return_hidden=True)
    hidden = prefill.hidden[:, 0]
  else:
    prefill = model(params, tokens, positions, mask, cache, jnp.zeros((b,), jnp.int32),
                    logits_at=jnp.zeros((b, 1), jnp.int32))
    hidden = jnp.zeros((b, 1), jnp.float32)
  cache = prefill.cache
  dstate = drafter.init(drafter_params, tokens, first, cache_len=s_len)
  history = jnp.zeros((b, s_len), jnp.int32).at[:, :p_len].set(tokens)
  state = SpecState(jnp.int32(0), jnp.full((b, n), pad_id, jnp.int32), jnp.zeros((b,), jnp.int32),
                    cache, dstate, tokens[:, -1], root_slot, history, hidden,
                    jnp.zeros((b,), bool), jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32),
                    jnp.zeros((b,), jnp.int32))
  rows = jnp.arange(b)[:, None]
  # A Llama target configured with attention_impl="pallas" scores the tree with the kernel.
  structured_mask = getattr(getattr(model, "config", None), "attention_impl", "xla") == "pallas"

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
      if structured_mask:
        # Same visibility as tree_attention_mask, in the form the Pallas tree-attention kernel
        # reads: the valid prefix [first, root_slot) plus the block's ancestor mask.
        mask = attention_lib.CacheBlockMask(start=first, prefix_len=st.root_slot - first,
                                            block_mask=trees_lib.ancestor_mask(tree.parent))
      else:
        mask = tree_attention_mask(tree, root_slot=st.root_slot, first_slot=first,
                                   cache_len=s_len)
      pos = root_pos[:, None] + tree.depth
      return model(params, tree.tokens, pos, mask, c, st.root_slot,
                   return_hidden=drafter.needs_hidden)

    def root_forward(c):
      # Nothing drafted: score the root alone (one AR step) and replicate its row over the T
      # nodes; every child is invalid, so the verifier reads node 0 only -> same outcome.
      s = jnp.arange(s_len)[None, None, :]
      mask = (s >= first[:, None, None]) & (s <= st.root_slot[:, None, None])
      out = model(params, st.root[:, None], root_pos[:, None], mask, c, st.root_slot,
                  return_hidden=drafter.needs_hidden)
      widen = lambda x: jnp.broadcast_to(x, (b, t) + x.shape[2:])
      return out._replace(logits=widen(out.logits),
                          hidden=None if out.hidden is None else widen(out.hidden))

    if cheap_empty_step and t > 1:
      drafted = jnp.any(tree.valid[:, 1:] & ~st.done[:, None])
      fwd = jax.lax.cond(drafted, tree_forward, root_forward, st.cache)
    else:
      fwd = tree_forward(st.cache)
    logits, cache = fwd.logits, fwd.cache
    hid = fwd.hidden if drafter.needs_hidden else None
    v = logits.shape[-1]
    probs = jax.nn.softmax(processor(logits.reshape(b * t, v)), axis=-1).reshape(b, t, v)
    res = verify_lib.verify(k_ver, tree, probs, draft.draft_probs, rule=rule, greedy=greedy,
                            max_depth=d_max)
    # Tokens committed this step: the accepted drafts in path order, then the residual / bonus.
    path_tok = jnp.take_along_axis(tree.tokens, jnp.maximum(res.path, 0), axis=1)  # [B, D+1]
    emitted = jnp.concatenate([path_tok[:, 1:], jnp.full((b, 1), pad_id, jnp.int32)], axis=1)
    emitted = emitted.at[jnp.arange(b), res.num_accepted].set(res.next_token)
    count = res.num_accepted + 1
    j = jnp.arange(d_max + 1)[None]
    eos = _is_eos(emitted, eos_ids) & (j < count[:, None])
    first_eos = jnp.where(eos.any(1), jnp.argmax(eos, axis=1), d_max + 1)
    count = jnp.minimum(jnp.minimum(count, first_eos + 1), n - st.n_out)
    active = ~st.done
    count = jnp.where(active, count, 0)
    keep = j < count[:, None]
    out = st.out.at[rows, jnp.where(keep, st.n_out[:, None] + j, n)].set(emitted, mode="drop")
    history = st.history.at[rows, jnp.where(keep, st.root_slot[:, None] + 1 + j, s_len)].set(
        emitted, mode="drop")
    # K/V of the accepted path (root + accepted drafts) into slots root_slot + j, path order.
    acc_path = (res.path >= 0) & (j < count[:, None])
    src = st.root_slot[:, None] + jnp.maximum(res.path, 0)
    dst = jnp.where(acc_path, st.root_slot[:, None] + j, s_len)
    cache = compact_cache(model, cache, src, dst)
    last = jnp.take_along_axis(emitted, jnp.maximum(count - 1, 0)[:, None], axis=1)[:, 0]
    new_root = jnp.where(active, last, st.root)
    n_out = st.n_out + count
    hit_eos = active & (first_eos < count)
    done = st.done | hit_eos | (n_out >= n)
    info = drafters_lib.CommitInfo(tree, res.path, res.num_accepted, st.root_slot, first, active)
    dstate = drafter.commit(drafter_params, dstate, info)
    if hid is not None:
      new_hidden = jnp.take_along_axis(hid, res.last_node[:, None, None], axis=1)[:, 0]
      new_hidden = jnp.where(active[:, None], new_hidden, st.hidden)
    else:
      new_hidden = st.hidden
    return SpecState(st.step + 1, out, n_out, cache, dstate, new_root, st.root_slot + count,
                     history, new_hidden, done, st.finished | hit_eos,
                     st.calls + active.astype(jnp.int32),
                     st.accepted + jnp.where(active, jnp.minimum(res.num_accepted, count - 1), 0))

  st = jax.lax.while_loop(cond, body, state)
  info = SpecInfo(st.n_out, prompt_lengths, st.finished, st.step, st.calls, st.accepted)
  return st.out, info, st.cache


_STATIC = ("model", "drafter", "max_new_tokens", "processor", "eos_ids", "pad_id", "rule",
           "greedy", "cheap_empty_step")
_generate_jit = jax.jit(_generate_impl, static_argnames=_STATIC)


@functools.lru_cache(maxsize=None)
def _generate_jit_with(compiler_options: tuple):
  return jax.jit(_generate_impl, static_argnames=_STATIC, compiler_options=dict(compiler_options))


def resolve_processor(processor, temperature, top_k, top_p):
  if processor is not None:
    return processor
  if temperature is None or not temperature >= 0:
    raise ValueError(f"temperature={temperature!r} must be >= 0 (0 = greedy)")
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
    model, params: the target (``LlamaLM`` protocol: ``model(params, tokens, positions, mask,
      cache, write_slots, *, logits_at, return_hidden)``, ``model.init_cache``).
    prompts: ragged list of token-id lists (or ``int[B, T]``).
    drafter, drafter_params: a :mod:`drafters` protocol object and its parameters.
    processor: a logits processor; default ``logits_processors.build(temperature, top_k, top_p)``.
    rule: verification rule (:data:`verify.RULES`); default the drafter's ``sibling_rule``
      (``"match"`` with ``greedy`` under a greedy processor). ``"typical"`` is lossy.
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
  """
  processor = resolve_processor(processor, temperature, top_k, top_p)
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an int >= 1")
  for attr in ("sibling_rule", "tree_size", "max_depth", "needs_hidden"):
    if not hasattr(drafter, attr):
      raise TypeError(f"drafter {drafter!r} lacks `{attr}` (see the drafters protocol)")
  greedy = lp.is_greedy(processor)
  if cheap_empty_step is None:
    cheap_empty_step = bool(getattr(drafter, "may_draft_nothing", False))
  if rule is None:
    rule = "match" if greedy else drafter.sibling_rule
  if rule not in verify_lib.RULES:
    raise ValueError(f"rule={rule!r} is not one of {verify_lib.RULES}")
  tv, dv = vocab_size_of_lm(model), getattr(drafter, "vocab_size", None)
  if tv is not None and dv is not None and tv != dv:
    raise ValueError(f"drafter vocab_size={dv} differs from the target's vocab_size={tv}: "
                     "draft and target must share one tokenizer")
  eos_ids, pad_id = resolve_special_ids(model, eos_id=eos_id, pad_id=pad_id)
  tokens, lengths = ar.pad_prompts(prompts, padding="left", pad_id=pad_id, min_bucket=min_bucket)
  if tv is not None and (tokens.min() < 0 or tokens.max() >= tv):
    raise ValueError(f"prompt token ids must lie in [0, {tv})")
  ctx = getattr(model, "context_length", None)
  if ctx is not None:
    trees_lib.check_headroom(drafter.tree_size, cache_len=ctx, prefix_len=int(lengths.max()),
                             max_new_tokens=int(max_new_tokens))
  fn = (_generate_jit if not compiler_options
        else _generate_jit_with(tuple(sorted(compiler_options.items()))))
  out, info, cache = fn(rng_key, params, drafter_params, jnp.asarray(tokens),
                        jnp.asarray(lengths), model=model, drafter=drafter,
                        max_new_tokens=int(max_new_tokens), processor=processor, eos_ids=eos_ids,
                        pad_id=int(pad_id), rule=rule, greedy=greedy,
                        cheap_empty_step=bool(cheap_empty_step))
  return out, info._replace(cache=cache if return_cache else None)
