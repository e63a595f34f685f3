"""Cells of notebooks/masked_samplers.ipynb (``python notebooks/generate.py masked_samplers``)."""

NEEDS_SMOLLM2 = True   # the judge of generative perplexity

CELLS = [
    ("md", """# Masked-diffusion samplers side by side

One masked-diffusion LM, one prompt, every sampler of `partext_jax.masked`: tau-leaping, top-k
with max-prob / margin / entropy confidence, the threshold rule, the EB-sampler, semi-autoregressive
blocks, ReMDM remasking and P2 path planning. For each we draw *when* every position was unmasked
(a heat-map) and plot generative perplexity (under SmolLM2) against the number of denoiser calls
(NFE).

The model is the shipped checkpoint `partext_jax/assets/mdm_small` when the package has one, else
a small character-level MDM trained here on the Python standard library's source (a few minutes on
a CPU, seconds on an accelerator). Environment variables shrink the run (CI uses them):
`PARTEXT_NOTEBOOK_STEPS` (training steps, default 600), `PARTEXT_NOTEBOOK_SAMPLES` (rows per
sampler, default 8) and `PARTEXT_NOTEBOOK_SETTINGS` (settings per sampler for the NFE sweep,
default 3)."""),
    ("code", """import os, pathlib, tempfile

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

import partext_jax
from partext_jax import evaluation, masked, plotting, training
from partext_jax.models import denoiser
from partext_jax.training import runs

TRAIN_STEPS = int(os.environ.get("PARTEXT_NOTEBOOK_STEPS", "600"))
NUM_SAMPLES = int(os.environ.get("PARTEXT_NOTEBOOK_SAMPLES", "8"))
NUM_SETTINGS = int(os.environ.get("PARTEXT_NOTEBOOK_SETTINGS", "3"))

ASSET = pathlib.Path(partext_jax.__file__).resolve().parent / "assets" / "mdm_small"
if ASSET.is_dir():
  run = runs.load_shipped("mdm_small")
  print("using the shipped checkpoint", ASSET)
else:
  config = training.default_config()
  config.data.update(max_bytes=300_000, validation_fraction=0.1, tokenizer="char",
                     vocab_size=128, seq_len=64)
  config.model.update(d_model=64, num_layers=2, num_heads=4, mlp_dim=192)
  config.train.update(batch_size=16, num_steps=TRAIN_STEPS, learning_rate=3e-3,
                      warmup_steps=min(50, TRAIN_STEPS // 4), ema_decay=0.99, log_every=100,
                      eval_every=TRAIN_STEPS, eval_batches=2, checkpoint_every=TRAIN_STEPS,
                      progress_bar=False)
  config.sample.update(num_samples=1, num_steps=8)
  workdir = tempfile.mkdtemp(prefix="partext_masked_")
  metrics = training.train_and_evaluate(config, workdir)
  print(f"trained {TRAIN_STEPS} steps: validation bound "
        f"{metrics.get('eval/bits_per_token', float('nan')):.2f} bits/token")
  run = runs.load_run(workdir)
denoise_fn = denoiser.make_denoise_fn(run.model_config, run.state.ema_params)
MASK, L = run.model_config.mask_id, run.config.data.seq_len
# The trainer saved metrics.png through matplotlib's Agg backend; draw inline again.
%matplotlib inline"""),
    ("md", """## The prompt
The first `P` positions hold a prompt; the other `L - P` are MASK. Every sampler keeps the prompt
and fills the rest."""),
    ("code", """prompt = np.asarray(run.encode("def main(argv):\\n  "))[:L // 4]
prompt = prompt[:len(prompt) - (len(prompt) - L) % 4]   # L - P a multiple of 4 (blocks of GEN/4)
P = len(prompt)
x_init = jnp.full((NUM_SAMPLES, L), MASK, jnp.int32).at[:, :P].set(jnp.asarray(prompt))
GEN = L - P
print(f"L = {L} positions, prompt {P} tokens {run.decode(prompt)!r}, {GEN} to generate")"""),
    ("md", """## The samplers
Each entry: the settings swept for the NFE plot, cheapest first (steps for fixed-budget samplers;
the threshold or the error budget `gamma` for the adaptive ones) and a constructor. Sampling temperature 1
everywhere, so the rows differ in *which* positions are decoded and *how many* per step. A new
sampler is one more entry."""),
    ("code", """steps = [GEN // 16 * 4, GEN // 8 * 4, GEN]   # ~1/4, ~1/2, all: multiples of the 4 semi-AR blocks
common = dict(mask_id=MASK, record_trajectory=True)
SAMPLERS = {
    "tau-leaping": (steps, lambda n: masked.tau_leaping.tau_leaping(
        denoise_fn, num_steps=n, **common)),
    "top-k max-prob": (steps, lambda n: masked.confidence(
        denoise_fn, rule="topk", num_steps=n, proxy="max_prob", temperature=1.0, **common)),
    "top-k margin": (steps, lambda n: masked.confidence(
        denoise_fn, rule="topk", num_steps=n, proxy="margin", temperature=1.0, **common)),
    "top-k entropy": (steps, lambda n: masked.confidence(
        denoise_fn, rule="topk", num_steps=n, proxy="neg_entropy", temperature=1.0, **common)),
    "threshold": ([0.2, 0.5, 0.9], lambda tau: masked.confidence(
        denoise_fn, rule="threshold", threshold=tau, temperature=1.0, **common)),
    "EB": ([100.0, 10.0, 1.0], lambda gamma: masked.eb_sampler(
        denoise_fn, gamma=gamma, temperature=1.0, **common)),
    "semi-AR top-k (4 blocks)": (steps, lambda n: masked.confidence(
        denoise_fn, rule="topk", num_steps=n, temperature=1.0, block_length=GEN // 4,
        gen_length=GEN, **common)),
    "ReMDM cap": (steps, lambda n: masked.remdm.remdm(
        denoise_fn, num_steps=n, strategy="cap", eta=0.02, top_p=0.9, **common)),
    "P2": (steps, lambda n: masked.p2.p2(denoise_fn, num_steps=n, **common)),
}

results = {}   # name -> [(setting, nfe, texts, unmask steps of row 0)]
for name, (settings, build) in SAMPLERS.items():
  results[name] = []
  for setting in settings[:NUM_SETTINGS]:   # cheapest first
    tokens, info = build(setting).sample(jax.random.key(0), x_init)
    order = plotting.unmask_steps(info.tokens, x_init, mask_id=MASK)[0]
    texts = [run.decode(row) for row in np.asarray(tokens)]
    results[name].append((setting, int(np.asarray(info.nfe).sum()), texts, order))
  print(f"{name:<26} NFE {[r[1] for r in results[name]]}: {results[name][-1][2][0]!r}")"""),
    ("md", """## When was each position unmasked?
Row 0 of the most expensive setting run for each sampler. Colour is the fraction of that sampler's
steps elapsed when the position took its final value: left-to-right gradients are
autoregressive-like orders, a uniform speckle is a random order, plateaus are positions decoded
together."""),
    ("code", """last = {name: r[-1] for name, r in results.items()}
ax = plotting.plot_unmask_order({n: r[3] for n, r in last.items()},
                                num_steps={n: max(int(r[3].max()), 1) for n, r in last.items()})
ax.axvline(P - 0.5, color="red", linewidth=1)
plt.show()"""),
    ("md", """## Quality against cost
Generative perplexity of the decoded rows (prompt included) under SmolLM2-135M-Instruct
(`partext_jax.evaluation`; lower is better, but a sampler that repeats itself also scores well:
the unigram entropy is printed beside it)."""),
    ("code", """judge = evaluation.Judge.load()
fig, ax = plt.subplots(figsize=(7, 4))
for name, rows in results.items():
  nfe, ppl = [], []
  for setting, n, texts, _ in rows:
    stats = evaluation.generative_perplexity(texts, judge=judge)
    nfe.append(n)
    ppl.append(stats.ppl)
    print(f"{name:<26} setting {setting:<6} NFE {n:4d}  gen. PPL {stats.ppl:8.1f}")
  ax.plot(nfe, ppl, "o-", label=name, markersize=4)
ax.set(xscale="log", yscale="log", xlabel="NFE (denoiser calls, whole batch)",
       ylabel="generative perplexity (SmolLM2)", title="quality vs cost (lower left is better)")
for axis in (ax.xaxis, ax.yaxis):
  axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
ax.legend(fontsize=7, loc="best")
plt.tight_layout()
plt.show()"""),
]
