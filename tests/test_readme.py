"""The README's code runs as pasted.

Every ```python block of README.md is complete (its imports, its data) and runs, each in
a fresh interpreter with an empty working directory, so one block can lean neither on
another nor on the repository's files. Blocks of shell commands are fenced as bash or
plain text and are not run here (the command line has its own tests).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bad_input_case import cli_env

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
  """``(line number of the fence, code)`` of every ```python block of ``text``."""
  out = []
  for match in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S):
    out.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
  return out


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_its_python_blocks():
  assert len(BLOCKS) >= 5, [line for line, _ in BLOCKS]
  assert python_blocks("a\n```python\nx = 1\n```\n```bash\nls\n```\n") == [(2, "x = 1\n")]


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"line-{line}" for line, _ in BLOCKS])
def test_readme_block_runs_as_pasted(line, code, tmp_path):
  env = cli_env({"PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"})
  done = subprocess.run(
    [sys.executable, "-c", code],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  assert done.returncode == 0, f"README.md block at line {line} failed:\n{done.stderr[-3000:]}"
