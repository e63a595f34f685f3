r"""EAGLE drafter vs Medusa vs our AR decode; int8 weight-only decode vs llama.cpp; in one run.

    python experiments/bench_eagle.py --out experiments/results/bench_eagle_cpu.md
    python experiments/bench_eagle.py --head /tmp/eagle/checkpoints --num_prompts 8
    python experiments/bench_eagle.py --parts spec --medusa_same_data=/tmp/medusa_eagle_data

Speculative part (SmolLM2-135M-Instruct f32 target, no EOS stop, ``--new_tokens`` tokens): on
``--num_prompts`` open-ended chat prompts that are not training prompts, every decoder generates
the same tokens once after a warm-up call per shape (compilation excluded, prefill included);
per prompt we record the wall time, the tokens committed per target forward and whether greedy
output equals AR's. Reported: mean accepted tokens / forward and the per-prompt speed-up
``t_AR / t_decoder`` as mean +- standard error over prompts, and the ratio of total times.
Batch 1 greedy (EAGLE tree and chain, Medusa's default tree), batch 4 greedy, batch 1 at
temperature 0.7 (EAGLE's tree). The committed Medusa heads saw more teacher data than the EAGLE
head (the notes give both budgets). ``--medusa_same_data=DIR``, the workdir of a finished
``train_medusa.py`` run on the EAGLE head's teacher data (``--config.num_prompts`` and
``--config.max_new_tokens`` as in ``configs/eagle.py``; checked against the head's metadata, a
mismatch is an error), adds the row "Medusa default tree (EAGLE's data)" to every setting, so the
two drafters are compared on one data budget; its notes give the heads' size, training data and
held-out top-1 beside the EAGLE head's.

Quantized part: AR decode with int8 weight-only kernels vs f32 on the first 5 prompts (batch 1,
greedy, ms/token = wall time of prefill + ``--new_tokens`` tokens / ``--new_tokens``), beside
llama.cpp (``llama-cpp-python``, optional: the rows say why when it is absent) on the same
prompt ids and token count, ``--llama_cpp_threads`` threads (default 2): f32 and Q8_0 (the
embedded file re-encoded by ``gguf_peers.py``, converted once and cached in the temporary
directory) and the embedded Q4_1 file. Every row: time / our f32 (per-prompt ratio, mean +- se)
and tokens until the first divergence from our f32 greedy tokens. Also the gen-PPL of the int8
model's own samples (temperature 1) vs the f32 model's own samples, both judged by the f32 model.
"""

import dataclasses
import json
import os
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import common
import gguf_peers
from partext_jax import pretrained
from partext_jax.ar import processors as lp
from partext_jax.ar import sampling as ar
from partext_jax.ar.speculative import decode
from partext_jax.ar.speculative.drafters import eagle as eagle_drafter
from partext_jax.ar.speculative.drafters import medusa as medusa_drafter
from partext_jax.pretrained import quantize
from partext_jax.training import config as config_lib
from partext_jax.training import distill
from partext_jax.training import eagle as te
from partext_jax.training import medusa as mt

_HEAD = flags.DEFINE_string("head", None, "EAGLE checkpoint directory (default: the asset).")
_NEW = flags.DEFINE_integer("new_tokens", 64, "Tokens per generation.")
_NUM = flags.DEFINE_integer("num_prompts", 20, "Open-ended prompts (<= 20).")
_PARTS = flags.DEFINE_list("parts", ["spec", "quant"], "Parts to run: spec, quant.")
_OUT = flags.DEFINE_string("out", None, "Write the markdown report here too.")
_LLAMA_THREADS = flags.DEFINE_list(
    "llama_cpp_threads", ["2"], "llama.cpp thread counts of the quantized part's peer rows "
    "(our decode uses every core XLA:CPU is given).")
