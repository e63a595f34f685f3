r"""Parallel AR decoding on CPU: Jacobi, Lookahead and block verification vs our own AR decode.

    python experiments/bench_parallel_ar.py --out experiments/results/bench_parallel_ar_cpu.md

SmolLM2-135M-Instruct (f32), chat prompts, ``--new_tokens`` tokens, no EOS stop, at batch 1 (each
of the first ``--batch1_prompts`` prompts alone) and batch 8 (all prompts; ``--nofull_batch``
skips it, so that the two batch sizes can be measured in two shorter runs). For every decoder, in
one process and side by side with plain AR (:func:`partext_jax.ar.sampling.generate`): committed
tokens per target forward (``sum(lengths) / sum(target_calls)``, forwards counted per active row),
best-of-``--reps`` wall time of a whole ``generate`` (warm-up call first: compilation excluded;
prefill included), the speed-up over AR at the same temperature timed right before it, and
whether greedy rows equal AR token for token.

Rows: plain AR; Jacobi decoding (``--block_size``); Lookahead decoding (``--window``, ``--ngram``,
``--pool_size``); an early-exit chain drafter (first ``--exit_layers`` layers, ``--gamma`` drafts)
verified token-wise (``"iid"``) and by block verification (``"block"``) at temperature
``--temperature`` (under greedy both rules accept the argmax-matching prefix, so they are compared
sampling). Block vs token-wise on the *same drafts*: for contexts cut from sampled continuations,
chains are drafted ``--drafts_per_context`` times, the target scores each once, and the exact
expected accepted length of both rules is computed for that draft
(:func:`partext_jax.ar.speculative.verify.expected_accepted`); the table gives the means, the
paired difference and their standard errors over drafts.

No wall-clock speed-up is promised on a 2-core CPU (a ``T``-token forward costs far more than an
AR step here); the accepted tokens per forward are the portable figure.
"""

from __future__ import annotations

import sys

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import common
from partext_jax import pretrained
from partext_jax.ar import jacobi
from partext_jax.ar import processors as lp
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import decode, drafters, trees, verify

_NEW = flags.DEFINE_integer("new_tokens", 64, "Tokens per generation.")
_REPS = flags.DEFINE_integer("reps", 2, "Timed repetitions (the best is kept).")
_B1 = flags.DEFINE_integer("batch1_prompts", 2, "Prompts timed alone at batch 1.")
_FULL = flags.DEFINE_bool("full_batch", True, "Also time all prompts as one batch (batch 8).")
_BLOCK = flags.DEFINE_integer("block_size", 8, "Jacobi block size n.")
_WINDOW = flags.DEFINE_integer("window", 5, "Lookahead window W.")
_NGRAM = flags.DEFINE_integer("ngram", 4, "Lookahead n-gram size N.")
_POOL = flags.DEFINE_integer("pool_size", 5, "Lookahead n-grams verified per step G.")
_EXIT = flags.DEFINE_integer("exit_layers", 26, "Early-exit drafter depth (of 30 layers).")
_GAMMA = flags.DEFINE_integer("gamma", 4, "Drafted chain length.")
_TEMP = flags.DEFINE_float("temperature", 1.0, "Temperature of the block vs token-wise rows.")
_DRAFTS = flags.DEFINE_integer("drafts_per_context", 4, "Paired analysis: drafts per context.")
_OUT = flags.DEFINE_string("out", None, "Write the markdown report here too.")

PROMPTS = [
    "Repeat this code exactly, renaming `total` to `acc`:\ndef add_all(xs):\n  total = 0\n"
    "  for x in xs:\n    total += x\n  return total",
    "Write a short paragraph about the history of the printing press.",
    "Repeat the following sentence twice: the quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Answer in one sentence.",
    "List five prime numbers and explain why each is prime.",
    "Explain what a hash map is.",
    "Translate to French: I would like a cup of coffee, please.",
    "Write a haiku about the sea.",
]


