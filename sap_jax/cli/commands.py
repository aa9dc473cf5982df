"""The `sap-jax` commands (train | evaluate | correct | demo), their parser and `main`.

The edge of the library: argument parsing, files and printing live here; every
step calls the public functions of the package, and every default and choice
comes from it (`TrainConfig`'s fields, `RunSpec`'s, `run_sap`'s keyword defaults,
`DEFAULT_ALPHAS`, `sample_scores.SCORES`). `main` turns on JAX's persistent compilation cache
(`sap_jax.compilation`; global option ``--compilation-cache DIR|off``), so a later command
in a new process loads the compiled programs of an earlier one instead of compiling them.

What a user sees:

* every output path of a command is checked against the overwrite rule
  (`sap_jax.safe_write`) before any work: without ``--overwrite`` nothing existing is
  touched; with it only an existing sap_jax checkpoint / report / figure is replaced; never
  the input checkpoint, anything in it or containing it;
* a user error is one ``error: …`` line on stderr naming the problem and the fix (exit
  status 2), never a traceback; Ctrl-C is one line saying what was written (status 130);
* progress goes to stderr: a live bar on a terminal, one line per update in a file or a
  pipe, nothing with ``--quiet``;
* a checkpoint records the content fingerprint of its data (`sap_jax.provenance`) and
  the data root made absolute; ``correct``/``evaluate`` take ``--data-root`` for moved
  data and refuse changed data unless ``--allow-changed-data`` is passed;
* many devices and hosts: ``--data-parallel`` (or ``--mesh data=N``) shards every split
  over all devices; ``--distributed`` (run on every host) joins the processes first
  (`jax.distributed.initialize`); only process 0 prints and writes reports, and every
  process takes part in saving and loading checkpoints (`sap_jax.checkpoint`).

This module holds `main` (reached through `sap_jax.cli.main`, which answers ``--help`` and
``--version`` from `sap_jax.cli.top` without importing it) and re-exports the commands and
the parser; one module per command: `train_command`, `evaluate_command`,
`correct_command`, `demo_command`, and `parser` (the full parser). Beside them: `top` (the
parser's top level), `args` (argument types and defaults), `errors` (user errors and exit
codes), `progress` (the progress lines), `devices` (the many-device flags and sharded
splits), `runs` (a run's data, model and checkpoint) and `figure` (the PNG beside a
`correct` report).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from sap_jax import compilation
from sap_jax.cli import interrupts
from sap_jax.cli.correct_command import alpha_table, cmd_correct, memorisation_hint
from sap_jax.cli.demo_command import cmd_demo
from sap_jax.cli.devices import first_process, start_devices
from sap_jax.cli.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError, error_text, one_line
from sap_jax.cli.evaluate_command import cmd_evaluate
from sap_jax.cli.parser import build_parser
from sap_jax.cli.train_command import cmd_train, spec_from_args
from sap_jax.spec import RunSpec

__all__ = [
  "EXIT_INTERRUPTED",
  "EXIT_USER_ERROR",
  "RunSpec",
  "UserError",
  "alpha_table",
  "build_parser",
  "cmd_correct",
  "cmd_demo",
  "cmd_evaluate",
  "cmd_train",
  "main",
  "memorisation_hint",
  "spec_from_args",
]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
  """Library warnings (e.g. integer images converted) as one ``warning:`` line."""
  del category, filename, lineno, line
  print(f"warning: {one_line(message)}", file=file or sys.stderr)


@contextlib.contextmanager
def _output_of_this_process(args):
  """Only process 0 prints (errors excepted): the others run quiet, their standard
  output discarded."""
  if first_process():
    yield
    return
  args.quiet = True
  with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
    yield


def _closed_loop_report(unraisable) -> bool:
  return isinstance(unraisable.exc_value, RuntimeError) and (
    str(unraisable.exc_value) == "Event loop is closed"
  )


def _drop_closed_loop_reports() -> None:
  """A failed checkpoint write (disk full, Ctrl-C) ends orbax's event loop while
  tensorstore's threads still post to it; each reports "RuntimeError: Event loop is
  closed" as an unraisable exception, possibly after the command has returned. The
  command line reports the failure itself in one line: those reports are dropped, for the
  rest of the process (every other one goes to the hook that was there)."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_reports", False):
    return

  def hook(unraisable) -> None:
    if not _closed_loop_report(unraisable):
      previous(unraisable)

  hook.drops_closed_loop_reports = True
  sys.unraisablehook = hook


class _OrbaxOrphanErrors(logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" for orbax's write tasks: when
  one fragment of a checkpoint write fails (disk full, a file-size limit), orbax raises
  the first failure, which the command line reports in one line, and the other
  fragments' failures stay in tasks nobody awaits; asyncio logs each when the task is
  collected, possibly after the command has returned."""

  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    return not (text.startswith("Task exception was never retrieved") and "orbax" in text)


def _drop_orbax_orphan_errors() -> None:
  """`_OrbaxOrphanErrors` on asyncio's logger, for the rest of the process (once)."""
  log = logging.getLogger("asyncio")
  if not any(isinstance(f, _OrbaxOrphanErrors) for f in log.filters):
    log.addFilter(_OrbaxOrphanErrors())


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (0, 2 for a user error, 130 on Ctrl-C)."""
  parser = build_parser()
  args = parser.parse_args(argv)
  args.written = []
  shown, warnings.showwarning = warnings.showwarning, _show_warning
  _drop_closed_loop_reports()
  _drop_orbax_orphan_errors()
  try:
    with interrupts.installed():  # a Ctrl-C dropped in a finalizer is raised again
      start_devices(args)
      compilation.enable_persistent_cache(args.compilation_cache, "--compilation-cache")
      with _output_of_this_process(args):
        # One call site for every process: with jax ≥ 0.11 a compiled program carries
        # the Python traceback of its call, and processes whose programs differ wait
        # for each other's collectives forever (see `sap_jax.multihost`).
        return args.func(args)
  except KeyboardInterrupt:
    if args.written:
      done = " and ".join(str(p) for p in args.written)
      print(f"interrupted: only {done} was written.", file=sys.stderr)
    else:
      print("interrupted: nothing was written.", file=sys.stderr)
    return EXIT_INTERRUPTED
  except Exception as e:
    text = error_text(e)
    if text is None:
      raise
    print(f"error: {text}", file=sys.stderr)
    return EXIT_USER_ERROR
  finally:
    warnings.showwarning = shown


if __name__ == "__main__":
  sys.exit(main())
