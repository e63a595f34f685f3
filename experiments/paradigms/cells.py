"""What a comparison measures: its sizes (:class:`Settings`), the survey's paradigm names and
the cells (:data:`CELLS`, by the name ``--cells`` takes).

A cell is plain data: its ``kind`` names the measuring function in ``paradigms.measure.MEASURES``
and its ``args`` are that function's keywords; both are part of the cell's cache key
(``paradigms.cache``).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Settings:
  """Sizes of one comparison (``--quick`` picks the small column)."""

  quick: bool = False
  prompts: int = 3          # SmolLM2 chat prompts (tour.PROMPTS), batch 1 each
  new_tokens: int = 32      # tokens per prompt, no EOS stop (every decoder does equal work)
  repeats: int = 2          # timed calls per side, best kept
  sot_questions: int = 2
  sot_tokens: int = 24      # skeleton and point budgets; plain AR answers 3x as many
  mdm_steps: int = 32       # steps of the fixed-step masked samplers
  mdm_samples: int = 4      # rows per masked sampler
  dllm_gen: int = 32        # generated positions of the tiny dLLM
  nat_steps: int = 150      # training steps of every NAT cell's models

  @classmethod
  def sized(cls, quick: bool, **given: int | None) -> Settings:
    """The defaults, or the small CI-sized ones with ``quick``; the ``given`` fields that are
    not ``None`` override them (``--repeats``, ``--new_tokens``, ``--prompts``)."""
    small = dict(prompts=1, new_tokens=8, repeats=1, sot_questions=1, sot_tokens=8,
                 mdm_steps=8, mdm_samples=2, dllm_gen=16, nat_steps=10)
    chosen = cls(quick=True, **small) if quick else cls()
    return dataclasses.replace(chosen, **{k: v for k, v in given.items() if v is not None})

@dataclasses.dataclass(frozen=True)
class Cell:
  """One measured cell: ``kind`` names its measuring function in
  ``paradigms.measure.MEASURES``, ``args`` its keywords (plain data: part of the cache key)."""

  name: str
  paradigm: str
  method: str
  kind: str
  args: tuple = ()

  @property
  def kwargs(self) -> dict:
    return dict(self.args)


# Paradigms in the survey's order (its Table 3), then the hybrids of its section 5.2.
DRAFT_VERIFY = "Draft-and-verify"
DECOMPOSE = "Decomposition-and-fill"
MTP = "Multiple-token prediction"
ONE_SHOT = "One-shot generation"
MASKED = "Masked generation"
EDIT = "Edit-based refinement"
HYBRID = "Hybrids (diffusion drafts for AR)"
PARADIGMS = (DRAFT_VERIFY, DECOMPOSE, MTP, ONE_SHOT, MASKED, EDIT, HYBRID)
# The paradigm names rows of experiments/{edit_flows,bench_diffusion_drafter}.py carry.
ROW_PARADIGMS = {"edit-based": EDIT, "masked + token editing": MASKED, "hybrid": HYBRID}


def _cells() -> list[Cell]:
  dec = lambda name, paradigm, method, **kw: Cell(name, paradigm, method, "decoder",
                                                  tuple(sorted(kw.items())))
  mdm = lambda name, sampler: Cell(name, MASKED, f"{sampler} (shipped MDM)", "mdm",
                                   (("sampler", sampler),))
  return [
      dec("ar", "Autoregressive baseline", "greedy AR", decoder="greedy AR"),
      dec("prompt-lookup", DRAFT_VERIFY, "chain, prompt lookup", decoder="prompt lookup"),
      dec("early-exit-chain", DRAFT_VERIFY, "chain, early exit (6 layers)",
          decoder="early exit, chain"),
      dec("early-exit-tree", DRAFT_VERIFY, "EAGLE-2 tree, early exit (6 layers)",
          decoder="early exit, EAGLE tree"),
      dec("eagle", DRAFT_VERIFY, "EAGLE tree, trained feature head", decoder="EAGLE head"),
      dec("lookahead", DRAFT_VERIFY, "Lookahead (W 5, N 4)", decoder="Lookahead (W 5, N 4)"),
      dec("jacobi", DRAFT_VERIFY, "Jacobi (block 8)", decoder="Jacobi (block 8)"),
      dec("token-wise-t1", DRAFT_VERIFY, "chain, early exit, token-wise verification, T=1",
          decoder="early exit, chain", temperature=1.0, rule="iid"),
      dec("block-verify-t1", DRAFT_VERIFY, "chain, early exit, block verification, T=1",
          decoder="early exit, chain", temperature=1.0, rule="block"),
      Cell("sot", DECOMPOSE, "Skeleton-of-Thought (short)", "sot"),
      dec("medusa", MTP, "Medusa heads, tree", decoder="Medusa heads"),
      dec("mtp-gloeckle", MTP, "MTP (Gloeckle) chain", decoder="MTP gloeckle"),
      dec("mtp-deepseek", MTP, "MTP (DeepSeek) chain", decoder="MTP deepseek"),
      Cell("nat-ctc", ONE_SHOT, "one-shot CTC NAT (copy task)", "nat", (("kind", "ctc"),)),
      mdm("mdm-tau-leaping", "tau-leaping"),
      mdm("mdm-confidence", "top-k confidence (max-prob)"),
      mdm("mdm-eb", "EB-sampler (gamma=30)"),
      mdm("mdm-remdm", "ReMDM (cap, top-p 0.9)"),
      mdm("mdm-p2", "P2 self-planning"),
      Cell("dllm-low-confidence", MASKED, "low-confidence remasking, blocks of 8 (LLaDA)",
           "dllm", (("sampler", "low-confidence"),)),
      Cell("dllm-fast-dllm", MASKED, "Fast-dLLM dual cache, threshold 0.9", "dllm",
           (("sampler", "fast-dllm"),)),
      Cell("nat-levenshtein", EDIT, "Levenshtein Transformer (copy task)", "nat",
           (("kind", "levenshtein"),)),
      Cell("edit-flows", EDIT, "Edit Flows / token editing", "external",
           (("modules", ("edit_flows", "bench_token_editing")),)),
      Cell("diffusion-drafter", HYBRID, "diffusion drafter + APD", "external",
           (("modules", ("bench_diffusion_drafter",)),)),
  ]


#: The cells, by the name ``--cells`` takes.
CELLS: dict[str, Cell] = {c.name: c for c in _cells()}


def checked_cells(names) -> list[Cell]:
  """The cells named (all of them for ``None``).

  Raises:
    ValueError: a name is not a key of :data:`CELLS` (the message lists the valid ones).
  """
  unknown = [n for n in names or () if n not in CELLS]
  if unknown:
    raise ValueError(f"unknown {unknown}; choose from {list(CELLS)}")
  return list(CELLS.values()) if names is None else [CELLS[n] for n in names]
