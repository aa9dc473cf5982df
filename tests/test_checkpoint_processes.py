"""Checkpoints of global arrays on 2 `jax.distributed` processes (2 × 4 CPU devices).

One process group (tests/checkpoint_child.py) saves sharded variables, is refused over
them, restores them into other shardings and is refused a damaged copy; this process (one
device) then loads what they wrote.
"""

import fcntl
import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

from sap_jax import checkpoint, provenance
from tests.checkpoint_child import TARGET_SPECS, byte_digest, case, flip_bytes
from tests.child_processes import run_process_group


@pytest.fixture(scope="module")
def group(tmp_path_factory):
  """``(out, [result of process 0, result of process 1])``. Run once per test run: the
  pytest-xdist workers share it (a lock in the run's common temporary folder)."""
  base = tmp_path_factory.getbasetemp()
  shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  out = shared / "checkpoint_processes"
  out.mkdir(exist_ok=True)
  with open(out / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not (out / "done").exists():
      run_process_group(["tests.checkpoint_child", "group", str(out)], out / "logs", n=2)
      (out / "done").write_text("")
  return out, [json.loads((out / f"result{i}.json").read_text()) for i in range(2)]


def _names():
  return {
    "/".join(str(k.key) for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(case())[0]
  }


def test_two_processes_restore_into_the_target_sharding_bit_identically(group):
  _, results = group
  host = _names()
  for r in results:
    for mode in ("target", "default"):
      seen = r[mode]
      assert set(seen) == set(host)
      for name, want in host.items():
        assert seen[name]["digest"] == byte_digest(want), (mode, name)  # bit-identical
    target = r["target"]
    for name, spec in TARGET_SPECS.items():
      got = target[f"params/{name}"]
      assert got["type"] == "jax" and got["spec"] == str(jax.sharding.PartitionSpec(*spec))
    # Saved with its 64 rows over all 8 devices, read with rows over "data" (one half
    # per process) and columns over "model": each process holds only its half.
    assert target["params/shard"]["local_rows"] == [32 * r["process"]]
    assert target["params/rep"]["replicated"]
    assert target["batch_stats/count"]["type"] == "numpy"  # numpy leaves stay numpy
    # Without a sharding, jax leaves come back replicated on every device.
    assert all(r["default"][f"params/{n}"]["replicated"] for n in TARGET_SPECS)
    assert r["meta"] == {"run": 1, "by": 0}  # process 0's metadata
    plus_one = {n: byte_digest(np.asarray(v + 1)) for n, v in host.items()}
    assert {n: v["digest"] for n, v in r["second"].items()} == plus_one  # overwritten


def test_the_digest_of_a_sharded_array_does_not_depend_on_the_sharding(group):
  _, results = group
  want = provenance.global_digest(case()["params"]["shard"])
  for r in results:
    assert r["digests"] == [want] * 4


def test_one_process_loads_the_two_process_checkpoint(group):
  out, _ = group
  variables, meta = checkpoint.load_checkpoint(out / "ckpt")
  assert meta == {"run": 1, "by": 0}
  for (path, got), want in zip(
    jax.tree_util.tree_flatten_with_path(variables)[0], jax.tree.leaves(case())
  ):
    assert got.dtype == want.dtype and got.shape == want.shape, path
    assert np.asarray(got).tobytes() == want.tobytes(), path
  assert isinstance(variables["params"]["shard"], jax.Array)  # saved from jax: jax
  assert isinstance(variables["batch_stats"]["count"], np.ndarray)
  record = json.loads((out / "ckpt" / checkpoint.METADATA_FILE).read_text())
  assert set(record["checksums"]) == set(_names())
  assert all(re.fullmatch(r"sum128:[0-9a-f]{32}", v) for v in record["checksums"].values())


def test_refusals_happen_on_both_processes_with_one_message_and_touch_nothing(group):
  out, results = group
  first, second = (r["refusals"] for r in results)
  assert first == second and len(first) == 2
  assert first[0].startswith(f"checkpoint path {out / 'ckpt'} already exists")
  assert "is the input" in first[1]
  assert results[0]["unchanged"]  # every file of the target byte-identical
  assert results[0]["entries"] == ["ckpt", "lock", "logs"]  # no temporary left
  assert results[0]["bad_key"] == results[1]["bad_key"]
  assert "sharding names ['nope']" in results[0]["bad_key"]
  assert results[0]["indivisible"] == results[1]["indivisible"]
  assert "the sharding for params/rep does not fit its shape [3, 5]" in results[0]["indivisible"]
  for r in results:  # each process names what it passed, the rest of the message is one
    assert re.search(r"save_checkpoint: the 2 processes disagree on path", r["disagree"])
  assert not (out / "odd0").exists() and not (out / "odd1").exists()


# orbax leaves a callback of the failed read behind (its event loop closed): not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_checkpoint_is_refused_on_both_processes(group, tmp_path):
  out, results = group
  messages = [r["damaged"] for r in results]
  assert messages[0] is not None and messages[0] == messages[1]
  assert messages[0].startswith(f"damaged checkpoint {out / 'damaged'}: ")
  assert messages[0].endswith("restore it from a copy")
  changed = [r["changed"] for r in results]
  assert changed[0] == changed[1] and "array params/shard does not match its checksum" in (
    changed[0] or ""
  )
  # and on one process
  with pytest.raises(checkpoint.DamagedCheckpoint):
    checkpoint.load_checkpoint(out / "damaged")
  copy = shutil.copytree(out / "ckpt", tmp_path / "copy")
  flip_bytes(copy / results[0]["victim"])
  with pytest.raises(checkpoint.DamagedCheckpoint, match="restore it from a copy"):
    checkpoint.load_checkpoint(copy)


def test_a_step_failing_on_one_process_raises_its_error_on_every_process(group):
  _, results = group
  for r in results:
    assert r["agree"] == ["raised", "only process 1 refuses"]
    assert r["first"] == ["returned", "fine"]  # process 0 decides alone
