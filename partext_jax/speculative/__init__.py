"""Draft-and-verify (speculative) decoding with jit-compiled token-tree verification.

Modules: :mod:`trees` (static-shape tree encoding), :mod:`verify` (lossless rules per sibling
scheme), :mod:`decode` (the ``while_loop`` generation), :mod:`drafters` (protocol + LM / early-exit
/ prompt-lookup drafters), :mod:`medusa` (trained Medusa heads; their training is in
:mod:`medusa_training`, imported on demand), :mod:`adapter` (any ``logits_fn`` as a model),
:mod:`toys` (n-gram LMs).
"""

from partext_jax.speculative import adapter, decode, drafters, medusa, toys, trees, verify
from partext_jax.speculative.decode import SpecInfo, generate
from partext_jax.speculative.drafters import (CommitInfo, Draft, DraftContext, LMDrafter,
                                              PromptLookupDrafter, early_exit_drafter)
from partext_jax.speculative.medusa import MedusaConfig, MedusaDrafter

__all__ = [
    "CommitInfo", "Draft", "DraftContext", "LMDrafter", "MedusaConfig", "MedusaDrafter",
    "PromptLookupDrafter", "SpecInfo", "adapter", "decode", "drafters", "early_exit_drafter",
    "generate", "medusa", "toys", "trees", "verify",
]
