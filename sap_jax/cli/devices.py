"""Many devices and hosts on the command line: ``--data-parallel``, ``--mesh``,
``--distributed`` and the coordinator flags, checked before any work; the mesh every phase
reads the splits over; only process 0 prints."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Any

from sap_jax import (
  data,
  multihost,
)
from sap_jax import sharding as shd
from sap_jax.cli.args import positive_int
from sap_jax.cli.errors import UserError, one_line
from sap_jax.cli.runs import Run, load_run


def note(text: str) -> None:
  """A note on stderr (from process 0 only, with several processes)."""
  if first_process():
    print(text, file=sys.stderr, flush=True)


def mesh_size(text: str) -> int:
  """``data=N``: the data axis's device count."""
  key, _, value = text.partition("=")
  try:
    size = int(value)
  except ValueError:
    size = 0
  if key.strip() != shd.DATA_AXIS or size < 1:
    raise argparse.ArgumentTypeError(
      f"expected {shd.DATA_AXIS}=N with N the number of devices, such as data=8; got {text!r}"
    )
  return size


def add_device_args(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group(
    "many devices and hosts (a data-parallel mesh; jax.distributed on every host)"
  )
  g.add_argument(
    "--data-parallel",
    action="store_true",
    help="run over all devices (of every process): data-parallel training, SAP and "
    "evaluation, each process reading its own part of every batch; no split need divide "
    "the device count",
  )
  g.add_argument(
    "--mesh",
    type=mesh_size,
    default=None,
    metavar="data=N",
    help="the mesh shape: N devices on the data axis, which must be every device; implies "
    "--data-parallel",
  )
  g.add_argument(
    "--distributed",
    action="store_true",
    help="run the same command on every host: jax.distributed.initialize() joins the "
    "processes (auto-detected on Cloud TPU, SLURM and Open MPI, or from --coordinator, "
    "--num-processes and --process-id); only process 0 prints and writes reports; implies "
    "--data-parallel",
  )
  g.add_argument(
    "--coordinator",
    default=None,
    metavar="HOST:PORT",
    help="process 0's address and a free port, with --num-processes and --process-id, where "
    "JAX does not detect the cluster (e.g. 127.0.0.1:1234 on one machine); implies "
    "--distributed",
  )
  g.add_argument("--num-processes", type=positive_int, default=None, help="with --coordinator")
  g.add_argument("--process-id", type=int, default=None, help="with --coordinator: 0 … N-1")
  g.add_argument(
    "--peer-timeout",
    type=positive_float,
    default=None,
    metavar="SECONDS",
    help="with --distributed: how long each process waits for the others to join before it "
    f"gives up with an error (default: ${PEER_TIMEOUT_ENV}, else {DEFAULT_PEER_TIMEOUT_S:g})",
  )


PEER_TIMEOUT_ENV = "SAP_JAX_PEER_TIMEOUT"
"""Environment variable: the seconds a process waits for the others (``--peer-timeout``)."""

DEFAULT_PEER_TIMEOUT_S = 300.0
"""JAX's own default wait for the processes to join."""


def positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = float("nan")
  if not value > 0 or value == float("inf"):
    raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
  return value


def peer_timeout(args) -> float:
  """``--peer-timeout``, else the environment variable, else JAX's 300 s."""
  if getattr(args, "peer_timeout", None) is not None:
    return args.peer_timeout
  text = os.environ.get(PEER_TIMEOUT_ENV, "").strip()
  if not text:
    return DEFAULT_PEER_TIMEOUT_S
  try:
    return positive_float(text)
  except argparse.ArgumentTypeError as e:
    raise UserError(f"${PEER_TIMEOUT_ENV}: {e}; set it to the seconds to wait, e.g. 60.") from None


def _join(args, timeout_s: float) -> None:
  """`jax.distributed.initialize`, given up after ``timeout_s``: a missing process makes
  JAX abort the process with a C++ stack, so a watchdog ends it first, in one line."""
  import jax

  n, me = args.num_processes, args.process_id
  where = f"the coordinator {args.coordinator}" if args.coordinator else "the coordinator"
  if n is not None and me is not None:
    who = f"for the {n} processes to join: only process {me} (this one) is known to be there"
    start = f"with --process-id 0 … {n - 1}"
  else:
    who = "for the other processes to join"
    start = "on every host"

  def give_up() -> None:
    print(
      f"error: waited {timeout_s:g} s at {where} {who}. Start the same command {start} "
      f"(or wait longer: --peer-timeout SECONDS, or ${PEER_TIMEOUT_ENV}).",
      file=sys.stderr,
      flush=True,
    )
    os._exit(2)

  watchdog = threading.Timer(timeout_s, give_up)
  watchdog.daemon = True
  watchdog.start()
  try:  # JAX's own deadline comes later: the watchdog speaks first
    jax.distributed.initialize(
      args.coordinator,
      args.num_processes,
      args.process_id,
      initialization_timeout=int(timeout_s) + 60,
    )
  finally:
    watchdog.cancel()


def start_devices(args) -> None:
  """Joins the processes (``--distributed``) and makes the mesh (``args.device_mesh``,
  None without ``--data-parallel``), refusing inconsistent flags before any work."""
  args.device_mesh = None
  if not hasattr(args, "data_parallel"):
    return
  given = {
    "--coordinator": args.coordinator,
    "--num-processes": args.num_processes,
    "--process-id": args.process_id,
  }
  if any(v is not None for v in given.values()):
    missing = [k for k, v in given.items() if v is None]
    if missing:
      raise UserError(
        f"--coordinator, --num-processes and --process-id go together: {', '.join(missing)} "
        "missing (or pass --distributed alone where JAX detects the cluster)."
      )
    if not 0 <= args.process_id < args.num_processes:
      raise UserError(
        f"--process-id {args.process_id} is not one of the {args.num_processes} processes; "
        f"pass 0 … {args.num_processes - 1}."
      )
    args.distributed = True
  timeout_s = peer_timeout(args)
  import jax

  if args.distributed and not jax.distributed.is_initialized():  # else: joined by the caller
    try:
      _join(args, timeout_s)
    except (RuntimeError, ValueError) as e:
      raise UserError(
        f"jax.distributed.initialize failed ({one_line(e)[:300]}); where JAX does not "
        "detect the cluster, pass --coordinator HOST:PORT --num-processes N --process-id I."
      ) from None
  if args.distributed:  # the same command on every process, before any work
    # Programs must not depend on where each process called them from (see
    # `sap_jax.multihost`): no Python traceback in the compiled programs' locations.
    jax.config.update("jax_include_full_tracebacks_in_locations", False)
    ignored = {"process_id", "func", "written", "device_mesh", "peer_timeout"}
    multihost.check_same_across_processes(
      {"--" + k.replace("_", "-"): v for k, v in vars(args).items() if k not in ignored},
      f"sap-jax {args.command}",
    )
  if not (args.data_parallel or args.distributed or args.mesh is not None):
    return
  devices = jax.device_count()
  if args.mesh is not None and args.mesh != devices:
    raise UserError(
      f"--mesh data={args.mesh} does not span the {devices} devices ({jax.process_count()} "
      f"process(es) × {jax.local_device_count()}); a mesh must hold every device: pass "
      f"--mesh data={devices}, or --data-parallel."
    )
  batch = getattr(args, "batch_size", None)
  if args.command == "train" and batch is not None and batch % devices:
    raise UserError(
      f"--batch-size {batch} cannot be split evenly over the {devices} devices; pass a "
      f"multiple of {devices} (e.g. {max(devices, batch // devices * devices)})."
    )
  args.device_mesh = shd.data_mesh()


def on_devices(splits: data.NoisySplits, mesh: Any, say) -> data.NoisySplits:
  """``splits`` as they are, read over ``mesh`` by every phase it is passed to (``mesh=``):
  each process reads its own rows of every batch and the last batch of each split is
  padded and masked, so no split is cut to a multiple of the devices (``say`` tells the
  devices). Unchanged and silent without a mesh."""
  if mesh is None:
    return splits
  import jax

  say(
    f"data-parallel over {jax.device_count()} devices ({jax.process_count()} process(es)); "
    "every split whole (each one's last batch padded and masked)"
  )
  return splits


def devices_record(splits: data.NoisySplits) -> dict[str, Any]:
  """What a checkpoint and a report record of a data-parallel run."""
  import jax

  return {
    "processes": jax.process_count(),
    "devices": jax.device_count(),
    "samples": {
      "train": len(splits.x_train),
      "val": len(splits.x_val),
      "test": len(splits.x_test),
    },
  }


def first_process() -> bool:
  import jax

  return jax.process_index() == 0


def load_run_on_devices(args: argparse.Namespace, say) -> tuple[Run, data.NoisySplits]:
  """The run of a command's ``checkpoint`` argument (`sap_jax.cli.runs.load_run`, with
  its ``--data-root``, ``--allow-changed-data`` and device mesh) and its splits placed on
  that mesh (`on_devices`; ``say`` tells the devices)."""
  run = load_run(
    args.checkpoint,
    data_root=args.data_root,
    allow_changed_data=args.allow_changed_data,
    say=note,
    mesh=args.device_mesh,
  )
  return run, on_devices(run.splits, args.device_mesh, say)
