"""Pallas kernels (installed as ``partext_jax.kernels``), each beside its jnp reference.

* :mod:`~partext_jax.kernels.tree_attention`: ``T`` draft-tree nodes over a ragged prefix cache
  plus their ancestors (speculative tree verification).
* :mod:`~partext_jax.kernels.block_attention`: a block of queries over a prefix cache range,
  itself (bidirectional or block-causal) and an optional suffix range (Fast-dLLM prefix / dual
  cache, exact block-causal caching).

Both stream only the valid cache blocks with an online softmax, merge with the small in-block
part through an exact log-sum-exp merge, run in interpret mode on CPU (the default there) and
lower to Triton (GPU) and Mosaic (TPU) (``docs/algorithms.md#attention-kernels``).

Layouts: queries ``[B, T, H, D]``; caches heads-major ``[B, G, S, D]`` (the layout of
:class:`partext_jax.models.attention.KVCache`, one layer); a block's or tree's own keys and values
``[B, T, G, D]``.

Import the modules (``from partext_jax.kernels import tree_attention as ta``; then
``ta.tree_attention(...)``): the functions are not re-exported here because they share their
modules' names.
"""

from partext_jax.kernels import block_attention, tree_attention
from partext_jax.kernels._common import BlockSizes

__all__ = ["BlockSizes", "block_attention", "tree_attention"]
