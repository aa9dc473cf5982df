"""Many devices and hosts on the command line: ``--data-parallel``, ``--mesh``,
``--distributed`` and the coordinator flags, checked before any work; the splits as
global arrays over the mesh; only process 0 prints."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from sap_jax import (
  data,
  multihost,
)
from sap_jax import sharding as shd
from sap_jax.cli.args import positive_int
from sap_jax.cli.errors import UserError, one_line


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
    help="shard every split over all devices (of every process): data-parallel training, "
    "SAP and evaluation where the samples are; each split is cut to a multiple of the "
    "device count",
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
  import jax

  if args.distributed and not jax.distributed.is_initialized():  # else: joined by the caller
    try:
      jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    except (RuntimeError, ValueError) as e:
      raise UserError(
        f"jax.distributed.initialize failed ({one_line(e)[:300]}); where JAX does not "
        "detect the cluster, pass --coordinator HOST:PORT --num-processes N --process-id I."
      ) from None
  if args.distributed:  # the same command on every process, before any work
    # Programs must not depend on where each process called them from (see
    # `sap_jax.multihost`): no Python traceback in the compiled programs' locations.
    jax.config.update("jax_include_full_tracebacks_in_locations", False)
    ignored = {"process_id", "func", "written", "device_mesh"}
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
  """``splits`` with its inputs as global arrays over ``mesh``: each split cut to a
  multiple of the devices, each process passing its own consecutive part of the inputs
  (`sharding.from_process_local`); the labels (small) and the noise mask stay on the host,
  cut alike. Unchanged without a mesh."""
  if mesh is None:
    return splits
  import jax

  devices, processes, me = jax.device_count(), jax.process_count(), jax.process_index()
  sizes = {"train": len(splits.x_train), "val": len(splits.x_val), "test": len(splits.x_test)}
  small = [f"{k} ({n})" for k, n in sizes.items() if n < devices]
  if small:
    raise UserError(
      f"the {', '.join(small)} split(s) hold fewer samples than the {devices} devices; use "
      "fewer devices (--mesh) or more data."
    )

  def cut(a):
    return None if a is None else a[: len(a) // devices * devices]

  def part(a):  # this process's consecutive part of the cut split
    a = cut(a)
    per = len(a) // processes
    return shd.from_process_local(a[me * per : (me + 1) * per], mesh)

  kept = {k: n // devices * devices for k, n in sizes.items()}
  dropped = ", ".join(f"{k} {sizes[k]} → {kept[k]}" for k in sizes if kept[k] != sizes[k])
  say(
    f"data-parallel over {devices} devices ({processes} process(es))"
    + (f"; splits cut to a multiple of {devices}: {dropped}" if dropped else "")
  )
  return dataclasses.replace(
    splits,
    x_train=part(splits.x_train),
    y_train=cut(splits.y_train),
    y_train_clean=cut(splits.y_train_clean),
    noise_mask=cut(splits.noise_mask),
    x_val=part(splits.x_val),
    y_val=cut(splits.y_val),
    y_val_clean=cut(splits.y_val_clean),
    x_test=part(splits.x_test),
    y_test=cut(splits.y_test),
    train_indices=cut(splits.train_indices),
    val_indices=cut(splits.val_indices),
  )


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
