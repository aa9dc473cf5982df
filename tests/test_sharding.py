"""SAP on sharded global arrays: 8 CPU devices in one process, and 2 processes × 4 devices
joined by `jax.distributed` on localhost (children: tests/sharding_child.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import sap_jax
from sap_jax import sharding as shd
from sap_jax.spread_eigh import assign_layers
from tests import sharding_child as child

ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_S = 240  # far above the ~20 s a child takes on 2 loaded cores


def _env(**extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return {**env, "JAX_PLATFORMS": "cpu", **extra}


@pytest.fixture(scope="module")
def devices(tmp_path_factory) -> dict:
  out = tmp_path_factory.mktemp("devices") / "out.json"
  proc = subprocess.run(
    [sys.executable, "-m", "tests.sharding_child", "devices", str(out)],
    cwd=ROOT,
    env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
    capture_output=True,
    text=True,
    timeout=CHILD_TIMEOUT_S,  # subprocess.run kills the child when it passes
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(out.read_text())


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
  out = tmp_path_factory.mktemp("processes") / "out.json"
  port = _free_port()
  logs = [tmp_path_factory.mktemp(f"log{i}") / "log.txt" for i in range(2)]
  procs = []
  try:
    for i in range(2):
      with open(logs[i], "w") as log:
        procs.append(
          subprocess.Popen(
            [sys.executable, "-m", "tests.sharding_child", "process", str(i), str(port), str(out)],
            cwd=ROOT,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
          )
        )
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
  finally:
    for p in procs:  # every child ends, also when one failed or hung
      if p.poll() is None:
        p.kill()
        p.wait(timeout=30)
  codes = [p.returncode for p in procs]
  assert codes == [0, 0], f"exit codes {codes}: " + logs[0].read_text()[-3000:]
  return json.loads(out.read_text())


def _close(a, b, atol=1e-5, rtol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol)


# --- 8 devices in one process --------------------------------------------------------------


@pytest.mark.parametrize("budget", [None, 100])
@pytest.mark.parametrize("variant", ["", "_local"])
def test_stats_on_sharded_batches_equal_one_device(devices, budget, variant):
  one = devices["one"][f"stats_budget_{budget}"]
  many = devices["many"][f"stats_budget_{budget}{variant}"]
  assert list(many) == list(one)
  for path in one:
    # same rows (the budget draws per global sample index), so the same count exactly
    assert many[path]["count"] == one[path]["count"]
    scale = np.abs(np.asarray(one[path]["gram"])).max()
    _close(many[path]["gram"], one[path]["gram"], atol=1e-5 * scale)


def test_budget_keeps_fewer_rows_than_all(devices):
  full = devices["one"]["stats_budget_None"]["Conv_0"]["count"]
  kept = devices["one"]["stats_budget_100"]["Conv_0"]["count"]
  assert kept < full


def test_per_batch_program_has_no_collective_and_combine_one_per_layer(devices):
  coll = devices["collectives"]
  assert coll["step"] == []  # each device adds to its own partial sums
  # One all-reduce per run, XLA-combined: one d×d operand per layer, one for the counts.
  grams = devices["one"]["stats_budget_None"]
  dims = sorted([len(g["gram"])] * 2 for g in grams.values())
  assert [kind for kind, _ in coll["combine"]] == ["all-reduce"]
  shapes = coll["combine"][0][1]
  assert sorted(s for s in shapes if len(s) == 2) == dims
  assert [s for s in shapes if len(s) != 2] == [[len(grams)]]


def test_losses_evaluation_and_logits_equal_one_device(devices):
  one, many = devices["one"], devices["many"]
  _close(many["losses"], one["losses"])
  assert many["eval"]["accuracy"] == one["eval"]["accuracy"]
  _close(many["eval"]["loss"], one["eval"]["loss"])
  _close(many["logits"], one["logits"])


@pytest.mark.parametrize("budget", [None, 50])
def test_run_sap_on_sharded_arrays_equals_one_device(devices, budget):
  one, many = devices["one"][f"sap_{budget}"], devices["many"][f"sap_{budget}"]
  assert many["trusted"] == one["trusted"]
  assert many["alpha"] == one["alpha"]
  assert many["val"] == one["val"]
  assert many["rows"] == one["rows"]
  for path in one["spectra"]:
    _close(many["spectra"][path], one["spectra"][path], atol=1e-6)
  for path in one["corrected"]:
    _close(many["corrected"][path], one["corrected"][path])
  assert devices["many"][f"sap_{budget}_replicated"]


def test_per_layer_tuning_on_sharded_arrays_equals_one_device(devices):
  one, many = devices["one"]["tuned"], devices["many"]["tuned"]
  assert one is not None and set(one) == set(many)
  for name, alpha in one.items():
    assert many[name] == pytest.approx(alpha, rel=1e-4)


def test_sensitivity_and_influence_on_sharded_arrays_equal_one_device(devices):
  one, many = devices["one"], devices["many"]
  assert set(one["sensitivity"]) == set(many["sensitivity"])
  for name, g in one["sensitivity"].items():
    assert many["sensitivity"][name] == pytest.approx(g, rel=1e-4, abs=1e-9)
  np.testing.assert_allclose(many["influence"], one["influence"], rtol=1e-4, atol=1e-9)


def test_correct_on_sharded_trusted_inputs_equals_one_device(devices):
  one, many = devices["one"]["correct"], devices["many"]["correct"]
  assert list(many) == list(one)
  for path in one:
    _close(many[path], one[path])


def test_data_parallel_training_equals_one_device(devices):
  one, many = devices["one"]["train"], devices["many"]["train"]
  _close(many["history"], one["history"], atol=1e-5)
  assert list(many["variables"]) == list(one["variables"])
  assert any("batch_stats" in path for path in one["variables"])  # BatchNorm synchronised
  for path in one["variables"]:
    _close(many["variables"][path], one["variables"][path], atol=1e-5)


def test_spread_eigh_is_bit_identical_to_one_device(devices):
  assert devices["eigh_equal"]


def test_errors_name_the_problem(devices):
  err = devices["errors"]
  assert "cannot be split evenly over the 8 devices" in err["indivisible"]
  assert "multiple of 8" in err["indivisible"]
  for name in ("stats_not_batch", "loss_not_batch"):
    assert "leading axis to be the samples" in err[name]
  assert "12 samples cannot be split evenly" in err["local_batches_indivisible"]
  assert "Non-finite activations" in err["nan_in_later_batch"]


# --- 2 processes × 4 devices --------------------------------------------------------------


def test_run_sap_on_two_processes_equals_one_process(two_processes):
  apply_fn, variables, x, y, xv, yv = child.case()
  one = sap_jax.run_sap(
    apply_fn,
    variables,
    x,
    y,
    xv,
    yv,
    n_trusted=child.N_TRUSTED,
    batch_size=child.BATCH,
    rows_per_batch=50,
    alphas=child.ALPHAS,
  )
  one = child.sap_summary(one, apply_fn, variables)
  many = two_processes
  assert many["trusted"] == one["trusted"]
  assert many["alpha"] == one["alpha"]
  assert many["val"] == one["val"]
  assert many["rows"] == one["rows"]
  for path in one["corrected"]:
    _close(many["corrected"][path], one["corrected"][path])


def test_training_on_two_processes_equals_one_process(two_processes):
  one, many = child.train_summary(None), two_processes["train"]
  _close(many["history"], one["history"], atol=1e-5)
  for path in one["variables"]:
    _close(many["variables"][path], one["variables"][path], atol=1e-5)


# --- in process (one device) -----------------------------------------------------------------


def test_assign_layers_largest_first_to_least_loaded():
  assert assign_layers([1.0, 8.0, 27.0, 64.0], 2) == [[3], [2, 1, 0]]
  assert assign_layers([5.0, 5.0], 4) == [[0], [1], [], []]


def test_host_and_single_device_arrays_are_not_global():
  x = np.zeros((4, 2), np.float32)
  assert shd.data_axis_of(x) is None
  assert shd.data_axis_of(jax.numpy.asarray(x)) is None
  mesh = shd.data_mesh(jax.devices()[:1])
  assert not shd.is_global(shd.shard_batch(x, mesh))  # one device holds it whole


def test_collectives_parses_tuple_and_single_operands():
  hlo = (
    "%all-reduce = (f32[18,18]{1,0}, f32[3]{0}) all-reduce(%a, %b), channel_id=1\n"
    "%ag = bf16[8,4]{1,0} all-gather(%c), dimensions={0}\n"
    "%x = f32[2]{0} add(%d, %e)\n"
  )
  got = shd.collectives(hlo)
  assert [(c.kind, c.shapes) for c in got] == [
    ("all-reduce", (("f32", (18, 18)), ("f32", (3,)))),
    ("all-gather", (("bf16", (8, 4)),)),
  ]
  assert got[0].bytes == 4 * (18 * 18 + 3) and got[1].bytes == 2 * 32


def test_check_divides_names_the_fix():
  mesh = shd.data_mesh(jax.devices()[:1])
  assert shd.check_divides(6, mesh) == 6
  with pytest.raises(ValueError, match="no 'model' axis"):
    shd.num_shards(mesh, "model")
