"""Tree verification: which drafted nodes the target accepts, and the token it adds.

Inputs per row: the tree (:class:`trees.Tree`, ``T`` nodes), the target's processed probabilities
``p[i]`` at every node (the distribution of the token after node ``i``'s root path) and, for the
stochastic rules, the drafter's ``q[i]`` (the distribution node ``i``'s children were drawn from).

One pass over the nodes in index order walks down the tree: ``cur`` starts at the root with
residual ``r = p[cur]`` (and ``s = q[cur]``); every valid child ``x`` of ``cur`` (in node order)
is tested; on acceptance ``cur <- x`` and ``r, s <- p[x], q[x]``; on rejection the residual is
updated. Since ``parent[i] < i`` the children of an accepted node come after it, so one pass
suffices. The walk ends at a node whose children are all rejected (or a leaf) and emits one token
``y ~ r`` (the residual, or the bonus token ``p[cur]`` at a leaf). Rules (``u ~ U[0, 1)`` per
node; ``docs/algorithms.md#speculative-decoding``):

* ``"iid"`` (siblings i.i.d. from ``q``; SpecInfer): accept iff ``u q(x) <= r(x)``; on rejection
  ``r <- norm(max(r - q, 0))`` (kept as is when that has no mass).
* ``"without_replacement"`` (Gumbel-top-k siblings; recursive rejection sampling): as ``"iid"``
  with ``s`` in place of ``q``, and also ``s(x) <- 0``, ``s <- norm(s)``.
* ``"topk"`` (deterministic distinct siblings; EAGLE-2): accept iff ``u <= r(x)``; on rejection
  ``r(x) <- 0``, ``r <- norm(r)``.
* ``"match"`` (sample-and-match, the oracle; any drafter): one draw ``y_i ~ p[i]`` per node,
  shared by every path through it; accept the first child with ``x == y_cur``; emit ``y_cur``.
  With ``greedy=True`` the draw is ``argmax p[i]`` (greedy decoding: exact match).
* ``"block"`` (chains only; Sun et al. 2025, block verification): with ``X_1 .. X_g`` the valid
  drafts, ``P_0 = 1``, ``P_i = min(1, P_{i-1} p[i-1](X_i) / q[i-1](X_i))``, the residual
  ``res_i = max(P_i p[i] - q[i], 0)`` and ``h_i = |res_i| / (|res_i| + 1 - P_i)`` (``0`` when
  ``|res_i| = 0``) for ``i < g``, ``h_g = P_g``: the accepted length is the *last* ``i`` with
  ``u_i < h_i`` (``0`` if none) and the emitted token is drawn from ``norm(res_tau)`` (``p[g]``
  when ``tau = g``). Deterministic drafters (``q_probs=None``) have one-hot ``q``. It accepts at
  least as many drafts in expectation as the token-wise rules (:func:`expected_accepted`).
* ``"typical"`` (Medusa's typical acceptance, Cai et al. 2024; **lossy**, opt-in only): accept
  iff ``p(x) > min(posterior_threshold, posterior_alpha exp(-H(p)))`` with Medusa's defaults
  ``posterior_threshold = 0.09``, ``posterior_alpha = 0.3`` (``evaluate_posterior`` of the
  reference, which adds ``1e-5`` inside the entropy's log; here ``0 log 0 = 0``); the emitted
  token is drawn from ``p[cur]``.

All rules but ``"typical"`` are lossless when they match how siblings were drawn: the emitted
tokens are distributed exactly as ancestral sampling from ``p``.

Usage::

    out = verify(key, tree, p_probs, q_probs, rule="iid")     # batched over rows, jit-able
    out.path[b, :out.num_accepted[b] + 1]                      # accepted nodes, root first
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from partext_jax import ops
from partext_jax.ar.speculative import trees as trees_lib

RULES = ("iid", "without_replacement", "topk", "match", "block", "typical")
LOSSLESS_RULES = ("iid", "without_replacement", "topk", "match", "block")
CHAIN_RULES = ("block",)  # rules defined for chains only (docs/algorithms.md#block-verification)


class VerifyResult(NamedTuple):
  path: jax.Array  # int32[B, D + 1]: accepted node indices by depth (root first), -1 padded
  num_accepted: jax.Array  # int32[B]: accepted draft nodes (excluding the root)
  next_token: jax.Array  # int32[B]: the residual / bonus token emitted after the accepted path
  last_node: jax.Array  # int32[B]: the deepest accepted node (path[num_accepted])


def _norm(x):
  z = x.sum()
  return jnp.where(z > 0, x / jnp.where(z > 0, z, 1.0), x), z > 0


def _verify_row(key, tokens, parent, depth, valid, p, q, *, rule, greedy, max_depth,
                posterior_threshold, posterior_alpha):
  t, v = p.shape
  k_u, k_y, k_final = jax.random.split(key, 3)
  u = jax.random.uniform(k_u, (t,))
  if rule == "match":
    if greedy:
      y = ops.argmax(p)
    else:
      y = ops.categorical(k_y, jnp.log(p))

  path0 = jnp.full((max_depth + 1,), -1, jnp.int32).at[0].set(0)
  init = (jnp.int32(0), p[0], q[0], path0)

  def body(j, carry):
    cur, r, s, path = carry
    x = tokens[j]
    live = (parent[j] == cur) & valid[j]
    if rule == "iid" or rule == "without_replacement":
      qx = s[x]
      accept = (r[x] > 0) & (u[j] * qx <= r[x])
      resid, ok = _norm(jnp.maximum(r - s, 0.0))
      r_rej = jnp.where(ok, resid, r)
      if rule == "without_replacement":
        s_rej, _ = _norm(s.at[x].set(0.0))
      else:
        s_rej = s
    elif rule == "topk":
      accept = (r[x] > 0) & (u[j] <= r[x])
      rz, ok = _norm(r.at[x].set(0.0))
      r_rej, s_rej = jnp.where(ok, rz, r), s
    elif rule == "match":
      accept = x == y[cur]
      r_rej, s_rej = r, s
    else:  # typical
      pc = p[cur]
      ent = -jnp.sum(jnp.where(pc > 0, pc * jnp.log(jnp.where(pc > 0, pc, 1.0)), 0.0))
      accept = pc[x] > jnp.minimum(posterior_threshold, posterior_alpha * jnp.exp(-ent))
      r_rej, s_rej = r, s
    acc = live & accept
    rej = live & ~accept
    new_cur = jnp.where(acc, j, cur)
    r = jnp.where(acc, p[j], jnp.where(rej, r_rej, r))
    s = jnp.where(acc, q[jnp.minimum(j, q.shape[0] - 1)], jnp.where(rej, s_rej, s))
    path = jnp.where(acc, path.at[jnp.minimum(depth[j], max_depth)].set(j), path)
    return new_cur, r, s, path

  cur, r, s, path = jax.lax.fori_loop(1, t, body, init)
  if rule == "match":
    nxt = y[cur]
  else:
    nxt = jax.random.categorical(k_final, jnp.log(r)).astype(jnp.int32)
  return path, depth[cur].astype(jnp.int32), nxt, cur


class _BlockWeights(NamedTuple):
  """Sun et al.'s block-verification quantities along one chain of ``T = g_max + 1`` nodes."""

  accept_prob: jax.Array  # float32[T]: P_i (P_0 = 1)
  stop_prob: jax.Array  # float32[T]: h_i (h_0 = 0, h_g = P_g, 0 past the last valid draft)
  residual: jax.Array  # float32[T, V]: max(P_i p[i] - q[i], 0), unnormalised


