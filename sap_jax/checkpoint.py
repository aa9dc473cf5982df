"""Saving and loading trained variables with human-readable metadata.

A checkpoint is a directory::

  <path>/
    metadata.json   format tag, the caller's metadata (dataset, noise spec,
                    seed, model name and kwargs, train config, metrics), the
                    shape/dtype of every array and a checksum of every array
    variables/      the variables tree, written by orbax-checkpoint

Loading needs no model object: the raw tree is restored (arrays saved from
numpy come back as numpy, jax arrays as jax arrays, with identical values
and dtypes), or, with ``sharding=``, every array is read straight into the
sharding asked for. Writes follow the overwrite rule of :mod:`sap_jax.safe_write`:
nothing existing is touched without ``overwrite``; with it only an existing
sap_jax checkpoint (recognised by the format tag of its ``metadata.json``) is
replaced, never a ``protect``-ed path (the input of a correction), anything
inside it or containing it. The checkpoint is written into a temporary sibling
``.<name>.sap_jax-tmp-<pid>-<hex>`` and renamed into place, so an interrupted
save never leaves a half-written checkpoint at ``path``; its leftover is
removed at the next save to that place.

Integrity: at save, ``metadata.json`` records under ``"checksums"`` one checksum
per array, keyed by the same path strings as ``"arrays"``: in one process the
SHA-256 of the array's dtype, shape and bytes in C order (``"sha256:…"``); with
several processes `sap_jax.provenance.global_digest` (``"sum128:…"``), which is
computed where the shards are, without gathering an array, and does not depend
on the sharding. At load the restored arrays are digested again and any
difference raises :class:`DamagedCheckpoint` before anything is returned; read
errors from orbax are raised as :class:`DamagedCheckpoint` too. Checkpoints
written before checksums were added have no ``"checksums"`` entry; they load as
before, with only the shape/dtype check. The run's recipe in the metadata (the `SEALED`
entries: ``spec``, the seed, noise and split sizes that re-derive the noisy labels and
the splits, and ``labels``, the fingerprint of the noisy labels trained on) is sealed
field by field under ``"sealed"`` (`seal`): a field edited after the save makes the
checkpoint damaged, naming the field. Checkpoints saved before seals existed load
unchecked.

Many processes (`jax.distributed`): call `save_checkpoint` and `load_checkpoint`
on every process, with the same path and arguments, on a file system that every
process sees (orbax's multi-process rule). Global arrays may be sharded any way
(replicated parameters, a leaf split over a ``"model"`` or ``"data"`` axis).

* save: each process writes the shards it holds (orbax); numpy leaves and
  arrays held by one process are written from process 0's copy. Process 0 alone
  checks the target, cleans stale temporaries, names and creates the temporary
  folder, writes ``metadata.json`` (its ``metadata``) and swaps the folder in;
  every other process waits for its verdict, so a refusal is raised on every
  process with the same message, and no process returns before the checkpoint
  is complete. The processes are checked to pass the same path, options and
  array shapes first (`sap_jax.multihost.check_same_across_processes`).
* load: ``sharding=`` (a `jax.sharding.Sharding`, or a dict of them mirroring
  the variables) is the target; each process reads only its part. Without it,
  arrays come back replicated on every device (several processes) or as saved
  (one process; a checkpoint saved on other devices comes back on the default
  device). A damaged checkpoint is refused on every process, also when only one
  process read the damaged bytes. A checkpoint saved by one process loads on
  many and the other way round.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import flax
import jax
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

with warnings.catch_warnings():  # orbax's own use of what newer jax deprecates: not ours to show
  warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"orbax\.")
  import orbax.checkpoint as ocp

from sap_jax import jsonio, multihost, safe_write
from sap_jax.layers import key_path_name
from sap_jax.multihost import agree, first_decides
from sap_jax.provenance import ALGORITHM, SUM_ALGORITHM, array_digest, global_digest

__all__ = [
  "FORMAT",
  "KIND",
  "METADATA_FILE",
  "VARIABLES_DIR",
  "DamagedCheckpoint",
  "TargetSharding",
  "SEALED",
  "is_checkpoint",
  "load_checkpoint",
  "save_checkpoint",
  "seal",
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

TargetSharding = jax.sharding.Sharding | Mapping[str, Any] | None
"""What `load_checkpoint` reads into: None (the default rule), one `jax.sharding.Sharding`
for every array, or a dict mirroring the variables (a prefix: a Sharding or None for a
whole subtree; keys left out get the default rule)."""


class DamagedCheckpoint(ValueError):
  """A checkpoint's files are damaged: unreadable, or not what was saved."""


_ERRORS = (safe_write.RefusedWrite, DamagedCheckpoint)  # raised as themselves everywhere


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


