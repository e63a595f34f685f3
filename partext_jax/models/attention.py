"""One attention entry point with a swappable implementation.

Both models call :func:`attention`; ``impl`` selects the implementation. Today only ``"xla"``
(plain jnp, the reference every kernel is tested against) exists; the Pallas kernels of
``partext_jax.kernels`` register themselves here under their own names.

Math (per batch row ``b``, query head ``h`` with KV head ``g = h // (H / G)``)::

    out[b, q, h] = sum_k softmax_k(q.k / sqrt(D) + bias[b, q, k]) v[b, k, g]

where ``bias`` is ``0`` where ``mask`` is True and ``-inf`` elsewhere. A query row with no
allowed key returns zeros (never NaN): padding rows are harmless.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

AttentionFn = Callable[..., jax.Array]
_IMPLS: dict[str, AttentionFn] = {}


def register(name: str, fn: AttentionFn) -> None:
  """Makes ``fn(q, k, v, mask) -> out`` selectable as ``attention(..., impl=name)``."""
  _IMPLS[name] = fn


def available() -> tuple[str, ...]:
  return tuple(sorted(_IMPLS))


def xla_attention(q, k, v, mask):
  """Reference grouped-query attention in jnp.

  Args:
    q: ``[B, Tq, H, D]``.
    k, v: ``[B, Tk, G, D]`` with ``H % G == 0``.
    mask: boolean, broadcastable to ``[B, Tq, Tk]`` (True = may attend), or None.
  Returns:
    ``[B, Tq, H, D]`` in ``q.dtype``.
  """
  b, tq, h, d = q.shape
  g = k.shape[2]
  qg = q.reshape(b, tq, g, h // g, d).astype(jnp.float32)
  scores = jnp.einsum("bqgrd,bkgd->bgrqk", qg, k.astype(jnp.float32)) / jnp.sqrt(d).astype(
      jnp.float32)
  if mask is not None:
    m = jnp.broadcast_to(mask, (b, tq, k.shape[1]))[:, None, None]
    scores = jnp.where(m, scores, -jnp.inf)
  smax = jnp.max(scores, axis=-1, keepdims=True)
  smax = jnp.where(jnp.isfinite(smax), smax, 0.0)
  p = jnp.exp(scores - smax)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  p = p / jnp.where(denom == 0, 1.0, denom)
  out = jnp.einsum("bgrqk,bkgd->bqgrd", p, v.astype(jnp.float32))
  return out.reshape(b, tq, h, d).astype(q.dtype)


register("xla", xla_attention)


def attention(q, k, v, mask=None, *, impl: str = "xla"):
  """Dispatches to the implementation named ``impl`` (see :func:`available`)."""
  if impl not in _IMPLS:
    raise ValueError(f"attention impl={impl!r} is not one of {available()}")
  h, g = q.shape[2], k.shape[2]
  if h % g:
    raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({g})")
  return _IMPLS[impl](q, k, v, mask)
