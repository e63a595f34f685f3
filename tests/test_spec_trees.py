"""Token-tree encoding (speculative decoding)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.ar.speculative import trees


def test_from_choices_chain_and_derived_arrays():
  spec = trees.TreeSpec.from_choices(((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)))
  assert spec.parent == (-1, 0, 0, 1, 1, 2, 3)
  assert spec.depth == (0, 1, 1, 2, 2, 2, 3)
  assert spec.sibling_rank == (0, 0, 1, 0, 1, 0, 0)
  assert spec.depth_ranges() == ((0, 1), (1, 3), (3, 6), (6, 7))
  assert trees.TreeSpec.chain(3).parent == (-1, 0, 1, 2)
  anc = np.asarray(trees.ancestor_mask(jnp.asarray(spec.parent)))
  # anc[i] = anc[parent[i]] | e_i, computed independently:
  for i, p in enumerate(spec.parent):
    want = np.zeros(7, bool)
    j = i
    while j >= 0:
      want[j] = True
      j = spec.parent[j]
    np.testing.assert_array_equal(anc[i], want)
  np.testing.assert_array_equal(trees.depths(jnp.asarray(spec.parent)), spec.depth)
  paths = np.asarray(trees.root_paths(jnp.asarray(spec.parent), max_depth=3))
  assert paths[6].tolist() == [0, 1, 3, 6] and paths[4].tolist() == [0, 1, 4, -1]
  assert paths[0].tolist() == [0, -1, -1, -1]


def test_close_valid_and_batched_tree():
  spec = trees.TreeSpec.chain(3)
  t = spec.tree(jnp.array([[5, 6, 7, 8], [1, 2, 3, 4]]),
                valid=jnp.array([[True, True, False, True], [True] * 4]))
  assert t.valid.tolist() == [[True, True, False, False], [True] * 4]
  assert t.parent.shape == (2, 4) and t.depth[0].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("parent", [(0, 0), (-1, 1), (-1, 0, 3, 1), (-1, -1)],
                         ids=["root_not_minus1", "self_parent", "forward_parent", "two_roots"])
def test_non_topological_parents_rejected(parent):
  with pytest.raises(ValueError, match="parent"):
    trees.TreeSpec(parent)


def test_bad_choices_and_headroom():
  with pytest.raises(ValueError, match="prefix-closed"):
    trees.TreeSpec.from_choices(((0,), (1, 0)))
  with pytest.raises(ValueError, match="rank"):
    trees.TreeSpec.from_choices(((0,), (2,)))
  with pytest.raises(ValueError, match="tree_size"):
    trees.check_headroom(64, cache_len=128, prefix_len=40, max_new_tokens=30)
  trees.check_headroom(8, cache_len=128, prefix_len=40, max_new_tokens=30)


_eagle_select = jax.jit(trees.eagle_select, static_argnames="num_nodes")


def test_eagle_select_parent_closed_best_n():
  # pool: root, a(-0.1), b(-1.0), a->c(-0.3), a->d(-2.0), b->e(-1.2), c->f(-0.35)
  scores = jnp.array([[0.0, -0.1, -1.0, -0.3, -2.0, -1.2, -0.35]])
  parents = jnp.array([[-1, 0, 0, 1, 1, 2, 3]])
  kept, tpar, valid = _eagle_select(scores, parents, num_nodes=4)
  assert kept.tolist() == [[0, 1, 2, 3, 6]]  # best 4: a, c, f, b (creation order)
  assert tpar.tolist() == [[-1, 0, 0, 1, 3]] and bool(valid.all())
  # Ties (a child with the parent's score) keep the parent first.
  kept, tpar, _ = _eagle_select(jnp.array([[0.0, -1.0, -1.0, -1.0]]),
                                     jnp.array([[-1, 0, 1, 2]]), num_nodes=2)
  assert kept.tolist() == [[0, 1, 2]] and tpar.tolist() == [[-1, 0, 1]]
