"""Cells of notebooks/quickstart.ipynb (``python notebooks/generate.py quickstart``)."""

NEEDS_SMOLLM2 = False

CELLS = [
    ("md", """# partext-jax quickstart

Train a tiny masked-diffusion LM on the Python standard library's own source (present on every
machine), sample from it with tau-leaping, and watch a denoising trajectory.

Runs on a CPU in about a minute. `PARTEXT_NOTEBOOK_STEPS` (environment) shrinks it further; CI
executes this notebook with a handful of steps."""),
    ("code", """import os, tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
from IPython.display import Image, display
import numpy as np

from partext_jax import training
from partext_jax.models import denoiser
from partext_jax.masked.tau_leaping import tau_leaping
from partext_jax.training import mdm, runs

STEPS = int(os.environ.get("PARTEXT_NOTEBOOK_STEPS", "400"))
config = training.default_config()          # configs/default.py's fields; the sizes of tiny.py
config.data.update(max_bytes=300_000, validation_fraction=0.1, tokenizer="char", vocab_size=128,
                   seq_len=64)
config.model.update(d_model=64, num_layers=2, num_heads=4, mlp_dim=192)
config.train.update(batch_size=8, learning_rate=3e-3, ema_decay=0.99, log_every=5,
                    eval_every=10, eval_batch_size=8, eval_batches=2, eval_time_samples=2,
                    checkpoint_every=10, progress_bar=False)
config.sample.update(num_samples=2, num_steps=8)
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
masked_fraction = (np.asarray(info.tokens) == mask_id).mean(axis=(1, 2))
alpha = np.asarray(run.config.diffusion.masking_schedule().alpha(info.s))
ax1.plot(np.arange(1, steps + 1), masked_fraction, label="sampled")
ax1.plot(np.arange(1, steps + 1), 1 - alpha, "--", label="1 - alpha(s)")
ax1.set(xlabel="step", ylabel="masked fraction", title="masked fraction vs schedule")
ax1.legend()
plt.tight_layout()
png = os.path.join(workdir, "trajectory.png")
fig.savefig(png, dpi=100)
plt.close(fig)
display(Image(filename=png))  # explicit, so the figure shows under any matplotlib backend"""),
]
