"""Executes every notebook of ``notebooks/`` end to end on a shrunk setting (CI runs them).

Each notebook is written by ``notebooks/generate.py`` from ``notebooks/cells/<name>.py``; a case
below names the environment variables that shrink it (each run well under a minute on the CI
machine), strings its outputs must contain and the number of figures it must draw itself.
nbclient raises on the first cell that raises. Also checked: every notebook has a case, and the
stored notebooks are exactly what the generator writes (no outputs, no hand edits).
"""

from __future__ import annotations

import pathlib
import runpy

import nbformat
from nbclient import NotebookClient
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
GENERATOR = runpy.run_path(str(NOTEBOOKS / "generate.py"))

# name -> (environment, strings the outputs contain, minimum number of figures)
CASES = {
    "quickstart": ({"PARTEXT_NOTEBOOK_STEPS": "12"}, ["step   1:", "training 12 steps"], 1),
    "speculative": ({"PARTEXT_NOTEBOOK_NEW_TOKENS": "12",
                     "PARTEXT_NOTEBOOK_METHODS": "prompt_lookup,medusa"},
                    ["tokens/forward", "every method returned exactly the plain greedy text",
                     "accepted"], 2),
    "masked_samplers": ({"PARTEXT_NOTEBOOK_STEPS": "12", "PARTEXT_NOTEBOOK_SAMPLES": "2",
                         "PARTEXT_NOTEBOOK_SETTINGS": "1"},
                        ["tau-leaping", "P2", "ReMDM cap", "EB", "gen. PPL"], 2),
    "kernels": ({"PARTEXT_NOTEBOOK_CACHE_LEN": "128"},
                ["tree attention: max |kernel - reference|",
                 "block attention: max |kernel - reference|"], 1),
    "real_dllm": ({"PARTEXT_NOTEBOOK_GEN_LENGTH": "16"},
                  ["bytes per device", "sample 0", "LLaDA-8B"], 1),
}


def _outputs(nb):
  return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_runs(name, tmp_path, monkeypatch):
  env, expected, figures = CASES[name]
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  nb = nbformat.read(str(NOTEBOOKS / f"{name}.ipynb"), as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = _outputs(nb)
  text = "".join(o.get("text", "") for o in outputs)
  assert text.startswith("backend: "), text[:200]       # the setup cell ran first
  for s in expected:
    assert s in text, (s, text[-3000:])
  drawn = sum("image/png" in o.get("data", {}) for o in outputs)
  assert drawn >= figures, (drawn, figures)


def test_every_notebook_has_a_case_and_a_generator():
  stored = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
  generated = sorted(GENERATOR["NOTEBOOKS"])
  assert sorted(CASES) == generated
  assert stored == generated, "run `python notebooks/generate.py` (stored != generated names)"


@pytest.mark.parametrize("name", sorted(CASES))
def test_stored_notebook_is_generated_and_has_no_outputs(name):
  path = NOTEBOOKS / f"{name}.ipynb"
  stored = nbformat.read(str(path), as_version=4)
  built = GENERATOR["build"](name)
  assert [(c.cell_type, c.source) for c in stored.cells] == \
         [(c.cell_type, c.source) for c in built.cells], \
         f"{path.name} is stale: run `python notebooks/generate.py {name}`"
  assert not _outputs(stored)
  assert all(c.get("execution_count") is None for c in stored.cells if c.cell_type == "code")