def decoders(model, params):
  """``name -> (temperature, run(key, ids) -> (tokens, lengths, target_calls))``."""
  vocab = model.config.vocab_size
  look = drafters.LookaheadDrafter(vocab_size=vocab, window=_WINDOW.value, ngram=_NGRAM.value,
                                   pool_size=_POOL.value)
  chain, chain_params = drafters.early_exit_drafter(model, params, num_layers=_EXIT.value,
                                                    mode="chain", gamma=_GAMMA.value)
  n = _NEW.value

  def ar_run(temperature):
    def run(key, ids):
      out, info = ar.generate(key, model, params, ids, max_new_tokens=n, eos_id=None,
                              processor=lp.build(temperature=temperature))
      return out, info.lengths, info.lengths  # one forward per token
    return run

  def jacobi_run(key, ids):
    del key
    out, info = jacobi.generate(model, params, ids, block_size=_BLOCK.value, max_new_tokens=n,
                                eos_id=None)
    return out, info.lengths, info.target_calls

  def spec_run(drafter, dparams, temperature, rule=None):
    def run(key, ids):
      out, info = decode.generate(key, model, params, ids, drafter=drafter,
                                  drafter_params=dparams, max_new_tokens=n, eos_id=None,
                                  temperature=temperature, rule=rule)
      return out, info.lengths, info.target_calls
    return run

  t = _TEMP.value
  return {
      "AR (plain)": (0.0, ar_run(0.0)),
      f"Jacobi (n={_BLOCK.value})": (0.0, jacobi_run),
      f"Lookahead (W={_WINDOW.value}, N={_NGRAM.value}, G={_POOL.value})":
          (0.0, spec_run(look, None, 0.0)),
      f"AR (plain), T={t:g}": (t, ar_run(t)),
      f"early-exit chain, token-wise, T={t:g}": (t, spec_run(chain, chain_params, t, "iid")),
      f"early-exit chain, block, T={t:g}": (t, spec_run(chain, chain_params, t, "block")),
  }


def time_rows(runs, ids, label):
  """One table row per decoder for one batch of prompts. AR at the decoder's temperature is timed
  right before each decoder, so every ratio compares two back-to-back measurements (the CPU is
  shared: the load drifts over minutes)."""
  rows = []
  key = jax.random.key(0)
  plain = {t: run for name, (t, run) in runs.items() if name.startswith("AR (plain)")}
  for name, (temperature, run) in runs.items():
    base = common.time_call(lambda: plain[temperature](key, ids), repeats=_REPS.value)
    timing = (base if run is plain[temperature]
              else common.time_call(lambda run=run: run(key, ids), repeats=_REPS.value))
    out, lengths, calls = (np.asarray(x) for x in timing.output)
    same = (bool(np.array_equal(out, np.asarray(base.output[0]))) if temperature == 0
            else "(sampled)")
    rows.append([label, name, f"{lengths.sum() / calls.sum():.2f}", f"{timing.best:.2f}",
                 f"{base.best / timing.best:.2f}x", same])
    print(rows[-1], flush=True)
  return rows


def paired_acceptance(model, params, tok_ids):
  """Exact expected accepted length of token-wise and block verification on the same SmolLM2
  drafts: ``(mean_token, mean_block, mean_diff, se_token, se_block, se_diff, num_drafts)``."""
  proc = lp.build(temperature=_TEMP.value)
  sampled, _ = ar.generate(jax.random.key(1), model, params, tok_ids, max_new_tokens=48,
                           eos_id=None, processor=proc)
  sampled = np.asarray(sampled)
  contexts = [ids + sampled[i, :cut].tolist() for i, ids in enumerate(tok_ids)
              for cut in (0, 16, 32)] * _DRAFTS.value
  chain, dparams = drafters.early_exit_drafter(model, params, num_layers=_EXIT.value,
                                               mode="chain", gamma=_GAMMA.value)
  batch = ar.prepare_batch(model, contexts, max_new_tokens=1, processor=proc, eos_id=None)
  tokens, lengths = jnp.asarray(batch.tokens), jnp.asarray(batch.lengths)
  e_tok, e_block = _score_drafts(jax.random.key(2), params, dparams, tokens, lengths,
                                 model=model, drafter=chain, processor=proc)
  e_tok, e_block = np.asarray(e_tok, np.float64), np.asarray(e_block, np.float64)
  n = e_tok.size
  se = lambda x: float(x.std(ddof=1) / np.sqrt(n))
  diff = e_block - e_tok
  return (e_tok.mean(), e_block.mean(), diff.mean(), se(e_tok), se(e_block), se(diff), n)