_MEDUSA_REPORT = "medusa_report.json"  # what mt.train_and_evaluate writes in its workdir
_MEDUSA_SAME_DATA = flags.DEFINE_string(
    "medusa_same_data", None, "Workdir of a finished train_medusa.py run on the EAGLE head's "
    "teacher data (e.g. --config.num_prompts=64 --config.max_new_tokens=96): adds the row "
    "\"Medusa default tree (EAGLE's data)\" to every speculative setting. Default: off.")
common.check_flag("medusa_same_data",
                  lambda d: os.path.isfile(os.path.join(d, _MEDUSA_REPORT)),
                  f"must be a finished train_medusa.py workdir (holding checkpoints/ and "
                  f"{_MEDUSA_REPORT})")
common.check_flag("llama_cpp_threads", lambda v: all(s.isdigit() and int(s) >= 1 for s in v),
                  "must be positive integers")

# Open-ended requests; none is built by the training templates of training/distill.py (those are
# "What is {topic}?"-style questions on a fixed topic list and stdlib questions).
PROMPTS = (
    "Describe a walk through a busy fish market early in the morning.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What would you pack for a week-long hiking trip in the mountains?",
    "Write a letter to a friend describing your new apartment.",
    "Describe the smell and sound of a summer thunderstorm.",
    "Give advice to someone starting their first job as a nurse.",
    "Write a product description for a handmade wooden chair.",
    "Tell me about a day in the life of a medieval blacksmith.",
    "Write a short speech for a friend's wedding.",
    "Describe how a city changes between winter and spring.",
    "Write a review of an imaginary Italian restaurant.",
    "What are some ways to make a small garden more colorful?",
    "Write a dialogue between a cat and a dog about breakfast.",
    "Describe the view from the top of a tall mountain at sunrise.",
    "Write a poem about an old train station.",
    "Plan a relaxing weekend in a seaside town.",
    "Describe a festival in a village you have never visited.",
    "Write the opening paragraph of a detective novel set in a rainy city.",
    "Explain how you would teach a child to ride a bicycle.",
    "Write a diary entry of an astronaut on her first day in orbit.",
)


def _mean_se(xs):
  xs = np.asarray(xs, np.float64)
  return float(xs.mean()), float(xs.std(ddof=1) / np.sqrt(len(xs))) if len(xs) > 1 else 0.0


def _fmt(xs, digits=2):
  m, s = _mean_se(xs)
  return f"{m:.{digits}f} +- {s:.{digits}f}"


_WARM: set = set()


def _timed(key, fn):
  """``(seconds, output)`` of one call of ``fn``; the first call per ``key`` (a compiled shape)
  runs once untimed before."""
  if key not in _WARM:
    jax.block_until_ready(fn())
    _WARM.add(key)
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - start, out


def _shape(name, chunk):
  return name, len(chunk), ar.bucket_length(max(len(p) for p in chunk))


def _prompt_ids(tok, n):
  return [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}]))
          for p in PROMPTS[:n]]


# The teacher-data fields every drafter trainer shares (prompts, answer length, split).
_TEACHER_DATA_FIELDS = tuple(
    f.name for f in dataclasses.fields(distill.DistillConfig)
    if f.name not in {g.name for g in dataclasses.fields(config_lib.OptimizerConfig)})


def _medusa_note(what, mcfg, train_config, valid, extra=""):
  """A note line on Medusa heads: size, teacher data and held-out top-1 per head."""
  top1 = ", ".join(f"{valid[f'head{k}_top1']:.3f}" for k in range(1, mcfg.num_heads + 1))
  return (f"Medusa heads ({what}): {mcfg.num_params / 1e6:.2f} M parameters "
          f"({mcfg.num_params * 4} bytes = {mcfg.num_params * 4 / 2**20:.1f} MiB f32), trained on "
          f"{train_config['num_prompts']} prompts x <= {train_config['max_new_tokens']} answer "
          f"tokens{extra}; held-out top-1 of heads 1..{mcfg.num_heads}: {top1} "
          f"({valid['positions']} answer positions), top-1 chain accepted length "
          f"{valid['chain_accept_len']:.2f}.")


