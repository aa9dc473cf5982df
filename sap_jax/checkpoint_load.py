"""Reading a `sap_jax.checkpoint`: `load_checkpoint`.

``metadata.json`` is read and checked first, the arrays are restored by orbax into the
sharding asked for (`TargetSharding`), then checked against their recorded shapes,
dtypes and checksums; with several processes every process reads its part and all of
them return, or all raise the same error.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

with warnings.catch_warnings():  # orbax's own use of what newer jax deprecates: not ours to show
  warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"orbax\.")
  import orbax.checkpoint as ocp

from sap_jax import multihost, write_paths
from sap_jax.checkpoint_format import (
  ERRORS,
  FORMAT,
  FORMAT_VERSION,
  METADATA_FILE,
  VARIABLES_DIR,
  DamagedCheckpoint,
  array_specs,
  check_seal,
  one_line,
  read_checksum,
  short_checksum,
)
from sap_jax.layers import key_path_name
from sap_jax.multihost import agree

__all__ = ["TargetSharding", "load_checkpoint"]


TargetSharding = jax.sharding.Sharding | Mapping[str, Any] | None
"""What `load_checkpoint` reads into: None (the default rule), one `jax.sharding.Sharding`
for every array, or a dict mirroring the variables (a prefix: a Sharding or None for a
whole subtree; keys left out get the default rule)."""


class _Record(NamedTuple):
  specs: dict[str, Any]
  metadata: dict[str, Any]
  checksums: dict[str, str] | None
  digest: str  # of metadata.json, to check every process reads the same checkpoint


def _read_record(path: Path) -> _Record:
  """Reads and checks ``metadata.json`` (every check but the arrays' own)."""
  if not path.exists():
    left = write_paths.interrupted_saves(path)
    if left:
      raise FileNotFoundError(
        f"No checkpoint at {path}: its save was interrupted (the unfinished {left[0].name} "
        "is left beside it, removed by the next save there); run the command that writes "
        "it again."
      )
    if jax.process_count() > 1:
      raise FileNotFoundError(
        f"No checkpoint at {path} as process {jax.process_index()} sees it; every process "
        "must see the checkpoint's folder (a file system they all share)."
      )
    raise FileNotFoundError(f"No checkpoint at {path}.")
  if not path.is_dir():
    raise ValueError(
      f"{path} is {write_paths.describe(path)}, not a sap_jax checkpoint directory; pass the "
      "folder written by `sap-jax train` or `save_checkpoint`."
    )
  meta_file = path / METADATA_FILE
  if not meta_file.is_file():
    if write_paths.TMP_TAG in path.name:
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
    raw = meta_file.read_bytes()
    record = json.loads(raw.decode("utf-8"))
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
  if not (path / VARIABLES_DIR).is_dir():
    raise DamagedCheckpoint(
      f"Damaged checkpoint {path}: the {VARIABLES_DIR}/ directory is missing."
    )
  check_seal(path, record.get("sealed"), metadata)
  return _Record(specs, metadata, checksums, hashlib.sha256(raw).hexdigest())


def _unreadable(path: Path, e: Exception) -> DamagedCheckpoint:
  return DamagedCheckpoint(
    f"damaged checkpoint {path}: the arrays in {VARIABLES_DIR}/ cannot be read "
    f"({type(e).__name__}: {one_line(str(e))}); restore it from a copy"
  )


def _by_name(mapping: Mapping) -> dict[str, Any]:
  """A dict's entries by key as text: an NNX list index ``0`` is the checkpoint's ``"0"``."""
  return {str(k): v for k, v in mapping.items()}


def _check_sharding_keys(spec: Any, tree: Any, where: tuple = ()) -> None:
  """Raises ValueError for a ``sharding`` that is not a prefix of the variables tree."""
  if spec is None or isinstance(spec, jax.sharding.Sharding):
    return
  name = "/".join(map(str, where)) or "the top level"
  if not isinstance(spec, Mapping):
    raise ValueError(
      f"load_checkpoint: sharding at {name} is a {type(spec).__name__}; pass a "
      "jax.sharding.Sharding, a dict of them mirroring the variables, or None."
    )
  if not isinstance(tree, Mapping):
    raise ValueError(
      f"load_checkpoint: sharding has a dict at {name}, where the checkpoint holds one "
      "array; give that array a jax.sharding.Sharding (or None)."
    )
  spec, tree = _by_name(spec), _by_name(tree)
  unknown = sorted(k for k in spec if k not in tree)
  if unknown:
    raise ValueError(
      f"load_checkpoint: sharding names {unknown} at {name}, which the checkpoint does not "
      f"hold (it has {sorted(tree)}); use the variables' own keys."
    )
  for key, sub in spec.items():
    _check_sharding_keys(sub, tree[key], (*where, key))


def _chosen(spec: Any, keys: tuple) -> jax.sharding.Sharding | None:
  for key in keys:
    if not isinstance(spec, Mapping):
      break
    spec = _by_name(spec).get(str(key))
  return spec if isinstance(spec, jax.sharding.Sharding) else None


def _described(spec: Any) -> Any:
  """``sharding`` as text to compare across processes: a sharding over this process's
  devices alone (each process its own copy) is just "local"."""
  if isinstance(spec, Mapping):
    return {str(k): _described(v) for k, v in spec.items()}
  if isinstance(spec, jax.sharding.Sharding) and spec.is_fully_addressable:
    return f"local {type(spec).__name__}"
  return repr(spec)


def _default_sharding(saved: Any) -> jax.sharding.Sharding:
  """Where a jax array goes without ``sharding``: replicated on every device (several
  processes); as saved, or on the default device if those devices are not here (one)."""
  if jax.process_count() > 1:
    return NamedSharding(Mesh(np.asarray(jax.devices()), ("devices",)), P())
  if saved is not None:
    try:
      return saved.to_jax_sharding()
    except Exception:  # saved on other devices (another topology)
      pass
  return jax.sharding.make_single_device_sharding(jax.devices()[0])


def _restore_target(var_dir: Path, specs: dict[str, Any], sharding: TargetSharding) -> Any:
  """The abstract tree orbax restores into: `jax.ShapeDtypeStruct`s with the target
  sharding (numpy leaves without one); raises before reading any array."""
  handler = ocp.StandardCheckpointHandler()
  try:
    tree = handler.metadata(epath.Path(var_dir)).tree
  except Exception as e:  # orbax/tensorstore raise many types.
    raise _unreadable(var_dir.parent, e) from e
  finally:
    handler.close()
  _check_sharding_keys(sharding, tree)

  def one(key_path: tuple, leaf: Any) -> Any:
    name = key_path_name(key_path)
    shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)
    saved = getattr(leaf, "sharding", None)
    target = _chosen(sharding, tuple(getattr(k, "key", k) for k in key_path))
    if target is None:
      kind = specs.get(name, {}).get("kind", "numpy" if saved is None else "jax")
      if kind == "numpy":
        return jax.ShapeDtypeStruct(shape, dtype)
      target = _default_sharding(saved)
    elif jax.dtypes.canonicalize_dtype(dtype) != dtype:
      raise ValueError(
        f"load_checkpoint: {name} is {dtype}, which JAX holds only with "
        "jax_enable_x64; give it no sharding (None: it stays a numpy array), or enable "
        "x64 first."
      )
    try:
      target.shard_shape(shape)
    except Exception as e:
      raise ValueError(
        f"load_checkpoint: the sharding for {name} does not fit its shape {list(shape)} "
        f"({one_line(str(e))}); pass a sharding whose mesh axes divide the sharded "
        "dimensions (or None for that array)."
      ) from e
    return jax.ShapeDtypeStruct(shape, dtype, sharding=target)

  return jax.tree_util.tree_map_with_path(one, tree)


