"""The one overwrite rule, used by every writer (checkpoints, reports, experiment records).

* Without ``overwrite`` nothing that exists is touched: an existing target is refused.
* With ``overwrite`` only an existing target of the writer's own `Kind` is replaced (a
  sap_jax checkpoint recognised by its format tag, a report recognised by its ``"format"``
  key, …); anything else is refused with a message that says what is there.
* Never a protected path (the input checkpoint of `sap-jax correct`), anything inside it,
  or anything containing it; paths are compared after resolving symlinks and ``..``. A
  target that is itself a symlink is refused.
* New content is written beside the target, under a temporary name that says it is ours,
  ``.<name>.sap_jax-tmp-<pid>-<hex>``, and swapped in atomically: `os.replace` for a file;
  for a directory, the old one is renamed aside (``.<name>.sap_jax-old-<pid>-<hex>``), the
  new one renamed in, and the old one deleted. Between the two renames (two system calls)
  no directory sits at the target; a run killed exactly there leaves the old one at its
  aside name, and the next write to that place renames it back before doing anything else.
* Stale temporaries of a killed run (our naming pattern, owning process no longer alive on
  this machine) are removed at the next write to that place; nothing else is ever removed.

`check_targets` applies every check to every output of a command at once (and refuses
outputs that overlap one another), so a command calls it before any work; the writers
repeat the check of their own target just before they swap, in case the disk changed
meanwhile.

A folder filled by several processes (a checkpoint of a `jax.distributed` run) is written
in the three steps of `write_dir`: `begin_dir` (checks, cleans, creates the temporary)
and `commit_dir` (checks again, swaps) on process 0 only, the fill on every process in
between, `discard` on failure; `sap_jax.checkpoint` does so with
`sap_jax.multihost.first_decides`, so the temporary's name (process 0's pid in it) is one
for all processes and stale ones are recognised by process 0's machine.

This module holds the writers and the disk's failures; what is at a path and the
temporaries are `sap_jax.write_paths`, the checks `sap_jax.write_checks` (all re-exported
here).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from sap_jax.write_checks import check_target, check_targets, user_path
from sap_jax.write_paths import (
  OLD_TAG,
  TMP_TAG,
  Kind,
  RefusedWrite,
  clean_stale,
  describe,
  interrupted_saves,
  path_exists,
  remove_path,
  temp_name,
)

__all__ = [
  "TMP_TAG",
  "Kind",
  "RefusedWrite",
  "os_error_of",
  "failed_write",
  "user_path",
  "begin_dir",
  "check_target",
  "check_targets",
  "clean_stale",
  "commit_dir",
  "describe",
  "discard",
  "interrupted_saves",
  "temp_name",
  "write_dir",
  "write_file",
]


_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def os_error_of(error: BaseException) -> int | None:
  """The OS error number behind ``error``: its own ``errno``, one of its causes', or the
  ``os_error_code`` that tensorstore (under orbax) writes into its messages; else None."""
  seen: set[int] = set()
  e: BaseException | None = error
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno:
      return e.errno
    match = _OS_ERROR_CODE.search(str(e))
    if match:
      return int(match.group(1))
    e = e.__cause__ or e.__context__
  return None


def failed_write(error: BaseException, target: Path) -> BaseException:
  """``error`` of a write to ``target`` (raised on a temporary beside it) as an OSError
  naming ``target`` and the OS's reason (disk full, file too large, read-only file
  system); ``error`` itself when no OS error lies behind it."""
  code = os_error_of(error)
  if code is None:
    return error
  return OSError(code, os.strerror(code), str(target))


def write_file(
  path: str | os.PathLike,
  data: str | bytes,
  kind: Kind,
  *,
  overwrite: bool = False,
  protect: Iterable[str | os.PathLike] = (),
) -> Path:
  """Writes ``data`` to the file ``path`` under the overwrite rule, atomically.

  Readers see the old file or the new one, never a half-written one. Parent folders
  are created.

  Returns:
    ``path`` made absolute.

  Raises:
    RefusedWrite: the rule refuses ``path`` (nothing is written).
  """
  target = check_target(path, kind, overwrite=overwrite, protect=protect)
  payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
  target.parent.mkdir(parents=True, exist_ok=True)
  clean_stale(target)
  tmp = temp_name(target)
  try:
    with open(tmp, "xb") as f:
      f.write(payload)
      f.flush()
      os.fsync(f.fileno())
    check_target(target, kind, overwrite=overwrite, protect=protect)  # the disk may have changed
    os.replace(tmp, target)
  except OSError as e:  # the disk full, a file-size limit: named by the target
    raise failed_write(e, target) from None
  finally:
    remove_path(tmp)
  _fsync_dir(target.parent)
  return target


def write_dir(
  path: str | os.PathLike,
  fill: Callable[[Path], None],
  kind: Kind,
  *,
  overwrite: bool = False,
  protect: Iterable[str | os.PathLike] = (),
) -> Path:
  """Creates the folder ``path`` with ``fill(tmp)`` under the overwrite rule.

  ``fill`` writes the content into a fresh temporary folder beside ``path``; the folder
  is then renamed into place (an existing one of ``kind`` is renamed aside first and
  deleted after). If ``fill`` raises (or the process is interrupted), the temporary is
  removed and ``path`` is as it was. (`begin_dir`, ``fill``, `commit_dir`, and
  `discard` on failure: a writer whose ``fill`` runs on several processes calls the
  three steps itself.)

  Returns:
    ``path`` made absolute.

  Raises:
    RefusedWrite: the rule refuses ``path`` (nothing is written).
  """
  target, tmp = begin_dir(path, kind, overwrite=overwrite, protect=protect)
  try:
    fill(tmp)
    commit_dir(target, tmp, kind, overwrite=overwrite, protect=protect)
  finally:
    discard(tmp)
  return target


def begin_dir(
  path: str | os.PathLike,
  kind: Kind,
  *,
  overwrite: bool = False,
  protect: Iterable[str | os.PathLike] = (),
) -> tuple[Path, Path]:
  """The first step of `write_dir`: checks ``path``, cleans the stale temporaries of a
  killed run there, and creates the fresh temporary folder to fill.

  Returns:
    ``(target, tmp)``: ``path`` made absolute, and the empty temporary folder beside it.

  Raises:
    RefusedWrite: the rule refuses ``path`` (nothing is written).
  """
  target = check_target(path, kind, overwrite=overwrite, protect=protect)
  target.parent.mkdir(parents=True, exist_ok=True)
  clean_stale(target)
  target = check_target(target, kind, overwrite=overwrite, protect=protect)  # after a restore
  tmp = temp_name(target)
  tmp.mkdir()
  return target, tmp


def commit_dir(
  target: Path,
  tmp: Path,
  kind: Kind,
  *,
  overwrite: bool = False,
  protect: Iterable[str | os.PathLike] = (),
) -> Path:
  """The last step of `write_dir`: checks ``target`` again (the disk may have changed)
  and swaps the filled ``tmp`` in (an existing ``target`` of ``kind`` is renamed aside,
  then deleted). On failure ``target`` is as it was; ``tmp`` is left for `discard`.

  Returns:
    ``target``.

  Raises:
    RefusedWrite: the rule now refuses ``target`` (nothing is replaced).
  """
  old = temp_name(target, OLD_TAG)
  swapped = False
  try:
    _fsync_dir(tmp)
    check_target(target, kind, overwrite=overwrite, protect=protect)
    if path_exists(target):
      os.rename(target, old)
    os.rename(tmp, target)  # the window: between these two renames nothing is at target
    swapped = True
    _fsync_dir(target.parent)
  finally:
    if path_exists(old):
      if swapped:
        remove_path(old)
      elif not path_exists(target):
        os.rename(old, target)  # the new one never came in: put the old one back
  return target


def discard(tmp: Path, settle_s: float = 5.0) -> None:
  """Removes a temporary of `begin_dir` (or `write_file`) if it is still there.

  A failed write's background threads (orbax, tensorstore) may still add files while the
  folder is removed; the removal is repeated until the folder stays gone, for up to
  ``settle_s`` seconds.
  """
  import time

  deadline = time.monotonic() + settle_s
  remove_path(tmp)
  while path_exists(tmp) and time.monotonic() < deadline:
    time.sleep(0.05)
    remove_path(tmp)


def _fsync_dir(path: Path) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)
