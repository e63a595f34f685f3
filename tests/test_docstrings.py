"""Every public module, class and function is documented to the project's rule.

The rule (what a reader of the API reference can count on), checked mechanically:

1. Every public module, and every public class and function defined in one, has a docstring.
   Public: no ``_``-prefixed part in the module path or the name; "defined in" means
   ``obj.__module__`` is that module (re-exports are checked where they are defined).
2. The exported API -- every function named in some public module's ``__all__`` and every
   constructor in :data:`partext_jax.masked.SAMPLERS` -- documents each of its parameters: the
   name appears as a word in the docstring (in an ``Args:`` section or in prose, as
   ````name````), so shapes, dtypes and units have a place to be stated.
3. An exported function whose own body raises names what it raises (a ``Raises:`` section or the
   exception class in prose).
4. Every module of an algorithm family (masked diffusion, autoregressive and speculative
   decoding, kernels, sharding, schedules, the MDM objective, evaluation) cites its section of
   ``docs/algorithms.md``, and the paper it implements (author and year) unless it is a
   package index (its submodules cite) or shared machinery (:data:`NO_PAPER`); and every
   ``docs/algorithms.md#anchor`` cited anywhere in the package names an existing heading.

Shapes, dtypes and units cannot be checked by a program; rule 2 makes sure each parameter is at
least described where they belong.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import pkgutil
import re
import textwrap

import partext_jax
import partext_jax.kernels
from partext_jax import masked

ROOT = pathlib.Path(__file__).resolve().parent.parent
ALGORITHM_MODULES = ("partext_jax.masked", "partext_jax.ar", "partext_jax.kernels",
                     "partext_jax.parallel", "partext_jax.schedules", "partext_jax.diffusion",
                     "partext_jax.evaluation", "partext_jax.nat", "partext_jax.edit")
# Modules of those families that hold shared machinery rather than one paper's algorithm.
NO_PAPER = {"partext_jax.masked.driver", "partext_jax.ar.processors", "partext_jax.ar",
            "partext_jax.ar.sampling", "partext_jax.parallel", "partext_jax.parallel.mesh",
            "partext_jax.parallel.runs", "partext_jax.masked.categorical",
            "partext_jax.ar.speculative.drafters.base", "partext_jax.nat.ar_baseline",
            "partext_jax.nat.config", "partext_jax.nat.protocols", "partext_jax.nat.tasks",
            "partext_jax.nat.trainer"}
PAPER = re.compile(r"[A-Z][\w-]+(?: et al\.?| and [A-Z][\w-]+)?,? \(?(?:19|20)\d\d")
ANCHOR = re.compile(r"docs/algorithms\.md#([a-z0-9-]+)")


def _public(name: str) -> bool:
  return not any(part.startswith("_") for part in name.split("."))


def public_modules():
  """The package, its public submodules and the kernels (installed from the top-level folder
  ``kernels/``, so not under ``partext_jax.__path__``)."""
  names = ["partext_jax", "partext_jax.kernels"]
  for package in (partext_jax, partext_jax.kernels):
    names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
              if m.name not in names]
  return [importlib.import_module(n) for n in names if _public(n)]


def defined_objects():
  """``[(qualified name, object)]``: public classes and functions defined in public modules."""
  out = []
  for module in public_modules():
    for name, obj in vars(module).items():
      if (_public(name) and (inspect.isfunction(obj) or inspect.isclass(obj))
          and obj.__module__ == module.__name__):
        out.append((f"{module.__name__}.{name}", obj))
  return out


def exported_functions():
  """``{qualified name: function}`` of every function in a public ``__all__`` or SAMPLERS."""
  out = {}
  for module in public_modules():
    for name in getattr(module, "__all__", ()):
      obj = getattr(module, name)
      if inspect.isfunction(obj):
        out[f"{obj.__module__}.{obj.__qualname__}"] = obj
  for obj in masked.SAMPLERS.values():
    out[f"{obj.__module__}.{obj.__qualname__}"] = obj
  return out


def _raises(func) -> bool:
  """Whether ``func``'s own body (not a nested function) has a ``raise`` statement."""
  try:
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
  except (OSError, TypeError):
    return False
  body = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))),
              None)
  stack = list(body.body) if body is not None else []
  while stack:
    node = stack.pop()
    if isinstance(node, ast.Raise):
      return True
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
      stack.extend(ast.iter_child_nodes(node))
  return False


