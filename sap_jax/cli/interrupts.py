"""Ctrl-C for the command line: an interrupt that cannot be lost.

Python turns SIGINT into a KeyboardInterrupt at the next bytecode of the main thread,
wherever that is. If that is inside a finalizer (``__del__``, a weakref callback, which
JAX arrays and caches have), the exception is printed as "Exception ignored in …" and
dropped, and the command goes on: seen under load, a training that a Ctrl-C did not
stop. `installed` adds a record of the interrupt to Python's behaviour: its handler
remembers the signal and raises KeyboardInterrupt as Python's does, and
`raise_if_interrupted`, which the progress callbacks call (every epoch, every phase,
every α), raises it again if it was dropped. The dropped one is not printed either (a
``sys.unraisablehook`` that passes every other exception on): the user sees one line,
"interrupted: …", not a traceback from a finalizer.

The flag is process-wide state, as the signal is; only the command line installs the
handler (from the main thread), and only while it runs.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

_pending = threading.Event()


def _handler(signum, frame) -> None:
  _pending.set()
  raise KeyboardInterrupt


def _quiet_dropped_interrupt(previous):
  """A ``sys.unraisablehook`` that drops a recorded Ctrl-C's KeyboardInterrupt raised in
  a finalizer (`raise_if_interrupted` raises it again) and hands anything else to
  ``previous``."""

  def hook(unraisable) -> None:
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _pending.is_set():
      return
    previous(unraisable)

  return hook


def raise_if_interrupted() -> None:
  """Raises KeyboardInterrupt if a Ctrl-C arrived while `installed` was active."""
  if _pending.is_set():
    raise KeyboardInterrupt


@contextlib.contextmanager
def installed() -> Iterator[None]:
  """SIGINT recorded and raised while the block runs, and its KeyboardInterrupt not
  printed where a finalizer drops it (the main thread only: elsewhere a no-op); the
  previous handler and unraisable hook, and a clear record, afterwards."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  _pending.clear()
  previous = signal.signal(signal.SIGINT, _handler)
  previous_hook = sys.unraisablehook
  sys.unraisablehook = _quiet_dropped_interrupt(previous_hook)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
    sys.unraisablehook = previous_hook
    _pending.clear()