def _is_global(value: Any) -> bool:
  return isinstance(value, jax.Array) and not value.is_fully_addressable


def _array_checksums(variables: Any) -> dict[str, str]:
  """One checksum per array: SHA-256 in one process, `global_digest` with several (a
  collective: every process digests the same arrays in the same order)."""
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  digest = _array_checksum if jax.process_count() == 1 else global_digest
  return {key_path_name(p): digest(v) for p, v in leaves}


def _read_checksum(value: Any, recorded: str) -> str:
  """The checksum of a restored array, by the algorithm of the ``recorded`` one."""
  algorithm = recorded.split(":", 1)[0]
  if algorithm == SUM_ALGORITHM:
    return global_digest(value)
  if algorithm == CHECKSUM_ALGORITHM:
    if _is_global(value):  # saved by one process, read sharded: gather it to compare
      from jax.experimental import multihost_utils

      value = multihost_utils.process_allgather(value, tiled=True)
    return _array_checksum(value)
  return f"unknown algorithm {algorithm!r}"


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


# ------------------------------------------------------------------ saving


def _prepared(variables: Any, metadata: Any) -> tuple[Any, dict[str, Any]]:
  """The variables as saved and the metadata record without checksums; raises on bad
  input (reads nothing, writes nothing)."""
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
  record = {
    "format": FORMAT,
    "version": FORMAT_VERSION,
    "metadata": metadata,
    "arrays": _array_specs(variables),
  }
  try:
    record["sealed"] = seal(metadata)
    _record_text(record, {})
  except (TypeError, ValueError) as e:
    raise ValueError(
      f"metadata is not JSON serialisable ({e}); pass plain numbers, strings, lists and dicts."
    ) from e
  return variables, record


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


def _check_seal(path: Path, sealed: Any, metadata: dict[str, Any]) -> None:
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


def _record_text(record: dict[str, Any], checksums: dict[str, str]) -> str:
  return jsonio.dumps({**record, "checksums": checksums}, indent=2, sort_keys=True) + "\n"


def _write_arrays(tmp: Path, variables: Any, target: Path) -> dict[str, str]:
  """Every process: digests its arrays and writes its shards into ``tmp`` (the temporary
  of ``target``); the checksums."""
  checksums = _array_checksums(variables)
  if jax.process_count() > 1:  # an array one process holds whole: process 0's copy
    variables = jax.tree_util.tree_map(lambda v: v if _is_global(v) else np.asarray(v), variables)
  with _orbax_errors_raised_once(target):
    checkpointer = ocp.StandardCheckpointer()
    try:
      checkpointer.save(tmp / VARIABLES_DIR, variables)
      checkpointer.wait_until_finished()
    except Exception:
      with contextlib.suppress(Exception):  # let the other writer threads end first
        checkpointer.wait_until_finished()
      raise
    finally:
      checkpointer.close()
  return checksums


