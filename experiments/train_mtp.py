r"""Trains MTP predictors (Gloeckle heads or DeepSeek-V3 modules) on a frozen trunk.

    python experiments/train_mtp.py --config=configs/mtp.py:deepseek --workdir=/tmp/mtp_ds \
        --export_asset --asset_depth=1
    python experiments/train_mtp.py --config=configs/mtp.py:gloeckle --workdir=/tmp/mtp_gl \
        --export_asset
    python experiments/train_mtp.py --config=configs/mtp_markov.py --workdir=/tmp/mtp_markov

A thin launcher around ``partext_jax.training.mtp.train_and_evaluate``: the predictors (with
their optimiser state: a rerun resumes) land in ``<workdir>/checkpoints``, the report in
``<workdir>/mtp_report.json``. ``--export_asset`` (SmolLM2 data only) also writes the predictors
alone to ``partext_jax/assets/mtp_smollm2_<kind>`` (what ``bench_mtp_sot.py`` loads), in
bfloat16 and cut to the first ``--asset_depth`` predictors, so that each committed asset stays
under 5 MB (the two commands above made the committed ones; see ``configs/mtp.py``). Rerunning a
finished run resumes at its last step: it only evaluates and exports.
"""

from absl import app
from absl import flags
import jax

import common
from partext_jax.training import mtp

FLAGS = flags.FLAGS

common.define_drafter_training_flags("MTP", "predictors")
flags.DEFINE_integer("asset_depth", None, "Export only the first predictors (default: all).")
flags.DEFINE_enum("asset_dtype", "bfloat16", mtp.PARAM_DTYPES, "Storage dtype of the asset.")


def export(report, *, command: str) -> str:
  """The predictors of ``report``'s run as ``partext_jax/assets/mtp_smollm2_<kind>``."""
  return mtp.export_params(report, mtp.asset_directory(FLAGS.config.kind), command=command,
                           depth=FLAGS.asset_depth, param_dtype=FLAGS.asset_dtype)


def main(argv):
  common.no_arguments(argv)
  if FLAGS.export_asset and FLAGS.config.data != "smollm2":
    raise app.UsageError("--export_asset exports SmolLM2 predictors (config.data='smollm2')")
  common.train_drafter(
      mtp.train_and_evaluate, format_report=mtp.format_report,
      summary=("train_sequences", "seconds_data", "seconds_train", "params", "checkpoint"),
      what="predictors", export=export)


if __name__ == "__main__":
  jax.config.config_with_absl()
  common.run(main)
