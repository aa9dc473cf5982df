"""`sap-jax --help` and `--version` answer without importing JAX or Flax (the top of the
parser, `sap_jax.cli.top`, is built from the standard library); the full parser has the
same top level; ``--compilation-cache`` is accepted before and after the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import sap_jax
from sap_jax import cli
from sap_jax.cli import build_parser, top

HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax")

RUNNER = """
import json, sys
from sap_jax import cli
try:
  cli.main(sys.argv[1:])
  code = None
except SystemExit as e:
  code = e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print(json.dumps({{"code": code, "heavy": heavy}}))
"""


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False
  )


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["-h"], [], ["trian"]])
def test_top_level_answers_without_importing_jax(argv):
  result = _run("-c", RUNNER.format(heavy=set(HEAVY)), *argv)
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["heavy"] == [], out
  assert out["code"] == (0 if argv and argv[0] != "trian" else 2)


def test_python_m_sap_jax_help_and_version_import_no_jax():
  for flag in ("--help", "--version"):
    result = _run("-X", "importtime", "-m", "sap_jax", flag)
    assert result.returncode == 0, result.stderr
    imported = {
      line.rsplit("|", 1)[-1].strip()
      for line in result.stderr.splitlines()
      if line.startswith("import time:")
    }
    assert "sap_jax.cli.top" in imported  # the importtime trace is there
    assert not {m for m in imported if m.split(".")[0] in HEAVY}, flag
  assert result.stdout.strip() == f"sap-jax {top.version()}"
  help_text = _run("-m", "sap_jax", "--help").stdout
  for name in top.COMMANDS:
    assert name in help_text


def test_version_is_the_distributions_or_the_packages():
  import importlib.metadata

  try:
    want = importlib.metadata.version("sap-jax")
  except importlib.metadata.PackageNotFoundError:
    want = sap_jax.__version__
  assert top.version() == want


def test_full_parser_shares_the_top_level():
  full = build_parser()
  light, commands = top.top_parser()
  assert full.format_usage() == light.format_usage()
  assert set(commands) == set(top.COMMANDS)


@pytest.mark.parametrize(
  "argv, want",
  [
    (["evaluate", "ckpt"], None),
    (["--compilation-cache", "off", "evaluate", "ckpt"], "off"),
    (["evaluate", "ckpt", "--compilation-cache", "off"], "off"),
    (["evaluate", "--compilation-cache=/tmp/c", "ckpt"], "/tmp/c"),
    (["--compilation-cache", "a", "evaluate", "ckpt", "--compilation-cache", "b"], "b"),
  ],
)
def test_compilation_cache_before_or_after_the_command(argv, want):
  args = build_parser().parse_args(argv)
  assert args.command == "evaluate" and args.checkpoint == "ckpt"
  assert args.compilation_cache == want


def test_names_a_command():
  assert top.names_a_command(["train", "--out", "x"])
  assert top.names_a_command(["--compilation-cache", "off", "demo"])
  assert top.names_a_command(["--compilation-cache=off", "correct"])
  assert not top.names_a_command(["--compilation-cache", "train"])  # "train" is the folder
  assert not top.names_a_command(["--help"]) and not top.names_a_command([])


def test_every_cli_module_imports_first_in_a_new_process():
  """Each module of sap_jax.cli imports on its own (no import circle through the package's
  lazy ``__getattr__``); one process imports them in turn, each after a fresh start of the
  package's modules."""
  names = sorted(
    p.stem for p in Path(cli.__file__).parent.glob("*.py") if p.stem not in {"__init__"}
  )
  script = (
    "import importlib, sys\n"
    f"for name in {names!r}:\n"
    "  for m in [m for m in sys.modules if m.startswith('sap_jax')]:\n"
    "    del sys.modules[m]\n"
    "  importlib.import_module('sap_jax.cli.' + name)\n"
    "print('ok')\n"
  )
  result = _run("-c", script)
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
