"""benchmarks/bench_sap.py --quick runs and reports consistent numbers.

No timing is asserted here (timings depend on the machine and its load): only that
the benchmark works, that its last line is the JSON report with every section,
that times are positive and the figures agree with each other, and that the
statistics' FLOP count equals Σ rows·d² derived independently from the digits
CNN's layer shapes. (The shifted-product conv Gram path that the benchmark exercises
is tested against the loop im2col Gram in tests/test_stats_gram.py.)
"""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("losses", "select", "stats", "decompose", "apply_alpha")


@pytest.fixture(scope="module")
def report():
  proc = subprocess.run(
    # The digits CNN only: the quick ResNet18 adds about 45 s of compilation and no code
    # path of the benchmark that the CNN does not take.
    [
      sys.executable,
      os.path.join(ROOT, "benchmarks", "bench_sap.py"),
      "--quick",
      "--paths",
      "--models",
      "cnn",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  last = proc.stdout.strip().splitlines()[-1]
  return json.loads(last)


def test_report_has_every_section(report):
  assert report["quick"] is True
  for key in (
    "settings",
    "device",
    "conventions",
    "models",
    "scaling",
    "digits",
    "goals",
    "total_wall_s",
  ):
    assert key in report, key
  assert report["device"]["platform"] and report["device"]["device_kind"]
  assert set(report["models"]) == {"cnn"}
  for name, m in report["models"].items():
    for key in ("unit_forward", *PHASES, "correction", "stats_flops", "sweep"):
      assert key in m, (name, key)
  cnn = report["models"]["cnn"]
  assert "svd_vs_eigh" in cnn and "correction_row_budget" in cnn
  for goal in report["goals"].values():
    assert {"value", "target", "met"} <= set(goal)


def test_times_are_positive_and_consistent(report):
  for name, m in report["models"].items():
    assert m["unit_forward"]["time_s"] > 0
    for p in PHASES:
      ph = m[p]
      assert ph["time_s"] >= 0 and ph["wall_s"] >= ph["time_s"] - 1e-9
      assert ph["compile_in_call_s"] >= 0
    for p in ("stats", "decompose", "apply_alpha"):
      assert m[p]["time_s"] > 0, (name, p)
    corr = m["correction"]
    total = m["stats"]["time_s"] + m["decompose"]["time_s"] + m["apply_alpha"]["time_s"]
    assert corr["time_s"] == pytest.approx(total, abs=2e-3)
    assert corr["forward_passes"] == pytest.approx(
      corr["time_s"] / m["unit_forward"]["time_s"], rel=0.02, abs=0.02
    )
    mem = corr["memory"]
    assert mem["peak_rss_mb"] >= mem["baseline_rss_mb"] > 0
    sw = m["sweep"]
    assert sw["k"] == len(report["settings"]["alphas"])
    assert sw["time_s"] > 0 and sw["one_evaluation_s"] > 0
    assert sw["decompose_plus_k_evaluations_s"] == pytest.approx(
      m["decompose"]["time_s"] + sw["k"] * sw["one_evaluation_s"], abs=2e-3
    )
  sc = report["scaling"]
  assert [p["n_trusted"] for p in sc["points"]] == report["settings"]["scaling"]
  for p in sc["points"]:
    assert p["time_s"] > 0 and p["peak_rss_mb"] >= p["baseline_rss_mb"] > 0
  d = report["digits"]
  assert d["train_s"] > 0 and d["sap_steady_s"] > 0 and d["train_steady_s"] > 0
  assert d["ratio_steady"] == pytest.approx(d["sap_steady_s"] / d["train_steady_s"], rel=0.01)


def test_flops_match_independent_count_and_rates(report):
  # Digits CNN (width 32): conv(32) → conv(64, stride 2) → conv(128, stride 2), 3×3,
  # padding k // 2 (so a stride-2 conv maps L to ceil(L / 2)), then mean → head.
  # Count the rows (output positions) and d = 9·C_in from the parameter shapes alone.
  import sap_jax.models as models

  model = models.get("cnn", 10, width=32)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))
  )
  params = shapes["params"]
  n = report["settings"]["n_trusted"]
  size, want = 8, {}
  for name, stride in (("block1", 1), ("block2", 2), ("block3", 2)):
    kh, kw, cin, _ = params[name]["conv"]["kernel"].shape
    size = math.ceil(size / stride)
    want[f"{name}/conv"] = (n * size * size, kh * kw * cin)
  want["head"] = (n, params["head"]["kernel"].shape[0])
  f = report["models"]["cnn"]["stats_flops"]
  assert {k: (v["rows"], v["dim"]) for k, v in f["layers"].items()} == want
  nominal = sum(2 * rows * d * d for rows, d in want.values())
  assert f["nominal_flops"] == nominal
  assert 0 < f["executed_flops"] <= f["nominal_flops"]
  stats_time = report["models"]["cnn"]["stats"]["time_s"]
  assert f["nominal_gflops_per_s"] == pytest.approx(nominal / stats_time / 1e9, rel=0.05)
  for m in report["models"].values():
    sf = m["stats_flops"]
    assert sf["matmul"]["gflops"] > 0
    assert 0 < sf["executed_flops"] <= sf["nominal_flops"]
    assert sf["nominal_vs_matmul"] == pytest.approx(
      sf["nominal_gflops_per_s"] / sf["matmul"]["gflops"], rel=0.02
    )


