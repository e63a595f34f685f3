"""Sphinx configuration of the partext-jax API reference.

Build (what ``tests/test_docs_build.py`` runs, warnings are errors)::

    pip install -e ".[docs]" && sphinx-build -W -b html docs build/docs

Pages: ``index.md`` (the map), ``readme.md`` (the README), ``algorithms.md`` (the math every
docstring cites), ``benchmarks.md`` (every table under ``experiments/results``, added at build
time), ``notebooks/`` (a link to the
repository's ``notebooks/``, rendered without executing them) and one page per family under
``api/``. A family page is a title, a paragraph and one ``.. family::`` directive (defined below)
that documents the package and every public submodule it holds, so a new module appears without
editing the page; ``tests/test_docs_build.py`` checks that every public module is on some page.
"""

from __future__ import annotations

import builtins
import importlib
import pathlib
import pkgutil

from docutils.parsers.rst import Directive, directives
from sphinx.util.nodes import make_refnode

project = "partext-jax"
author = "partext-jax authors"
copyright = "2026, partext-jax authors"  # pylint: disable=redefined-builtin

extensions = [
    "myst_nb",                  # Markdown (MyST) and notebooks; includes myst_parser
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",      # Google-style docstrings ("Args:", "Returns:", "Raises:")
    "sphinx.ext.mathjax",
]

# Notebooks are stored without outputs and rendered as they are: CI executes them separately
# (tests/test_notebooks.py), the docs build never does.
nb_execution_mode = "off"
myst_heading_anchors = 3        # "#tau-leaping" style anchors on every ##/### heading
myst_enable_extensions = ["colon_fence"]

exclude_patterns = ["_build", "notebooks/cells", "**/.ipynb_checkpoints"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
# Each object is documented once, in the module that defines it ("ignore-module-all": a package's
# re-exports in __all__ are not repeated); _resolve_alias resolves references to the re-exports.
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# A broken cross-reference to one of our own objects fails the build (-W). References to other
# libraries' types in signatures (jax, numpy, flax, ...) are not resolved: no intersphinx, so the
# build needs no network.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|numpy|np|jnp|flax|nn|optax|orbax|ocp|chex|ml_collections|absl|"
               r"tokenizers|gguf|matplotlib|typing|collections|dataclasses|os|pathlib|enum|"
               r"functools|concurrent|types|contextlib|threading)(\..*)?"),
    (r"py:.*", "|".join(n for n in dir(builtins) if not n.startswith("_"))),   # int, ValueError
    (r"py:exc", r"\w+Error( / \w+Error)+"),    # "TypeError / ValueError:" in a Raises: section
    (r"py:class", r"(Any|Callable|Sequence|Mapping|Iterator|Iterable|NamedTuple|Protocol|Array|"
                  r"ArrayLike|PyTree|PRNGKey|T)"),    # typing names as signatures print them
    (r"py:.*", r"(.*\.)?_\w+(\..*)?"),   # private names (bases, helpers) are not documented
    (r"py:class", r"partext_jax\..*\.T"),   # type variables
]

html_theme = "furo"
html_title = "partext-jax"


def _is_public(name: str) -> bool:
  return not any(part.startswith("_") for part in name.split("."))


def public_modules(package: str) -> list[str]:
  """``package`` and its public submodules (no ``_``-prefixed part), in walk order."""
  pkg = importlib.import_module(package)
  names = [package]
  if hasattr(pkg, "__path__"):
    names += sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".")
                    if _is_public(m.name))
  return names


class FamilyDirective(Directive):
  """``.. family:: partext_jax.masked`` documents the package and all its public submodules.

  Options: ``:exclude:`` space-separated subpackages documented on another page (with their
  submodules). Names a package exports from a private module (``kernels.BlockSizes`` from
  ``kernels._common``) are documented on the package.
  """
  required_arguments = 1
  option_spec = {"exclude": directives.unchanged}

  def run(self):
    package = self.arguments[0]
    excluded = self.options.get("exclude", "").split()
    lines, seen = [], set()
    for name in public_modules(package):
      if any(name == e or name.startswith(e + ".") for e in excluded):
        continue
      lines += [f".. automodule:: {name}", ""]
      module = importlib.import_module(name)
      for attr in getattr(module, "__all__", ()):
        obj = getattr(module, attr)
        owner = getattr(obj, "__module__", "") or ""
        if owner.startswith(package) and not _is_public(owner) and id(obj) not in seen:
          seen.add(id(obj))
          lines += [f".. autoclass:: {name}.{attr}", ""]
    source = self.state_machine.input_lines.source(self.lineno - self.state_machine.input_offset)
    self.state_machine.insert_input(lines, source)
    return []


def _skip_member(app, what, name, obj, skip, options):  # pylint: disable=unused-argument
  """Leaves out NamedTuple fields' generated "Alias for field number N" entries: the class
  docstrings' "Attributes:" sections describe the fields (documenting both is a duplicate)."""
  if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
    return True
  return None


def _lookup(dotted: str):
  """The object at ``dotted`` (``pkg.module.attr.attr``) and the module it was found in."""
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    try:
      obj = module = importlib.import_module(".".join(parts[:i]))
    except ImportError:
      continue
    try:
      for attr in parts[i:]:
        obj = getattr(obj, attr)
    except AttributeError:
      return None, None
    return obj, module
  return None, None


def _resolve_alias(app, env, node, contnode):
  """Resolves a Python reference that names an object by a path other than where it is documented.

  Docstrings refer to the public import path (``partext_jax.parallel.sample``, re-exported from
  ``partext_jax.parallel.runs``), to names imported into the current module (``MaskedSampler``)
  or relative to a parent package (``trees.TreeSpec``); module constants without a docstring
  resolve to their module. A name that does not exist stays unresolved (a warning, so -W fails).
  """
  if node.get("refdomain") != "py":
    return None
  target = node["reftarget"].lstrip(".")
  module = node.get("py:module") or ""
  prefixes = [""] + [".".join(module.split(".")[:i]) + "." for i in
                     range(module.count(".") + 1, 0, -1)]
  objects = env.get_domain("py").objects
  for prefix in prefixes:
    obj, owner = _lookup(prefix + target)
    if owner is None:
      continue
    candidates = []
    if getattr(obj, "__qualname__", None) and getattr(obj, "__module__", None):
      candidates.append(f"{obj.__module__}.{obj.__qualname__}")
    candidates.append(owner.__name__)                    # a constant: its module's entry
    for name in candidates:
      if name in objects:
        entry = objects[name]
        return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode,
                            name)
  return None


RESULTS = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "results"


def _add_benchmark_tables(app, docname, source):  # pylint: disable=unused-argument
  """Appends to ``benchmarks.md`` one section per ``experiments/results/**/*.md`` table."""
  if docname != "benchmarks":
    return
  for table in sorted(RESULTS.rglob("*.md")):
    rel = table.relative_to(RESULTS.parent.parent).as_posix()
    source[0] += f"\n## `{rel}`\n\n```{{include}} ../{rel}\n:heading-offset: 2\n```\n"


def setup(app):
  app.add_directive("family", FamilyDirective)
  app.connect("autodoc-skip-member", _skip_member)
  app.connect("missing-reference", _resolve_alias)
  app.connect("source-read", _add_benchmark_tables)
  return {"parallel_read_safe": True}
