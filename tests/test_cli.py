"""The `sap-jax` command line, run as a user would: in a subprocess."""

import json
import subprocess
import sys

import pytest

from sap_jax import checkpoint


def _cli(*args, cwd):
  return subprocess.run(
      [sys.executable, "-m", "sap_jax", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600
  )


TRAIN = ("train", "--dataset", "digits", "--model", "mlp", "--model-kw", "width=32", "--model-kw", "depth=1",
         "--epochs", "3", "--batch-size", "128", "--noise", "symmetric:0.25", "--seed", "3", "--quiet")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  work = tmp_path_factory.mktemp("cli")
  result = _cli(*TRAIN, "--out", work / "ckpt", cwd=work)
  assert result.returncode == 0, result.stderr
  return work


def test_train_writes_checkpoint_with_run_metadata(trained):
  variables, meta = checkpoint.load_checkpoint(trained / "ckpt")
  assert meta["kind"] == "trained"
  assert meta["spec"]["dataset"] == "digits" and meta["spec"]["noise"] == "symmetric:0.25"
  assert meta["spec"]["seed"] == 3 and meta["spec"]["train"]["epochs"] == 3
  assert 0.0 <= meta["metrics"]["test_accuracy"] <= 1.0
  assert len(meta["history"]) == 3
  assert "params" in variables


def test_train_refuses_to_overwrite(trained):
  before = {p.name: p.stat().st_mtime_ns for p in (trained / "ckpt").rglob("*")}
  result = _cli(*TRAIN, "--out", trained / "ckpt", cwd=trained)
  assert result.returncode != 0
  assert "--overwrite" in result.stderr
  assert {p.name: p.stat().st_mtime_ns for p in (trained / "ckpt").rglob("*")} == before


def test_evaluate_and_correct(trained):
  result = _cli("evaluate", trained / "ckpt", cwd=trained)
  assert result.returncode == 0, result.stderr
  metrics = json.loads(result.stdout)
  _, meta = checkpoint.load_checkpoint(trained / "ckpt")
  assert metrics["test_accuracy"] == pytest.approx(meta["metrics"]["test_accuracy"])

  refused = _cli("correct", trained / "ckpt", "--out", trained / "ckpt", cwd=trained)
  assert refused.returncode != 0 and "never overwrites" in refused.stderr

  result = _cli("correct", trained / "ckpt", "--out", trained / "sap", "--n-trusted", "200",
                "--alphas", "10,1000", cwd=trained)
  assert result.returncode == 0, result.stderr
  report = json.loads((trained / "sap_report.json").read_text())
  assert report["n_trusted"] == 200
  assert set(report["sweep_noisy_val"]["per_alpha"]) == {"10.0", "1000.0"}
  assert report["chosen_alpha"] in (None, 10.0, 1000.0)
  assert "oracle_alpha_clean_val" in report and "layers" in report
  _, meta = checkpoint.load_checkpoint(trained / "sap")
  assert meta["kind"] == "sap" and meta["sap"]["chosen_alpha"] == report["chosen_alpha"]
  again = _cli("correct", trained / "ckpt", "--out", trained / "sap", cwd=trained)
  assert again.returncode != 0 and "--overwrite" in again.stderr


def test_unknown_names_list_the_known_ones(tmp_path):
  result = _cli("train", "--dataset", "imagenet", "--out", tmp_path / "x", cwd=tmp_path)
  assert result.returncode != 0
  assert "digits" in result.stderr and "mnist1d" in result.stderr
  result = _cli("train", "--model", "alexnet", "--out", tmp_path / "x", cwd=tmp_path)
  assert result.returncode != 0 and "resnet18" in result.stderr
  assert not (tmp_path / "x").exists()


def test_help_for_every_command(tmp_path):
  for command in ("train", "evaluate", "correct", "demo"):
    result = _cli(command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "usage: sap-jax" in result.stdout
