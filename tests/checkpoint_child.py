"""Child program of tests/test_checkpoint_processes.py: checkpoints on 2 processes.

``python -m tests.checkpoint_child group OUT I PORT``: process I of 2 joined by
`jax.distributed.initialize` on 127.0.0.1:PORT, 4 CPU devices each (8 in all, a 2 × 4
mesh ``("data", "model")``). Every process, in order:

1. saves `case()` as global arrays (a replicated leaf, a leaf sharded over all 8 devices,
   a bfloat16 leaf split over the "model" axis, numpy leaves) to OUT/ckpt, then saves
   again over it without ``overwrite`` and with it but protected (both refused), and
   overwrites OUT/second (saved first) with the values plus one;
2. restores OUT/ckpt into other shardings (`TARGET`) and with the default rule, gathers
   every array and records its bytes' SHA-256 and its sharding;
3. process 0 copies OUT/ckpt to OUT/damaged and flips 4 bytes in the middle of its
   largest data file (in the rows of "shard" that process 1 reads back, with the saved
   shardings); both load it.

Each process writes what it saw to OUT/result{I}.json; the test compares.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

AXES = ("data", "model")


def case() -> dict:
  """The variables every process saves (host values; the same on every process)."""
  import ml_dtypes

  rng = np.random.default_rng(0)
  return {
    "params": {
      "rep": rng.normal(size=(3, 5)).astype(np.float32),
      "shard": rng.normal(size=(64, 32)).astype(np.float32),
      "bf": rng.normal(size=(4, 8)).astype(ml_dtypes.bfloat16),
    },
    "batch_stats": {
      "count": np.array(7, np.int32),
      "mean": np.array([0.1, -0.2, 0.3], np.float32),
    },
  }


SAVED_SPECS = {"rep": (), "shard": (AXES,), "bf": (None, "model")}
TARGET_SPECS = {"rep": (), "shard": ("data", "model"), "bf": ("data", None)}


def byte_digest(a) -> str:
  a = np.asarray(a)
  return hashlib.sha256(f"{a.dtype.name}|{list(a.shape)}|".encode() + a.tobytes()).hexdigest()


def tree_files(root: Path) -> dict[str, str]:
  return {
    str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(root.rglob("*"))
    if p.is_file()
  }


def flip_bytes(path: Path) -> None:
  data = bytearray(path.read_bytes())
  mid = len(data) // 2
  for i in range(mid, mid + 4):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


def group(out: str, index: int, port: int) -> None:
  import jax

  jax.config.update("jax_num_cpu_devices", 4)
  jax.distributed.initialize(
    f"127.0.0.1:{port}", num_processes=2, process_id=index, initialization_timeout=60
  )
  from jax.experimental import multihost_utils
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  from sap_jax import checkpoint, multihost, provenance, safe_write

  assert jax.device_count() == 8 and jax.local_device_count() == 4
  out_dir = Path(out)
  mesh = Mesh(np.asarray(jax.devices()).reshape(2, 4), AXES)
  host = case()

  def put(a, spec):
    return jax.make_array_from_callback(a.shape, NamedSharding(mesh, P(*spec)), a.__getitem__)

  def global_tree(tree):
    params = {k: put(v, SAVED_SPECS[k]) for k, v in tree["params"].items()}
    return {"params": params, "batch_stats": tree["batch_stats"]}

  variables = global_tree(host)
  res: dict = {"process": index}
  # The digest of a sharded array is the host array's, for any sharding.
  a = host["params"]["shard"]
  res["digests"] = [
    provenance.global_digest(put(a, spec)) for spec in [(AXES,), ("model",), (None, "data"), ()]
  ]
  ckpt = out_dir / "ckpt"
  res["saved"] = str(checkpoint.save_checkpoint(ckpt, variables, {"run": 1, "by": index}))
  before = tree_files(ckpt) if index == 0 else {}
  for kw in ({}, {"overwrite": True, "protect": [ckpt]}):
    try:
      checkpoint.save_checkpoint(ckpt, variables, {"run": 2}, **kw)
      res.setdefault("refusals", []).append(None)
    except safe_write.RefusedWrite as e:
      res.setdefault("refusals", []).append(str(e))
  if index == 0:
    res["unchanged"] = tree_files(ckpt) == before
    res["entries"] = sorted(p.name for p in out_dir.iterdir())
  second = out_dir / "second"
  checkpoint.save_checkpoint(second, variables, {"run": 1})
  plus_one = jax.tree.map(lambda v: np.asarray(v + 1), host)
  checkpoint.save_checkpoint(second, global_tree(plus_one), {"run": 2}, overwrite=True)

  def seen(tree) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    report = {}
    for path, leaf in leaves:
      name = "/".join(str(k.key) for k in path)
      whole = (
        multihost_utils.process_allgather(leaf, tiled=True) if isinstance(leaf, jax.Array) else leaf
      )
      report[name] = {
        "digest": byte_digest(whole),
        "type": "jax" if isinstance(leaf, jax.Array) else "numpy",
        "spec": str(leaf.sharding.spec) if isinstance(leaf, jax.Array) else None,
        "replicated": bool(isinstance(leaf, jax.Array) and leaf.sharding.is_fully_replicated),
        "local_rows": sorted(
          {s.index[0].start or 0 for s in leaf.addressable_shards} if leaf.ndim else []
        )
        if isinstance(leaf, jax.Array)
        else None,
      }
    return report

  target = {
    "params": {k: NamedSharding(mesh, P(*s)) for k, s in TARGET_SPECS.items()},
    "batch_stats": None,
  }
  restored, meta = checkpoint.load_checkpoint(ckpt, sharding=target)
  res["target"] = seen(restored)
  res["meta"] = meta
  res["default"] = seen(checkpoint.load_checkpoint(ckpt)[0])
  res["second"] = seen(checkpoint.load_checkpoint(second)[0])
  try:
    checkpoint.load_checkpoint(
      ckpt, sharding={"params": {"shard": NamedSharding(mesh, P(None, "data"))}, "nope": None}
    )
  except ValueError as e:
    res["bad_key"] = str(e)

  indivisible = {"params": {"rep": NamedSharding(mesh, P("model"))}}  # 3 rows over 4
  try:
    checkpoint.load_checkpoint(ckpt, sharding=indivisible)
  except ValueError as e:
    res["indivisible"] = str(e)
  try:  # the processes disagree on the path: refused on both before anything is written
    checkpoint.save_checkpoint(out_dir / f"odd{index}", variables, {})
  except ValueError as e:
    res["disagree"] = str(e)

  damaged = out_dir / "damaged"
  if index == 0:
    shutil.copytree(ckpt, damaged)
    # orbax merges every process's shards into the data files under variables/d/ (the
    # per-process ocdbt.process_* folders are not read back): the largest holds "shard".
    files = list((damaged / "variables" / "d").iterdir())
    victim = max(files, key=lambda p: p.stat().st_size)
    flip_bytes(victim)
    res["victim"] = str(victim.relative_to(damaged))
  multihost_utils.sync_global_devices("damaged")
  saved_sharding = {
    "params": {k: NamedSharding(mesh, P(*s)) for k, s in SAVED_SPECS.items()},
  }
  try:
    checkpoint.load_checkpoint(damaged, sharding=saved_sharding)
    res["damaged"] = None
  except checkpoint.DamagedCheckpoint as e:
    res["damaged"] = str(e)
  # Values changed without a read error: only the checksums can tell.
  changed = out_dir / "changed"
  if index == 0:
    shutil.copytree(ckpt, changed)
    meta_file = changed / checkpoint.METADATA_FILE
    record = json.loads(meta_file.read_text())
    record["checksums"]["params/shard"] = provenance.global_digest(a + np.float32(1e-6))
    meta_file.write_text(json.dumps(record))
  multihost_utils.sync_global_devices("changed")
  try:
    checkpoint.load_checkpoint(changed, sharding=saved_sharding)
    res["changed"] = None
  except checkpoint.DamagedCheckpoint as e:
    res["changed"] = str(e)

  # A step that fails on process 1 only is raised on both, with process 1's message.
  def fails_on_1():
    if index == 1:
      raise safe_write.RefusedWrite(f"only process {index} refuses")
    return "fine"

  for name, step in (("agree", multihost.agree), ("first", multihost.first_decides)):
    try:
      res[name] = ["returned", step(fails_on_1, (safe_write.RefusedWrite,))]
    except safe_write.RefusedWrite as e:
      res[name] = ["raised", str(e)]
  (out_dir / f"result{index}.json").write_text(json.dumps(res, indent=1))
  jax.distributed.shutdown()


if __name__ == "__main__":
  group(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