def _block_weights(tokens, valid, p, q) -> _BlockWeights:
  """:class:`_BlockWeights` of one chain (``tokens, valid [T]``, ``p, q [T, V]``)."""
  t = tokens.shape[0]
  drafts = tokens[1:, None]  # X_1 .. X_{T-1}
  p_tok = jnp.take_along_axis(p[:-1], drafts, axis=1)[:, 0]
  q_tok = jnp.take_along_axis(q[:-1], drafts, axis=1)[:, 0]
  ratio = jnp.where(q_tok > 0, p_tok / jnp.where(q_tok > 0, q_tok, 1.0), 0.0)

  def step(prev, r):
    cur = jnp.minimum(prev * r, 1.0)
    return cur, cur

  _, accept = jax.lax.scan(step, jnp.ones((), p.dtype), ratio)
  accept = jnp.concatenate([jnp.ones((1,), p.dtype), accept])
  residual = jnp.maximum(accept[:, None] * p - q, 0.0)
  mass = residual.sum(-1)
  num_drafts = jnp.sum(valid[1:])  # valid is closed downward: the valid drafts are a prefix
  i = jnp.arange(t)
  stop = jnp.where(mass > 0, mass / jnp.where(mass > 0, mass + 1.0 - accept, 1.0), 0.0)
  stop = jnp.where(i == num_drafts, accept, jnp.where((i >= 1) & (i < num_drafts), stop, 0.0))
  return _BlockWeights(accept, stop, residual)


