"""SAP over every device of a TPU pod or a multi-GPU cluster: train, correct, evaluate.

Run the same command on every host (one process per host):

    python examples/pod_sap.py

`jax.distributed.initialize()` finds the other hosts itself on Cloud TPU, SLURM and
Open MPI clusters; elsewhere name the coordinator (any host's address and a free port):

    python examples/pod_sap.py --coordinator HOST0:1234 --num-processes 4 --process-id I

Try it on one machine: 2 processes with 4 CPU devices each (what tests/test_multihost.py
runs), or one process with 8 CPU devices (the same result):

    python examples/pod_sap.py --coordinator 127.0.0.1:1234 --num-processes 2 \\
        --process-id 0 --cpu-devices 4 --epochs 20 &
    python examples/pod_sap.py --coordinator 127.0.0.1:1234 --num-processes 2 \\
        --process-id 1 --cpu-devices 4 --epochs 20
    python examples/pod_sap.py --single-process --cpu-devices 8 --epochs 20

Every array below is a global `jax.Array` sharded over a 1-D mesh of all devices: each
host passes only its own consecutive part of every split (`from_process_local`), so no
host ever needs the whole data set on its devices. Training is data-parallel, SAP's
statistics are summed on each device and combined once, the α sweep and the evaluation
run where the data are. Every process runs the same program; only process 0 prints. If
the processes disagree (another seed, another α grid, other weights), every process
raises a ValueError that names the input, instead of hanging.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import jax
import numpy as np


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--coordinator", help="HOST:PORT of process 0 (default: auto-detected)")
  p.add_argument("--num-processes", type=int, help="how many processes (default: detected)")
  p.add_argument("--process-id", type=int, help="this process's index (default: detected)")
  p.add_argument("--single-process", action="store_true", help="no jax.distributed: one host")
  p.add_argument("--cpu-devices", type=int, help="simulate N CPU devices in this process")
  p.add_argument("--epochs", type=int, default=100, help="training epochs (100: memorised)")
  p.add_argument("--n-trusted", type=int, default=500, help="trusted-set size")
  p.add_argument("--alphas", default="1e1,1e2,1e3,1e4,3e4,1e5", help="α grid")
  p.add_argument("--seed", type=int, default=0, help="seeds the noise and the training")
  p.add_argument("--out", help="process 0 writes the results here (JSON)")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  if args.cpu_devices:  # before JAX starts its backends
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  if not args.single_process:  # JAX's own multi-controller runtime joins the hosts
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)

  import sap_jax
  from sap_jax import sharding as shd
  from sap_jax.spec import RunSpec, build_splits
  from sap_jax.train import TrainConfig, eval_apply_fn, evaluate, train_model

  # Every host builds the same noisy splits (same seed) and keeps its own part.
  splits = build_splits(RunSpec(dataset="digits", noise="symmetric:0.25", seed=args.seed))
  mesh = shd.data_mesh()  # every device of every process, one axis "data"
  devices, hosts, me = jax.device_count(), jax.process_count(), jax.process_index()

  def global_array(a: np.ndarray) -> jax.Array:
    n = len(a) // devices * devices  # the mesh must divide the samples: drop the rest
    part = n // hosts  # this host's consecutive part
    return shd.from_process_local(a[me * part : (me + 1) * part], mesh)

  x_train, y_train = global_array(splits.x_train), global_array(splits.y_train)
  x_val, y_val = global_array(splits.x_val), global_array(splits.y_val)
  x_test, y_test = global_array(splits.x_test), global_array(splits.y_test)

  # 1. Train on the noisy labels, data-parallel over the mesh of the data.
  model = sap_jax.models.get("cnn", splits.num_classes)
  config = TrainConfig(epochs=args.epochs, batch_size=64, learning_rate=0.05, seed=args.seed)
  trained = train_model(model, x_train, y_train, config, progress=False)

  # 2. SAP: trusted set, statistics, α chosen on the noisy validation split.
  apply_fn = eval_apply_fn(model)
  alphas = tuple(float(a) for a in args.alphas.split(","))
  result = sap_jax.run_sap(
    apply_fn,
    trained.variables,
    x_train,
    y_train,
    x_val,
    y_val,
    n_trusted=args.n_trusted,
    alphas=alphas,
    batch_size=256,
    eval_splits={"test": (x_test, y_test)},
  )

  # 3. Evaluate on the sharded clean test split.
  before = evaluate(apply_fn, trained.variables, x_test, y_test)["accuracy"]
  after = evaluate(apply_fn, result.variables, x_test, y_test)["accuracy"]
  summary = {
    "devices": devices,
    "processes": hosts,
    "samples": {"train": x_train.shape[0], "val": x_val.shape[0], "test": x_test.shape[0]},
    "train_loss": [h["loss"] for h in trained.history],
    "alpha": result.alpha,
    "val_accuracy_per_alpha": [float(a) for a in result.sweep.splits["val"].accuracies],
    "test_accuracy_per_alpha": [float(a) for a in result.sweep.splits["test"].accuracies],
    "test_before": before,
    "test_after": after,
  }
  if me == 0:
    alpha = "none (kept the model)" if result.alpha is None else f"{result.alpha:g}"
    print(f"{hosts} processes, {devices} devices; {x_train.shape[0]} training samples")
    print(f"clean test accuracy {100 * before:.2f}% → SAP (α {alpha}) {100 * after:.2f}%")
    if args.out:
      with open(args.out, "w") as f:
        json.dump(summary, f)
  return summary


if __name__ == "__main__":
  main()
