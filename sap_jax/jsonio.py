"""JSON for checkpoints' metadata, CLI reports and experiment records: one encoder.

`json_default` converts the non-JSON types that metadata and records hold (numpy
scalars and arrays, jax arrays, paths, dataclass instances, sets); anything else
raises ``TypeError``, so a value that cannot be read back is never written
silently. `dumps` and `write_json` use it; `to_jsonable` gives the plain
dicts/lists/numbers a document would load back as.

Files are written by `write_json` under the overwrite rule of `sap_jax.safe_write`
(atomic; nothing existing touched without ``overwrite``; with it only a document of
the writer's `Kind`). A report of the command line carries ``"format":
"sap_jax.report"`` (`REPORT_FORMAT`), which is how `REPORT` recognises one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sap_jax import safe_write, write_paths

__all__ = [
  "REPORT",
  "REPORT_FORMAT",
  "dumps",
  "is_report",
  "json_default",
  "json_object",
  "to_jsonable",
  "write_json",
  "write_report",
]

REPORT_FORMAT = "sap_jax.report"


def _is_jax_array(obj: Any) -> bool:
  jax = sys.modules.get("jax")  # no jax imported: no jax array can exist
  return jax is not None and isinstance(obj, jax.Array)


def json_default(obj: Any) -> Any:
  """The ``default=`` of `json.dump`: a JSON-ready stand-in for ``obj``.

  * numpy scalars → Python numbers (``.item()``);
  * numpy and jax arrays → nested lists;
  * `pathlib.Path` → its string;
  * dataclass instances → their own ``to_dict()`` when they have one (`TrainConfig`,
    `RunSpec`: the dict their keys are hashed from, without fields left at a default
    that postdates them), else ``dataclasses.asdict``;
  * sets and frozensets → sorted lists (in iteration order when the items do not
    sort);
  * other scalars with ``.item()`` → its value.

  Args:
    obj: a value `json` cannot encode itself.

  Returns:
    A value `json` can encode.

  Raises:
    TypeError: for any other type.
  """
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray) or _is_jax_array(obj):
    return np.asarray(obj).tolist()
  if isinstance(obj, Path):
    return str(obj)
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    to_dict = getattr(obj, "to_dict", None)
    return to_dict() if callable(to_dict) else dataclasses.asdict(obj)
  if isinstance(obj, (set, frozenset)):
    try:
      return sorted(obj)
    except TypeError:
      return list(obj)
  if callable(getattr(obj, "item", None)):
    return obj.item()
  raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(obj: Any, *, indent: int | None = None, sort_keys: bool = False) -> str:
  """``json.dumps`` with `json_default`; NaN and ±inf are written as ``NaN``/``Infinity``."""
  return json.dumps(obj, indent=indent, sort_keys=sort_keys, default=json_default, allow_nan=True)


def to_jsonable(obj: Any) -> Any:
  """``obj`` as the plain dicts, lists, strings, numbers and None that its JSON loads as."""
  return json.loads(dumps(obj))


def json_object(path: str | os.PathLike) -> dict[str, Any] | None:
  """The JSON object stored in the file ``path``, or None when it holds anything else
  (not a file, not UTF-8 JSON, not an object). Reads at most 64 MiB."""
  path = Path(path)
  try:
    if not path.is_file() or path.stat().st_size > 64 << 20:
      return None
    doc = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, ValueError):
    return None
  return doc if isinstance(doc, dict) else None


def is_report(path: str | os.PathLike) -> bool:
  """Whether ``path`` is a JSON report written by `write_report` (its format tag)."""
  doc = json_object(path)
  return doc is not None and doc.get("format") == REPORT_FORMAT


REPORT = write_paths.Kind("sap_jax report", is_report)
"""What `write_report` writes, for `sap_jax.safe_write.check_targets`."""


def write_json(
  path: str | os.PathLike,
  obj: Any,
  kind: write_paths.Kind,
  *,
  overwrite: bool = False,
  protect: Iterable[str | os.PathLike] = (),
  indent: int | None = 1,
  sort_keys: bool = True,
) -> Path:
  """Writes ``obj`` as JSON (and a final newline) to ``path``, atomically.

  The text goes to a temporary sibling that is renamed into place, so readers see
  the old file or the new one, never a half-written one. Parent folders are
  created.

  Args:
    path: the file to write.
    obj: the document; converted by `json_default`.
    kind: what the document is (how an existing one is recognised).
    overwrite: replace an existing document of ``kind`` (anything else is refused).
    protect: paths never written (see `sap_jax.safe_write.check_target`).
    indent: JSON indentation (None: one line).
    sort_keys: write dict keys sorted.

  Returns:
    ``path`` made absolute.

  Raises:
    TypeError: ``obj`` holds a value `json_default` does not convert (nothing is
      written).
    FileExistsError: (`sap_jax.safe_write.RefusedWrite`) the overwrite rule refuses
      ``path`` (nothing is written).
  """
  text = dumps(obj, indent=indent, sort_keys=sort_keys) + "\n"
  return safe_write.write_file(path, text, kind, overwrite=overwrite, protect=protect)


def write_report(
  path: str | os.PathLike,
  report: dict[str, Any],
  *,
  overwrite: bool = False,
  protect: Iterable[str | os.PathLike] = (),
  indent: int | None = 2,
) -> Path:
  """`write_json` of ``{"format": REPORT_FORMAT, **report}``, keys in insertion order."""
  doc = {"format": REPORT_FORMAT, **report}
  return write_json(
    path, doc, REPORT, overwrite=overwrite, protect=protect, indent=indent, sort_keys=False
  )
