"""The checks of the overwrite rule of `sap_jax.safe_write`, made before any write.

`check_target` checks one output (exists, of the writer's `Kind`, overlapping a protected
path, on a read-only file system, a symlink), `check_targets` every output of a command
at once and their overlaps; `user_path` is the path as the user meant it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from sap_jax.write_paths import (
  OLD_TAG,
  Kind,
  RefusedWrite,
  describe,
  our_temporaries,
  path_exists,
  pid_alive,
  recognised,
)

__all__ = ["check_target", "check_targets", "user_path"]


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
  if not path_exists(target):
    aside = [e for e, tag, pid in our_temporaries(target) if tag == OLD_TAG and not pid_alive(pid)]
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
  if not recognised(kind, probe):
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
