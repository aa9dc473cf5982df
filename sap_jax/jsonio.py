"""JSON for checkpoints' metadata, CLI reports and experiment records: one encoder.

`json_default` converts the non-JSON types that metadata and records hold (numpy
scalars and arrays, jax arrays, paths, dataclass instances, sets); anything else
raises ``TypeError``, so a value that cannot be read back is never written
silently. `dumps` and `write_json_atomic` use it; `to_jsonable` gives the plain
dicts/lists/numbers a document would load back as.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["dumps", "json_default", "to_jsonable", "write_json_atomic"]


def _is_jax_array(obj: Any) -> bool:
  jax = sys.modules.get("jax")  # no jax imported: no jax array can exist
  return jax is not None and isinstance(obj, jax.Array)


def json_default(obj: Any) -> Any:
  """The ``default=`` of `json.dump`: a JSON-ready stand-in for ``obj``.

  * numpy scalars → Python numbers (``.item()``);
  * numpy and jax arrays → nested lists;
  * `pathlib.Path` → its string;
  * dataclass instances → ``dataclasses.asdict``;
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
    return dataclasses.asdict(obj)
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


def write_json_atomic(
  path: str | os.PathLike, obj: Any, *, indent: int | None = 1, sort_keys: bool = True
) -> Path:
  """Writes ``obj`` as JSON (and a final newline) to ``path``, atomically.

  The text goes to a temporary sibling that is renamed into place, so readers see
  the old file or the new one, never a half-written one. Parent folders are
  created.

  Args:
    path: the file to write (replaced if it exists).
    obj: the document; converted by `json_default`.
    indent: JSON indentation (None: one line).
    sort_keys: write dict keys sorted.

  Returns:
    ``path`` as a `Path`.

  Raises:
    TypeError: ``obj`` holds a value `json_default` does not convert (nothing is
      written).
  """
  path = Path(path)
  text = dumps(obj, indent=indent, sort_keys=sort_keys) + "\n"
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path
