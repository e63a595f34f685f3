"""Figures of generation processes: when each position was unmasked, and a drafted token tree.

Used by the notebooks (``notebooks/``); each function draws on a matplotlib ``Axes`` it is given
(or a new figure) and returns it, so figures compose and tests can inspect them without a display.

* :func:`unmask_steps` -- from a masked sampler's recorded trajectory
  (``record_trajectory=True``), the step at which each position took its final value
  (``docs/algorithms.md#correctness-properties``: carry-over makes it well defined).
* :func:`plot_unmask_order` -- those steps for several samplers as one heat-map, one row per
  sampler, coloured by the fraction of the trajectory elapsed (dark: early, light: late).
* :func:`tree_layout` / :func:`draw_token_tree` -- a draft tree in the static encoding of
  :mod:`partext_jax.ar.speculative.trees` (``parent[i] < i``, node 0 the root) drawn left to
  right by depth, with the accepted path (``docs/algorithms.md#speculative-decoding``) in colour.

Usage::

    steps = unmask_steps(info.tokens, x_init, mask_id=V)          # int32[B, L]
    plot_unmask_order({"tau-leaping": steps[0], "top-k": other[0]}, num_steps={...})
    draw_token_tree(tokens, parent, accepted=path, labels=[tok.decode([t]) for t in tokens])
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

ACCEPTED_COLOR = "#2a9d3f"
REJECTED_COLOR = "#9a9a9a"
ROOT_COLOR = "#3b6fb6"


def unmask_steps(trajectory, x_init, *, mask_id: int) -> np.ndarray:
  """The step at which each position took the value it ends with.

  Args:
    trajectory: ``int[S, B, L]`` tokens after each of the ``S`` recorded steps (a masked
      sampler's ``info.tokens`` with ``record_trajectory=True``); a remasking sampler (ReMDM)
      may mask a position again, which then counts from its last unmasking.
    x_init: ``int[B, L]`` the initial tokens (MASK where generated, a prompt elsewhere).
    mask_id: the MASK id.

  Returns:
    ``int32[B, L]``: ``0`` at prompt positions (never masked), ``s`` in ``1..S`` for a position
    that is unmasked after step ``s`` and stays unmasked until the end, and ``S + 1`` for a
    position still masked after the last recorded step (e.g. filled by a final noise-removal
    call that the trajectory does not record).

  Raises:
    ValueError: if the shapes do not match (``trajectory [S, B, L]`` against ``x_init [B, L]``).
  """
  traj = np.asarray(trajectory)
  x0 = np.asarray(x_init)
  if traj.ndim != 3 or x0.ndim != 2 or traj.shape[1:] != x0.shape:
    raise ValueError(f"trajectory must be [S, B, L] and x_init [B, L] with the same B, L; got "
                     f"trajectory {traj.shape} and x_init {x0.shape}")
  states = np.concatenate([x0[None], traj]) == mask_id             # [S + 1, B, L] masked?
  num_steps = traj.shape[0]
  # Last state index (0..S) at which the position was masked; -1 if never (a prompt position).
  reversed_first = np.argmax(states[::-1], axis=0)
  last_masked = np.where(states.any(axis=0), num_steps - reversed_first, -1)
  return (last_masked + 1).astype(np.int32)


def plot_unmask_order(steps: Mapping[str, Sequence[int]], *, num_steps: Mapping[str, int],
                      ax=None, cmap: str = "viridis"):
  """Heat-map: one row per sampler, one column per position, colour = when it was unmasked.

  Args:
    steps: sampler name -> ``int[L]`` (one row of :func:`unmask_steps`); all rows the same ``L``.
    num_steps: sampler name -> the number of recorded steps ``S`` of that sampler; colours are
      ``step / S`` so samplers with different step counts share one scale (0: first step,
      1: last). Prompt positions (step 0) are drawn white; positions filled after the last
      recorded step (``S + 1``) are drawn at 1.
    ax: a matplotlib ``Axes`` to draw on (default: a new figure sized to the rows).
    cmap: a matplotlib colormap name.

  Returns:
    The ``Axes``, with a colour bar labelled "fraction of the trajectory".

  Raises:
    ValueError: if ``steps`` is empty, the rows differ in length, or a sampler has no
      ``num_steps`` entry (or one < 1).
  """
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  if not steps:
    raise ValueError("steps is empty: pass at least one sampler's unmask steps")
  rows = {name: np.asarray(s).reshape(-1) for name, s in steps.items()}
  lengths = {r.shape[0] for r in rows.values()}
  if len(lengths) != 1:
    raise ValueError(f"every row of steps must have the same length; got {sorted(lengths)}")
  for name in rows:
    if num_steps.get(name, 0) < 1:
      raise ValueError(f"num_steps[{name!r}] must be an int >= 1 (got {num_steps.get(name)})")
  grid = np.stack([np.clip(r / num_steps[n], 0.0, 1.0) for n, r in rows.items()])
  grid = np.ma.masked_where(np.stack(list(rows.values())) == 0, grid)   # prompt: blank
  if ax is None:
    _, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.2))
  image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
  ax.set_yticks(range(len(rows)), [f"{n} ({num_steps[n]} steps)" for n in rows])
  ax.set_xlabel("position")
  ax.set_title("when each position was unmasked (dark: early, light: late; blank: prompt)")
  ax.figure.colorbar(image, ax=ax, label="fraction of the trajectory", fraction=0.04, pad=0.01)
  return ax


def tree_layout(parent: Sequence[int], valid: Sequence[bool] | None = None) -> np.ndarray:
  """Coordinates for drawing a token tree: ``float[T, 2]`` (x = depth, y = row of the leaf order).

  Args:
    parent: ``int[T]``, ``-1`` for the root (node 0), else ``parent[i] < i``
      (:func:`partext_jax.ar.speculative.trees.validate_parents`).
    valid: optional ``bool[T]``; invalid nodes get ``nan`` coordinates (not drawn).

  Returns:
    ``float64[T, 2]``: leaves are spread one unit apart from the top in depth-first order (child
    order = node order) and every inner node is centred on its children, so edges never cross.

  Raises:
    ValueError: if ``parent`` is not a tree in topological order.
  """
  parent = np.asarray(parent).reshape(-1)
  size = parent.shape[0]
  if size == 0 or parent[0] != -1 or np.any(parent[1:] < 0) or np.any(parent[1:] >= np.arange(
      1, size)):
    raise ValueError(f"parent must be a tree in topological order (parent[0] = -1, "
                     f"0 <= parent[i] < i); got {parent.tolist()}")
  keep = np.ones(size, bool) if valid is None else np.asarray(valid, bool).reshape(-1).copy()
  for i in range(1, size):                    # a node under a dropped node is dropped too
    keep[i] &= keep[parent[i]]
  children = [[j for j in range(1, size) if parent[j] == i and keep[j]] for i in range(size)]
  xy = np.full((size, 2), np.nan)
  next_leaf = [0.0]

  def place(i: int, depth: int) -> float:
    if children[i]:
      y = float(np.mean([place(j, depth + 1) for j in children[i]]))
    else:
      y, next_leaf[0] = next_leaf[0], next_leaf[0] + 1.0
    xy[i] = (depth, -y)
    return y

  place(0, 0)
  return xy


def draw_token_tree(tokens: Sequence[int], parent: Sequence[int], *,
                    accepted: Sequence[int] = (), valid: Sequence[bool] | None = None,
                    labels: Sequence[str] | None = None, ax=None, title: str | None = None):
  """Draws one drafted token tree with its accepted path highlighted.

  Args:
    tokens: ``int[T]`` node tokens (node 0 the root, the last committed token).
    parent: ``int[T]`` parent of each node (``-1`` for the root, ``parent[i] < i``).
    accepted: node indices of the accepted path, root first (e.g. ``CommitInfo.path[b]`` with
      its ``-1`` padding, which is ignored); they and the edges between them are drawn green.
    valid: optional ``bool[T]``: nodes that were actually drafted (others are not drawn).
    labels: optional ``str[T]`` text per node (e.g. decoded tokens); default: the token ids.
    ax: a matplotlib ``Axes`` (default: a new figure sized to the tree).
    title: optional title.

  Returns:
    The ``Axes``.

  Raises:
    ValueError: if the lengths differ, ``parent`` is not a tree in topological order, or the
      accepted path is not a root-first chain of parent -> child edges.
  """
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  tokens = np.asarray(tokens).reshape(-1)
  parent = np.asarray(parent).reshape(-1)
  if tokens.shape != parent.shape or (labels is not None and len(labels) != tokens.shape[0]):
    raise ValueError(f"tokens ({tokens.shape[0]}), parent ({parent.shape[0]}) and labels "
                     f"({None if labels is None else len(labels)}) must have the same length")
  xy = tree_layout(parent, valid)
  path = [int(i) for i in np.asarray(accepted).reshape(-1) if i >= 0]
  if path and (path[0] != 0 or any(parent[b] != a for a, b in zip(path, path[1:]))):
    raise ValueError(f"accepted={path} must start at the root (0) and follow parent -> child "
                     f"edges of parent={parent.tolist()}")
  on_path = set(path)
  labels = [str(int(t)) for t in tokens] if labels is None else [str(s) for s in labels]
  drawn = [i for i in range(tokens.shape[0]) if not np.isnan(xy[i, 0])]
  if ax is None:
    depth = int(np.nanmax(xy[:, 0])) + 1
    leaves = int(-np.nanmin(xy[:, 1])) + 1
    _, ax = plt.subplots(figsize=(2.2 * depth + 1, 0.45 * leaves + 1))
  for i in drawn[1:]:
    good = i in on_path
    ax.plot(*zip(xy[parent[i]], xy[i]), color=ACCEPTED_COLOR if good else REJECTED_COLOR,
            linewidth=3 if good else 1, zorder=1)
  for i in drawn:
    color = ROOT_COLOR if i == 0 else ACCEPTED_COLOR if i in on_path else "white"
    ax.text(xy[i, 0], xy[i, 1], labels[i].replace("\n", "\\n") or " ", ha="center",
            va="center", fontsize=9, zorder=2,
            color="white" if i == 0 or i in on_path else "black",
            bbox=dict(boxstyle="round,pad=0.3", facecolor=color,
                      edgecolor=ACCEPTED_COLOR if i in on_path else REJECTED_COLOR))
  ax.set_xlim(-0.5, np.nanmax(xy[:, 0]) + 0.5)
  ax.set_ylim(np.nanmin(xy[:, 1]) - 0.7, 0.7)
  ax.set_xticks(range(int(np.nanmax(xy[:, 0])) + 1))
  ax.set_xlabel("depth (tokens after the root)")
  ax.set_yticks([])
  for side in ("top", "right", "left"):
    ax.spines[side].set_visible(False)
  ax.set_title(title or f"draft tree: {len(drawn)} nodes, {max(len(path) - 1, 0)} accepted "
               f"(green), root in blue")
  return ax
