r"""MTP predictors for SmolLM2-135M-Instruct (frozen trunk), self-distilled, on a 2-core CPU.

    python experiments/train_mtp.py --config=configs/mtp.py:deepseek --workdir=/tmp/mtp_ds \
        --export_asset --asset_depth=1
    python experiments/train_mtp.py --config=configs/mtp.py:gloeckle --workdir=/tmp/mtp_gl \
        --export_asset

The argument after ``:`` picks the kind (default ``deepseek``). The first run of either kind
answers the prompts greedily and caches the sequences with SmolLM2's hidden states in the workdir
(``mtp_data_<hash>.npz``; point both runs at one workdir's data by copying it). Every field is
``partext_jax.training.mtp.MTPTrainConfig``'s (unknown keys fail loudly); override any on the
command line, e.g. ``--config.num_epochs=2``.
"""

from ml_collections import config_dict


def get_config(kind: str = "deepseek"):
  """Returns the SmolLM2 MTP config of ``kind`` (``"deepseek"`` or ``"gloeckle"``)."""
  c = config_dict.ConfigDict()
  # Predictors.
  c.kind = kind or "deepseek"  # "gloeckle": independent heads 2..D+1; "deepseek": module chain.
  # D: drafts per step beyond the trunk's own next token. Committed assets stay under 5 MB
  # (bfloat16): one SmolLM2-shaped block with mlp_dim 384 is 1.55 M parameters (3.1 MB), a
  # DeepSeek module 2.21 M (4.4 MB, its projection M_k adds 2 E^2). So the Gloeckle asset is one
  # extra head (n = 2 heads counting the trunk's), and the DeepSeek run trains a chain of two
  # modules and ships module 1 (train_mtp.py --asset_depth=1).
  c.depth = 1 if kind == "gloeckle" else 2
  c.mlp_dim = 384  # SwiGLU width of each block (SmolLM2's is 1536).
  # Data: SmolLM2's own greedy answers to the Medusa trainer's fixed chat prompts.
  c.data = "smollm2"
  c.num_prompts = 128  # prompts answered (half general topics, half stdlib functions).
  c.max_new_tokens = 128  # longest answer (stops at EOS).
  c.gen_batch_size = 32  # prompts per batched greedy generate call.
  c.validation_fraction = 0.125  # prompts held out (by a stable hash of the text).
  # Markov fields (unused with data="smollm2"; see configs/mtp_markov.py).
  c.markov_seed = 0
  c.num_states = 8
  c.concentration = 0.3
  c.num_sequences = 1024
  c.seq_len = 64
  # Optimisation: AdamW, 10 warmup steps, cosine decay to 10%, gradients clipped at norm 1.
  c.learning_rate = 1e-3
  c.warmup_steps = 10
  c.end_learning_rate_ratio = 0.1
  c.weight_decay = 0.0
  c.b1 = 0.9
  c.b2 = 0.98
  c.grad_clip_norm = 1.0
  c.batch_size = 4  # sequences (prompt + answer, ~200 tokens) per step.
  c.num_epochs = 6  # passes over the 111 training sequences: 162 steps.
  c.seed = 0  # initialisation and data order.
  c.progress_bar = True
  return c
