"""benchmarks/bench_paper_scale.py --tiny runs on CPU and reports consistent numbers.

No timing is asserted (they depend on the machine and its load): only the JSON report's
structure, that the sizes are the ones asked for, that times are positive, and that the
derived figures (images/s, forward-pass ratios) agree with the times they come from.
"""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = ("vit_b16:cifar", "vit_b16:folder")  # the two data paths; the ViT compiles fastest


@pytest.fixture(scope="module")
def report():
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "benchmarks", "bench_paper_scale.py"),
      "--tiny",
      "--runs",
      ",".join(RUNS),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_report_structure_and_sizes(report):
  assert report["tiny"] is True and set(report["runs"]) == set(RUNS)
  settings = report["settings"]
  assert report["device"]["platform"] == "cpu" and report["total_wall_s"] > 0
  for key, run in report["runs"].items():
    model, data = key.split(":")
    assert (run["model"], run["data"]) == (model, data)
    n = settings["cifar_n"] if data == "cifar" else settings["folder_n"]
    assert run["n_train"] == n and run["image_shape"] == [32, 32, 3]
    assert run["train_steps"] == n // settings["batch_size"]
    assert run["n_trusted"] == min(settings["n_trusted"], n // 2)
    assert run["sap"]["chosen_alpha"] in (None, *settings["alphas"])
  assert report["runs"]["vit_b16:folder"]["n_val"] == 14  # one per class at least


def test_times_are_positive_and_ratios_consistent(report):
  settings = report["settings"]
  for run in report["runs"].values():
    unit, tr, sap = run["unit_forward_s"], run["train"], run["sap"]
    assert unit > 0 and tr["epoch_s"] > 0 and tr["first_epoch_s"] > 0 and sap["warm_s"] > 0
    assert math.isclose(tr["compile_s"], max(0.0, tr["first_epoch_s"] - tr["epoch_s"]))
    assert math.isclose(
      tr["images_per_s"] * tr["epoch_s"], run["train_steps"] * settings["batch_size"]
    )
    assert math.isclose(tr["epoch_in_forward_passes"] * unit, tr["epoch_s"])
    assert math.isclose(sap["warm_in_forward_passes"] * unit, sap["warm_s"])
    assert math.isclose(sap["warm_over_train_epoch"] * tr["epoch_s"], sap["warm_s"])
    assert math.isclose(sap["train_images_per_s"] * sap["warm_s"], run["n_train"])
    assert math.isclose(run["forward_images_per_s"] * unit, settings["n_trusted"])
