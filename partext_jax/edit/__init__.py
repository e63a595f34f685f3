"""Edit-based generation: Edit Flows (Havasi et al. 2025), ``docs/algorithms.md#edit-flows``.

* :mod:`~partext_jax.edit.alignment` -- aligning two sequences with blanks (Needleman-Wunsch).
* :mod:`~partext_jax.edit.edit_flows` -- rates, the conditional path, the Bregman loss and the
  tau-leaping sampler :func:`~partext_jax.edit.edit_flows.edit_flows`.
* :mod:`~partext_jax.edit.exact` -- enumerable toys and their exact marginal rates.
* :mod:`~partext_jax.edit.model` -- a small Flax rate model and its training loop.

Usage::

    from partext_jax import edit
    toy = edit.exact.random_toy(0)
    rate_fn = edit.exact.exact_rate_fn(toy, capacity=5)
    x0 = edit.exact.sample_toy(jax.random.key(1), toy.p0, toy, 1000, capacity=5)
    out, info = edit.edit_flows.edit_flows(rate_fn, num_steps=200).sample(jax.random.key(2), x0)
"""

from partext_jax.edit import alignment, edit_flows, exact
from partext_jax.edit.edit_flows import EditRates

__all__ = ["EditRates", "alignment", "edit_flows", "exact"]
