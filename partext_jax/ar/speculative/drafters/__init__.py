"""Drafters for draft-and-verify decoding, one module each, over the protocol of :mod:`~.base`
(``docs/algorithms.md#drafters``).

* :class:`~.lm.LMDrafter` -- any causal LM (chain, static trees, EAGLE-2 dynamic trees);
  :func:`~.lm.early_exit_drafter` -- the target's first layers.
* :class:`~.prompt_lookup.PromptLookupDrafter` -- training-free n-gram lookup.
* :class:`~.lookahead.LookaheadDrafter` -- lookahead decoding: a Jacobi window and an n-gram pool
  verified in the same forward.
* :class:`~.medusa.MedusaDrafter` -- Medusa heads (:mod:`partext_jax.models.medusa`).
* :class:`~.mtp.MTPDrafter` -- multi-token prediction (Gloeckle heads, DeepSeek-V3 modules) of an
  :class:`~partext_jax.models.mtp.MTPModel` target.
* :class:`~.eagle.EagleDrafter` -- EAGLE feature drafter (:mod:`partext_jax.models.eagle`).
* :class:`~.diffusion.DiffusionDrafter` -- a masked denoiser drafting a block in one (or a few)
  passes (SpecDiff / DFlash); also APD's drafter (:mod:`partext_jax.ar.apd`).

A new drafter is one module here implementing :class:`~.base.Drafter` (usually a frozen
dataclass deriving from :class:`~.base.BaseDrafter`), exported below.
"""

from partext_jax.ar.speculative.drafters.base import (SIBLING_RULES, BaseDrafter, CommitInfo,
                                                      Draft, DraftContext, Drafter)
from partext_jax.ar.speculative.drafters.diffusion import DiffusionDrafter
from partext_jax.ar.speculative.drafters.eagle import EagleDrafter
from partext_jax.ar.speculative.drafters.lm import LMDrafter, early_exit_drafter
from partext_jax.ar.speculative.drafters.lookahead import LookaheadDrafter
from partext_jax.ar.speculative.drafters.medusa import MedusaDrafter
from partext_jax.ar.speculative.drafters.mtp import MTPDrafter
from partext_jax.ar.speculative.drafters.prompt_lookup import PromptLookupDrafter

__all__ = ["SIBLING_RULES", "BaseDrafter", "CommitInfo", "DiffusionDrafter", "Draft",
           "DraftContext", "Drafter", "EagleDrafter", "LMDrafter", "LookaheadDrafter", "MTPDrafter", "MedusaDrafter",
           "PromptLookupDrafter", "early_exit_drafter"]
