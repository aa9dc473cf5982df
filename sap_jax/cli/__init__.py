"""`sap-jax` command line: train | evaluate | correct | demo.

This package's top is light: `main` answers ``--help`` and ``--version`` (and a missing
or unknown command) from `sap_jax.cli.top` without importing JAX, and hands every
command to `sap_jax.cli.commands`, which holds `main` and what a user sees (see its
docstring) and re-exports the commands (`train_command`, `evaluate_command`,
`correct_command`, `demo_command`) and the full parser (`parser`). Beside them: `args` (argument types and defaults),
`errors` (user errors and exit codes), `progress` (the progress lines), `devices` (the
many-device flags and sharded splits), `runs` (a run's data, model and checkpoint) and
`figure` (the PNG beside a `correct` report).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import Any

from sap_jax.cli.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError
from sap_jax.cli.top import names_a_command, top_parser

__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "UserError", "build_parser", "main"]


def build_parser():
  """The full `sap-jax` argument parser (`sap_jax.cli.parser.build_parser`)."""
  return importlib.import_module("sap_jax.cli.commands").build_parser()


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (0, 2 for a user error, 130 on
  Ctrl-C). Without a command (``--help``, ``--version``) JAX is never imported."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if not names_a_command(argv):
    top_parser()[0].parse_args(argv)  # prints the help, the version or the usage error
  return importlib.import_module("sap_jax.cli.commands").main(argv)


def __getattr__(name: str) -> Any:
  """A submodule (`figure`, `parser`, …), or a name of the commands module (`cmd_train`,
  `RunSpec`, …), imported on first use. A submodule is imported by itself, so ``from
  sap_jax.cli import figure`` inside a command module does not import `commands` (and
  with it that command module again)."""
  if name.startswith("__"):
    raise AttributeError(name)
  if importlib.util.find_spec(f"{__name__}.{name}") is not None:
    return importlib.import_module(f"{__name__}.{name}")
  commands = importlib.import_module("sap_jax.cli.commands")
  return commands if name == "commands" else getattr(commands, name)


if __name__ == "__main__":
  sys.exit(main())