def _restore(path: Path, target: Any) -> Any:
  """Every process reads its part (no barrier: `agree` makes the outcome common)."""
  handler = ocp.StandardCheckpointHandler()
  try:
    return handler.restore(epath.Path(path / VARIABLES_DIR), args=ocp.args.StandardRestore(target))
  except Exception as e:  # orbax/tensorstore raise many types.
    raise _unreadable(path, e) from e
  finally:
    handler.close()


def _verify(path: Path, variables: Any, record: _Record) -> None:
  """Raises DamagedCheckpoint unless the restored arrays match ``metadata.json``."""
  found = {k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in array_specs(variables).items()}
  expected = {
    k: {"shape": v.get("shape"), "dtype": v.get("dtype")} for k, v in record.specs.items()
  }
  if found != expected:
    missing = sorted(set(expected) - set(found))
    changed = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    raise DamagedCheckpoint(
      f"Damaged checkpoint {path}: restored arrays do not "
      f"match {METADATA_FILE} (missing {missing[:5]}, "
      f"different {changed[:5]})."
    )
  if record.checksums is None:
    return
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  # Every digest first (collectives, in the same order on every process), then compare.
  read = {key_path_name(p): read_checksum(v, record.checksums[key_path_name(p)]) for p, v in leaves}
  for name, value in read.items():
    if value != record.checksums[name]:
      raise DamagedCheckpoint(
        f"damaged checkpoint {path}: array {name} does not match its checksum "
        f"(saved {short_checksum(record.checksums[name])}, read {short_checksum(value)}); restore it from "
        "a copy"
      )


