"""Non-autoregressive generation: one-shot CTC / glancing NAT and the Levenshtein Transformer.

The survey's one-shot and edit-based paradigms beside the masked samplers
(``docs/algorithms.md#one-shot-nat-with-ctc-and-glancing``, ``#levenshtein-transformer``). One
module per piece:

* :mod:`~partext_jax.nat.protocols` -- data (``Seq2Seq``, ``Source``, ``Output``) and the model
  protocols ``ctc_fn(src, src_len) -> logits`` and ``encode_fn`` / ``edit_fn``.
* :mod:`~partext_jax.nat.ctc` -- CTC likelihood (``optax.ctc_loss``), Viterbi alignment,
  collapse, greedy decoding, length checks.
* :mod:`~partext_jax.nat.glancing` -- GLAT's glancing sampler (``ceil(f d)`` reference tokens).
* :mod:`~partext_jax.nat.edits` -- canvases, the oracle edit script (DP), delete / insert / fill.
* :mod:`~partext_jax.nat.networks` -- the Flax encoder-decoders (CTC with upsampling; LevT with
  three heads).
* :mod:`~partext_jax.nat.one_shot`, :mod:`~partext_jax.nat.levenshtein` -- the decoders, as
  :class:`partext_jax.base.SamplingAlgorithm` ``(init, step, sample)``.
* :mod:`~partext_jax.nat.objectives` -- CTC, GLAT and Levenshtein imitation losses.
* :mod:`~partext_jax.nat.tasks` (copy / reverse / sort), :mod:`~partext_jax.nat.distill`
  (SmolLM2 sequence-level distillation), :mod:`~partext_jax.nat.ar_baseline` (the AR peer),
  :mod:`~partext_jax.nat.config` and :mod:`~partext_jax.nat.trainer` (on the trainer core).

Usage::

    from partext_jax import nat
    result = nat.trainer.train_and_evaluate(nat.config.default_config())   # CTC on copy-16
    decoder = nat.one_shot.one_shot(nat.networks.make_ctc_fn(result.family.config,
                                                             result.params), upsampling=2)
    output, info = decoder.sample(jax.random.key(0), nat.Source(src, src_len))
"""

from partext_jax.nat import (ar_baseline, config, ctc, edits, glancing, levenshtein, networks,
                             objectives, one_shot, protocols, tasks, trainer)
from partext_jax.nat.protocols import EditLogits, Output, Seq2Seq, Source

__all__ = ["EditLogits", "Output", "Seq2Seq", "Source", "ar_baseline", "config", "ctc", "edits",
           "glancing", "levenshtein", "networks", "objectives", "one_shot", "protocols", "tasks",
           "trainer"]
