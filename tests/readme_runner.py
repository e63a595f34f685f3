"""Runs every ```python block of README.md in order, in one namespace; reports each outcome.

Used by ``tests/test_readme.py`` in a subprocess (so the environment below is set before jax is
imported)::

    python tests/readme_runner.py README.md report.json

The caller sets the environment the README states for its examples: ``JAX_PLATFORMS=cpu``,
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the sharding example's 8-device mesh on a
CPU) and ``PARTEXT_README_TINY=1``, which README blocks may read to shrink sizes
(``n = 1_000 if os.environ.get("PARTEXT_README_TINY") else 10_000``). The working directory holds
a tiny trained run at ``workdir/default`` (the path the README loads). Every block runs even if
an earlier one failed; ``report.json`` lists ``{"block", "first_line", "ok", "error"}`` per block.
"""

import contextlib
import io
import json
import re
import sys
import traceback


def python_blocks(text: str) -> list[str]:
  """The bodies of the fenced ```python blocks of ``text``, in order."""
  return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def main(readme: str, report: str) -> None:
  with open(readme, encoding="utf-8") as f:
    blocks = python_blocks(f.read())
  scope: dict = {"__name__": "__readme__"}
  results = []
  for i, block in enumerate(blocks):
    out = io.StringIO()
    try:
      with contextlib.redirect_stdout(out):
        code = compile(block, f"README.md[python block {i}]", "exec")
        exec(code, scope)  # pylint: disable=exec-used
      error = None
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the next block runs.
      error = f"{type(e).__name__}: {e}".splitlines()[0][:500]
      traceback.print_exc(file=sys.stderr)
    results.append({"block": i, "first_line": block.strip().splitlines()[0], "ok": error is None,
                    "error": error, "stdout": out.getvalue()[-2000:]})
  with open(report, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main(*sys.argv[1:])
