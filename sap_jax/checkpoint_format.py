"""The on-disk record of a `sap_jax.checkpoint`: its format tag, array specs, checksums
and seals.

What ``metadata.json`` holds and how it is checked: the format tag (`is_checkpoint`,
`KIND`), one shape/dtype spec and one checksum per array (`array_specs`,
`array_checksums`, `read_checksum`), the field-by-field seal of the run's recipe
(`seal`, `check_seal`) and `DamagedCheckpoint`. Writing is `sap_jax.checkpoint_save`,
reading `sap_jax.checkpoint_load`; the layout is described in `sap_jax.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sap_jax import jsonio, write_paths
from sap_jax.layers import key_path_name
from sap_jax.provenance import ALGORITHM, SUM_ALGORITHM, array_digest, global_digest

__all__ = [
  "CHECKSUM_ALGORITHM",
  "ERRORS",
  "FORMAT",
  "FORMAT_VERSION",
  "KIND",
  "METADATA_FILE",
  "SEALED",
  "VARIABLES_DIR",
  "DamagedCheckpoint",
  "array_checksum",
  "array_checksums",
  "array_specs",
  "check_seal",
  "is_checkpoint",
  "is_global",
  "one_line",
  "read_checksum",
  "record_text",
  "seal",
  "short_checksum",
]


FORMAT = "sap_jax.checkpoint"


FORMAT_VERSION = 1


METADATA_FILE = "metadata.json"


VARIABLES_DIR = "variables"


CHECKSUM_ALGORITHM = ALGORITHM


SEALED = ("spec", "labels")
"""The metadata entries sealed field by field (`seal`): the run's recipe (``spec``: data
set, noise, seed, split sizes, model, training) and the fingerprint of the noisy labels
it trained on (``labels``). An edit of one of their fields after the save makes the
checkpoint damaged, naming the field."""


class DamagedCheckpoint(ValueError):
  """A checkpoint's files are damaged: unreadable, or not what was saved."""


ERRORS = (write_paths.RefusedWrite, DamagedCheckpoint)  # raised as themselves everywhere


def array_specs(variables: Any) -> dict[str, dict[str, Any]]:
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  return {
    key_path_name(p): {
      "shape": list(np.shape(v)),
      "dtype": str(v.dtype),
      "kind": "jax" if isinstance(v, jax.Array) else "numpy",
    }
    for p, v in leaves
  }


def array_checksum(value: Any) -> str:
  """``"sha256:<hex>"`` of an array's dtype, shape and bytes in C order."""
  return array_digest(value)


def is_global(value: Any) -> bool:
  return isinstance(value, jax.Array) and not value.is_fully_addressable


def array_checksums(variables: Any) -> dict[str, str]:
  """One checksum per array: SHA-256 in one process, `global_digest` with several (a
  collective: every process digests the same arrays in the same order)."""
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  digest = array_checksum if jax.process_count() == 1 else global_digest
  return {key_path_name(p): digest(v) for p, v in leaves}


def read_checksum(value: Any, recorded: str) -> str:
  """The checksum of a restored array, by the algorithm of the ``recorded`` one."""
  algorithm = recorded.split(":", 1)[0]
  if algorithm == SUM_ALGORITHM:
    return global_digest(value)
  if algorithm == CHECKSUM_ALGORITHM:
    if is_global(value):  # saved by one process, read sharded: gather it to compare
      from jax.experimental import multihost_utils

      value = multihost_utils.process_allgather(value, tiled=True)
    return array_checksum(value)
  return f"unknown algorithm {algorithm!r}"


def short_checksum(checksum: Any) -> str:
  text = str(checksum)
  return text.split(":", 1)[-1][:12]


def one_line(text: str, limit: int = 300) -> str:
  text = re.sub(r"\s+", " ", text).strip()
  return text if len(text) <= limit else text[: limit - 3] + "..."


def is_checkpoint(path: str | os.PathLike) -> bool:
  """Whether ``path`` is a folder whose ``metadata.json`` carries the sap_jax format tag."""
  meta = Path(path) / METADATA_FILE
  if not Path(path).is_dir() or Path(path).is_symlink() or not meta.is_file():
    return False
  record = jsonio.json_object(meta)
  return record is not None and record.get("format") == FORMAT


KIND = write_paths.Kind("sap_jax checkpoint", is_checkpoint)
"""What `save_checkpoint` writes, for `sap_jax.safe_write.check_targets`."""


def seal(metadata: Mapping[str, Any]) -> dict[str, dict[str, str]]:
  """For each `SEALED` entry of ``metadata`` that is a dict: field → SHA-256 of the
  field's value as JSON (keys sorted). `save_checkpoint` records it as ``"sealed"``;
  `load_checkpoint` compares it with the metadata it reads."""

  def digest(value: Any) -> str:
    canonical = jsonio.dumps(json.loads(jsonio.dumps(value)), sort_keys=True)
    return f"{ALGORITHM}:{hashlib.sha256(canonical.encode()).hexdigest()}"

  return {
    key: {field: digest(v) for field, v in metadata[key].items()}
    for key in SEALED
    if isinstance(metadata.get(key), dict)
  }


def check_seal(path: Path, sealed: Any, metadata: dict[str, Any]) -> None:
  """Raises DamagedCheckpoint naming the sealed fields that differ from the seal."""
  if sealed is None:  # saved before seals existed
    return
  if not isinstance(sealed, dict):
    raise DamagedCheckpoint(
      f"damaged checkpoint {path}: the 'sealed' entry of {METADATA_FILE} is not a dict; "
      "restore it from a copy"
    )
  now = seal(metadata)
  differ = []
  for key in sorted(set(sealed) | set(now)):
    was, is_ = sealed.get(key) or {}, now.get(key) or {}
    differ += [f"{key}.{f}" for f in sorted(set(was) | set(is_)) if was.get(f) != is_.get(f)]
  if differ:
    raise DamagedCheckpoint(
      f"damaged checkpoint {path}: {', '.join(differ)} in {METADATA_FILE} changed after "
      "the save (the checksum recorded then does not match); restore it from a copy, or "
      "train again with the run spec you want"
    )


def record_text(record: dict[str, Any], checksums: dict[str, str]) -> str:
  return jsonio.dumps({**record, "checksums": checksums}, indent=2, sort_keys=True) + "\n"
