"""The API reference builds with warnings as errors and lists every public module.

``sphinx-build -W`` fails on any warning: a docstring cross-reference to one of our objects that
does not exist (``nitpicky``), malformed reStructuredText, a Markdown page or notebook that does
not parse. The build never executes the notebooks (``tests/test_notebooks.py`` does).

Needs the ``docs`` extra (``pip install -e ".[docs]"``); outside CI the test is skipped, with that
reason, when it is missing. In CI (``CI`` set) a missing extra is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import pkgutil
import subprocess
import sys

import pytest

import partext_jax
import partext_jax.kernels

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _public_modules() -> list[str]:
  """The package, its public submodules and the kernels (installed from the top-level folder
  ``kernels/``, so not under ``partext_jax.__path__``)."""
  names = ["partext_jax", "partext_jax.kernels"]
  for package in (partext_jax, partext_jax.kernels):
    for m in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
      if not any(part.startswith("_") for part in m.name.split(".")) and m.name not in names:
        names.append(m.name)
  return names


@pytest.fixture(scope="module")
def html(tmp_path_factory):
  missing = [m for m in ("sphinx", "myst_nb", "furo") if importlib.util.find_spec(m) is None]
  if missing:
    if os.environ.get("CI"):
      pytest.fail(f"CI must install the docs extra (pip install -e '.[docs]'); missing {missing}")
    pytest.skip(f"the docs extra is not installed ({', '.join(missing)}): "
                "pip install -e '.[docs]'")
  out = tmp_path_factory.mktemp("html")
  res = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                        str(DOCS), str(out)], capture_output=True, text=True, cwd=ROOT,
                       timeout=900)
  assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
  return out


def test_docs_build_without_warnings_and_list_every_public_module(html):
  pages = "".join(p.read_text(encoding="utf-8") for p in (html / "api").glob("*.html"))
  missing = [m for m in _public_modules() if f'id="module-{m}"' not in pages]
  assert not missing, (f"public modules on no page of docs/api/: {missing}; add a family page "
                       "(docs/api/<family>.rst with `.. family:: <package>`) to docs/index.md")


def test_docs_render_every_notebook_benchmark_table_and_the_algorithms(html):
  for nb in (ROOT / "notebooks").glob("*.ipynb"):
    assert (html / "notebooks" / f"{nb.stem}.html").exists(), f"{nb.name} was not rendered"
  benchmarks = (html / "benchmarks.html").read_text(encoding="utf-8")
  for table in (ROOT / "experiments" / "results").rglob("*.md"):
    assert table.relative_to(ROOT).as_posix() in benchmarks, f"{table} is not on the page"
  algorithms = (html / "algorithms.html").read_text(encoding="utf-8")
  assert 'id="tau-leaping"' in algorithms and 'id="speculative-decoding"' in algorithms