def load_checkpoint(
  path: str | os.PathLike, *, sharding: TargetSharding = None
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Loads a checkpoint written by :func:`save_checkpoint`.

  With several processes (`jax.distributed`), call it on every process with the same
  ``path`` and ``sharding``: each process reads only its part of every array, and all
  of them return, or all raise the same error.

  Args:
    path: the checkpoint directory.
    sharding: where the arrays go. None: numpy leaves as numpy; jax leaves, with one
      process, with the sharding they were saved with (on the default device when
      this process lacks those devices), with several, replicated on every device. A
      `jax.sharding.Sharding` (e.g. ``NamedSharding(mesh, P())``): every array,
      numpy-saved ones too, read straight into it. A dict mirroring the variables
      (``{"params": {"Dense_0": {"kernel": NamedSharding(mesh, P(None, "model"))}},
      "batch_stats": replicated}``): a Sharding or None per array or per subtree;
      keys left out get the default.

  Returns:
    ``(variables, metadata)``: the raw variables tree (nested dicts of numpy
    or jax arrays) and the metadata dict.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    DamagedCheckpoint: (a ``ValueError``) the checkpoint is damaged:
      missing or unreadable metadata, missing or unreadable arrays, arrays
      that do not match the recorded shapes/dtypes or checksums.
    ValueError: ``path`` is not a sap_jax checkpoint; ``sharding`` does not fit
      the variables (an unknown key, a sharding that does not divide an array's
      shape: raised before any array is read); the processes passed different paths
      or shardings, or read different ``metadata.json`` files.

  Checkpoints saved before checksums were recorded (no ``"checksums"`` in
  ``metadata.json``) load without the checksum comparison.
  """
  path = Path(path).absolute()
  record = agree(lambda: _read_record(path), ERRORS)
  multihost.check_same_across_processes(
    {"path": str(path), METADATA_FILE: record.digest, "sharding": _described(sharding)},
    "load_checkpoint",
  )
  target = agree(lambda: _restore_target(path / VARIABLES_DIR, record.specs, sharding), ERRORS)
  variables = agree(lambda: _restore(path, target), ERRORS)
  agree(lambda: _verify(path, variables, record), ERRORS)
  return variables, record.metadata
