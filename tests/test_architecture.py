"""The package's shape: no import cycles (lazy imports included), old paths still import."""

import ast
import importlib
import pathlib
import sys
import warnings

import pytest

import partext_jax
from partext_jax import _deprecated

PACKAGE = pathlib.Path(partext_jax.__file__).resolve().parent
KERNELS = pathlib.Path(importlib.import_module("partext_jax.kernels").__file__).resolve().parent


def _modules() -> dict[str, pathlib.Path]:
  """Every module of the installed package (``partext_jax.kernels`` lives in ``kernels/``)."""
  found = {}
  for root, prefix in ((PACKAGE, "partext_jax"), (KERNELS, "partext_jax.kernels")):
    for path in root.rglob("*.py"):
      rel = path.relative_to(root).with_suffix("")
      parts = [p for p in rel.parts if p != "__init__"]
      found[".".join([prefix, *parts])] = path
  return found


def _imports(path: pathlib.Path, name: str, modules) -> set[str]:
  """Modules of the package imported anywhere in ``path`` (function-level imports included).

  ``from pkg import sub`` counts as an import of ``pkg.sub`` when ``sub`` is a module, so a
  package's ``__init__`` re-exporting its submodules is not a cycle through the package.
  """
  is_package = path.name == "__init__.py"
  out = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name in modules)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = name.split(".") if is_package else name.split(".")[:-1]
        anchor = anchor[:len(anchor) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in modules:
          out.add(sub)
        elif base in modules:
          out.add(base)
  out.discard(name)
  return out


def test_no_import_cycles_even_through_lazy_imports():
  modules = _modules()
  graph = {m: _imports(p, m, modules) for m, p in modules.items()}
  # A package's __init__ imports its submodules by design: only cycles among the modules that
  # hold code count (edges into an __init__ are edges into what it re-exports).
  packages = {m for m, p in modules.items() if p.name == "__init__.py"}
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(graph[m]):
      if n in packages:
        continue
      if state.get(n) == "open":
        cycles.append(stack[stack.index(n):] + [n])
      elif n not in state:
        visit(n)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state and m not in packages:
      visit(m)
  assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_fires_on_a_cycle(tmp_path):
  # The same graph walk on a deliberately circular pair of modules.
  (tmp_path / "a.py").write_text("def f():\n  from partext_jax import b\n")
  (tmp_path / "b.py").write_text("from partext_jax import a\n")
  modules = {"partext_jax.a": tmp_path / "a.py", "partext_jax.b": tmp_path / "b.py"}
  assert _imports(modules["partext_jax.a"], "partext_jax.a", modules) == {"partext_jax.b"}
  assert _imports(modules["partext_jax.b"], "partext_jax.b", modules) == {"partext_jax.a"}


@pytest.mark.parametrize("old", sorted(_deprecated.ALIASES))
def test_old_module_paths_import_with_a_deprecation_warning(old):
  new = _deprecated.ALIASES[old]
  sys.modules.pop(old, None)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    module = importlib.import_module(old)
  assert module is importlib.import_module(new)
  assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message)
             for w in caught), [str(w.message) for w in caught]
