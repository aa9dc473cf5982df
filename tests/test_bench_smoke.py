"""benchmarks/bench_sap.py --quick runs and reports consistent numbers.

No timing is asserted here (timings depend on the machine and its load): only that
the benchmark works, that its last line is the JSON report with every section,
that times are positive and the figures agree with each other, and that the
statistics' FLOP count equals Σ rows·d² derived independently from the digits
CNN's layer shapes. Also: the shifted-product conv Gram path that the benchmark
exercises equals the loop im2col Gram of tests/sap_reference.py.
"""

import functools
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

import sap_jax as sj
from sap_jax import stats as st
from tests.sap_reference import im2col

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("losses", "select", "stats", "eigh", "project")


@pytest.fixture(scope="module")
def report():
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "bench_sap.py"), "--quick"],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  last = proc.stdout.strip().splitlines()[-1]
  return json.loads(last)


def test_report_has_every_section(report):
  assert report["quick"] is True
  for key in ("settings", "device", "conventions", "models", "scaling", "digits", "goals", "total_wall_s"):
    assert key in report, key
  assert report["device"]["platform"] and report["device"]["device_kind"]
  assert set(report["models"]) == {"resnet18", "cnn"}
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
    for p in ("stats", "eigh", "project"):
      assert m[p]["time_s"] > 0, (name, p)
    corr = m["correction"]
    total = m["stats"]["time_s"] + m["eigh"]["time_s"] + m["project"]["time_s"]
    assert corr["time_s"] == pytest.approx(total, abs=2e-3)
    assert corr["forward_passes"] == pytest.approx(corr["time_s"] / m["unit_forward"]["time_s"], rel=0.02, abs=0.02)
    mem = corr["memory"]
    assert mem["peak_rss_mb"] >= mem["baseline_rss_mb"] > 0
    sw = m["sweep"]
    assert sw["k"] == len(report["settings"]["alphas"])
    assert sw["time_s"] > 0 and sw["one_evaluation_s"] > 0
    assert sw["eigh_plus_k_evaluations_s"] == pytest.approx(
        m["eigh"]["time_s"] + sw["k"] * sw["one_evaluation_s"], abs=2e-3)
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
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32)))
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
    assert sf["nominal_vs_matmul"] == pytest.approx(sf["nominal_gflops_per_s"] / sf["matmul"]["gflops"], rel=0.02)


SHIFT_CASES = {
    "same_3x3": dict(kernel_size=(3, 3), padding="SAME"),
    "valid_2x3": dict(kernel_size=(2, 3), padding="VALID"),
    "explicit_dilated": dict(kernel_size=(3, 3), kernel_dilation=2, padding=((2, 1), (0, 3))),
    "cropping": dict(kernel_size=(3, 3), padding=((-1, 2), (1, 0))),
    "conv1d": dict(kernel_size=(5,), padding="SAME"),
}


# Geometries where `gram_costs` picks the shifted-product path today; the others
# go through the plain patch GEMM. Either way the Gram must equal im2col's.
FAST_PATH = {"same_3x3", "cropping", "conv1d"}


@pytest.mark.parametrize("case", list(SHIFT_CASES))
def test_shifted_product_gram_equals_im2col_gram(case):
  kw = SHIFT_CASES[case]
  conv = functools.partial(nn.Conv, features=5, **kw)

  class One(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return conv(name="layer")(x)

  model = One()
  shape = (3, 12, 5) if case == "conv1d" else (3, 11, 12, 6)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), shape))
  v = model.init(jax.random.PRNGKey(1), x)
  # The path the cost model picks for this geometry (see FAST_PATH).
  want_method = "shifts" if case in FAST_PATH else "gemm"
  assert [c["method"] for c in st.gram_costs(model.apply, v, x)] == [want_method]
  got = np.asarray(sj.activation_stats(model.apply, v, [x])[("layer",)].gram, np.float64)
  padding = kw["padding"]
  if not isinstance(padding, str):
    padding = [tuple(p) for p in padding]
  if isinstance(padding, list) and any(lo < 0 or hi < 0 for lo, hi in padding):
    # im2col pads only; crop explicitly for negative padding.
    crop = tuple(slice(max(0, -lo), x.shape[1 + i] - max(0, -hi)) for i, (lo, hi) in enumerate(padding))
    x = x[(slice(None),) + crop]
    padding = [(max(0, lo), max(0, hi)) for lo, hi in padding]
  rows, _ = im2col(x, kw["kernel_size"], 1, padding, kw.get("kernel_dilation", 1), 1)
  want = rows.T @ rows
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.abs(want).max())
