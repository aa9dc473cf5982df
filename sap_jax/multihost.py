"""Processes that agree: a `jax.distributed` group runs one program together, so every
process must pass the same inputs and end every step the same way; a mistake on one
process must be an error on all of them, not a hang.

Inputs, checked before any work: `check_same_across_processes`.
Outcomes of a step done on disk (a checkpoint's write or read): `first_decides` and
`agree` (below).

With several processes (``jax.process_count() > 1``) a call such as `sap_jax.run_sap` or
`sap_jax.train.train_model` is one program run by every process together. If one process
passes another α grid, other model variables or a data set of another global shape, the
processes compile different programs or wait in different collectives, and the run hangs
or computes nonsense. `check_same_across_processes` fingerprints each named input on every
process, gathers the fingerprints (`jax.experimental.multihost_utils.process_allgather`,
a few bytes per input) and raises on *every* process a ValueError naming the inputs that
differ and which processes hold which version.

What a fingerprint covers (`fingerprint`):

* host values (numpy arrays, Python numbers, strings, tuples, dicts of them) and arrays
  every device holds whole (replicated model variables): their tree structure, shapes,
  dtypes and content (SHA-256), so every process must pass the very same values;
* global arrays sharded over a mesh (each process's part of a data set): the global shape,
  dtype and partition spec only; the parts differ by design;
* anything else (a model object, a config): its ``repr`` with memory addresses removed.

Every process must also reach each compiled program from the same line of code. By
default (``jax_include_full_tracebacks_in_locations``) a program carries the Python
traceback of its call; with jax 0.12 on CPU (not 0.10), processes whose programs differ only
there (one calls ``f(x)`` on line 10, another on line 12) wait for each other's
collectives forever. The command line calls every command from one line and turns that
option off with ``--distributed``; a program of its own should do the same (or keep one
call site for every process).

JAX's own runtime joins the processes (`jax.distributed.initialize`); nothing here starts,
watches or stops processes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jax
import numpy as np

__all__ = [
  "BUILTIN_ERRORS",
  "agree",
  "check_same_across_processes",
  "disagreements",
  "fingerprint",
  "first_decides",
]

T = TypeVar("T")

_WORDS = 4  # 128 bits of SHA-256 per input
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _text(value: Any) -> str:
  """``repr`` without memory addresses (``<function f at 0x…>`` → ``<function f>``)."""
  return _ADDRESS.sub("", repr(value))


def _update_leaf(h: Any, leaf: Any) -> None:
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    sharding = leaf.sharding
    if not sharding.is_fully_replicated:  # this process holds only its part
      spec = getattr(sharding, "spec", None)
      mesh = getattr(sharding, "mesh", None)
      shape = None if mesh is None else tuple(mesh.shape.items())
      h.update(f"global {leaf.shape} {leaf.dtype} {spec} {shape};".encode())
      return
    leaf = leaf.addressable_data(0)  # a replicated array: this process's whole copy
  if isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
    host = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"array {host.shape} {host.dtype};".encode())
    h.update(host.tobytes())
    return
  h.update(f"{type(leaf).__name__} {_text(leaf)};".encode())


def fingerprint(value: Any) -> np.ndarray:
  """A 128-bit fingerprint of ``value`` as 4 int32 words (see the module docstring).

  Never raises: a value that cannot be read is fingerprinted by its type and ``repr``.
  """
  h = hashlib.sha256()
  try:
    leaves, treedef = jax.tree_util.tree_flatten(value, is_leaf=lambda v: v is None)
    h.update(_text(treedef).encode())
    for leaf in leaves:
      _update_leaf(h, leaf)
  except Exception as e:  # a value we cannot read: compare what we can say of it
    h.update(f"unreadable {type(value).__name__} {type(e).__name__}".encode())
  return np.frombuffer(h.digest()[: 4 * _WORDS], np.int32).copy()


def disagreements(names: Sequence[str], gathered: np.ndarray) -> dict[str, list[list[int]]]:
  """Which inputs differ between processes, from every process's fingerprints.

  Args:
    names: the inputs' names, in the order of the fingerprints.
    gathered: ``(processes, len(names), 4)``: process p's fingerprint of input i at
      ``[p, i]``.

  Returns:
    name → the groups of processes holding the same version (in order of their first
    process), for every input not the same on all processes; empty when they agree.
  """
  out: dict[str, list[list[int]]] = {}
  for i, name in enumerate(names):
    groups: dict[bytes, list[int]] = {}
    for p in range(gathered.shape[0]):
      groups.setdefault(gathered[p, i].tobytes(), []).append(p)
    if len(groups) > 1:
      out[name] = list(groups.values())
  return out


def _describe(value: Any) -> str:
  """A short description of what this process passed, for the error message."""
  try:
    if isinstance(value, (jax.Array, np.ndarray)):
      return f"an array of shape {tuple(value.shape)} {value.dtype}"
    leaves = jax.tree_util.tree_leaves(value)
    if len(leaves) > 1 and all(hasattr(v, "shape") for v in leaves):
      return f"a tree of {len(leaves)} arrays"
    text = _text(value)
  except Exception:  # a value without a readable repr
    text = f"a {type(value).__name__}"
  return text if len(text) <= 80 else text[:77] + "..."


def _groups_text(groups: list[list[int]]) -> str:
  def one(g: list[int]) -> str:
    return f"process {g[0]}" if len(g) == 1 else "processes " + ", ".join(map(str, g))

  return " / ".join(one(g) for g in groups)


def check_same_across_processes(values: Mapping[str, Any], what: str) -> None:
  """Raises on every process when the processes passed different ``values``.

  A no-op in a single process. With several, every process must call it with the same
  names (it is a collective: two tiny all-gathers, a hash of each input first).

  Args:
    values: input name → value (arrays, trees of arrays, numbers, options).
    what: the caller's name, for the message (``"run_sap"``).

  Raises:
    ValueError: on every process, naming each input that differs, the groups of
      processes that agree on it, and what this process passed.
  """
  if jax.process_count() < 2:
    return
  names = list(values)
  key = np.frombuffer(hashlib.sha256("\0".join(names).encode()).digest()[:16], np.int32)
  keys = _allgather(key)
  if len({k.tobytes() for k in keys}) > 1:
    raise ValueError(
      f"{what}: the processes called it with different sets of inputs "
      f"({_groups_text(disagreements(['names'], keys[:, None])['names'])}); every process "
      "must run the same program."
    )
  local = np.stack([fingerprint(values[n]) for n in names]) if names else np.zeros((0, _WORDS))
  gathered = _allgather(local.astype(np.int32))
  differ = disagreements(names, gathered)
  if not differ:
    return
  me = jax.process_index()
  parts = [
    f"{n} ({_groups_text(g)}; this process {me} has {_describe(values[n])})"
    for n, g in differ.items()
  ]
  raise ValueError(
    f"{what}: the {jax.process_count()} processes disagree on {', '.join(parts)}. Every "
    "process must pass the same values (only each process's part of sharded data may "
    "differ): run the same command with the same inputs on every host."
  )


# --- One outcome on every process -------------------------------------------------------
# One outcome on every process: what process 0 decided, or the first failure anywhere.
#
# A write or a read done by every process of a `jax.distributed` group (a checkpoint) must
# end the same way on all of them: if one process raises and another goes on to the next
# collective, the other waits forever. Two helpers make each step end alike everywhere:
#
# * `first_decides(fn)`: process 0 runs ``fn()`` (a check of the disk, a rename) and every
#   process returns its result, a string, or raises its error;
# * `agree(fn)`: every process runs ``fn()``; if it raised on any process, every process
#   raises the error of the first process (lowest index) where it did.
#
# An error crosses processes as its type name and message: a process that did not fail
# raises an exception of the same type (from ``errors`` or the built-in ones listed in
# `BUILTIN_ERRORS`, otherwise RuntimeError) with the same message. In one process both
# helpers just call ``fn()``. Both are collectives (tiny all-gathers and broadcasts through
# `jax.experimental.multihost_utils`): every process must call them in the same order.


BUILTIN_ERRORS: tuple[type[Exception], ...] = (
  FileNotFoundError,
  FileExistsError,
  IsADirectoryError,
  NotADirectoryError,
  PermissionError,
  OSError,
  TypeError,
  ValueError,
  RuntimeError,
)
_SEP = "\0"


def _encode(error: Exception) -> bytes:
  return f"{type(error).__name__}{_SEP}{error}".encode("utf-8", "replace")


def _decode(data: bytes, errors: Sequence[type[Exception]]) -> Exception:
  name, _, message = data.decode("utf-8", "replace").partition(_SEP)
  for cls in (*errors, *BUILTIN_ERRORS):
    if cls.__name__ == name:
      try:
        return cls(message)
      except TypeError:
        break
  return RuntimeError(f"{name}: {message}")


def _allgather(x: np.ndarray) -> np.ndarray:
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x))


def _broadcast(x: np.ndarray) -> np.ndarray:
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.broadcast_one_to_all(x))


def _as_bytes(buffer: np.ndarray, length: int) -> bytes:
  return buffer[:length].astype(np.uint8).tobytes()


def agree(fn: Callable[[], T], errors: Sequence[type[Exception]] = ()) -> T:
  """Runs ``fn()`` on every process; raises everywhere if it raised anywhere.

  Args:
    fn: the step each process runs (it may itself contain collectives, run alike).
    errors: exception types, beyond `BUILTIN_ERRORS`, to raise as themselves on the
      other processes (e.g. `sap_jax.safe_write.RefusedWrite`).

  Returns:
    This process's ``fn()``.

  Raises:
    The first failing process's exception, on every process: that process re-raises its
    own; the others raise one of the same type and message.
  """
  if jax.process_count() < 2:
    return fn()
  try:
    result, failure = fn(), None
  except Exception as e:  # every process must reach the exchange below
    result, failure = None, e
  status = _allgather(np.array([0 if failure is None else 1], np.int32))[:, 0]
  if not status.any():
    return result  # type: ignore[return-value]
  first = int(np.flatnonzero(status)[0])
  if failure is not None and jax.process_index() == first:
    payload = _encode(failure)
  else:
    payload = b""
  lengths = _allgather(np.array([len(payload)], np.int32))[:, 0]
  size = max(1, int(lengths.max()))
  buffer = np.zeros(size, np.uint8)
  buffer[: len(payload)] = np.frombuffer(payload, np.uint8)
  gathered = _allgather(buffer)
  if jax.process_index() == first:
    raise failure  # type: ignore[misc]
  raise _decode(_as_bytes(gathered[first], int(lengths[first])), errors)


def first_decides(fn: Callable[[], str], errors: Sequence[type[Exception]] = ()) -> str:
  """Process 0 runs ``fn()``; every process returns its string or raises its error.

  Args:
    fn: the step only process 0 runs (e.g. check the target, create a folder).
    errors: as for `agree`.

  Returns:
    Process 0's ``fn()``, on every process.
  """
  if jax.process_count() < 2:
    return fn()
  failure: Exception | None = None
  payload = b""
  if jax.process_index() == 0:
    try:
      payload = fn().encode("utf-8")
    except Exception as e:  # the others wait in the broadcast below
      failure, payload = e, _encode(e)
  head = _broadcast(np.array([0 if failure is None else 1, len(payload)], np.int32))
  size = max(1, int(head[1]))
  buffer = np.zeros(size, np.uint8)
  buffer[: len(payload)] = np.frombuffer(payload, np.uint8)
  data = _as_bytes(_broadcast(buffer), int(head[1]))
  if failure is not None:
    raise failure
  if head[0]:
    raise _decode(data, errors)
  return data.decode("utf-8")
