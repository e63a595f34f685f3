"""What the launchers and benchmarks in ``experiments/`` share: flags, timing, reports.

Imported as ``import common`` (Python puts a script's own directory first on ``sys.path``); the
package itself is the installed ``partext_jax``.

* Launcher start: :func:`run` (``app.run`` with one-line flag errors, WARNING-level logging by
  default and backend-probe noise silenced).
* Launcher flags: :func:`define_trained_run_flags` (``--workdir`` / ``--config`` of a trained
  run), :func:`define_distributed_flags` + :func:`initialize_distributed` (multi-host start),
  :func:`mesh_from_flag` (``--mesh=DATA,FSDP,TENSOR``).
* Drafter trainers (``train_{medusa,eagle,mtp,diffusion_drafter}.py``):
  :func:`define_drafter_training_flags` and :func:`train_drafter` (train, print the report,
  export the committed asset with :func:`export_command` in its metadata).
* Benchmarks: :func:`time_call` (wall time of a jitted call after a warm-up),
  :func:`time_round_robin` (several calls timed in turn), :func:`machine`
  (the line that records where and when a table was measured), :func:`markdown_table` and
  :func:`write_report` (print it and keep it under ``experiments/results/``).
"""

from __future__ import annotations

import datetime
import json
import logging as std_logging
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, NamedTuple, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from partext_jax import parallel
from partext_jax.training.checkpoint import CheckpointError

FLAGS = flags.FLAGS
# The flags the define_* helpers below make belong to the launcher calling them: its --helpshort
# lists them.
flags.disclaim_key_flags()


# --------------------------------------------------------------------------------------------
# Launcher start.


def parse_flags(argv: Sequence[str]) -> list[str]:
  """``FLAGS(argv)``; a bad flag (unknown, malformed, failing its validator) exits with status 2
  after one line on stderr: ``<launcher>: error: <what is wrong> (--helpshort lists the flags)``.

  Flag validators run here, before ``main``: a bad value never waits for a model to load.
  """
  try:
    return FLAGS(argv)
  except flags.Error as e:
    message = " ".join(str(e).split())  # One line, whatever the validator wrote.
    print(f"{os.path.basename(argv[0])}: error: {message} (--helpshort lists the flags)",
          file=sys.stderr, flush=True)
    sys.exit(2)