def _score_drafts_impl(key, params, dparams, tokens, lengths, *, model, drafter, processor):
  """One drafted chain per row at its context's end, scored by the target once (the first step
  of :func:`partext_jax.ar.speculative.decode.generate_impl`); returns both rules' exact
  expected accepted lengths."""
  b, p_len = tokens.shape
  s_len = p_len + drafter.tree_size + 1
  first = (p_len - lengths).astype(jnp.int32)
  root_slot = jnp.full((b,), p_len - 1, jnp.int32)
  cache = ar.prefill(model, params, tokens, first, s_len,
                     logits_at=jnp.zeros((b, 1), jnp.int32)).cache
  dstate = drafter.init(dparams, tokens, first, cache_len=s_len)
  history = jnp.zeros((b, s_len), jnp.int32).at[:, :p_len].set(tokens)
  root_pos = root_slot - first
  ctx = drafters.DraftContext(tokens[:, -1], root_slot, root_pos, first, history,
                              jnp.zeros((b, 1), jnp.float32))
  _, draft = drafter.draft(key, dparams, dstate, ctx, processor=processor)
  tree = draft.tree
  mask = trees.tree_mask(trees.ancestor_mask(tree.parent), root_slot=root_slot, first_slot=first)
  logits = model(params, tree.tokens, root_pos[:, None] + tree.depth, mask, cache,
                 root_slot).logits
  v = logits.shape[-1]
  p = jax.nn.softmax(processor(logits.reshape(-1, v)), axis=-1).reshape(logits.shape)
  return (verify.expected_accepted(tree, p, draft.draft_probs, rule="iid"),
          verify.expected_accepted(tree, p, draft.draft_probs, rule="block"))


_score_drafts = jax.jit(_score_drafts_impl, static_argnames=("model", "drafter", "processor"))


def main(argv):
  common.no_arguments(argv)
  model, params, tok = pretrained.load_bundle()
  ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}],
                                            add_generation_prompt=True)) for p in PROMPTS]
  m_tok, m_block, m_diff, s_tok, s_block, s_diff, n = paired_acceptance(model, params, ids)
  print(f"paired: token-wise {m_tok:.3f} +- {s_tok:.3f}, block {m_block:.3f} +- {s_block:.3f}, "
        f"difference {m_diff:+.3f} +- {s_diff:.3f} ({n} drafts)", flush=True)
  runs = decoders(model, params)
  rows = []
  for i in range(min(_B1.value, len(ids))):
    rows += time_rows(runs, ids[i:i + 1], f"1 (prompt {i})")
  if _FULL.value:
    rows += time_rows(runs, ids, f"{len(ids)}")
  header = ["batch", "decoder", "tokens / target forward", "wall s (best)", "speed-up vs AR",
            "identical to AR"]
  pair = common.markdown_table(
      ["rule", "mean accepted drafts per step", "standard error"],
      [["token-wise (iid)", f"{m_tok:.3f}", f"{s_tok:.3f}"],
       ["block", f"{m_block:.3f}", f"{s_block:.3f}"],
       ["block - token-wise (paired)", f"{m_diff:+.3f}", f"{s_diff:.3f}"]])
  text = "\n".join([
      "# Parallel AR decoding: Jacobi, Lookahead, block verification (CPU)", "",
      f"Command: `python {' '.join(sys.argv)}`", "",
      f"Machine: {common.machine()}.", "",
      f"SmolLM2-135M-Instruct f32, {_NEW.value} new tokens, no EOS stop, best of {_REPS.value} "
      "after a warm-up (compilation excluded, prefill included); each speed-up against AR at "
      "the same temperature timed right before the decoder. Early-exit drafter: first "
      f"{_EXIT.value} of 30 layers, chain of {_GAMMA.value}.", "",
      common.markdown_table(header, rows), "",
      f"Block vs token-wise verification on the same drafts (T={_TEMP.value:g}; {n} chains of "
      f"{_GAMMA.value} drafted at contexts cut after 0, 16 and 32 sampled tokens of the "
      f"{len(ids)} prompts, {_DRAFTS.value} drafts each; exact expected accepted length per "
      "draft, standard errors over drafts):", "",
      pair, "",
  ])
  common.write_report(text, _OUT.value)


if __name__ == "__main__":
  common.run(main)
