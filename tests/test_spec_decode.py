"""Speculative decode loop: tree scoring, KV compaction, compiles, bad input, SmolLM2 greedy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from partext_jax.models import attention, llama
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import decode, drafters, trees
from partext_jax.testing import ngram

TINY = llama.LlamaLM(llama.LlamaConfig.tiny(eos_id=None))


@pytest.fixture(scope="module")
def tiny_params():
  return jax.jit(TINY.init)(jax.random.key(0))


def test_tree_logits_equal_causal_forward_over_root_path(tiny_params):
  prompt = jnp.array([[5, 9, 13, 4]])
  spec = trees.TreeSpec.from_choices(((0,), (1,), (0, 0), (1, 0), (0, 0, 0)))
  toks = jnp.array([[4, 20, 30, 21, 31, 22]])
  tree = spec.tree(toks)
  s_len = 16
  cache = TINY.init_cache(1, s_len)
  root_slot = jnp.array([3])  # prefix = slots 0..2, root (token 4) at slot 3
  fwd = jax.jit(lambda *a: TINY(tiny_params, *a))  # eager would compile op by op
  _, cache, _ = fwd(prompt[:, :3], jnp.arange(3)[None],
                    attention.causal_cache_mask(jnp.arange(3)[None], 0, s_len), cache,
                    jnp.zeros(1, int))
  mask = trees.tree_mask(trees.ancestor_mask(tree.parent), root_slot=root_slot,
                         first_slot=jnp.array([0]))
  # The structured mask (what the decode loop passes) and its dense expansion give the same.
  logits = fwd(toks, 3 + tree.depth, mask, cache, root_slot).logits
  dense = fwd(toks, 3 + tree.depth, mask.to_dense(s_len), cache, root_slot).logits
  np.testing.assert_array_equal(logits, dense)
  paths = np.asarray(trees.root_paths(tree.parent[0], max_depth=spec.max_depth))
  # One batched causal forward over every node's root path (right-padded), read at its end.
  seqs = np.zeros((spec.size, 3 + spec.max_depth + 1), np.int32)
  ends = []
  for i in range(spec.size):
    path = [int(j) for j in paths[i] if j >= 0]
    seq = [int(x) for x in prompt[0, :3]] + [int(toks[0, j]) for j in path]
    seqs[i, :len(seq)] = seq
    ends.append(len(seq) - 1)
  pos = jnp.broadcast_to(jnp.arange(seqs.shape[1]), seqs.shape)
  ref = jax.jit(lambda x: TINY(tiny_params, x, pos, None, None, None))(jnp.asarray(seqs)).logits
  ref = np.asarray(ref)[np.arange(spec.size), ends]
  np.testing.assert_allclose(logits[0], ref, atol=1e-5, rtol=1e-5)


def test_compacted_cache_equals_ar_cache(tiny_params):
  prompts = [[5, 9, 13, 4], [7, 3]]
  d = drafters.early_exit_drafter(TINY, tiny_params, num_layers=1, mode="eagle", gamma=3,
                                  top_k=2, num_nodes=6)
  out, info = decode.generate(jax.random.key(0), TINY, tiny_params, prompts, drafter=d[0],
                              drafter_params=d[1], max_new_tokens=12, eos_id=None,
                              min_bucket=8, return_cache=True)
  cache = info.cache
  ref, _ = ar.generate(jax.random.key(0), TINY, tiny_params, prompts, max_new_tokens=12,
                       eos_id=None, min_bucket=8)
  np.testing.assert_array_equal(out, ref)
  assert np.all(np.asarray(info.target_calls) < 12)  # some drafts were accepted
  p = 8
  for b, pr in enumerate(prompts):
    full = jnp.asarray([pr + np.asarray(out[b]).tolist()])
    n = full.shape[1] - 1  # the last token is the root: not in the cache
    c0 = jax.jit(lambda x, n=n: TINY(tiny_params, x, jnp.arange(n)[None], None,
                                     TINY.init_cache(1, n), jnp.zeros(1, int))[1])(full[:, :n])
    first = p - len(pr)
    np.testing.assert_allclose(cache.k[:, b, :, first:first + n], c0.k[:, 0], atol=1e-5)
    np.testing.assert_allclose(cache.v[:, b, :, first:first + n], c0.v[:, 0], atol=1e-5)


def test_one_compile_per_bucket(tiny_params):
  d = drafters.PromptLookupDrafter(gamma=3)
  kw = dict(drafter=d, max_new_tokens=6, eos_id=None, min_bucket=8)
  decode.generate(jax.random.key(0), TINY, tiny_params, [[1, 2, 3]], **kw)
  before = decode._generate_jit._cache_size()
  decode.generate(jax.random.key(1), TINY, tiny_params, [[4, 5, 6, 7, 8]], **kw)
  decode.generate(jax.random.key(2), TINY, tiny_params, [[9]], **kw)
  assert decode._generate_jit._cache_size() == before
  decode.generate(jax.random.key(0), TINY, tiny_params, [list(range(1, 12))], **kw)  # bucket 16
  assert decode._generate_jit._cache_size() == before + 1


class _HiddenChecker(drafters.PromptLookupDrafter):
  """Prompt lookup declaring ``needs_hidden`` (exercises the hidden-state path)."""

  needs_hidden = True


def test_hidden_plumbing_for_head_drafters(tiny_params):
  """A ``needs_hidden`` drafter runs and greedy output still equals AR (Medusa's hook)."""
  d = _HiddenChecker(gamma=3)
  out, _ = decode.generate(jax.random.key(0), TINY, tiny_params, [[5, 9, 13, 4]], drafter=d,
                           max_new_tokens=8, eos_id=None, min_bucket=8)
  ref, _ = ar.generate(jax.random.key(0), TINY, tiny_params, [[5, 9, 13, 4]], max_new_tokens=8,
                       eos_id=None, min_bucket=8)
  np.testing.assert_array_equal(out, ref)


def test_empty_draft_one_token_path_is_exact(tiny_params):
  """Prompt lookup without any n-gram match takes the 1-token ``lax.cond`` branch; sampled
  output (same key) equals the always-tree-forward loop."""
  prompts = [[5, 9, 13, 4], [7, 3, 8]]  # no repeated token: the first steps draft nothing
  d = drafters.PromptLookupDrafter(gamma=3)
  kw = dict(drafter=d, max_new_tokens=10, eos_id=None, min_bucket=8, temperature=1.0)
  cheap, ci = decode.generate(jax.random.key(3), TINY, tiny_params, prompts, **kw)
  full, fi = decode.generate(jax.random.key(3), TINY, tiny_params, prompts,
                             cheap_empty_step=False, **kw)
  np.testing.assert_array_equal(cheap, full)
  np.testing.assert_array_equal(ci.target_calls, fi.target_calls)
  # (Greedy == AR through this branch, with the hidden-state plumbing: the next test.)


def test_bad_input(tiny_params):
  d = drafters.PromptLookupDrafter(gamma=3)
  with pytest.raises(ValueError, match="temperature"):
    decode.generate(jax.random.key(0), TINY, tiny_params, [[1, 2]], drafter=d, max_new_tokens=4,
                    temperature=-0.5)
  with pytest.raises(ValueError, match="tree_size"):
    decode.generate(jax.random.key(0), TINY, tiny_params, [[1, 2]],
                    drafter=drafters.PromptLookupDrafter(gamma=40), max_new_tokens=100)
  other = ngram.ngram_lm(ngram.random_ngram(0, vocab_size=11, order=2))
  with pytest.raises(ValueError, match="vocab_size"):
    decode.generate(jax.random.key(0), TINY, tiny_params, [[1, 2]],
                    drafter=drafters.LMDrafter(other), max_new_tokens=4)
  with pytest.raises(ValueError, match="mode"):
    drafters.LMDrafter(other, mode="beam")
  with pytest.raises(ValueError, match="rule"):
    decode.generate(jax.random.key(0), TINY, tiny_params, [[1, 2]], drafter=d, max_new_tokens=4,
                    rule="lucky")


# ------------------------------------------------------------------------- SmolLM2, greedy

PROMPTS = [
    "Repeat this code exactly, renaming `total` to `acc`:\ndef add_all(xs):\n  total = 0\n"
    "  for x in xs:\n    total += x\n  return total",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain what a hash map is in one sentence.",
]


@pytest.fixture(scope="module")
def smollm2():
  from partext_jax import pretrained
  bundle = pretrained.load_bundle()
  tok = bundle.tokenizer
  ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}],
                                            add_generation_prompt=True)) for p in PROMPTS]
  ref, info = ar.generate(jax.random.key(0), bundle.model, bundle.params, ids, max_new_tokens=64,
                          eos_id=None)
  return bundle, ids, np.asarray(ref)