def _same_data_medusa(workdir, emeta):
  """``(heads config, heads params, notes)`` of the ``train_medusa.py`` run in ``workdir``,
  whose teacher data must be the EAGLE head's (``emeta``: its checkpoint metadata); raises
  ``ValueError`` naming the fields that differ."""
  with open(os.path.join(workdir, _MEDUSA_REPORT), encoding="utf-8") as f:
    report = json.load(f)
  etc = emeta["train_config"]
  differ = {k: (report["config"][k], etc[k]) for k in _TEACHER_DATA_FIELDS
            if report["config"][k] != etc[k]}
  if differ:
    raise ValueError(f"--medusa_same_data={workdir}: its teacher data differs from the EAGLE "
                     f"head's ({{field: (Medusa run, EAGLE head)}}): {differ}")
  mcfg, heads, _ = mt.load_heads(os.path.join(workdir, "checkpoints"))
  notes = [_medusa_note(
      f"`{workdir}`, on the EAGLE head's teacher data", mcfg, report["config"], report["valid"],
      extra=(f" ({report['train_positions']} train positions, {report['config']['num_epochs']} "
             f"epochs; {report['seconds_data']:.0f} s data, {report['seconds_train']:.0f} s "
             "optimisation)"))]
  if "valid" in emeta:  # an exported head (a training checkpoint has no validation metrics)
    ev = emeta["valid"]
    notes.append(
        f"EAGLE head on the same teacher data (plus {etc['corpus_rows']} stdlib rows of "
        f"{etc['seq_len']} tokens) and the same held-out prompts: top-1 {ev['top1_1']:.3f} at "
        f"depth 1 (true features) and {ev['top1_2']:.3f} at depth 2 (its own features), over "
        "every position of the held-out rows (prompt tokens included); estimated chain accepted "
        f"length {ev['chain_accept_len']:.2f} (depth {etc['eval_depth']}). These estimators "
        "differ from the Medusa heads'; the table's tokens / target forward compares like with "
        "like.")
  return mcfg, heads, notes


