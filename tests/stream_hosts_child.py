"""Child of tests/test_streaming.py: process I of 2 (4 CPU devices each, `jax.distributed`
on 127.0.0.1:PORT) streams an image folder through the feeder over the 8 devices: it
trains on it, then corrects the parent's model (DIR/variables.msgpack) with SAP. Each process
counts the samples it reads and writes them, with its results, to DIR/proc{I}.json.

``python -m tests.stream_hosts_child DIR I PORT``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(work: Path, index: int, port: int) -> None:
  import jax

  jax.config.update("jax_num_cpu_devices", 4)
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=index)

  import numpy as np
  from flax import serialization

  from sap_jax import sharding as shd
  from sap_jax import source_pipeline
  from sap_jax.train import train_model
  from tests.stream_cases import (
    CountingSource,
    folder_model,
    folder_sources,
    sap_options,
    train_config,
  )

  mesh = shd.data_mesh()
  train, test = (CountingSource(s) for s in folder_sources(work / "folder"))
  model, apply_fn = folder_model()
  trained = train_model(model, train, None, train_config(), mesh=mesh, progress=False)
  train_reads, train.reads = train.reads, []
  variables = serialization.msgpack_restore((work / "variables.msgpack").read_bytes())

  def progress(phase, done, total):
    train.phase = phase if done == 0 else None

  result = source_pipeline.run_sap(
    apply_fn,
    variables,
    train,
    test,
    mesh=mesh,
    eval_splits={"test": test},
    progress=progress,
    **sap_options(),
  )
  out = {
    "train_reads": train_reads,
    "score_reads": train.by_phase["trusted set"],
    "stats_reads": train.by_phase["statistics"],
    "test_reads": test.reads,
    "trained": [np.asarray(a).tolist() for a in jax.tree_util.tree_leaves(trained.variables)],
    "trusted": result.trusted_indices.tolist(),
    "alpha": result.alpha,
    "val": result.sweep.accuracies.tolist(),
    "corrected": [np.asarray(a).tolist() for a in jax.tree_util.tree_leaves(result.variables)],
  }
  (work / f"proc{index}.json").write_text(json.dumps(out))


if __name__ == "__main__":
  main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