class _DropBackendProbe(std_logging.Filter):
  """Drops jax's "Unable to initialize backend 'tpu'" (a probe for a plugin that is absent)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Unable to initialize backend")


def run(main: Callable[[list[str]], Any]) -> None:
  """``app.run(main)`` with the launchers' conventions.

  * Flag errors: one line and exit status 2 (:func:`parse_flags`).
  * Logging: WARNING and above unless ``--verbosity`` is given (``--verbosity=0`` for INFO, the
    library's progress lines and orbax's); the package itself never configures logging.
  * jax's backend-probe messages ("Unable to initialize backend 'tpu'") are dropped.
  * User errors (:class:`CheckpointError`, ``ValueError`` from the library's input checks) end
    the run with one line ``<launcher>: error: ...`` and exit status 1; with ``--verbosity``
    given, they show their traceback instead.
  """

  def main_with_defaults(argv):
    verbose = FLAGS["verbosity"].present
    if not verbose:
      logging.set_verbosity(logging.WARNING)
    std_logging.getLogger("jax._src.xla_bridge").addFilter(_DropBackendProbe())
    try:
      return main(argv)
    except (CheckpointError, ValueError) as e:
      if verbose:
        raise
      message = " ".join(str(e).split())
      print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr, flush=True)
      sys.exit(1)

  app.run(main_with_defaults, flags_parser=parse_flags)


def check_flag(name: str, predicate: Callable[[Any], bool], message: str) -> None:
  """Registers a validator of ``--name`` (run while flags are parsed, before ``main``); a value
  failing ``predicate`` (``None`` skips it) is reported as ``flag --name=value: message``."""
  flags.register_validator(name, lambda v: v is None or predicate(v),
                           message=message)


# --------------------------------------------------------------------------------------------
# Launcher flags.


def define_trained_run_flags() -> None:
  """``--workdir`` (required: a trained run) and ``--config`` (optional: replaces its config)."""
  flags.DEFINE_string("workdir", None, "Directory of a trained run (holds checkpoints/).")
  config_flags.DEFINE_config_file(
      "config", None, "Optional config file; default: the config stored in the checkpoint.",
      lock_config=True)
  flags.mark_flags_as_required(["workdir"])


def define_distributed_flags() -> None:
  """``--coordinator_address``, ``--num_processes``, ``--process_id`` (jax.distributed)."""
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0; set to run multi-process (jax.distributed).")
  flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process run.")
  flags.DEFINE_integer("process_id", 0, "This process's index in a multi-process run.")


def initialize_distributed() -> bool:
  """Starts ``jax.distributed`` if ``--coordinator_address`` is set; returns whether it did."""
  if not FLAGS.coordinator_address:
    return False
  parallel.initialize_distributed(coordinator_address=FLAGS.coordinator_address,
                                  num_processes=FLAGS.num_processes,
                                  process_id=FLAGS.process_id)
  return True


def no_arguments(argv: Sequence[str]) -> None:
  """Raises ``app.UsageError`` for positional arguments (every launcher takes flags only)."""
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")


def mesh_from_flag(sizes: Sequence[str] | None):
  """A ``(data, fsdp, tensor)`` mesh from ``--mesh=D,F,T`` (``None``: all devices on data)."""
  sizes = sizes or ["-1", "1", "1"]
  if len(sizes) != 3:
    raise app.UsageError(f"--mesh needs three sizes DATA,FSDP,TENSOR, got {sizes}")
  data, fsdp, tensor = (int(v) for v in sizes)
  return parallel.make_mesh(data=data, fsdp=fsdp, tensor=tensor)


# --------------------------------------------------------------------------------------------
# Drafter trainers.


def define_drafter_training_flags(drafter: str, what: str, *,
                                  default_config: Any | None = None) -> None:
  """``--workdir`` (required), ``--export_asset`` (save the ``what``, e.g. "heads", as the
  package's asset) and ``--config``: a ``configs/*.py`` file of the ``drafter``'s training
  (required), or, given ``default_config`` (a ConfigDict), that config with
  ``--config.<field>=...`` overrides."""
  flags.DEFINE_string("workdir", None, "Directory for the data cache, checkpoints and report.")
  flags.DEFINE_bool("export_asset", False,
                    f"Also save the {what} as the package's committed asset.")
  if default_config is None:
    config_flags.DEFINE_config_file(
        "config", None, f"File path to the {drafter} training configuration.", lock_config=True)
    flags.mark_flags_as_required(["config", "workdir"])
  else:
    config_flags.DEFINE_config_dict(
        "config", default_config,
        "Training configuration (override fields with --config.<field>=...).", lock_config=True)
    flags.declare_key_flag("config")  # DEFINE_config_dict names this module its owner.
    flags.mark_flags_as_required(["workdir"])


def export_command() -> str:
  """How this launcher was called (``--workdir=<dir>`` for the workdir): the ``command`` an
  exported asset records."""
  args = ["--workdir=<dir>" if a.startswith("--workdir") else a for a in sys.argv[1:]]
  return " ".join([f"python experiments/{os.path.basename(sys.argv[0])}"] + args)


def train_drafter(train_and_evaluate: Callable[[Any, str], dict[str, Any]], *,
                  summary: Sequence[str], what: str,
                  export: Callable[..., str],
                  format_report: Callable[[dict[str, Any]], str] | None = None
                  ) -> dict[str, Any]:
  """Runs ``train_and_evaluate(FLAGS.config, FLAGS.workdir)`` and prints its report:
  ``format_report(report)`` (if given), then the ``summary`` keys as JSON. With
  ``--export_asset``, also ``export(report, command=export_command())`` (returns where the
  ``what`` went). Returns the report."""
  report = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if format_report is not None:
    print(format_report(report))
  print(json.dumps({k: report[k] for k in summary}, indent=1))
  if FLAGS.export_asset:
    print(f"exported the {what} to {export(report, command=export_command())}")
  return report


# --------------------------------------------------------------------------------------------
# Benchmarks.


class Timing(NamedTuple):
  """Seconds of the timed calls (``best``, ``median``) and the last call's output."""

  best: float
  median: float
  output: Any


def time_call(fn: Callable[[], Any], *, repeats: int) -> Timing:
  """Times ``fn()`` ``repeats`` times after one untimed call (compilation, warm-up).

  Every call is waited for with ``jax.block_until_ready``, so asynchronous dispatch does not
  hide device time.
  """
  if repeats < 1:
    raise ValueError(f"repeats={repeats} must be >= 1")
  output = jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    output = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return Timing(min(times), statistics.median(times), output)


def time_round_robin(fns: dict[Any, Callable[[], Any]], *, repeats: int) -> dict[Any, Timing]:
  """``{name: Timing}`` of every ``fns[name]()``: one untimed call each (compilation, warm-up),
  then ``repeats`` rounds that time every function once in turn, so a drift of a shared
  machine's load spreads over all of them instead of landing on one. Waits with
  ``jax.block_until_ready`` like :func:`time_call`."""
  if repeats < 1:
    raise ValueError(f"repeats={repeats} must be >= 1")
  outputs = {name: jax.block_until_ready(fn()) for name, fn in fns.items()}
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      outputs[name] = jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: Timing(min(times[name]), statistics.median(times[name]), outputs[name])
          for name in fns}


def cpu_model() -> str:
  """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def machine() -> str:
  """Where and when: date, CPU, cores, load, devices, Python and jax versions (one line)."""
  device = jax.devices()[0]
  return (f"{datetime.date.today().isoformat()}; {cpu_model()}, {os.cpu_count()} cores (load "
          f"average {os.getloadavg()[0]:.1f}); {jax.device_count()} x {device.device_kind} "
          f"({jax.default_backend()}); Python {platform.python_version()}, jax {jax.__version__}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table; cells are written with ``str`` (format numbers before)."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def write_report(text: str, out: str | None) -> None:
  """Prints ``text`` and, given a path ``out``, writes it there too (newline-terminated)."""
  print(text, flush=True)
  if out:
    with open(out, "w", encoding="utf-8") as f:
      f.write(text.rstrip("\n") + "\n")
