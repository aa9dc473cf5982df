"""The shape of one bad-input case for tests/test_bad_inputs.py (the catalogue).

A case builds its files under a fresh folder (``setup``), then does the bad thing
(``act``) and returns the text the user saw: an exception's message for the API,
the command's standard error for the CLI. The catalogue asserts that the text
matches ``match`` (a regular expression that names the problem and the fix), that
it is not a traceback, and that every file that existed after ``setup`` is
byte-identical after ``act``.

Case lists live in tests/bad_input_cases_api.py and tests/bad_input_cases_cli.py.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def _nothing(tmp: Path) -> None:
  del tmp


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  match: str
  act: Callable[[Path], str]
  setup: Callable[[Path], None] = _nothing


def api_error(fn: Callable[[], object], error: type[BaseException] = ValueError) -> str:
  """Runs ``fn``, which must raise ``error``; returns the message."""
  try:
    fn()
  except error as e:
    return str(e)
  raise AssertionError(f"expected {error.__name__}, nothing was raised")


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
  """The environment of a command under test: it never writes the user's compilation cache."""
  return {**os.environ, "SAP_JAX_COMPILATION_CACHE": "off", **(extra or {})}


def run_cli(
  *args: object, cwd: Path, env: dict[str, str] | None = None, module: bool = True
) -> subprocess.CompletedProcess:
  """Runs ``python -m sap_jax ARGS`` in ``cwd`` (``python ARGS`` without ``module``),
  capturing its output."""
  return subprocess.run(
    [sys.executable, *(["-m", "sap_jax"] if module else []), *map(str, args)],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=600,
    env=cli_env(env),
  )


def cli_error(
  *args: object, cwd: Path, env: dict[str, str] | None = None, module: bool = True
) -> str:
  """Runs ``python -m sap_jax ARGS`` in ``cwd``; it must fail. Returns its standard error."""
  result = run_cli(*args, cwd=cwd, env=env, module=module)
  assert result.returncode != 0, f"expected a failure, got rc 0:\n{result.stdout}"
  return result.stderr


def is_traceback(text: str) -> bool:
  return re.search(r"Traceback \(most recent call last\)", text) is not None
