"""Pallas kernels (installed as ``partext_jax.kernels``), each beside its jnp reference."""