class _FromOrbax(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return "orbax" not in record.pathname


@contextlib.contextmanager
def _orbax_errors_raised_once(target: Path):
  """A failed write raised once, as an OSError naming ``target`` and the OS's reason
  (`sap_jax.safe_write.failed_write`): orbax's background threads log each failure
  with its traceback on the ``absl`` logger, silenced here while the write runs."""
  logger, quiet = logging.getLogger("absl"), _FromOrbax()
  logger.addFilter(quiet)
  try:
    yield
  except Exception as e:
    raise safe_write.failed_write(e, target) from None
  finally:
    logger.removeFilter(quiet)


def _commit(target: Path, tmp: Path, text: str, overwrite: bool, protect: list[Any]) -> str:
  """Process 0: writes ``metadata.json`` into ``tmp`` and swaps ``tmp`` in."""
  try:
    with open(tmp / METADATA_FILE, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:  # the disk full, a file-size limit: named by the target
    raise safe_write.failed_write(e, target) from None
  safe_write.commit_dir(target, tmp, KIND, overwrite=overwrite, protect=protect)
  return ""


def _sees(tmp: Path) -> None:
  if not tmp.is_dir():
    raise FileNotFoundError(
      f"process {jax.process_index()} does not see the temporary folder {tmp} that process "
      "0 created; every process must write the checkpoint on a file system they all share."
    )


def _discard(tmp: Path) -> str:
  safe_write.discard(tmp)
  return ""


def save_checkpoint(
  path: str | os.PathLike,
  variables: Any,
  metadata: dict[str, Any],
  *,
  overwrite: bool = False,
  protect: Iterable[str | os.PathLike] = (),
) -> Path:
  """Saves ``variables`` and ``metadata`` to the directory ``path``.

  With several processes (`jax.distributed`), call it on every process with the same
  ``path``, options and variables tree (global arrays, sharded any way, or host arrays
  every process holds alike); each process writes its shards, process 0 checks the
  target, writes ``metadata.json`` (its own ``metadata``) and swaps the checkpoint in,
  and every process returns once it is complete, or raises the same error.

  Args:
    path: the checkpoint directory to create.
    variables: a nested dict of arrays, e.g. ``{"params": ...,
      "batch_stats": ...}`` (numpy or jax arrays, global arrays included;
      FrozenDicts are unfrozen).
    metadata: a JSON-serialisable dict (numpy scalars/arrays, Paths,
      dataclasses and sets are converted), e.g. dataset, noise spec, seed,
      model name and kwargs, ``TrainConfig.to_dict()``, metrics.
    overwrite: replace an existing sap_jax checkpoint at ``path`` (anything
      else there is refused).
    protect: paths never written, written into, or replaced by a parent (e.g.
      the checkpoint a correction reads).

  Returns:
    The absolute checkpoint path (process 0's, on every process).

  Raises:
    FileExistsError: (`sap_jax.safe_write.RefusedWrite`) ``path`` exists and
      ``overwrite`` is false, or is not a sap_jax checkpoint, or overlaps a
      protected path (nothing is written). On every process.
    ValueError: ``metadata`` is not a JSON-serialisable dict, or
      ``variables`` holds something other than arrays, or (several processes) the
      processes passed different paths, options or array shapes (nothing is
      written). On every process.
  """
  protect = list(protect)

  def check() -> str:
    return str(
      safe_write.check_target(path, KIND, overwrite=overwrite, protect=protect, what="checkpoint")
    )

  target = Path(first_decides(check, _ERRORS))
  variables, record = agree(lambda: _prepared(variables, metadata), _ERRORS)
  multihost.check_same_across_processes(
    {
      "path": str(Path(path).expanduser().absolute()),
      "overwrite": overwrite,
      "protect": [str(Path(p).expanduser().absolute()) for p in protect],
      "arrays": record["arrays"],
    },
    "save_checkpoint",
  )

  def begin() -> str:
    return str(safe_write.begin_dir(target, KIND, overwrite=overwrite, protect=protect)[1])

  tmp = Path(first_decides(begin, _ERRORS))
  try:
    agree(lambda: _sees(tmp), _ERRORS)
    checksums = agree(lambda: _write_arrays(tmp, variables, target), _ERRORS)
    text = _record_text(record, checksums)
    first_decides(lambda: _commit(target, tmp, text, overwrite, protect), _ERRORS)
  except Exception:
    first_decides(lambda: _discard(tmp))
    raise
  except BaseException:  # Ctrl-C: no collective, process 0 removes what it made
    if jax.process_index() == 0:
      safe_write.discard(tmp)
    raise
  return target


# ------------------------------------------------------------------ loading


class _Record(NamedTuple):
  specs: dict[str, Any]
  metadata: dict[str, Any]
  checksums: dict[str, str] | None
  digest: str  # of metadata.json, to check every process reads the same checkpoint


def _read_record(path: Path) -> _Record:
  """Reads and checks ``metadata.json`` (every check but the arrays' own)."""
  if not path.exists():
    left = safe_write.interrupted_saves(path)
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
  _check_seal(path, record.get("sealed"), metadata)
  return _Record(specs, metadata, checksums, hashlib.sha256(raw).hexdigest())


def _unreadable(path: Path, e: Exception) -> DamagedCheckpoint:
  return DamagedCheckpoint(
    f"damaged checkpoint {path}: the arrays in {VARIABLES_DIR}/ cannot be read "
    f"({type(e).__name__}: {_one_line(str(e))}); restore it from a copy"
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
        f"({_one_line(str(e))}); pass a sharding whose mesh axes divide the sharded "
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
  found = {
    k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in _array_specs(variables).items()
  }
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
  read = {
    key_path_name(p): _read_checksum(v, record.checksums[key_path_name(p)]) for p, v in leaves
  }
  for name, value in read.items():
    if value != record.checksums[name]:
      raise DamagedCheckpoint(
        f"damaged checkpoint {path}: array {name} does not match its checksum "
        f"(saved {_short(record.checksums[name])}, read {_short(value)}); restore it from "
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
  record = agree(lambda: _read_record(path), _ERRORS)
  multihost.check_same_across_processes(
    {"path": str(path), METADATA_FILE: record.digest, "sharding": _described(sharding)},
    "load_checkpoint",
  )
  target = agree(lambda: _restore_target(path / VARIABLES_DIR, record.specs, sharding), _ERRORS)
  variables = agree(lambda: _restore(path, target), _ERRORS)
  agree(lambda: _verify(path, variables, record), _ERRORS)
  return variables, record.metadata
