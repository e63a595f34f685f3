"""The paradigm comparison of ``experiments/compare_paradigms.py``, one concern per module.

* :mod:`paradigms.cells`: :class:`~paradigms.cells.Settings` (the sizes of a run), the paradigm
  names and :data:`~paradigms.cells.CELLS` (what ``--cells`` takes).
* :mod:`paradigms.timing`: memory and CPU probes and ``side_by_side`` (a method beside its AR
  reference, calls alternated, compilation excluded).
* :mod:`paradigms.measure`: how each family's cell is measured (SmolLM2 decoders, SoT, masked
  diffusion, the dLLM, NAT, other benchmarks' ``comparison_rows``) and ``MEASURES``.
* :mod:`paradigms.child`: the subprocess of one cell (run it, write its payload).
* :mod:`paradigms.cache`: the cache of measured cells (keys, code digests, read / append).
* :mod:`paradigms.report`: quality scoring (gen-PPL judge), the table, the plot and the page.

Like the other helpers of ``experiments/`` (``import common``), the package is imported with
``experiments/`` on ``sys.path`` (a script's own directory is): ``from paradigms import cells``.
"""

from __future__ import annotations

import os

#: ``experiments/`` and the repository root.
EXPERIMENTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(EXPERIMENTS)
#: The launcher; each cell's subprocess runs it with ``--child``.
LAUNCHER = os.path.join(EXPERIMENTS, "compare_paradigms.py")
