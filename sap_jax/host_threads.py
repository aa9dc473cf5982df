"""Host threads for per-layer work: how many layers run at once, and running them.

`sap_jax.decomposition.decompose` runs each layer's eigh (or Cholesky) as its own
compiled program; LAPACK runs on the host thread that dispatched it, so layers
dispatched from different threads run on different cores. This module owns how many
threads that may use (`max_workers`, `default_workers`: the cores, less the load),
whether a new thread would see the caller's JAX context (`threads_share_context`), and
the dearest-first pool (`run_dearest_first`).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable
from typing import Any

import jax

MAX_DEFAULT_WORKERS = 4
"""The cap of `max_workers` (measured only on 2 cores; more concurrent LAPACK calls also
mean more workspaces alive at once)."""


def max_workers() -> int:
  """The most layers `decompose` runs at once by default: on the CPU backend the cores
  this process may use (``os.sched_getaffinity``), at most `MAX_DEFAULT_WORKERS`;
  elsewhere 1 (an accelerator runs one program at a time)."""
  if jax.default_backend() != "cpu":
    return 1
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  return max(1, min(cores, MAX_DEFAULT_WORKERS))


def default_workers() -> int:
  """How many layers `decompose` decomposes at once by default: `max_workers`, less the
  cores other work keeps busy (the 1-minute load average beyond this process's own
  thread, ``int(load − 1)``), at least 1.

  Each layer's eigh (LAPACK syevd) or Cholesky runs on the host thread that dispatched
  it, so layers dispatched from different threads run on different cores; JAX's
  asynchronous dispatch alone, one program holding every layer, or layers placed on
  several host devices all ran one after another (measured). Two d = 2304 eighs on an
  idle 2-core machine: 1.86× faster on two threads; with another process keeping one
  core busy, 1.24× slower; at load 10, no faster (benchmarks/README.md). Hence the
  load term. The result never depends on it (bit for bit).
  """
  cores = max_workers()
  try:
    busy = max(0, int(os.getloadavg()[0] - 1.0))
  except (AttributeError, OSError):  # no load average on this platform
    busy = 0
  return max(1, cores - busy)


# JAX options a `with` block can set for the calling thread only (a new thread sees the
# global values): work handed to another thread must see the same ones.
_THREAD_LOCAL_OPTIONS = (
  "jax_enable_x64",
  "jax_default_matmul_precision",
  "jax_default_device",
  "jax_numpy_dtype_promotion",
  "jax_numpy_rank_promotion",
  "jax_default_prng_impl",
  "jax_debug_nans",
  "jax_debug_infs",
  "jax_disable_jit",
)


def _jax_context() -> tuple:
  """The calling thread's values of the thread-local JAX options and meshes."""
  values = tuple(repr(getattr(jax.config, name, None)) for name in _THREAD_LOCAL_OPTIONS)
  meshes = tuple(
    repr(getattr(jax.sharding, f)()) if hasattr(jax.sharding, f) else ""
    for f in ("get_abstract_mesh", "get_mesh")
  )
  return values + meshes


def threads_share_context() -> bool:
  """Whether a new host thread would run JAX as the calling thread does: False inside
  a ``with jax.enable_x64(…)``, ``jax.default_device(…)``, ``jax.set_mesh(…)`` (…)
  block, which holds for the calling thread only. `decompose` then runs every layer in
  the calling thread."""
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    return pool.submit(_jax_context).result() == _jax_context()


def run_dearest_first(tasks: list[tuple[float, Callable[[], Any]]], workers: int) -> list[Any]:
  """Runs every ``(cost, thunk)``; returns the results in the tasks' order.

  ``workers == 1``: one after another, in order. Otherwise on a pool of host threads,
  dearest first (longest-processing-time-first: the pool's FIFO queue then balances
  the cores), each thread blocking until its layer's result is computed.
  """
  if workers == 1 or len(tasks) <= 1:
    return [thunk() for _, thunk in tasks]
  order = sorted(range(len(tasks)), key=lambda i: -tasks[i][0])
  out: list[Any] = [None] * len(tasks)
  with concurrent.futures.ThreadPoolExecutor(
    max_workers=min(workers, len(tasks)), thread_name_prefix="sap_decompose"
  ) as pool:
    futures = {i: pool.submit(lambda f=tasks[i][1]: jax.block_until_ready(f())) for i in order}
    for i, fut in futures.items():
      out[i] = fut.result()
  return out
