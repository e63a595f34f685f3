"""Writes notebooks/quickstart.ipynb (outputs stripped). Edit the cells here, then run:

    python notebooks/make_quickstart.py
"""

import pathlib

import nbformat
from nbformat import v4

CELLS = [
    ("md", """# partext-jax quickstart

Train a tiny masked-diffusion LM on the Python standard library's own source (present on every
machine), sample from it with tau-leaping, and watch a denoising trajectory.

Runs on a CPU in about a minute. `PARTEXT_NOTEBOOK_STEPS` (environment) shrinks it further; CI
executes this notebook with a handful of steps."""),
    ("code", """# Colab / fresh runtime: install partext-jax (skipped where it is already installed).
import importlib.util, subprocess, sys
if importlib.util.find_spec("partext_jax") is None:
  REPO_URL = "https://github.com/YOUR-FORK/partext-jax"  # <- the clone you work from
  subprocess.check_call(["git", "clone", "-q", REPO_URL, "partext-jax"])
  subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e", "partext-jax"])
  sys.path.insert(0, "partext-jax")"""),
    ("code", """import os, pathlib, runpy, tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
from IPython.display import Image, display
import numpy as np

import partext_jax
from partext_jax.models import denoiser
from partext_jax.masked.tau_leaping import tau_leaping
from partext_jax.training import mdm, runs

REPO = pathlib.Path(partext_jax.__file__).resolve().parent.parent
STEPS = int(os.environ.get("PARTEXT_NOTEBOOK_STEPS", "400"))
config = runpy.run_path(str(REPO / "configs" / "tiny.py"))["get_config"]()
config.model.d_model, config.model.num_layers, config.model.num_heads = 64, 2, 4
config.model.mlp_dim = 192
config.data.seq_len = 64
config.train.num_steps = STEPS
config.train.warmup_steps = min(50, STEPS // 4)
workdir = tempfile.mkdtemp(prefix="partext_quickstart_")
print(jax.devices(), "training", STEPS, "steps into", workdir)"""),
    ("md", """## Train
`train_and_evaluate` is the same function `experiments/train.py` calls: AdamW with warmup and
cosine decay, an EMA of the parameters, orbax checkpoints in `workdir` (rerun the cell and it
resumes), metrics in `workdir/metrics.jsonl`."""),
    ("code", """metrics = mdm.train_and_evaluate(config, workdir)
print({k: v for k, v in metrics.items() if k != "samples"})"""),
    ("md", """## Sample with tau-leaping, recording the trajectory
The sampler takes the model as a plain callable `denoise_fn(tokens, t) -> logits`; `sample` runs
every step in one `lax` loop under `jit`."""),
    ("code", """run = runs.load_run(workdir)
denoise_fn = denoiser.make_denoise_fn(run.model_config, run.state.ema_params)
mask_id = run.model_config.mask_id
sampler = tau_leaping(denoise_fn, mask_id=mask_id, num_steps=32,
                      schedule=run.config.diffusion.masking_schedule(), record_trajectory=True)
x_init = jnp.full((4, run.config.data.seq_len), mask_id, jnp.int32)
tokens, info = sampler.sample(jax.random.PRNGKey(0), x_init)
for row in np.asarray(tokens):
  print(repr(run.decode(row)))"""),
    ("code", """traj = np.asarray(info.tokens)[:, 0]            # [steps, L], first sample
steps = traj.shape[0]
for i in (0, steps // 4, steps // 2, 3 * steps // 4, steps - 1):
  shown = "".join("_" if tok == mask_id else run.decode(np.array([tok])) for tok in traj[i])
  print(f"step {i + 1:3d}: {shown!r}")

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3))
ax0.imshow(traj != mask_id, aspect="auto", cmap="Greys", interpolation="nearest")
ax0.set(xlabel="position", ylabel="step", title="decoded positions (black) per step")
ax1.plot(np.arange(1, steps + 1), (np.asarray(info.tokens) == mask_id).mean(axis=(1, 2)), label="sampled")
ax1.plot(np.arange(1, steps + 1), 1 - np.asarray(run.config.diffusion.masking_schedule().alpha(info.s)),
         "--", label="1 - alpha(s)")
ax1.set(xlabel="step", ylabel="masked fraction", title="masked fraction vs schedule")
ax1.legend()
plt.tight_layout()
png = os.path.join(workdir, "trajectory.png")
fig.savefig(png, dpi=100)
plt.close(fig)
display(Image(filename=png))  # explicit, so the figure shows under any matplotlib backend"""),
]


def main():
  nb = v4.new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nb.metadata["colab"] = {"provenance": []}
  nb.cells = [v4.new_markdown_cell(src) if kind == "md" else v4.new_code_cell(src)
              for kind, src in CELLS]
  out = pathlib.Path(__file__).with_name("quickstart.ipynb")
  nbformat.write(nb, str(out))
  print("wrote", out)


if __name__ == "__main__":
  main()
