"""Old module paths (before the per-family layout of 0.2) kept importable for one release.

``import partext_jax.samplers.tau_leaping`` and friends still work, as aliases of the new
modules, with a ``DeprecationWarning`` naming the new path. They will be removed in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# Old module -> new module (same public names unless noted in the README's changelog).
ALIASES = {
    "partext_jax.samplers": "partext_jax.masked",
    "partext_jax.samplers.base": "partext_jax.masked.driver",
    "partext_jax.samplers.tau_leaping": "partext_jax.masked.tau_leaping",
    "partext_jax.samplers.confidence": "partext_jax.masked.adaptive",
    "partext_jax.samplers.eb": "partext_jax.masked.adaptive",
    "partext_jax.samplers.semi_ar": "partext_jax.masked.blocks",
    "partext_jax.samplers.block_cache": "partext_jax.masked.block_cache",
    "partext_jax.samplers.remdm": "partext_jax.masked.remdm",
    "partext_jax.samplers.p2": "partext_jax.masked.p2",
    "partext_jax.samplers.categorical": "partext_jax.masked.categorical",
    "partext_jax.samplers.autoregressive": "partext_jax.ar.sampling",
    "partext_jax.samplers.logits_processors": "partext_jax.ar.processors",
    "partext_jax.speculative": "partext_jax.ar.speculative",
    "partext_jax.speculative.trees": "partext_jax.ar.speculative.trees",
    "partext_jax.speculative.verify": "partext_jax.ar.speculative.verify",
    "partext_jax.speculative.decode": "partext_jax.ar.speculative.decode",
    "partext_jax.speculative.drafters": "partext_jax.ar.speculative.drafters",
    "partext_jax.speculative.toys": "partext_jax.testing.ngram",
    "partext_jax.speculative.adapter": "partext_jax.testing.function_lm",
    "partext_jax.models.gguf_loader": "partext_jax.pretrained",
    "partext_jax.models.gguf_tokenizer": "partext_jax.pretrained.tokenizer",
    "partext_jax.sharding": "partext_jax.parallel",
    "partext_jax.training.sampling": "partext_jax.training.runs",
    "partext_jax.training.trainer": "partext_jax.training.mdm",
}


class _AliasLoader(importlib.abc.Loader):

  def __init__(self, old: str, new: str):
    self.old, self.new = old, new

  def create_module(self, spec):
    warnings.warn(f"{self.old} is deprecated; import {self.new} instead (the old path will be "
                  "removed in partext-jax 0.3)", DeprecationWarning, stacklevel=3)
    return importlib.import_module(self.new)

  def exec_module(self, module):
    # The module is the new one, already executed; only register it under the old name too.
    sys.modules[self.old] = module


class _AliasFinder(importlib.abc.MetaPathFinder):

  def find_spec(self, fullname, path=None, target=None):
    if fullname not in ALIASES:
      return None
    return importlib.util.spec_from_loader(fullname, _AliasLoader(fullname, ALIASES[fullname]),
                                           is_package=True)


def install() -> None:
  """Registers the old paths (idempotent)."""
  # First in line: the new package directories hold modules of the same names, which the path
  # finder would otherwise load a second time under the old name.
  if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())
