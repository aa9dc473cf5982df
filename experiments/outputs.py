"""Writing a workdir's generated files (tables, CSVs, plots) under the overwrite rule.

These files are rebuilt from the cell records on every run, so replacing them is
expected; but only inside a workdir that the runner made (one holding its
``config.json``, which `experiments.run.check_workdir` writes and checks), and
atomically (`sap_jax.safe_write.write_file`): a reader sees the old file or the new one.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

from sap_jax import safe_write


def _in_runner_workdir(path: Path) -> bool:
  return (path.parent / "config.json").is_file()


GENERATED_KIND = safe_write.Kind("generated experiment table or plot", _in_runner_workdir)


def write_generated(path: str | Path, data: str | bytes) -> Path:
  """Writes (or replaces) one generated file of a runner workdir, atomically."""
  return safe_write.write_file(Path(path), data, GENERATED_KIND, overwrite=True)


@contextlib.contextmanager
def generated_text(path: str | Path) -> Iterator[io.StringIO]:
  """``with generated_text(path) as f:`` — text written to ``f`` replaces ``path``
  atomically when the block ends without an error (for `csv` writers: newline="")."""
  buf = io.StringIO(newline="")
  yield buf
  write_generated(path, buf.getvalue())
