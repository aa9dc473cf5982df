"""benchmarks/bench_sharding.py --quick runs and its figures agree with each other.

No timing is asserted (timings depend on the machine and its load): the bytes are checked
against closed forms derived here from the layers' kernel shapes (the combined Gram
matrices: 4 · (Σ d² + L) bytes, constant in the number of batches and devices; the shared
bases: 4 · Σ (d² + d)), and the spread plan against the layers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report() -> dict:
  proc = subprocess.run(
    [sys.executable, os.path.join(ROOT, "benchmarks", "bench_sharding.py"), "--quick"],
    cwd=ROOT,
    env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _dims(point: dict) -> list[int]:
  """Each layer's d from its kernel shape alone (conv kh·kw·C_in, Dense d_in)."""
  dims = []
  for layer in point["layers"].values():
    d = math.prod(layer["kernel_shape"][:-1])
    assert layer["d"] == d and layer["groups"] == 1 and layer["gram_shape"] == [d, d]
    dims.append(d)
  return dims


def test_report_has_every_device_count(report):
  assert report["quick"] is True
  assert list(report["points"]) == [str(n) for n in report["settings"]["devices"]]
  assert len(report["settings"]["devices"]) >= 2 and min(report["settings"]["devices"]) > 1
  assert set(report["summary"]) == set(report["points"])


def test_statistics_bytes_are_the_combined_grams_once_constant_in_batches(report):
  for n, point in report["points"].items():
    dims = _dims(point)
    want = 4 * (sum(d * d for d in dims) + len(dims))  # the Gram matrices and the counts
    by_batches = point["stats_by_batches"]
    assert list(by_batches) == [str(b) for b in report["settings"]["batches"]]
    for nb, fig in by_batches.items():
      assert fig["stats_step"]["collectives"] == []  # nothing crosses per batch
      assert fig["stats_combine"]["collectives"] == [["all-reduce", want]], (n, nb)
      assert fig["bytes"] == want
      ring = 2 * (int(n) - 1) / int(n) * want
      assert fig["ring_bytes_per_device"] == pytest.approx(ring)
    assert report["summary"][n]["stats_bytes_constant_in_batches"] is True


def test_bytes_per_correction_are_the_same_at_every_device_count(report):
  totals = set()
  for point in report["points"].values():
    dims = _dims(point)
    spread = point["programs"]["spread_eigh"]
    assert spread["collectives"] == [["all-reduce", 4 * sum(d * d + d for d in dims)]]
    stats = point["stats_by_batches"][str(report["settings"]["batches"][0])]["bytes"]
    assert point["bytes_per_correction"] == stats + spread["bytes"]
    totals.add(point["bytes_per_correction"])
  assert len(totals) == 1


def test_only_small_things_cross_in_scoring_and_sweep(report):
  for n, point in report["points"].items():
    prog = point["programs"]
    bs = point["bytes_per_run_sap_settings"]["batch_size"]
    assert prog["losses"]["collectives"] == [] and prog["project"]["collectives"] == []
    assert prog["losses_to_host"]["collectives"] == [["all-gather", 4 * bs]]  # the batch's
    ring = (int(n) - 1) / int(n) * 4 * bs  # each device sends its part to the others
    assert prog["losses_to_host"]["ring_bytes_per_device"] == pytest.approx(ring)
    assert (
      prog["eval_batch"]["bytes"] == 12
    )  # the correct count, the loss sum, the softmax-like rows
    assert point["bytes_per_run_sap"] > point["bytes_per_correction"]


def test_each_layer_eigh_is_planned_on_one_device_and_matches_one_device(report):
  for n, point in report["points"].items():
    plan = point["plan"]
    assert len(plan) == int(n)
    assert sorted(i for row in plan for i in row if i >= 0) == list(range(len(point["layers"])))
    assert point["checks"]["spread_max_abs_diff"] < 1e-5
    assert point["checks"]["stats_max_rel_diff"] < 1e-5


def test_times_and_ratios_agree(report):
  for n, point in report["points"].items():
    t = point["times_s"]
    assert all(v > 0 for v in t.values())
    r = report["summary"][n]
    assert r["ratio_eigh_spread"] == pytest.approx(t["eigh_spread"] / t["eigh_one"], abs=1e-3)
    assert r["ratio_stats"] == pytest.approx(t["stats_mesh"] / t["stats_one"], abs=1e-3)
