"""User errors of the command line: one ``error:`` line naming the fix, and the exit codes."""

from __future__ import annotations

import errno
import re

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


_OS_FIXES = {
  errno.ENOSPC: "the disk is full: free space there or write elsewhere (nothing was left behind)",
  errno.EDQUOT: "the disk quota is used up: free space there or write elsewhere",
  errno.EFBIG: "the file-size limit (ulimit -f) is below what this writes: raise it or "
  "write elsewhere (nothing was left behind)",
  errno.EROFS: "the file system is read-only: choose a path on a writable one",
}
"""The way out of an OS failure of a write, by error number."""


class UserError(ValueError):
  """A mistake in the command's arguments or files; ``main`` prints it as one line."""


def one_line(text: str) -> str:
  return re.sub(r"\s+", " ", str(text)).strip()


def error_text(e: BaseException) -> str | None:
  """The one ``error:`` line for a user-facing exception, or None for a bug."""
  if isinstance(e, OSError) and e.errno is not None:  # raised by the OS, not by sap_jax
    where = f" {e.filename}" if e.filename else ""
    fix = _OS_FIXES.get(e.errno, "check the path and its permissions")
    return f"{e.strerror or e}:{where}; {fix}."
  if isinstance(e, (ValueError, OSError)):
    return one_line(e)
  if isinstance(e, FloatingPointError):
    return one_line(e)
  if isinstance(e, MemoryError):
    return "out of memory; lower --batch-size (or use a smaller model or data set)."
  if type(e).__name__ == "XlaRuntimeError" and "RESOURCE_EXHAUSTED" in str(e):
    return "out of device memory; lower --batch-size (or use a smaller model)."
  return None
