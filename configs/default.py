"""The main job: a masked-diffusion LM on the Python standard library's source, on a CPU.

Needs no download (the stdlib is on every machine). About 10 minutes on a 2-core CPU; it ends by
printing the validation bound beside the unigram entropy of the training tokens, and samples:

    python experiments/train.py --config=configs/default.py --workdir=/tmp/stdlib

Every field is listed here with its meaning. These values are also the defaults of the typed
config dataclasses in ``partext_jax/training/config.py`` (a test keeps the two equal), so a
config file may set only what it changes (see ``configs/tiny.py``).
"""

import ml_collections


def get_config():
  """Returns the default (stdlib corpus) experiment config."""
  config = ml_collections.ConfigDict()

  config.data = ml_collections.ConfigDict()
  # Corpus: "stdlib" (Python standard library source), "files" (data.path) or "markov".
  config.data.source = "stdlib"
  # Directory (or single file) of text; only read when source == "files".
  config.data.path = ""
  # Glob, relative to data.path, selecting the files (recursive "**" allowed).
  config.data.glob = "**/*.txt"
  # Cap on the corpus bytes read (files taken in a stable hashed order); 0 = no cap.
  config.data.max_bytes = 4_000_000
  # Fraction of files (by a stable hash of the path) held out for validation.
  config.data.validation_fraction = 0.05
  # Tokenizer kind: "char" (one id per character) or "bpe" (byte-level BPE).
  config.data.tokenizer = "bpe"
  # Largest vocabulary (real tokens; the model adds one MASK id).
  config.data.vocab_size = 1024
  # Tokens per packed training example (and the model's sequence length).
  config.data.seq_len = 128
  # Seed of the synthetic Markov chain and its sequences (markov source only).
  config.data.seed = 0
  # Markov source: number of states.
  config.data.num_states = 8
  # Markov source: Dirichlet concentration of the transition rows (small = peaked).
  config.data.concentration = 0.3
  # Markov source: number of training sequences.
  config.data.num_train_sequences = 512
  # Markov source: number of validation sequences.
  config.data.num_valid_sequences = 64

  config.model = ml_collections.ConfigDict()
  # Residual width.
  config.model.d_model = 128
  # Transformer blocks.
  config.model.num_layers = 4
  # Attention heads (d_model / num_heads must be even).
  config.model.num_heads = 4
  # SwiGLU hidden width.
  config.model.mlp_dim = 512
  # FiLM-condition the norms on t (not needed for absorbing diffusion).
  config.model.time_conditioning = False
  # RoPE base.
  config.model.rope_theta = 10000.0
  # Residual dropout during training.
  config.model.dropout_rate = 0.0
  # Activation dtype: "float32" or "bfloat16" (slow on CPU).
  config.model.dtype = "float32"
  # Attention implementation registered in partext_jax.models.attention.
  config.model.attention_impl = "xla"

  config.diffusion = ml_collections.ConfigDict()
  # Masking schedule alpha(t): "linear", "cosine" or "polynomial".
  config.diffusion.schedule = "linear"
  # Exponent k of the polynomial schedule (unused otherwise).
  config.diffusion.exponent = 2.0
  # MD4-style shift of alpha into [eps, 1 - eps]; 0 keeps the exact bound.
  config.diffusion.eps = 0.0
  # Stratified (antithetic) times across the batch: lower-variance loss.
  config.diffusion.antithetic = True

  config.train = ml_collections.ConfigDict()
  # Seed of parameter init, masking noise and data order.
  config.train.seed = 0
  # Sequences per optimiser step.
  config.train.batch_size = 32
  # Optimiser steps in the whole run.
  config.train.num_steps = 800
  # Peak learning rate (after warmup).
  config.train.learning_rate = 2e-3
  # Linear warmup steps from 0 to the peak.
  config.train.warmup_steps = 80
  # Cosine decay ends at this fraction of the peak learning rate.
  config.train.end_learning_rate_ratio = 0.1
  # AdamW decoupled weight decay (matrices only).
  config.train.weight_decay = 0.01
  # Adam beta1.
  config.train.b1 = 0.9
  # Adam beta2.
  config.train.b2 = 0.98
  # Clip gradients to this global norm.
  config.train.grad_clip_norm = 1.0
  # EMA decay of the parameters (warmed up as min(decay, (1+k)/(10+k))).
  config.train.ema_decay = 0.995
  # Steps between train-metric lines in metrics.jsonl.
  config.train.log_every = 20
  # Steps between validation-bound evaluations (also run at the end).
  config.train.eval_every = 200
  # Sequences per validation batch.
  config.train.eval_batch_size = 32
  # Validation batches per evaluation (at most).
  config.train.eval_batches = 12
  # Monte-Carlo (time, mask) draws per validation batch.
  config.train.eval_time_samples = 4
  # Steps between checkpoints (one is also written at the end).
  config.train.checkpoint_every = 200
  # Checkpoints kept on disk.
  config.train.keep_checkpoints = 2
  # Show a tqdm progress bar.
  config.train.progress_bar = True

  config.sample = ml_collections.ConfigDict()
  # Samples drawn and printed at the end of training.
  config.sample.num_samples = 4
  # Tau-leaping steps per sample.
  config.sample.num_steps = 128
  # "analytic" (exact absorbing posterior) or "euler" (first-order tau-leaping).
  config.sample.method = "analytic"
  # Softmax temperature of the denoiser's categorical.
  config.sample.temperature = 1.0
  # At the last step, fill any remaining MASK with the argmax token.
  config.sample.noise_removal = True
  # Seed of the sampler.
  config.sample.seed = 0

  config.mesh = ml_collections.ConfigDict()
  # Device mesh (partext_jax.parallel); the three sizes multiply to the device count of all
  # processes, one of them may be -1 (= the devices left). One CPU/GPU: leave as is.
  # Data parallelism: batch rows split over this axis (-1: every device not used below).
  config.mesh.data = -1
  # Fully sharded data parallelism: batch rows and the parameters' embed dimension.
  config.mesh.fsdp = 1
  # Tensor parallelism: the parameters' vocab / mlp / heads dimensions.
  config.mesh.tensor = 1

  return config
