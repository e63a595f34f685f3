"""Flax models: the masked-diffusion denoiser and the Llama-family causal LM."""
