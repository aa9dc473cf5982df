"""Curvature trust scores and the NNX API on global arrays sharded over 8 CPU devices
equal one device's results; NNX data-parallel training equals one device and the Linen
twin (child: tests/sharding_nnx_child.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sap_jax.trusted import curvature_layout
from tests.child_processes import run_devices_child


@pytest.fixture(scope="module")
def child(tmp_path_factory) -> dict:
  out = tmp_path_factory.mktemp("sharding_nnx") / "out.json"
  run_devices_child(["tests.sharding_nnx_child", str(out)], devices=8)
  return json.loads(out.read_text())


def _close(a, b, atol=1e-5, rtol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol)


def _trees_close(one: dict, many: dict, **tol):
  assert list(many) == list(one)
  for path in one:
    _close(many[path], one[path], **tol)


@pytest.mark.parametrize("kind", ["curvature", "curvature_published"])
def test_curvature_scores_on_sharded_arrays_equal_one_device(child, kind):
  one, many = child["curvature"]["one"][kind], child["curvature"]["many"][kind]
  assert len(one) == 96 and np.all(np.asarray(one) > 0)
  assert len(set(one)) == 96  # every sample its own score: the probes differ per row
  # the same probes and batch sizes as one process: equal up to float rounding
  _close(many, one, atol=0, rtol=1e-5)


def test_trusted_sets_by_curvature_on_sharded_arrays_equal_one_device(child):
  one, many = child["curvature"]["one"], child["curvature"]["many"]
  assert many["trusted_sets"] == one["trusted_sets"]
  lowest = np.argsort(one["curvature"], kind="stable")[:20]
  assert sorted(one["trusted_sets"]["curvature"]) == sorted(lowest.tolist())
  assert len(one["trusted_sets"]["curvature_published"]) == 3 * (20 // 3 + 1)  # per class


@pytest.mark.parametrize("n, shards, batch", [(96, 8, 7), (96, 8, 20), (96, 8, 12), (96, 8, 500)])
@pytest.mark.parametrize("extra", [0, 1])
def test_curvature_layout_gives_every_sample_its_row_of_its_batch_once(n, shards, batch, extra):
  n = n * (1 + extra) + extra  # also 193 samples: not a multiple of the devices
  stream, size, b = curvature_layout(n, batch, shards)
  assert b == min(batch, n) and size == shards * b  # one process's batch on each device
  batches = stream.reshape(-1, b)
  assert len(batches) % shards == 0 and len(batches) - shards < -(-n // b) <= len(batches)
  seen = []
  for i, row in enumerate(batches):
    real = max(0, min(b, n - i * b))
    np.testing.assert_array_equal(row[:real], i * b + np.arange(real))  # one process's rows
    assert (row[real:] == 0).all()  # the padding: sample 0, its scores dropped
    seen.extend(row[:real].tolist())
  assert seen == list(range(n))  # every sample once


def test_nnx_losses_and_evaluation_on_sharded_arrays_equal_one_device(child):
  one, many = child["nnx"]["one"], child["nnx"]["many"]
  _close(many["losses"], one["losses"])
  assert many["eval"]["accuracy"] == one["eval"]["accuracy"]
  _close(many["eval"]["loss"], one["eval"]["loss"])


def test_nnx_run_sap_on_sharded_arrays_equals_one_device(child):
  one, many = child["nnx"]["one"]["sap"], child["nnx"]["many"]["sap"]
  assert one["alpha"] is not None  # the case has a winning α
  assert max(one["val"]) > one["baseline"]
  for key in ("alpha", "trusted", "val", "baseline", "rows", "skipped"):
    assert many[key] == one[key], key
  assert len(one["trusted"]) == 37
  # Gram matrices summed per device, then combined: float32 rounding in another order,
  # which the eigenvectors of small eigenvalues amplify (≈ 1e-4 relative at α = 300)
  _trees_close(one["model"], many["model"], atol=3e-4, rtol=3e-4)


def test_nnx_stats_on_local_batches_and_sweep_on_sharded_split_equal_one_device(child):
  one, many = child["nnx"]["one"]["sweep"], child["nnx"]["many"]["sweep"]
  assert many == one


def test_nnx_correct_on_sharded_trusted_inputs_equals_one_device(child):
  _trees_close(child["nnx"]["one"]["correct"], child["nnx"]["many"]["correct"])


def test_nnx_data_parallel_training_equals_one_device_and_the_linen_twin(child):
  run = child["train"]
  one, many, linen = run["one"], run["many"], run["linen_many"]
  assert any("batch_stats" in path for path in one["variables"])  # BatchNorm synchronised
  assert many["replicated"] and run["global"]["replicated"]
  for other in (many, run["global"], linen):  # mesh=, a sharded x, the Linen twin
    assert [set(e) for e in other["history"]] == [set(e) for e in one["history"]]
    for got, want in zip(other["history"], one["history"]):
      for key in want:
        _close(got[key], want[key], atol=1e-6)
    _trees_close(one["variables"], other["variables"], atol=1e-5)
  assert one["history"][-1]["loss"] < one["history"][0]["loss"]  # it trained