def bench_spec(bundle, n_new, num):
  """Rows of the speculative table and the notes (sizes, identity checks)."""
  model, params, tok = bundle
  head_dir = _HEAD.value or te.asset_directory()
  ecfg, head, vocab_ids, emeta = te.load_head(head_dir)
  edp = eagle_drafter.drafter_params(head, params, vocab_ids, base_config=model.config)
  mcfg, heads, mmeta = mt.load_heads(mt.asset_directory())
  mdp = medusa_drafter.drafter_params(heads, params, base_config=model.config)
  drafters = {
      "EAGLE tree (D=5, k=4, 12 nodes)": (eagle_drafter.EagleDrafter(
          ecfg, model, mode="eagle", gamma=5, top_k=4, num_nodes=11), edp),
      "EAGLE chain (D=4)": (eagle_drafter.EagleDrafter(ecfg, model, mode="chain", gamma=4), edp),
      "Medusa default tree (16 nodes)": (medusa_drafter.MedusaDrafter(mcfg, model.config), mdp),
  }
  eagle_tree = next(iter(drafters))
  every_setting, same_data_notes = [eagle_tree], []  # timed at batch 4 and temperature 0.7 too
  if _MEDUSA_SAME_DATA.value:
    scfg, sheads, same_data_notes = _same_data_medusa(_MEDUSA_SAME_DATA.value, emeta)
    name = "Medusa default tree (EAGLE's data)"
    drafters[name] = (medusa_drafter.MedusaDrafter(scfg, model.config),
                      medusa_drafter.drafter_params(sheads, params, base_config=model.config))
    every_setting.append(name)
  ids = _prompt_ids(tok, num)
  rows, identical = [], {}

  def run_setting(label, batch, processor, names):
    t_ar, t_sp = [], {k: [] for k in names}
    acc = {k: [] for k in names}
    for i in range(0, len(ids), batch):
      chunk = ids[i:i + batch]
      if len(chunk) < batch:
        break
      key = jax.random.key(i)
      t, (ref, _) = _timed(_shape(("AR", label), chunk), lambda: ar.generate(
          key, model, params, chunk, max_new_tokens=n_new, processor=processor, eos_id=None))
      t_ar.append(t)
      for name in names:
        drafter, dp = drafters[name]
        t, (out, info) = _timed(_shape((name, label), chunk), lambda: decode.generate(
            key, model, params, chunk, drafter=drafter, drafter_params=dp, processor=processor,
            max_new_tokens=n_new, eos_id=None))
        t_sp[name].append(t)
        acc[name].append(float(np.mean(info.accepted_per_call)))
        if lp.is_greedy(processor):
          same = bool(np.array_equal(np.asarray(out), np.asarray(ref)))
          identical[(label, name)] = identical.get((label, name), True) and same
      print(label, i, f"AR {t_ar[-1]:.2f} s", {k: (f"{v[-1]:.2f} s", f"{acc[k][-1]:.2f} tok/fwd")
                                                for k, v in t_sp.items()}, flush=True)
    rows.append((label, "AR (plain)", "1.00", "1.00", f"{batch * n_new / np.mean(t_ar):.1f}",
                 "-", "-"))
    for name in names:
      ratio = np.asarray(t_ar) / np.asarray(t_sp[name])
      rows.append((label, name, _fmt(acc[name]), _fmt(ratio),
                   f"{batch * n_new / np.mean(t_sp[name]):.1f}",
                   f"{np.sum(t_ar) / np.sum(t_sp[name]):.2f}x",
                   identical.get((label, name), "n/a (sampling)")))

  run_setting("batch 1, greedy", 1, lp.greedy(), list(drafters))
  run_setting("batch 4, greedy", 4, lp.greedy(), every_setting)
  run_setting("batch 1, temperature 0.7", 1, lp.build(temperature=0.7), every_setting)
  cache = ecfg.init_cache(1, 1)
  per_slot = cache.nbytes
  notes = [
      f"EAGLE head `{os.path.relpath(head_dir)}`: {ecfg.num_params / 1e6:.2f} M parameters "
      f"({ecfg.num_params * 4 / 2**20:.1f} MiB f32 in memory; asset stored in "
      f"{emeta.get('param_dtype', 'float32')}), draft vocabulary {len(vocab_ids)} tokens (LM-head "
      f"rows copied: {len(vocab_ids) * model.config.hidden_size * 4 / 2**20:.1f} MiB), KV cache "
      f"{per_slot} bytes per slot and row, plus {model.config.hidden_size * 4} bytes per slot of "
      "stored features. Training: "
      f"{emeta.get('seconds_data', float('nan')):.0f} s data (self-distillation + target "
      f"features), {emeta.get('seconds_train', float('nan')):.0f} s optimisation; validation "
      f"{emeta.get('valid', {})}.",
      _medusa_note("committed asset", mcfg, mmeta["train_config"], mmeta["valid"]),
  ] + same_data_notes
  table = common.markdown_table(
      ["setting", "decoder", "tokens / target forward", "speed-up per prompt (mean +- se)",
       "tokens/s", "total-time ratio", "identical to AR"], rows)
  return table, notes


def _judge_nll(model, params, prompts, samples):
  """Mean NLL per token of every sample under ``params`` (float64[N]; one right-padded batch)."""
  length = max(len(p) + len(x) for p, x in zip(prompts, samples))
  toks = np.zeros((len(prompts), length), np.int32)
  for i, (p, x) in enumerate(zip(prompts, samples)):
    toks[i, :len(p) + len(x)] = list(p) + list(x)
  pos = jnp.broadcast_to(jnp.arange(length), toks.shape)
  logp = np.asarray(jax.nn.log_softmax(
      model(params, jnp.asarray(toks), pos, None, None, None).logits, axis=-1))
  out = []
  for i, (p, x) in enumerate(zip(prompts, samples)):
    idx = np.arange(len(p) - 1, len(p) - 1 + len(x))
    out.append(-float(np.mean(logp[i, idx, np.asarray(x)])))
  return np.asarray(out)


