"""The README's self-contained API example runs and says what it claims."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_tour_example_runs():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
  tour = blocks[0]
  assert "tau_leaping" in tour and "exact_denoiser" in tour
  out = io.StringIO()
  scope: dict = {}
  with contextlib.redirect_stdout(out):
    exec(compile(tour, "README.md", "exec"), scope)  # pylint: disable=exec-used
  tv = float(out.getvalue().split()[-1])
  # 10k samples over 27 outcomes: E[TV] <= 0.5 sqrt(26 / 1e4) = 0.026; the joint is far from uniform.
  assert tv < 0.05, tv
  assert scope["tokens"].shape == (10_000, 3)
  assert scope["state"].tokens.shape == (4, 3)
