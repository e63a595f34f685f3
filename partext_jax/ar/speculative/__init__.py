"""Draft-and-verify (speculative) decoding with jit-compiled token-tree verification.

Modules: :mod:`~.trees` (static-shape tree encoding), :mod:`~.verify` (lossless rules per
sibling scheme), :mod:`~.decode` (the ``while_loop`` generation), :mod:`~.drafters` (the drafter
protocol and the drafters: LM / early exit, prompt lookup, Medusa). Test doubles (n-gram LMs, a
``logits_fn`` adapter) are in :mod:`partext_jax.testing`. The math is in
``docs/algorithms.md#speculative-decoding``.
"""

from partext_jax.ar.speculative import decode, drafters, trees, verify
from partext_jax.ar.speculative.decode import SpecInfo, generate
from partext_jax.ar.speculative.drafters import (CommitInfo, Draft, DraftContext, Drafter,
                                                 LMDrafter, MedusaDrafter, PromptLookupDrafter,
                                                 early_exit_drafter)

__all__ = [
    "CommitInfo", "Draft", "DraftContext", "Drafter", "LMDrafter", "MedusaDrafter",
    "PromptLookupDrafter", "SpecInfo", "decode", "drafters", "early_exit_drafter", "generate",
    "trees", "verify",
]
