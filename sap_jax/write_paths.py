"""What is at a path a writer targets, and the writers' own temporaries there.

The kinds of output (`Kind`) and the refusal (`RefusedWrite`) of the overwrite rule of
`sap_jax.safe_write`; `describe` says what is at a path; the temporaries and aside names
(``.<name>.sap_jax-tmp-<pid>-<hex>``, ``.<name>.sap_jax-old-<pid>-<hex>``) are named by
`temp_name`, found by `our_temporaries`, and those of a killed run reported
(`interrupted_saves`) and removed (`clean_stale`).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = [
  "OLD_TAG",
  "TMP_TAG",
  "Kind",
  "RefusedWrite",
  "clean_stale",
  "describe",
  "interrupted_saves",
  "our_temporaries",
  "path_exists",
  "pid_alive",
  "recognised",
  "remove_path",
  "temp_name",
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


def path_exists(path: Path) -> bool:
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
    if recognised(kind, path):
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


def recognised(kind: Kind, path: Path) -> bool:
  try:
    return bool(kind.recognise(path))
  except (OSError, ValueError):
    return False


def temp_name(path: Path, tag: str = TMP_TAG) -> Path:
  """A fresh sibling name for ``path`` that says it is a sap_jax temporary of this process."""
  return path.parent / f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"


def pid_alive(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OSError):
    return True  # exists (another user's process) or cannot tell: leave it alone
  return True


def our_temporaries(path: Path) -> list[tuple[Path, str, int]]:
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
  return [p for p, _, pid in our_temporaries(path) if not pid_alive(pid)]


def remove_path(path: Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path, ignore_errors=True)
  elif path_exists(path):
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
  for entry, tag, pid in our_temporaries(path):
    if pid_alive(pid):
      continue
    if tag == OLD_TAG and not path_exists(path):
      os.rename(entry, path)
    else:
      remove_path(entry)
    handled.append(entry)
  return handled
