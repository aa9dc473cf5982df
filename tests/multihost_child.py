"""Child program of tests/test_multihost.py: process I of 2 joined by `jax.distributed` on
127.0.0.1:PORT, 4 CPU devices each (`tests.child_processes.run_process_group` appends
I and PORT). One process group for everything, as each costs seconds to start:

``python -m tests.multihost_child DIR EPOCHS I PORT``:

1. examples/pod_sap.py (which joins the processes); process 0 writes its summary to
   DIR/example.json;
2. the command line, ``--distributed``: ``train`` (DIR/ckpt), ``evaluate`` (process 0
   writes its output to DIR/evaluate.json), ``correct`` (DIR/corrected and its report),
   then ``correct`` with another
   ``--n-trusted`` on each process, and ``train`` with a batch the 8 devices do not
   divide (each refused on both: ``cli exit: 2``);
3. the library with inputs that differ between the processes: model variables to
   `run_sap` and a training config to `train_model`; then `train_model` on a global
   array split along its features, and with a batch the 8 devices do not divide (each
   error caught and printed as ``caught: …``); then α grids to `run_sap`, uncaught, so
   both processes exit with that error.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

CLI_TRAIN = (
  *("train", "--dataset", "digits", "--model", "mlp", "--model-kw", "width=16"),
  *("--model-kw", "depth=1", "--epochs", "1", "--batch-size", "64", "--seed", "3", "--quiet"),
)

CLI_CORRECT = ("--n-trusted", "64", "--alphas", "1e2,1e3,1e4", "--no-figure", "--quiet")


def example(out: Path, epochs: str, index: int, port: int) -> None:
  from examples import pod_sap

  pod_sap.main(
    [
      *("--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"),
      *("--process-id", str(index), "--cpu-devices", "4", "--epochs", epochs),
      *("--n-trusted", "128", "--alphas", "1e2,1e3,1e4,1e5", "--out", str(out)),
    ]
  )


def command_line(work: Path, index: int) -> None:
  from sap_jax import cli

  def run(*args: str) -> int:
    return cli.main(["--compilation-cache", "off", *args, "--distributed"])

  ckpt = str(work / "ckpt")
  assert run(*CLI_TRAIN, "--out", ckpt) == 0
  text = io.StringIO()
  with contextlib.redirect_stdout(text):
    assert run("evaluate", ckpt) == 0
  if index == 0:
    (work / "evaluate.json").write_text(text.getvalue())
  assert run("correct", ckpt, "--out", str(work / "corrected"), *CLI_CORRECT) == 0
  code = run("correct", ckpt, "--out", str(work / "sap"), "--n-trusted", str(64 + index))
  print(f"cli exit: {code}", flush=True)
  code = run(*CLI_TRAIN, "--batch-size", "100", "--out", str(work / "indivisible"))
  print(f"cli exit: {code}", flush=True)


def disagree(index: int) -> None:
  import jax
  import numpy as np

  import sap_jax
  from sap_jax import sharding as shd
  from sap_jax.train import TrainConfig, train_model
  from tests.sharding_child import case
  from tests.train_cases import TinyMLP, blobs

  apply_fn, variables, x, y, xv, yv = case()
  mesh = shd.data_mesh()
  half = slice(index * len(x) // 2, (index + 1) * len(x) // 2)
  vhalf = slice(index * len(xv) // 2, (index + 1) * len(xv) // 2)
  xs, ys = shd.from_process_local(x[half], mesh), shd.from_process_local(y[half], mesh)
  xvs, yvs = shd.from_process_local(xv[vhalf], mesh), shd.from_process_local(yv[vhalf], mesh)
  kw = dict(n_trusted=32, batch_size=16, alphas=(10.0, 100.0))
  mine = jax.tree_util.tree_map(lambda a: np.asarray(a) + 1e-3 * index, variables)
  try:
    sap_jax.run_sap(apply_fn, mine, xs, ys, xvs, yvs, **kw)
  except ValueError as e:
    print(f"caught: {e}", flush=True)
  xb, yb = blobs(64)
  try:
    train_model(TinyMLP(), xb, yb, TrainConfig(epochs=1, batch_size=16, seed=index), mesh=mesh)
  except ValueError as e:
    print(f"caught: {e}", flush=True)
  sideways = jax.make_array_from_process_local_data(  # samples whole, features split
    jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data")),
    np.zeros((64, 4), np.float32),
  )
  for bad_x, batch in ((sideways, 16), (xb, 36)):
    try:
      train_model(TinyMLP(), bad_x, yb, TrainConfig(epochs=1, batch_size=batch), mesh=mesh)
    except ValueError as e:
      print(f"caught: {e}", flush=True)
  kw["alphas"] = (10.0, 100.0 * (1 + index))
  sap_jax.run_sap(apply_fn, variables, xs, ys, xvs, yvs, **kw)  # raises on both processes


if __name__ == "__main__":
  work, epochs, i, p = sys.argv[1:]
  example(Path(work) / "example.json", epochs, int(i), int(p))  # joins the processes
  command_line(Path(work), int(i))
  disagree(int(i))
