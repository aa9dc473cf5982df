"""The top level of the `sap-jax` parser: the program, its global options and one line
per command, built from the standard library and `sap_jax.compilation` only (no JAX, no
Flax), so that ``sap-jax --help`` and ``sap-jax --version`` answer at once.

`sap_jax.cli.parser.build_parser` fills each command's parser with its options (which
take their defaults from the library, and so import it).
"""

from __future__ import annotations

import argparse
import importlib.metadata

from sap_jax import compilation
from sap_jax.cli.args import HelpFormatter

PROG = "sap-jax"
DESCRIPTION = (
  "SAP (Scaled Activation Projection): one-shot correction of models trained on noisy labels."
)
COMMANDS = {
  "train": "train a model on noisy labels and save a checkpoint",
  "evaluate": "clean test / noisy val accuracy and memorisation of a checkpoint",
  "correct": "correct a trained checkpoint with SAP",
  "demo": "the whole story on digits: noisy training → SAP → clean retrain",
}
"""Every command and its one-line help, in the order ``--help`` lists them."""

CACHE_OPTION = "--compilation-cache"


def version() -> str:
  """The installed distribution's version (`importlib.metadata`), else the package's."""
  try:
    return importlib.metadata.version(PROG)
  except importlib.metadata.PackageNotFoundError:
    from sap_jax import __version__

    return __version__


def _cache_help() -> str:
  return (
    "JAX persistent compilation cache folder, so a later run in a new process loads its "
    "compiled programs instead of compiling them; 'off' disables it (default: "
    f"${compilation.ENV_VAR}, else {compilation.default_cache_dir()}); accepted before or "
    "after the command"
  )


def top_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
  """The parser with its global options and an empty parser per command.

  Returns:
    ``(parser, {command: its parser})``; each command's parser already takes
    ``--compilation-cache`` (its default is left to the global option's).
  """
  parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
  parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
  parser.add_argument(CACHE_OPTION, default=None, metavar="DIR|off", help=_cache_help())
  sub = parser.add_subparsers(dest="command", required=True)
  commands = {}
  for name, text in COMMANDS.items():
    p = sub.add_parser(name, help=text, formatter_class=HelpFormatter)
    # SUPPRESS: absent after the command, the value given before it (or None) stays.
    p.add_argument(CACHE_OPTION, default=argparse.SUPPRESS, metavar="DIR|off", help=_cache_help())
    commands[name] = p
  return parser, commands


def names_a_command(argv: list[str]) -> bool:
  """Whether ``argv`` names a command (after the global options): if not, the top-level
  parser alone answers it (help, version or a usage error)."""
  args = iter(argv)
  for arg in args:
    if arg == CACHE_OPTION:
      next(args, None)
    elif arg.startswith(CACHE_OPTION + "="):
      continue
    else:
      return arg in COMMANDS
  return False