# llama.cpp peers of the quantized table: (label, GGML type the embedded file is re-encoded to,
# None for the embedded Q4_1 file itself).
LLAMA_CPP_PEERS = (("f32", "F32"), ("Q8_0", "Q8_0"), ("Q4_1 (embedded file)", None))


def _llama_cpp_rows(tok, ids, refs, t32, n_new):
  """``(rows, notes)`` of llama.cpp decode (``--llama_cpp_threads``) on the prompt ids ``ids``,
  timed as our rows (one call per prompt after a warm-up; wall time of prefill + ``n_new``
  tokens / ``n_new``), against our f32 per-prompt ms/token ``t32`` and greedy tokens ``refs``;
  one row with the reason when ``llama-cpp-python`` (optional) is absent."""
  try:
    import llama_cpp  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    return [("llama.cpp f32 / Q8_0 / Q4_1", f"not run: llama-cpp-python is not installed ({e}; "
             "optional: `pip install .[benchmark]`)", "-", "-")], []
  src = pretrained.gguf.smollm2_path()
  rows, sizes = [], []
  for label, qtype in LLAMA_CPP_PEERS:
    path = src if qtype is None else gguf_peers.cached_gguf(src, qtype)
    sizes.append(f"{label} {os.path.getsize(path) / 2**20:.0f} MiB")
    for th in map(int, _LLAMA_THREADS.value):
      name = f"llama.cpp {label} (llama-cpp-python {llama_cpp.__version__}), {th} thread(s)"
      llm = llama_cpp.Llama(path, n_ctx=max(map(len, ids)) + n_new + 8, n_threads=th,
                            n_threads_batch=th, verbose=False)
      gguf_peers.greedy_tokens(llm, ids[0], n_new)  # warm-up
      times, diverge = [], []
      for i, (p, ref) in enumerate(zip(ids, refs)):
        start = time.perf_counter()
        out = gguf_peers.greedy_tokens(llm, p, n_new)
        times.append((time.perf_counter() - start) / n_new * 1e3)
        diverge.append(gguf_peers.first_divergence(out, ref))
        print(name, i, f"{times[-1]:.1f} ms/token, first divergence {diverge[-1]}",
              repr(tok.decode(out)) if i == 0 else "", flush=True)
      del llm
      rows.append((name, f"{np.mean(times):.1f}", _fmt(np.asarray(times) / np.asarray(t32)),
                   f"{np.mean(diverge):.1f} (per prompt: {diverge})"))
  notes = [
      "llama.cpp rows: the prompt token ids fed as ours (no BOS added: the GGUF sets "
      "`add_bos_token` false and the chat template starts with `<|im_start|>`), greedy = "
      "`top_k=1, temp=0`, no repeat penalty, llama.cpp's default f16 KV cache. f32 and Q8_0 are "
      "the embedded Q4_1 file dequantised (the weights of our f32 rows) and re-encoded with the "
      "`gguf` package (Q8_0: every matrix, norms kept F32); files: " + ", ".join(sizes) + ". "
      "llama.cpp's threads spin-wait at every barrier: when other jobs hold the cores, 2 threads "
      "can be many times slower than 1 (`--llama_cpp_threads=1,2` shows both)."]
  return rows, notes


