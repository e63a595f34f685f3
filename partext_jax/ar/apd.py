"""Adaptive parallel decoding (APD): a diffusion drafter, an autoregressive verifier, one
``lax.while_loop``.

Israel, Van den Broeck and Grover (2025), "Accelerating Diffusion LLMs via Adaptive Parallel
Decoding"; the rule and the choices made here are in ``docs/algorithms.md#apd``.

Round (``key_r = fold_in(rng_key, r)``, ``M = drafter.gamma``, ``R = mixture_weight``):

1. the drafter's one denoising pass gives ``log q_i`` at the ``M`` positions after the last
   committed token (the *root*); with one Gumbel array ``g [B, M, V]`` the drafts are
   ``x_i = argmax(log q_i + g_i)``, independent draws from the marginals;
2. one verifier forward over ``[root, x_1 .. x_M]`` gives ``log p_AR(. | prefix, x_<i)`` at every
   draft position;
3. the target ``log pi_i = R log q_i + (1 - R) log p_AR,i`` is sampled with the **same** ``g``:
   ``y_i = argmax(log pi_i + g_i)``;
4. ``n`` = the longest prefix with ``x_i = y_i``; commit ``x_1 .. x_n`` and, when ``n < M`` and
   ``commit_target`` (default), the target's own sample ``y_{n+1}`` at the first disagreement.
   The first generated token is accepted without check (APD's approximation: an exact
   denoiser's first marginal *is* the left-to-right conditional). With ``commit_target=False``
   the paper's rule is run verbatim: the first draft of *every* round is accepted unchecked and
   nothing else is committed;
5. "crop" the verifier cache: the new root is the last committed token at slot ``root_slot +
   count``; later slots are rewritten by the next forward before anything attends to them.

Properties (``tests/test_apd.py``): ``R = 1`` accepts all ``M`` drafts; with
``commit_target=True`` every committed token after the first is an exact draw of ``pi_i`` given
the committed prefix (the accepted drafts equal the target's samples, and ``g_i`` is independent
of everything that decided the prefix), so ``R = 0`` is exact sampling of the verifier after the
first token, whatever the drafter.

Layout as :mod:`partext_jax.ar.speculative.decode` (left padding, caches of ``P + N + M + 1``
slots); the drafter is any object with ``gamma``, ``vocab_size`` and ``marginal_logits(params,
ctx: DraftContext) -> float32[B, M, V]``
(:class:`~partext_jax.ar.speculative.drafters.diffusion.DiffusionDrafter` with ``passes=1``).

Usage::

    drafter, dparams = diffusion_drafter.load_drafter(gamma=6)   # partext_jax.training
    tokens, info = apd.generate(key, model, params, prompts, drafter=drafter,
                                drafter_params=dparams, mixture_weight=0.7, max_new_tokens=64)
    info.accepted_per_call    # tokens committed per verifier forward, per row
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from partext_jax import ops
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import decode as spec_decode
from partext_jax.ar.speculative import trees as trees_lib
from partext_jax.ar.speculative.drafters.base import DraftContext
from partext_jax.base import checked_bool, checked_float, vocab_size_of_lm
from partext_jax.models.attention import causal_cache_mask


def mixture_logits(log_q, log_p, mixture_weight: float):
  """APD's product of experts ``R log q + (1 - R) log p`` (unnormalised), any shape ``[..., V]``.

  ``R = 0`` / ``1`` return ``log p`` / ``log q`` unchanged (no ``0 * -inf``); a row where the two
  laws share no token (every entry ``-inf``) falls back to ``log p``.
  """
  if mixture_weight == 0.0:
    return log_p
  if mixture_weight == 1.0:
    return log_q
  mix = mixture_weight * log_q + (1.0 - mixture_weight) * log_p
  return jnp.where(jnp.any(jnp.isfinite(mix), axis=-1, keepdims=True), mix, log_p)


def _log_probs(processor, logits):
  shape = logits.shape
  flat = processor(logits.reshape(-1, shape[-1]).astype(jnp.float32))
  return jax.nn.log_softmax(flat, axis=-1).reshape(shape)


def generate_impl(rng_key, params, drafter_params, tokens, prompt_lengths, *, model, drafter,
                  max_new_tokens: int, processor, mixture_weight: float, eos_ids: tuple,
                  pad_id: int, commit_target: bool):
  """The traced body of :func:`generate` (module docstring); returns ``(tokens, SpecInfo)``."""
  b, p_len = tokens.shape
  n, m = max_new_tokens, drafter.gamma
  s_len = p_len + n + m + 1
  first = (p_len - prompt_lengths).astype(jnp.int32)
  root_slot = jnp.full((b,), p_len - 1, jnp.int32)
  cache = ar.prefill(model, params, tokens, first, s_len,
                     logits_at=jnp.maximum(root_slot - 1, 0)[:, None]).cache
  history = jnp.zeros((b, s_len), jnp.int32).at[:, :p_len].set(tokens)
  zeros = jnp.zeros((b,), jnp.int32)
  no = jnp.zeros((b,), bool)
  init = spec_decode.SpecState(jnp.int32(0), jnp.full((b, n), pad_id, jnp.int32), zeros, cache,
                               (), tokens[:, -1], root_slot, history, None, no, no, zeros, zeros)
  rows = jnp.arange(b)[:, None]
  j = jnp.arange(m)

  def body(st: spec_decode.SpecState):
    key = jax.random.fold_in(rng_key, st.step)
    root_pos = st.root_slot - first
    ctx = DraftContext(st.root, st.root_slot, root_pos, first, st.history,
                       jnp.zeros((b, 1), jnp.float32))
    log_q = _log_probs(processor, drafter.marginal_logits(drafter_params, ctx))  # [B, M, V]
    g = jax.random.gumbel(key, log_q.shape, jnp.float32)
    x = ops.argmax(log_q + g).astype(jnp.int32)  # drafts
    chain = jnp.concatenate([st.root[:, None], x], axis=1)
    slots = st.root_slot[:, None] + jnp.arange(m + 1)[None]
    fwd = model(params, chain, root_pos[:, None] + jnp.arange(m + 1)[None],
                causal_cache_mask(slots, first, s_len), st.cache, st.root_slot)
    log_p = _log_probs(processor, fwd.logits[:, :m])  # p_AR at x_1 .. x_M
    y = ops.argmax(mixture_logits(log_q, log_p, mixture_weight) + g).astype(jnp.int32)
    agree = x == y
    forced = (st.step == 0) | (not commit_target)
    agree = agree.at[:, 0].set(agree[:, 0] | forced)
    accepted = jnp.sum(jnp.cumprod(agree.astype(jnp.int32), axis=1), axis=1)  # n in [0, M]
    emitted = jnp.where(j[None] < accepted[:, None], x, y)
    count = jnp.where((accepted < m) & commit_target, accepted + 1, accepted)
    eos = ar.is_eos(emitted, eos_ids) & (j[None] < count[:, None])
    first_eos = jnp.where(eos.any(1), jnp.argmax(eos, axis=1), m)
    count = jnp.minimum(jnp.minimum(count, first_eos + 1), n - st.n_out)
    active = ~st.done
    count = jnp.where(active, count, 0)
    keep = j[None] < count[:, None]
    out = st.out.at[rows, jnp.where(keep, st.n_out[:, None] + j, n)].set(emitted, mode="drop")
    history = st.history.at[rows, jnp.where(keep, st.root_slot[:, None] + 1 + j, s_len)].set(
        emitted, mode="drop")
    last = jnp.take_along_axis(emitted, jnp.maximum(count - 1, 0)[:, None], axis=1)[:, 0]
    n_out = st.n_out + count
    hit_eos = active & (first_eos < count)
    return spec_decode.SpecState(
        st.step + 1, out, n_out, fwd.cache, (), jnp.where(count > 0, last, st.root),
        st.root_slot + count, history, None, st.done | hit_eos | (n_out >= n),
        st.finished | hit_eos, st.calls + active.astype(jnp.int32),
        st.accepted + jnp.minimum(accepted, count))

  st = jax.lax.while_loop(lambda st: ~jnp.all(st.done), body, init)
  return st.out, spec_decode.SpecInfo(st.n_out, prompt_lengths, st.finished, st.step, st.calls,
                                      st.accepted)


STATIC_ARGNAMES = ("model", "drafter", "max_new_tokens", "processor", "mixture_weight",
                   "eos_ids", "pad_id", "commit_target")
_generate_jit = jax.jit(generate_impl, static_argnames=STATIC_ARGNAMES)


@functools.lru_cache(maxsize=None)
def _generate_jit_with(compiler_options: tuple):
  return jax.jit(generate_impl, static_argnames=STATIC_ARGNAMES,
                 compiler_options=dict(compiler_options))


def generate(rng_key, model, params, prompts, *, drafter, drafter_params, mixture_weight: float,
             max_new_tokens: int, processor: Callable | None = None, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, commit_target: bool = True,
             eos_id="model", pad_id: int | None = None, min_bucket: int = 16,
             compiler_options: dict | None = None):
  """APD generation of up to ``max_new_tokens`` tokens per prompt (module docstring).

  Args:
    rng_key: PRNG key; round ``r`` draws its Gumbel array from ``fold_in(rng_key, r)``.
    model, params: the verifier, a :class:`~partext_jax.base.CausalLM` (KV cache as in
      :func:`partext_jax.ar.sampling.generate`) and its parameters.
    prompts: ragged list of token-id lists (or ``int[B, T]``).
    drafter, drafter_params: the diffusion drafter (``gamma = M`` drafts per round,
      ``marginal_logits``, ``vocab_size`` equal to the verifier's) and its parameters.
    mixture_weight: ``R`` in ``[0, 1]``, the drafter's exponent in the target ``q^R p^(1-R)``
      (1: the drafter alone, every draft accepted; 0: the verifier alone).
    processor: logits processor applied to both experts before mixing; default
      :func:`partext_jax.ar.processors.build` ``(temperature, top_k, top_p)``; a greedy
      processor makes drafts and targets argmaxes.
    commit_target: commit the target's sample at the first disagreement and check every draft
      but the first generated token (default); ``False``: the paper's rule verbatim (first draft
      of every round unchecked, nothing but accepted drafts committed).
    eos_id, pad_id, min_bucket: as :func:`partext_jax.ar.sampling.generate`.
    compiler_options: XLA options for this compilation (e.g. fast compiles for toys).
  Returns:
    ``(tokens int32[B, N], SpecInfo)``: ``info.target_calls`` counts verifier forwards (one per
    round, each also one drafter pass) and ``info.accepted`` the drafts accepted (the committed
    target samples excluded); ``info.accepted_per_call`` is tokens per verifier forward.
  Raises:
    TypeError, ValueError: ``mixture_weight`` outside ``[0, 1]``, a drafter without
      ``marginal_logits`` / ``gamma`` or with several passes or another vocabulary, the
      arguments :func:`partext_jax.ar.sampling.prepare_batch` rejects, or a prompt +
      ``max_new_tokens`` + ``M + 1`` beyond ``context_length``; all before compiling.
  """
  mixture_weight = checked_float("mixture_weight", mixture_weight, lo=0.0, hi=1.0,
                                 hint=" (R: 1 = drafter only, 0 = verifier only)")
  checked_bool("commit_target", commit_target)
  for attr in ("gamma", "vocab_size", "marginal_logits"):
    if not hasattr(drafter, attr):
      raise TypeError(f"drafter {drafter!r} lacks `{attr}`: APD needs a diffusion drafter "
                      "(partext_jax.ar.speculative.drafters.DiffusionDrafter)")
  if getattr(drafter, "passes", 1) != 1:
    raise ValueError(f"APD drafts its block from one denoising pass; the drafter has "
                     f"passes={drafter.passes} (use passes=1)")
  tv = vocab_size_of_lm(model)
  if tv is not None and tv != drafter.vocab_size:
    raise ValueError(f"drafter vocab_size={drafter.vocab_size} differs from the verifier's "
                     f"vocab_size={tv}: both must share one tokenizer")
  processor = spec_decode.resolve_processor(processor, temperature, top_k, top_p)
  batch = ar.prepare_batch(model, prompts, max_new_tokens=max_new_tokens, processor=processor,
                           eos_id=eos_id, pad_id=pad_id, padding="left", min_bucket=min_bucket)
  ctx = getattr(model, "context_length", None)
  if ctx is not None:
    trees_lib.check_headroom(drafter.gamma + 1, cache_len=ctx,
                             prefix_len=int(batch.lengths.max()),
                             max_new_tokens=int(max_new_tokens))
  fn = (_generate_jit if not compiler_options
        else _generate_jit_with(tuple(sorted(compiler_options.items()))))
  return fn(rng_key, params, drafter_params, jnp.asarray(batch.tokens),
            jnp.asarray(batch.lengths), model=model, drafter=drafter,
            max_new_tokens=int(max_new_tokens), processor=processor,
            mixture_weight=mixture_weight, eos_ids=batch.eos_ids, pad_id=batch.pad_id,
            commit_target=commit_target)