def test_every_path_is_timed_and_scored(report):
  for name, m in report["models"].items():
    paths = m["paths"]
    for path in ("eigh", "eigh-parallel", "auto", "auto-parallel", "rows+auto", "qr"):
      e = paths[path]
      unit = e.get("unit_forward_s", m["unit_forward"]["time_s"])  # each path's own unit
      c, sw = e["correction"], e["sweep"]
      assert c["time_s"] == pytest.approx(
        e["stats_s"] + c["decompose_s"] + c["apply_alpha_s"], abs=2e-3
      )
      assert c["forward_passes"] == pytest.approx(c["time_s"] / unit, rel=0.02, abs=0.02)
      assert sw["stats_plus_sweep_s"] == pytest.approx(e["stats_s"] + sw["time_s"], abs=2e-3)
      assert len(sw["accuracies"]) == len(report["settings"]["alphas"])
      assert set(sw["methods"]) == set(m["stats_flops"]["layers"])
      assert set(sw["methods"].values()) <= {"eigh", "solve", "svd"}
    assert set(paths["eigh"]["sweep"]["methods"].values()) == {"eigh"}
    assert paths["eigh"]["workers"] == 1 and paths["auto"]["workers"] == 1
    assert paths["eigh-parallel"]["workers"] == paths["parallel_workers"] >= 1
    # Layers decomposed at once give the very same model as one after another.
    for serial in ("eigh", "auto"):
      a, z = paths[serial]["sweep"], paths[f"{serial}-parallel"]["sweep"]
      assert (z["accuracies"], z["best_alpha"]) == (a["accuracies"], a["best_alpha"]), name
    assert set(paths["serial_over_parallel"]) == {
      "eigh_decompose",
      "eigh_sweep",
      "auto_decompose",
      "auto_sweep",
    }
    assert set(paths["qr"]["sweep"]["methods"].values()) == {"svd"}
    # Every path scores the same model up to float tolerance: the same accuracies.
    for path in ("auto", "rows+auto", "qr"):
      assert paths[path]["sweep"]["max_accuracy_diff_vs_eigh"] <= 0.05, (name, path)


def test_basis_accuracy_table(report):
  errors = report["basis_accuracy"]["errors"]
  assert set(errors) == {"100", "30000", "1e+06"}
  for row in errors.values():
    assert set(row) == {"gram_eigh", "gram_solve", "qr", "svd"}
    assert row["qr"] < 1e-4 and row["svd"] < 1e-4
  assert errors["1e+06"]["qr"] < 1e-3 * errors["1e+06"]["gram_eigh"]
