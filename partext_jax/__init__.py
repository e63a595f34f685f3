"""partext-jax: parallel text generation in JAX."""

from partext_jax.schedules import MaskingSchedule, get_schedule

__version__ = "0.1.0"
__all__ = ["MaskingSchedule", "get_schedule", "__version__"]
