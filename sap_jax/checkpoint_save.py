"""Writing a `sap_jax.checkpoint`: `save_checkpoint`.

Every process writes its shards through orbax into a temporary sibling folder; process 0
checks the target (`sap_jax.safe_write`), writes ``metadata.json`` and swaps the folder
in, so every process returns once the checkpoint is complete, or raises the same error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np

with warnings.catch_warnings():  # orbax's own use of what newer jax deprecates: not ours to show
  warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"orbax\.")
  import orbax.checkpoint as ocp

from sap_jax import multihost, safe_write, write_checks
from sap_jax.checkpoint_format import (
  ERRORS,
  FORMAT,
  FORMAT_VERSION,
  KIND,
  METADATA_FILE,
  VARIABLES_DIR,
  array_checksums,
  array_specs,
  is_global,
  record_text,
  seal,
)
from sap_jax.multihost import agree, first_decides

__all__ = ["save_checkpoint"]


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
    "arrays": array_specs(variables),
  }
  try:
    record["sealed"] = seal(metadata)
    record_text(record, {})
  except (TypeError, ValueError) as e:
    raise ValueError(
      f"metadata is not JSON serialisable ({e}); pass plain numbers, strings, lists and dicts."
    ) from e
  return variables, record


def _write_arrays(tmp: Path, variables: Any, target: Path) -> dict[str, str]:
  """Every process: digests its arrays and writes its shards into ``tmp`` (the temporary
  of ``target``); the checksums."""
  checksums = array_checksums(variables)
  if jax.process_count() > 1:  # an array one process holds whole: process 0's copy
    variables = jax.tree_util.tree_map(lambda v: v if is_global(v) else np.asarray(v), variables)
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
      write_checks.check_target(path, KIND, overwrite=overwrite, protect=protect, what="checkpoint")
    )

  target = Path(first_decides(check, ERRORS))
  variables, record = agree(lambda: _prepared(variables, metadata), ERRORS)
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

  tmp = Path(first_decides(begin, ERRORS))
  try:
    agree(lambda: _sees(tmp), ERRORS)
    checksums = agree(lambda: _write_arrays(tmp, variables, target), ERRORS)
    text = record_text(record, checksums)
    first_decides(lambda: _commit(target, tmp, text, overwrite, protect), ERRORS)
  except Exception:
    first_decides(lambda: _discard(tmp))
    raise
  except BaseException:  # Ctrl-C: no collective, process 0 removes what it made
    if jax.process_index() == 0:
      safe_write.discard(tmp)
    raise
  return target
