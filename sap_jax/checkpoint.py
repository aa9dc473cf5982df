"""Saving and loading trained variables with human-readable metadata.

A checkpoint is a directory::

  <path>/
    metadata.json   format tag, the caller's metadata (dataset, noise spec,
                    seed, model name and kwargs, train config, metrics), the
                    shape/dtype of every array and a SHA-256 checksum of
                    every array
    variables/      the variables tree, written by orbax-checkpoint

Loading needs no model object: the raw tree is restored (arrays saved from
numpy come back as numpy, jax arrays as jax arrays, with identical values
and dtypes). Writes follow the overwrite rule of :mod:`sap_jax.safe_write`:
nothing existing is touched without ``overwrite``; with it only an existing
sap_jax checkpoint (recognised by the format tag of its ``metadata.json``) is
replaced, never a ``protect``-ed path (the input of a correction), anything
inside it or containing it. The checkpoint is written into a temporary sibling
``.<name>.sap_jax-tmp-<pid>-<hex>`` and renamed into place, so an interrupted
save never leaves a half-written checkpoint at ``path``; its leftover is
removed at the next save to that place.

Integrity: at save, ``metadata.json`` records under ``"checksums"`` the
SHA-256 of each array (its dtype, shape and bytes in C order), keyed by the
same path strings as ``"arrays"``. At load the restored arrays are hashed
again and any difference raises :class:`DamagedCheckpoint` before anything
is returned; read errors from orbax are raised as :class:`DamagedCheckpoint`
too. Checkpoints written before checksums were added have no ``"checksums"``
entry; they load as before, with only the shape/dtype check.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from sap_jax import jsonio, safe_write
from sap_jax.layers import key_path_name
from sap_jax.provenance import array_digest

__all__ = [
  "FORMAT",
  "KIND",
  "METADATA_FILE",
  "VARIABLES_DIR",
  "DamagedCheckpoint",
  "is_checkpoint",
  "load_checkpoint",
  "save_checkpoint",
]

FORMAT = "sap_jax.checkpoint"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
VARIABLES_DIR = "variables"
CHECKSUM_ALGORITHM = "sha256"


class DamagedCheckpoint(ValueError):
  """A checkpoint's files are damaged: unreadable, or not what was saved."""


def _array_specs(variables: Any) -> dict[str, dict[str, Any]]:
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  return {
    key_path_name(p): {
      "shape": list(np.shape(v)),
      "dtype": str(v.dtype),
      "kind": "jax" if isinstance(v, jax.Array) else "numpy",
    }
    for p, v in leaves
  }


def _array_checksum(value: Any) -> str:
  """``"sha256:<hex>"`` of an array's dtype, shape and bytes in C order."""
  return array_digest(value)


def _array_checksums(variables: Any) -> dict[str, str]:
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  return {key_path_name(p): _array_checksum(v) for p, v in leaves}


def _short(checksum: Any) -> str:
  text = str(checksum)
  return text.split(":", 1)[-1][:12]


def _one_line(text: str, limit: int = 300) -> str:
  text = re.sub(r"\s+", " ", text).strip()
  return text if len(text) <= limit else text[: limit - 3] + "..."


def is_checkpoint(path: str | os.PathLike) -> bool:
  """Whether ``path`` is a folder whose ``metadata.json`` carries the sap_jax format tag."""
  meta = Path(path) / METADATA_FILE
  if not Path(path).is_dir() or Path(path).is_symlink() or not meta.is_file():
    return False
  record = jsonio.json_object(meta)
  return record is not None and record.get("format") == FORMAT


KIND = safe_write.Kind("sap_jax checkpoint", is_checkpoint)
"""What `save_checkpoint` writes, for `sap_jax.safe_write.check_targets`."""


