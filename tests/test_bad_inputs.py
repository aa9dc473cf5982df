"""The bad-input catalogue: every case is refused with a message that names the
problem and the fix, never a traceback, and leaves every file that existed before
it byte-identical, and writes nothing new.

The cases live in tests/bad_input_cases_api.py (the library),
tests/bad_input_cases_messages.py (array-likes, and messages that name the real cause),
tests/bad_input_cases_early.py (arguments refused before any work) and
tests/bad_input_cases_cli.py (the `sap-jax` command); their shape is
tests/bad_input_case.py.
"""

import hashlib
import re
from pathlib import Path

import pytest

from tests import (
  bad_input_cases_api,
  bad_input_cases_cli,
  bad_input_cases_early,
  bad_input_cases_messages,
)
from tests.bad_input_case import Case, is_traceback

CASES: list[Case] = [
  *bad_input_cases_api.CASES,
  *bad_input_cases_messages.CASES,
  *bad_input_cases_early.CASES,
  *bad_input_cases_cli.CASES,
]


def _checksums(root: Path) -> dict[str, str]:
  """SHA-256 of every file under root (symlinks by their target text)."""
  sums = {}
  for path in sorted(root.rglob("*")):
    key = str(path.relative_to(root))
    if path.is_symlink():
      sums[key] = "link:" + str(path.readlink())
    elif path.is_file():
      sums[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    elif path.is_dir():
      sums[key] = "dir"
  return sums


def test_catalogue_is_large_and_names_are_unique():
  names = [case.name for case in CASES]
  assert len(names) == len(set(names)), "two cases share a name"
  assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_bad_input_is_refused_and_nothing_changes(case: Case, tmp_path: Path):
  case.setup(tmp_path)
  before = _checksums(tmp_path)
  text = case.act(tmp_path)
  assert not is_traceback(text), f"{case.name}: a traceback reached the user:\n{text}"
  assert re.search(case.match, text), f"{case.name}: {case.match!r} not in:\n{text}"
  after = _checksums(tmp_path)
  changed = sorted(k for k in before if after.get(k) != before[k])
  assert not changed, f"{case.name}: changed or removed {changed}"
  added = sorted(set(after) - set(before))
  assert not added, f"{case.name}: a refused input still wrote {added}"