def _anchors() -> set[str]:
  text = (ROOT / "docs" / "algorithms.md").read_text(encoding="utf-8")
  slugs = set()
  for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
    slugs.add(slug)
  return slugs


def test_every_public_module_class_and_function_has_a_docstring():
  missing = [m.__name__ for m in public_modules() if not (m.__doc__ or "").strip()]
  missing += [name for name, obj in defined_objects() if not (inspect.getdoc(obj) or "").strip()]
  assert not missing, "public objects without a docstring:\n  " + "\n  ".join(missing)


def undocumented_parameters(func) -> list[str]:
  """Rule 2: the parameters of ``func`` whose name is not a word of its docstring."""
  doc = inspect.getdoc(func) or ""
  params = [p for p in inspect.signature(func).parameters if p not in ("self", "cls")]
  return [p for p in params if not re.search(rf"\b{re.escape(p)}\b", doc)]


def raises_silently(func) -> bool:
  """Rule 3: ``func`` raises but its docstring names no error."""
  return _raises(func) and not re.search(r"Raises|raises|\w+Error\b|\w+Exception\b",
                                         inspect.getdoc(func) or "")


def test_exported_functions_document_every_parameter():
  bad = [f"{name}: {', '.join(undocumented_parameters(func))}"
         for name, func in sorted(exported_functions().items()) if undocumented_parameters(func)]
  assert not bad, "parameters missing from the docstring:\n  " + "\n  ".join(bad)


def test_exported_functions_that_raise_say_what_they_raise():
  bad = [name for name, func in sorted(exported_functions().items()) if raises_silently(func)]
  assert not bad, "functions that raise without saying so:\n  " + "\n  ".join(bad)


def test_algorithm_modules_cite_their_paper_and_section():
  bad = []
  for module in public_modules():
    name = module.__name__
    if not name.startswith(ALGORITHM_MODULES):
      continue
    doc = module.__doc__ or ""
    if not ANCHOR.search(doc):
      bad.append(f"{name}: no docs/algorithms.md#anchor")
    index = hasattr(module, "__path__")
    if not index and name not in NO_PAPER and not PAPER.search(doc):
      bad.append(f"{name}: no paper (author year)")
  assert not bad, "\n  ".join(["algorithm modules without citations:"] + bad)


def test_every_cited_algorithms_anchor_exists():
  anchors = _anchors()
  assert {"tau-leaping", "speculative-decoding", "correctness-properties"} <= anchors
  docs = [(m.__name__, m.__doc__ or "") for m in public_modules()]
  docs += [(name, inspect.getdoc(obj) or "") for name, obj in defined_objects()]
  broken = [f"{name}: #{a}" for name, doc in docs for a in ANCHOR.findall(doc)
            if a not in anchors]
  assert not broken, "citations of missing docs/algorithms.md headings:\n  " + "\n  ".join(broken)


def test_the_rules_fire_on_a_deliberately_bad_function():
  def bad(tokens, mask_id):
    """Returns ``tokens``."""
    if mask_id < 0:
      raise ValueError("negative")
    return tokens

  def good(tokens, mask_id):
    """Returns ``tokens`` (``int32[B, L]``) unchanged.

    Raises:
      ValueError: if ``mask_id < 0``.
    """
    if mask_id < 0:
      raise ValueError("negative")
    return tokens

  assert undocumented_parameters(bad) == ["mask_id"] and raises_silently(bad)
  assert undocumented_parameters(good) == [] and not raises_silently(good)
  assert _raises(good) and not _raises(_raises)   # its raise-free self
