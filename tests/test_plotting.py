"""partext_jax.plotting: unmasking steps from trajectories, the heat-map and the token tree."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

from partext_jax import plotting  # pylint: disable=wrong-import-position

M = 9   # MASK id


def test_unmask_steps_on_a_hand_made_trajectory():
  x_init = np.array([[5, M, M, M]])
  traj = np.array([[[5, M, 1, M]],       # step 1: position 2
                   [[5, 3, 1, M]],       # step 2: position 1
                   [[5, 3, M, M]],       # step 3: position 2 remasked (ReMDM)
                   [[5, 3, 2, M]]])      # step 4: position 2 again; position 3 never
  steps = plotting.unmask_steps(traj, x_init, mask_id=M)
  assert steps.dtype == np.int32
  np.testing.assert_array_equal(steps, [[0, 2, 4, 5]])   # prompt 0, last unmasking, S + 1


def test_unmask_steps_matches_a_brute_force_definition():
  rng = np.random.default_rng(0)
  s, b, l = 7, 3, 11
  traj = np.where(rng.random((s, b, l)) < 0.5, M, rng.integers(0, 4, (s, b, l)))
  x_init = np.where(rng.random((b, l)) < 0.8, M, 1)
  traj = np.where(x_init[None] != M, x_init[None], traj)    # prompt positions never change
  got = plotting.unmask_steps(traj, x_init, mask_id=M)
  states = np.concatenate([x_init[None], traj])
  for r in range(b):
    for i in range(l):
      masked = [k for k in range(s + 1) if states[k, r, i] == M]
      assert got[r, i] == (0 if not masked else masked[-1] + 1)


def test_unmask_steps_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="trajectory"):
    plotting.unmask_steps(np.zeros((3, 2, 4)), np.zeros((2, 5)), mask_id=M)


def test_plot_unmask_order_draws_one_row_per_sampler_on_a_shared_scale():
  ax = plotting.plot_unmask_order({"a": [0, 1, 2, 4], "b": [0, 8, 4, 2]},
                                  num_steps={"a": 4, "b": 8})
  image = ax.images[0]
  grid = image.get_array()
  assert grid.shape == (2, 4)
  np.testing.assert_allclose(grid[0, 1:], [0.25, 0.5, 1.0])
  np.testing.assert_allclose(grid[1, 1:], [1.0, 0.5, 0.25])
  assert grid.mask[:, 0].all() and not grid.mask[:, 1:].any()      # prompt column blank
  assert [t.get_text() for t in ax.get_yticklabels()] == ["a (4 steps)", "b (8 steps)"]
  plt.close(ax.figure)
  with pytest.raises(ValueError, match="num_steps"):
    plotting.plot_unmask_order({"a": [1, 2]}, num_steps={})
  with pytest.raises(ValueError, match="same length"):
    plotting.plot_unmask_order({"a": [1, 2], "b": [1]}, num_steps={"a": 2, "b": 1})


def test_tree_layout_puts_children_right_of_parents_without_crossing():
  parent = [-1, 0, 0, 1, 1, 2]
  xy = plotting.tree_layout(parent)
  np.testing.assert_array_equal(xy[:, 0], [0, 1, 1, 2, 2, 2])
  # Leaves spread one unit apart in depth-first order; parents centred on their children.
  np.testing.assert_allclose(xy[[3, 4, 5], 1], [0, -1, -2])
  np.testing.assert_allclose(xy[1, 1], -0.5)
  np.testing.assert_allclose(xy[0, 1], np.mean(xy[[1, 2], 1]))
  dropped = plotting.tree_layout(parent, valid=[1, 0, 1, 1, 1, 1])   # node 1 and its subtree
  assert np.isnan(dropped[[1, 3, 4]]).all() and not np.isnan(dropped[[0, 2, 5]]).any()
  with pytest.raises(ValueError, match="topological"):
    plotting.tree_layout([-1, 2, 0])


def test_draw_token_tree_highlights_exactly_the_accepted_path():
  parent = [-1, 0, 0, 1, 1, 2]
  ax = plotting.draw_token_tree([7, 1, 2, 3, 4, 5], parent, accepted=[0, 1, 4, -1],
                                labels=["r", "a", "b", "c", "d", "e"])
  green = [t.get_text() for t in ax.texts
           if t.get_bbox_patch().get_facecolor()[:3] == matplotlib.colors.to_rgb(
               plotting.ACCEPTED_COLOR)]
  assert sorted(green) == ["a", "d"]
  thick = [line for line in ax.lines if line.get_linewidth() == 3]
  assert len(thick) == 2 and len(ax.lines) == 5                     # one edge per non-root node
  assert "2 accepted" in ax.get_title()
  plt.close(ax.figure)
  with pytest.raises(ValueError, match="accepted"):
    plotting.draw_token_tree([7, 1, 2], [-1, 0, 0], accepted=[0, 1, 2])   # 2 is not 1's child
  with pytest.raises(ValueError, match="same length"):
    plotting.draw_token_tree([7, 1], [-1, 0, 0])
