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
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

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

TMP_TAG = "sap_jax-tmp"
OLD_TAG = "sap_jax-old"
_OURS = re.compile(r"^\.(?P<name>.+)\.(?P<tag>sap_jax-tmp|sap_jax-old)-(?P<pid>\d+)-[0-9a-f]{8}$")


class Kind(NamedTuple):
  """What a writer writes: a name for messages and how to recognise one on disk.

  Attributes:
    name: e.g. "sap_jax checkpoint", "sap_jax report".
    recognise: ``recognise(path) -> bool``: is the existing ``path`` one of these
      (e.g. a folder whose metadata carries the checkpoint format tag)?
  """

  name: str
  recognise: Callable[[Path], bool]


class RefusedWrite(FileExistsError):
  """A write the overwrite rule refuses; the message says what is there and the way out."""


# ------------------------------------------------------------------ describing paths


def _exists(path: Path) -> bool:
  return path.exists() or path.is_symlink()


def describe(path: str | os.PathLike, kinds: Sequence[Kind] = ()) -> str:
  """What sits at ``path``, in words ("nothing", "a sap_jax checkpoint", "a folder with
  2 entries (a.txt, b)", "a file of 12 bytes", "a symbolic link to …")."""
  path = Path(path)
  if path.is_symlink():
    return f"a symbolic link to {os.readlink(path)}"
  if not path.exists():
    return "nothing"
  for kind in kinds:
    if _recognised(kind, path):
      return f"a {kind.name}"
  if path.is_dir():
    try:
      entries = sorted(os.listdir(path))
    except OSError:
      return "a folder that cannot be listed"
    if not entries:
      return "an empty folder"
    shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
    return f"a folder with {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} ({shown})"
  if path.is_file():
    size = path.stat().st_size
    return f"a file of {size} byte{'' if size == 1 else 's'}"
  return "something that is neither a file nor a folder"


def _recognised(kind: Kind, path: Path) -> bool:
  try:
    return bool(kind.recognise(path))
  except (OSError, ValueError):
    return False


# ------------------------------------------------------------------ temporaries


def temp_name(path: Path, tag: str = TMP_TAG) -> Path:
  """A fresh sibling name for ``path`` that says it is a sap_jax temporary of this process."""
  return path.parent / f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OSError):
    return True  # exists (another user's process) or cannot tell: leave it alone
  return True


def _our_temporaries(path: Path) -> list[tuple[Path, str, int]]:
  """``(entry, tag, pid)`` for every sap_jax temporary of ``path`` in its folder."""
  try:
    names = os.listdir(path.parent)
  except OSError:
    return []
  found = []
  for name in sorted(names):
    m = _OURS.match(name)
    if m and m["name"] == path.name:
      found.append((path.parent / name, m["tag"], int(m["pid"])))
  return found


def interrupted_saves(path: str | os.PathLike) -> list[Path]:
  """The temporaries of ``path`` left by runs that are no longer alive (read only)."""
  path = Path(path).absolute()
  return [p for p, _, pid in _our_temporaries(path) if not _pid_alive(pid)]


def _remove(path: Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path, ignore_errors=True)
  elif _exists(path):
    try:
      path.unlink()
    except OSError:
      pass


def clean_stale(path: str | os.PathLike) -> list[Path]:
  """Removes the stale sap_jax temporaries of ``path`` (owning process dead).

  A stale "old" entry (a run killed between its two renames) is renamed back to
  ``path`` when nothing sits there, instead of being removed.

  Returns:
    The entries removed or restored.
  """
  path = Path(path).absolute()
  handled = []
  for entry, tag, pid in _our_temporaries(path):
    if _pid_alive(pid):
      continue
    if tag == OLD_TAG and not _exists(path):
      os.rename(entry, path)
    else:
      _remove(entry)
    handled.append(entry)
  return handled


# ------------------------------------------------------------------ checks


def user_path(path: str | os.PathLike) -> Path:
  """``path`` with ``~`` and ``~user`` expanded, made absolute (not resolved).

  Raises:
    RefusedWrite: ``~user`` names a user this machine does not know (or ``~`` without
      a home folder).
  """
  text = os.fspath(path)
  expanded = os.path.expanduser(text)
  if expanded.startswith("~"):
    user = expanded[1:].split(os.sep, 1)[0]
    who = f"no user {user!r}" if user else "no home folder"
    raise RefusedWrite(
      f"cannot use the path {text}: this machine has {who} for {expanded.split(os.sep)[0]} "
      "to name; write the folder out in full."
    )
  return Path(expanded).absolute()


def _resolved(path: str | os.PathLike) -> Path:
  return Path(os.path.realpath(user_path(path)))