def _verify_block_row(key, tokens, valid, p, q, *, max_depth):
  k_u, k_final = jax.random.split(key)
  t = tokens.shape[0]
  w = _block_weights(tokens, valid, p, q)
  u = jax.random.uniform(k_u, (t,))
  i = jnp.arange(t)
  tau = jnp.max(jnp.where(u < w.stop_prob, i, 0)).astype(jnp.int32)  # the last success
  num_drafts = jnp.sum(valid[1:]).astype(jnp.int32)
  resid, ok = _norm(w.residual[tau])
  final = jnp.where((tau == num_drafts) | ~ok, p[tau], resid)
  nxt = jax.random.categorical(k_final, jnp.log(final)).astype(jnp.int32)
  d = jnp.arange(max_depth + 1)
  path = jnp.where(d <= tau, d, -1).astype(jnp.int32)
  return path, tau, nxt, tau


def _one_hot_drafts(tokens, vocab_size: int, dtype):
  """``q[b, i] = onehot(tokens[b, i + 1])`` (the last node: zeros): a deterministic chain's law."""
  q = jax.nn.one_hot(tokens[:, 1:], vocab_size, dtype=dtype)
  return jnp.concatenate([q, jnp.zeros_like(q[:, :1])], axis=1)


def _check_chain(tree: trees_lib.Tree, rule: str) -> None:
  """Raises for a concrete tree that is not a chain (a traced one is trusted)."""
  try:
    parent = np.asarray(tree.parent)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return
  chain = np.arange(parent.shape[-1]) - 1
  if not np.all(parent == chain):
    raise ValueError(f"rule={rule!r} verifies chains (parent[i] = i - 1); got parent "
                     f"{parent.tolist()}")


def expected_accepted(tree: trees_lib.Tree, p_probs, q_probs=None, *, rule: str):
  """Expected number of accepted drafts of a batch of chains, given the drafts.

  Exact (no sampling) for the drafts at hand: ``sum_i i h_i prod_{l > i} (1 - h_l)`` for
  ``"block"`` and ``sum_i prod_{j <= i} min(1, p[j-1](X_j) / q[j-1](X_j))`` for the token-wise
  rules ``"iid"`` / ``"topk"`` / ``"match"`` (``q`` one-hot for the last two). Averaged over drafts
  ``X ~ q`` the block value is never smaller (Sun et al. 2025;
  ``docs/algorithms.md#block-verification``).

  Args:
    tree: a batch of chains ``[B, T]`` (``T - 1`` drafts; invalid nodes end the chain).
    p_probs: ``float32[B, T, V]`` processed target probabilities at every node.
    q_probs: ``float32[B, T, V]`` the drafter's, or ``None`` for deterministic drafts (one-hot).
  Returns:
    ``float32[B]``.
  Raises:
    ValueError: another rule, or a concrete tree that is not a chain.
  """
  checked = ("block", "iid", "topk", "match")
  if rule not in checked:
    raise ValueError(f"rule={rule!r} is not one of {checked}")
  _check_chain(tree, rule)
  if q_probs is None or rule in ("topk", "match"):
    q_probs = _one_hot_drafts(tree.tokens, p_probs.shape[-1], p_probs.dtype)
  weights = jax.vmap(_block_weights)(tree.tokens, tree.valid, p_probs, q_probs)
  if rule == "block":
    h = weights.stop_prob
    survive = jnp.cumprod((1.0 - h)[:, ::-1], axis=1)[:, ::-1]  # prod_{l >= i} (1 - h_l)
    after = jnp.concatenate([survive[:, 1:], jnp.ones_like(survive[:, :1])], axis=1)
    return jnp.sum(jnp.arange(h.shape[1]) * h * after, axis=1)
  # Token-wise: draft i survives iff every ratio up to i accepts; min(1, ratio) per draft.
  drafts = tree.tokens[:, 1:, None]
  p_tok = jnp.take_along_axis(p_probs[:, :-1], drafts, axis=2)[..., 0]
  q_tok = jnp.take_along_axis(q_probs[:, :-1], drafts, axis=2)[..., 0]
  acc = jnp.where(q_tok > 0, jnp.minimum(1.0, p_tok / jnp.where(q_tok > 0, q_tok, 1.0)), 0.0)
  acc = jnp.where(tree.valid[:, 1:], acc, 0.0)
  return jnp.sum(jnp.cumprod(acc, axis=1), axis=1)


