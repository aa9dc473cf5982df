"""Launching the child processes of the many-device and many-process tests.

* `run_devices_child`: one child with ``--xla_force_host_platform_device_count=N``
  (N CPU devices in one process);
* `run_process_group`: ``n`` children joined by `jax.distributed.initialize` on a free
  localhost port chosen at run time, each given its process index and the port.

Every child ends within ``timeout_s``, also when one fails or hangs (the others are
killed); a failure raises with the failing child's log tail.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_S = 240  # far above the ~20 s a child takes on 2 loaded cores


def child_env(**extra: str) -> dict[str, str]:
  """The parent's environment on CPU, without its XLA_FLAGS, plus ``extra``."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return {**env, "JAX_PLATFORMS": "cpu", **extra}


def free_port() -> int:
  """A TCP port on 127.0.0.1 that was free a moment ago."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_devices_child(
  args: Sequence[str], devices: int = 8, timeout_s: float = CHILD_TIMEOUT_S
) -> subprocess.CompletedProcess:
  """``python -m ARGS...`` with ``devices`` CPU devices; raises AssertionError on failure."""
  proc = subprocess.run(
    [sys.executable, "-m", *args],
    cwd=ROOT,
    env=child_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"),
    capture_output=True,
    text=True,
    timeout=timeout_s,  # subprocess.run kills the child when it passes
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def run_process_group(
  args: Sequence[str],
  log_dir: Path,
  n: int = 2,
  timeout_s: float = CHILD_TIMEOUT_S,
  expect: Sequence[int] | None = None,
) -> list[str]:
  """``n`` children ``python -m ARGS... INDEX PORT``, one per process of a
  `jax.distributed` group on 127.0.0.1:PORT (a free port).

  Args:
    args: the module and its leading arguments; the process index and port are appended.
    log_dir: where each child's combined stdout/stderr goes (``log{i}.txt``).
    n: how many processes.
    timeout_s: the time all of them get together; then the rest are killed.
    expect: the exit codes expected (default: all 0).

  Returns:
    Each child's log text.
  """
  port = free_port()
  log_dir.mkdir(parents=True, exist_ok=True)
  logs = [log_dir / f"log{i}.txt" for i in range(n)]
  procs: list[subprocess.Popen] = []
  try:
    for i in range(n):
      with open(logs[i], "w") as log:
        procs.append(
          subprocess.Popen(
            [sys.executable, "-m", *args, str(i), str(port)],
            cwd=ROOT,
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
          )
        )
    deadline = time.monotonic() + timeout_s
    for p in procs:
      try:
        p.wait(timeout=max(1.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        break
  finally:
    for p in procs:  # every child ends, also when one failed or hung
      if p.poll() is None:
        p.kill()
        p.wait(timeout=30)
  texts = [log.read_text() for log in logs]
  codes = [p.returncode for p in procs]
  want = list(expect) if expect is not None else [0] * n
  assert codes == want, f"exit codes {codes}, expected {want}: " + "\n---\n".join(
    t[-3000:] for t in texts
  )
  return texts


INTERRUPT_TIMEOUT_S = 120
"""How long an interrupted child may take to exit (about 1–3 s on 2 loaded cores)."""


def interrupt_after_first_line(
  cmd: Sequence[str], cwd: Path | str, env: dict[str, str], timeout_s: float = INTERRUPT_TIMEOUT_S
) -> tuple[int, str, str]:
  """Starts ``cmd``, waits for its first line on standard error, sends it SIGINT (Ctrl-C)
  and returns ``(exit status, that first line, the rest of standard error)``.

  A child still running after ``timeout_s`` is sent SIGABRT, so that Python's fault
  handler (``PYTHONFAULTHANDLER=1``, set here) writes every thread's stack to standard
  error, then killed; the assertion then carries those stacks, to tell a lost interrupt
  from a hang at exit.
  """
  import signal

  proc = subprocess.Popen(
    list(cmd),
    cwd=cwd,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**env, "PYTHONFAULTHANDLER": "1"},
  )
  first = proc.stderr.readline()
  proc.send_signal(signal.SIGINT)
  try:
    _, err = proc.communicate(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGABRT)
    try:
      _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
      _, err = proc.communicate()
    raise AssertionError(
      f"{' '.join(cmd[:4])} … still ran {timeout_s:.0f} s after SIGINT; its standard error "
      f"(head, then the stacks at SIGABRT):\n{first}{err[:2000]}\n…\n{err[-5000:]}"
    ) from None
  return proc.returncode, first, err