def _overlap(a: Path, b: Path) -> str | None:
  if a == b:
    return "is"
  if b in a.parents:
    return "lies inside"
  if a in b.parents:
    return "contains"
  return None


def _read_only(folder: Path) -> bool:
  try:
    return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
  except (OSError, AttributeError):  # no statvfs (Windows): os.access decides
    return False


def check_target(
  path: str | os.PathLike,
  kind: Kind,
  *,
  overwrite: bool,
  protect: Iterable[str | os.PathLike] = (),
  what: str | None = None,
) -> Path:
  """Raises `RefusedWrite` unless writing ``path`` obeys the overwrite rule; reads only.

  Args:
    path: the file or folder to write.
    kind: what is written there (its name, and how to recognise an existing one).
    overwrite: whether an existing ``kind`` at ``path`` may be replaced.
    protect: paths that must not be written, written into, or replaced by a parent.
    what: how messages name the target (default: the kind's name).

  Returns:
    ``path`` made absolute (not resolved: the writer replaces the entry at that name).
  """
  target = user_path(path)
  what = what or kind.name
  if target.parent == target:
    raise RefusedWrite(
      f"cannot write the {what} at {target}: it is the root of the file system; choose "
      "a new path (e.g. ./out)."
    )
  real = _resolved(target)
  for p in protect:
    relation = _overlap(real, _resolved(p))
    if relation is not None:
      raise RefusedWrite(
        f"refusing to write the {what} at {target}: it {relation} the input {p}, which "
        "is never written; choose an output path outside it."
      )
  ancestor = target.parent
  while not ancestor.exists():
    if ancestor.is_symlink():
      raise RefusedWrite(f"cannot write {target}: {ancestor} is a broken symbolic link.")
    ancestor = ancestor.parent
  if not ancestor.is_dir():
    raise RefusedWrite(
      f"cannot write {target}: {ancestor} is {describe(ancestor)}, not a folder; choose "
      "another path."
    )
  if _read_only(ancestor):
    raise RefusedWrite(
      f"cannot write {target}: {ancestor} is on a read-only file system; choose a path on "
      "a writable one."
    )
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise RefusedWrite(f"cannot write {target}: no permission to write in {ancestor}.")
  probe = target
  if not _exists(target):
    aside = [
      e for e, tag, pid in _our_temporaries(target) if tag == OLD_TAG and not _pid_alive(pid)
    ]
    if not aside:
      return target
    probe = aside[0]  # the old content, put back by the next write to this place
  there = describe(probe, (kind,))
  if probe != target:
    there += f", left aside as {probe.name} by an interrupted save"
  if target.is_symlink():
    raise RefusedWrite(
      f"refusing to write the {what} at {target}: it is {there}; pass the real path, or "
      "remove the link."
    )
  if not overwrite:
    raise RefusedWrite(
      f"{what} path {target} already exists ({there}); pass --overwrite (overwrite=True) "
      "to replace it, or choose another path."
    )
  if not _recognised(kind, probe):
    raise RefusedWrite(
      f"refusing to replace {target}: it is {there}, not a {kind.name}; --overwrite "
      f"(overwrite=True) only replaces a {kind.name}. Move it away or choose another path."
    )
  return target


def check_targets(
  targets: Sequence[tuple[str | os.PathLike, Kind, str]],
  *,
  overwrite: bool,
  protect: Iterable[str | os.PathLike] = (),
) -> list[Path]:
  """`check_target` for every ``(path, kind, what)`` of one command, and refuses
  targets that are, contain or lie inside one another. Reads only; call before any work.

  Returns:
    The absolute target paths, in order.
  """
  protect = list(protect)
  paths = [check_target(p, k, overwrite=overwrite, protect=protect, what=w) for p, k, w in targets]
  for i, (a, (_, _, what_a)) in enumerate(zip(paths, targets)):
    for b, (_, _, what_b) in zip(paths[i + 1 :], targets[i + 1 :]):
      relation = _overlap(_resolved(a), _resolved(b))
      if relation is not None:
        raise RefusedWrite(
          f"the {what_a} path {a} {relation} the {what_b} path {b}; give them separate paths."
        )
  return paths


# ------------------------------------------------------------------ failures of the disk

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


# ------------------------------------------------------------------ writers


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
    _remove(tmp)
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
    if _exists(target):
      os.rename(target, old)
    os.rename(tmp, target)  # the window: between these two renames nothing is at target
    swapped = True
    _fsync_dir(target.parent)
  finally:
    if _exists(old):
      if swapped:
        _remove(old)
      elif not _exists(target):
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
  _remove(tmp)
  while _exists(tmp) and time.monotonic() < deadline:
    time.sleep(0.05)
    _remove(tmp)


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