def save_checkpoint(
  path: str | os.PathLike,
  variables: Any,
  metadata: dict[str, Any],
  *,
  overwrite: bool = False,
  protect: Iterable[str | os.PathLike] = (),
) -> Path:
  """Saves ``variables`` and ``metadata`` to the directory ``path``.

  Args:
    path: the checkpoint directory to create.
    variables: a nested dict of arrays, e.g. ``{"params": ...,
      "batch_stats": ...}`` (numpy or jax arrays; FrozenDicts are unfrozen).
    metadata: a JSON-serialisable dict (numpy scalars/arrays, Paths,
      dataclasses and sets are converted), e.g. dataset, noise spec, seed,
      model name and kwargs, ``TrainConfig.to_dict()``, metrics.
    overwrite: replace an existing sap_jax checkpoint at ``path`` (anything
      else there is refused).
    protect: paths never written, written into, or replaced by a parent (e.g.
      the checkpoint a correction reads).

  Returns:
    The absolute checkpoint path.

  Raises:
    FileExistsError: (`sap_jax.safe_write.RefusedWrite`) ``path`` exists and
      ``overwrite`` is false, or is not a sap_jax checkpoint, or overlaps a
      protected path (nothing is written).
    ValueError: ``metadata`` is not a JSON-serialisable dict, or
      ``variables`` holds something other than arrays (nothing is written).
  """
  protect = list(protect)
  path = safe_write.check_target(
    path, KIND, overwrite=overwrite, protect=protect, what="checkpoint"
  )
  if not isinstance(metadata, dict):
    raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}.")
  variables = flax.core.unfreeze(variables)
  leaves = jax.tree_util.tree_leaves(variables)
  if not leaves:
    raise ValueError("variables holds no arrays; pass the model variables.")
  bad = [type(v).__name__ for v in leaves if not isinstance(v, (np.ndarray, jax.Array))]
  if bad:
    raise ValueError(
      f"variables must hold only numpy/jax arrays, found "
      f"{sorted(set(bad))}; convert them with np.asarray."
    )
  try:
    text = jsonio.dumps(
      {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "metadata": metadata,
        "arrays": _array_specs(variables),
        "checksums": _array_checksums(variables),
      },
      indent=2,
      sort_keys=True,
    )
  except (TypeError, ValueError) as e:
    raise ValueError(
      f"metadata is not JSON serialisable ({e}); pass plain numbers, strings, lists and dicts."
    ) from e

  def fill(tmp: Path) -> None:
    checkpointer = ocp.StandardCheckpointer()
    try:
      checkpointer.save(tmp / VARIABLES_DIR, variables)
      checkpointer.wait_until_finished()
    finally:
      checkpointer.close()
    with open(tmp / METADATA_FILE, "w", encoding="utf-8") as f:
      f.write(text + "\n")
      f.flush()
      os.fsync(f.fileno())

  safe_write.write_dir(path, fill, KIND, overwrite=overwrite, protect=protect)
  return path


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
  """Loads a checkpoint written by :func:`save_checkpoint`.

  Args:
    path: the checkpoint directory.

  Returns:
    ``(variables, metadata)``: the raw variables tree (nested dicts of numpy
    or jax arrays, as saved) and the metadata dict.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    DamagedCheckpoint: (a ``ValueError``) the checkpoint is damaged:
      missing or unreadable metadata, missing or unreadable arrays, arrays
      that do not match the recorded shapes/dtypes or checksums.
    ValueError: ``path`` is not a sap_jax checkpoint.

  Checkpoints saved before checksums were recorded (no ``"checksums"`` in
  ``metadata.json``) load without the checksum comparison.
  """
  path = Path(path).absolute()
  if not path.exists():
    left = safe_write.interrupted_saves(path)
    if left:
      raise FileNotFoundError(
        f"No checkpoint at {path}: its save was interrupted (the unfinished {left[0].name} "
        "is left beside it, removed by the next save there); run the command that writes "
        "it again."
      )
    raise FileNotFoundError(f"No checkpoint at {path}.")
  if not path.is_dir():
    raise ValueError(
      f"{path} is {safe_write.describe(path)}, not a sap_jax checkpoint directory; pass the "
      "folder written by `sap-jax train` or `save_checkpoint`."
    )
  meta_file = path / METADATA_FILE
  if not meta_file.is_file():
    if safe_write.TMP_TAG in path.name:
      raise ValueError(
        f"{path} is the unfinished folder of an interrupted save, not a checkpoint; "
        "run the command that writes the checkpoint again (the next save there removes it)."
      )
    if (path / VARIABLES_DIR).is_dir():
      raise DamagedCheckpoint(
        f"damaged checkpoint {path}: it has {VARIABLES_DIR}/ but no {METADATA_FILE} "
        "(incomplete); restore it from a copy"
      )
    raise ValueError(f"{path} is not a sap_jax checkpoint: {METADATA_FILE} is missing.")
  try:
    record = json.loads(meta_file.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DamagedCheckpoint(
      f"Damaged checkpoint {path}: {METADATA_FILE} is not readable JSON ({e})."
    ) from e
  if not isinstance(record, dict) or record.get("format") != FORMAT:
    raise ValueError(
      f"{path} is not a sap_jax checkpoint: {METADATA_FILE} lacks the format tag {FORMAT!r}."
    )
  if record.get("version") != FORMAT_VERSION:
    raise ValueError(
      f"{path} has checkpoint format version "
      f"{record.get('version')}; this sap_jax reads version "
      f"{FORMAT_VERSION}."
    )
  specs = record.get("arrays")
  metadata = record.get("metadata")
  checksums = record.get("checksums")  # None: saved before checksums existed.
  if not isinstance(specs, dict) or not isinstance(metadata, dict):
    raise DamagedCheckpoint(
      f"Damaged checkpoint {path}: {METADATA_FILE} lacks the 'arrays' or 'metadata' entry."
    )
  if checksums is not None and (
    not isinstance(checksums, dict)
    or set(checksums) != set(specs)
    or not all(isinstance(v, str) for v in checksums.values())
  ):
    raise DamagedCheckpoint(
      f"damaged checkpoint {path}: the 'checksums' entry of {METADATA_FILE} does "
      "not list one checksum per array; restore it from a copy"
    )
  var_dir = path / VARIABLES_DIR
  if not var_dir.is_dir():
    raise DamagedCheckpoint(
      f"Damaged checkpoint {path}: the {VARIABLES_DIR}/ directory is missing."
    )
  checkpointer = ocp.StandardCheckpointer()
  try:
    variables = checkpointer.restore(var_dir)
  except Exception as e:  # orbax/tensorstore raise many types.
    raise DamagedCheckpoint(
      f"damaged checkpoint {path}: the arrays in {VARIABLES_DIR}/ cannot be read "
      f"({type(e).__name__}: {_one_line(str(e))}); restore it from a copy"
    ) from e
  finally:
    checkpointer.close()
  found = {
    k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in _array_specs(variables).items()
  }
  expected = {k: {"shape": v.get("shape"), "dtype": v.get("dtype")} for k, v in specs.items()}
  if found != expected:
    missing = sorted(set(expected) - set(found))
    changed = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    raise DamagedCheckpoint(
      f"Damaged checkpoint {path}: restored arrays do not "
      f"match {METADATA_FILE} (missing {missing[:5]}, "
      f"different {changed[:5]})."
    )
  if checksums is not None:
    for name, value in jax.tree_util.tree_flatten_with_path(variables)[0]:
      name = key_path_name(name)
      read = _array_checksum(value)
      if read != checksums[name]:
        raise DamagedCheckpoint(
          f"damaged checkpoint {path}: array {name} does not match its checksum "
          f"(saved {_short(checksums[name])}, read {_short(read)}); restore it from a copy"
        )
  return variables, metadata