def verify(rng_key, tree: trees_lib.Tree, p_probs, q_probs=None, *, rule: str,
           greedy: bool = False, max_depth: int | None = None, posterior_threshold: float = 0.09,
           posterior_alpha: float = 0.3) -> VerifyResult:
  """Verifies a batch of trees (see the module docstring).

  Args:
    rng_key: PRNG key (row ``b`` uses ``fold_in(rng_key, b)``).
    tree: batched tree ``[B, T]``.
    p_probs: ``float32[B, T, V]`` target probabilities after logits processing.
    q_probs: ``float32[B, T, V]`` drafter probabilities (``"iid"`` / ``"without_replacement"``;
      ``"block"``, where ``None`` means deterministic drafts, i.e. one-hot ``q``).
    rule: one of :data:`RULES`; ``"typical"`` is lossy; ``"block"`` takes chains only.
    greedy: with ``rule="match"``, take ``argmax p`` instead of a draw.
    max_depth: static path length - 1 (default ``T - 1``).
    posterior_threshold, posterior_alpha: ``"typical"`` only, the hard threshold and the
      entropy factor of Medusa's rule ``p(x) > min(threshold, alpha exp(-H))``.
  Returns:
    :class:`VerifyResult` (accepted path, accepted count, emitted token, deepest node).
  Raises:
    ValueError: an unknown ``rule``, a rule that reads ``q`` without ``q_probs``, or
      ``"block"`` on a concrete tree that is not a chain.
  """
  if rule not in RULES:
    raise ValueError(f"rule={rule!r} is not one of {RULES}")
  reads_q = rule in ("iid", "without_replacement")
  if reads_q and q_probs is None:
    raise ValueError(f"rule={rule!r} needs the drafter's q_probs")
  b, t = tree.tokens.shape
  if max_depth is None:
    max_depth = t - 1
  keys = jax.vmap(lambda i: jax.random.fold_in(rng_key, i))(jnp.arange(b))
  if rule == "block":
    _check_chain(tree, rule)
    if q_probs is None:
      q_probs = _one_hot_drafts(tree.tokens, p_probs.shape[-1], p_probs.dtype)
    row = functools.partial(_verify_block_row, max_depth=max_depth)
    return VerifyResult(*jax.vmap(row)(keys, tree.tokens, tree.valid, p_probs, q_probs))
  if not reads_q:
    q_probs = jnp.zeros((b, t, 1), p_probs.dtype)  # carried, never read
  row = functools.partial(_verify_row, rule=rule, greedy=greedy, max_depth=max_depth,
                          posterior_threshold=posterior_threshold,
                          posterior_alpha=posterior_alpha)
  return VerifyResult(*jax.vmap(row)(keys, tree.tokens, tree.parent, tree.depth, tree.valid,
                                     p_probs, q_probs))