def bench_quant(bundle, n_new, num):
  model, params, tok = bundle
  qparams = quantize.quantize_params(params, "int8")
  err = quantize.quantization_error(params, qparams)
  ids = _prompt_ids(tok, num)
  t32, t8, diverge, refs = [], [], [], []
  for p in ids[:5]:
    t, (ref, _) = _timed(_shape("f32", [p]), lambda: ar.generate(
        jax.random.key(0), model, params, [p], max_new_tokens=n_new, eos_id=None))
    t32.append(t / n_new * 1e3)
    refs.append(np.asarray(ref[0]))
    t, (out, _) = _timed(_shape("int8", [p]), lambda: ar.generate(
        jax.random.key(0), model, qparams, [p], max_new_tokens=n_new, eos_id=None))
    t8.append(t / n_new * 1e3)
    diverge.append(gguf_peers.first_divergence(out[0], ref[0]))
  samples = {}
  for name, prm in (("f32", params), ("int8", qparams)):
    out, info = ar.generate(jax.random.key(1), model, prm, ids, max_new_tokens=n_new,
                            processor=lp.identity(), eos_id=None)
    samples[name] = [list(map(int, r)) for r in np.asarray(out)]
  nll = {k: _judge_nll(model, params, ids, v) for k, v in samples.items()}
  ppl = {k: float(np.exp(v.mean())) for k, v in nll.items()}
  ratio = np.asarray(t8) / np.asarray(t32)
  rows = [("partext-jax f32", f"{np.mean(t32):.1f}", "1.00", f"{n_new} (reference)"),
          ("partext-jax int8 weight-only", f"{np.mean(t8):.1f}", _fmt(ratio),
           f"{np.mean(diverge):.1f} (per prompt: {diverge})")]
  lcpp_rows, lcpp_notes = _llama_cpp_rows(tok, ids[:5], refs, t32, n_new)
  rows += lcpp_rows
  table = common.markdown_table(["decoder (batch 1, greedy)", "ms / token",
                                 "time / our f32 (per-prompt ratio, mean +- se)",
                                 "tokens until first divergence from our f32"], rows)
  diff = nll["int8"] - nll["f32"]
  # Paired and far less noisy: the same (f32) samples scored by both models.
  cross = _judge_nll(model, qparams, ids, samples["f32"]) - nll["f32"]
  notes = [
      f"Quantization error (relative Frobenius, {err['num_tensors']} decoder kernels): mean "
      f"{err['mean_rel_error']:.4f}, max {err['max_rel_error']:.4f}, all "
      f"{err['total_rel_error']:.4f}; weights {err['bytes_before'] / 2**20:.0f} MiB -> "
      f"{err['bytes_after'] / 2**20:.0f} MiB (embedding / LM head kept f32).",
      f"Gen-PPL under the f32 judge of each model's own samples ({len(ids)} prompts x {n_new} "
      f"tokens, temperature 1, same keys): f32 {ppl['f32']:.2f}, int8 {ppl['int8']:.2f} "
      f"({100 * (ppl['int8'] / ppl['f32'] - 1):+.1f}%; per-prompt NLL difference "
      f"{_fmt(diff, 3)} nats, i.e. a PPL ratio of exp(mean) with that standard error).",
      f"Paired: the f32 model's samples scored by the int8 model vs by the f32 model: "
      f"{_fmt(cross, 4)} nats per token (PPL ratio {np.exp(cross.mean()):.4f}; the two "
      "models' own samples differ from the first divergence on, which makes the unpaired "
      "gen-PPL above noisy).",
  ] + lcpp_notes
  return table, notes


def main(argv):
  common.no_arguments(argv)
  n_new, num = _NEW.value, min(_NUM.value, len(PROMPTS))
  bundle = pretrained.load_bundle()
  text = [f"# EAGLE / Medusa speculative decoding and int8 weight-only decode "
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
          "Command: `python experiments/bench_eagle.py " + " ".join(sys.argv[1:]) + "`", "",
          f"Machine: {common.machine()}. Target SmolLM2-135M-Instruct (f32), {n_new} new tokens, "
          f"no EOS stop, one timed call per prompt after a warm-up (compilation excluded). The "
          "machine is shared with other jobs: absolute times are noisy, ratios are measured "
          "side by side.", ""]
  parts = {"spec": ("## Speculative decoding", bench_spec),
           "quant": ("## Weight-only int8 decode and llama.cpp f32 / Q8_0 / Q4_1", bench_quant)}
  for name in _PARTS.value:
    title, fn = parts[name]
    table, notes = fn(bundle, n_new, num)
    text += [title, "", table, ""] + [f"- {n}" for n in notes] + [""]
    common.write_report("\n".join(text), _OUT.value)  # after every part: partial results stay


if __name__ == "__main__":
  common.run(main)
