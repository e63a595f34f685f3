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

from partext_jax import ops
from partext_jax.ar.speculative import trees as trees_lib

RULES = ("iid", "without_replacement", "topk", "match", "typical")
LOSSLESS_RULES = ("iid", "without_replacement", "topk", "match")


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


def verify(rng_key, tree: trees_lib.Tree, p_probs, q_probs=None, *, rule: str,
           greedy: bool = False, max_depth: int | None = None, posterior_threshold: float = 0.09,
           posterior_alpha: float = 0.3) -> VerifyResult:
  """Verifies a batch of trees (see the module docstring).

  Args:
    rng_key: PRNG key (row ``b`` uses ``fold_in(rng_key, b)``).
    tree: batched tree ``[B, T]``.
    p_probs: ``float32[B, T, V]`` target probabilities after logits processing.
    q_probs: ``float32[B, T, V]`` drafter probabilities (``"iid"`` / ``"without_replacement"``).
    rule: one of :data:`RULES`; ``"typical"`` is lossy.
    greedy: with ``rule="match"``, take ``argmax p`` instead of a draw.
    max_depth: static path length - 1 (default ``T - 1``).
    posterior_threshold, posterior_alpha: ``"typical"`` only, the hard threshold and the
      entropy factor of Medusa's rule ``p(x) > min(threshold, alpha exp(-H))``.
  Returns:
    :class:`VerifyResult` (accepted path, accepted count, emitted token, deepest node).
  Raises:
    ValueError: an unknown ``rule``, or a rule that reads ``q`` without ``q_probs``.
  """
  if rule not in RULES:
    raise ValueError(f"rule={rule!r} is not one of {RULES}")
  reads_q = rule in ("iid", "without_replacement")
  if reads_q and q_probs is None:
    raise ValueError(f"rule={rule!r} needs the drafter's q_probs")
  b, t = tree.tokens.shape
  if max_depth is None:
    max_depth = t - 1
  if not reads_q:
    q_probs = jnp.zeros((b, t, 1), p_probs.dtype)  # carried, never read
  keys = jax.vmap(lambda i: jax.random.fold_in(rng_key, i))(jnp.arange(b))
  row = functools.partial(_verify_row, rule=rule, greedy=greedy, max_depth=max_depth,
                          posterior_threshold=posterior_threshold,
                          posterior_alpha=posterior_alpha)
  return VerifyResult(*jax.vmap(row)(keys, tree.tokens, tree.parent, tree.depth, tree.valid,
                                     p_probs, q_probs))