def _drafter(name, model, params):
  if name == "prompt_lookup":
    return drafters.PromptLookupDrafter(gamma=6), None
  if name == "early_exit_chain":
    return drafters.early_exit_drafter(model, params, num_layers=6, mode="chain", gamma=3)
  return drafters.early_exit_drafter(model, params, num_layers=6, mode="eagle", gamma=3,
                                     top_k=3, num_nodes=10)


@pytest.mark.parametrize("name", ["prompt_lookup", "early_exit_chain", "early_exit_eagle"])
def test_smollm2_greedy_speculative_equals_ar(smollm2, name):
  bundle, ids, ref = smollm2
  d, dp = _drafter(name, bundle.model, bundle.params)
  out, info = decode.generate(jax.random.key(0), bundle.model, bundle.params, ids, drafter=d,
                              drafter_params=dp, max_new_tokens=64, eos_id=None)
  np.testing.assert_array_equal(np.asarray(out), ref)
  assert np.asarray(info.lengths).sum() > np.asarray(info.target_calls).sum()


def test_smollm2_pallas_tree_attention_gives_the_same_tokens(smollm2):
  """The target scores each EAGLE tree with the Pallas tree-attention kernel (interpret mode on
  CPU) instead of the dense XLA mask: greedy output is still plain greedy, 5 prompts."""
  from partext_jax.models import llama  # pylint: disable=import-outside-toplevel
  bundle, ids, ref = smollm2
  target = llama.LlamaLM(bundle.model.config.replace(attention_impl="pallas"))
  d, dp = _drafter("early_exit_eagle", bundle.model, bundle.params)
  out, info = decode.generate(jax.random.key(0), target, bundle.params, ids, drafter=d,
                              drafter_params=dp, max_new_tokens=16, eos_id=None)
  np.testing.assert_array_equal(np.asarray(out), ref[:, :16])
  assert np.asarray(info.lengths).sum() > np.asarray(info.target_calls).sum()
