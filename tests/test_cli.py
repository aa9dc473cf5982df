"""The `sap-jax` command line, run as a user would: in a subprocess."""

import argparse
import dataclasses
import inspect
import json
import os
import subprocess
import sys

import pytest

import sap_jax
from sap_jax import checkpoint, cli, compilation, trusted
from sap_jax.metrics import METRIC_KEYS
from sap_jax.train import TrainConfig


def _cli(*args, cwd, cache="off"):
  # The commands never write the user's compilation cache (see test_compilation_cache_option).
  env = {**os.environ, compilation.ENV_VAR: str(cache)}
  return subprocess.run(
    [sys.executable, "-m", "sap_jax", *map(str, args)],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
  )


TRAIN = (
  "train",
  "--dataset",
  "digits",
  "--model",
  "mlp",
  "--model-kw",
  "width=32",
  "--model-kw",
  "depth=1",
  "--epochs",
  "3",
  "--batch-size",
  "128",
  "--noise",
  "symmetric:0.25",
  "--seed",
  "3",
  "--quiet",
)


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
  assert set(METRIC_KEYS) <= set(meta["metrics"]) and 0.0 <= meta["metrics"]["fit_noisy"] <= 1.0
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
  assert {k: metrics[k] for k in METRIC_KEYS} == {k: meta["metrics"][k] for k in METRIC_KEYS}

  refused = _cli("correct", trained / "ckpt", "--out", trained / "ckpt", cwd=trained)
  assert refused.returncode != 0 and "never overwrites" in refused.stderr

  result = _cli(
    "correct",
    trained / "ckpt",
    "--out",
    trained / "sap",
    "--n-trusted",
    "200",
    "--alphas",
    "10,1000",
    cwd=trained,
  )
  assert result.returncode == 0, result.stderr
  report = json.loads((trained / "sap_report.json").read_text())
  assert report["n_trusted"] == 200
  assert set(report["sweep_noisy_val"]["per_alpha"]) == {"10.0", "1000.0"}
  assert report["chosen_alpha"] in (None, 10.0, 1000.0)
  assert "oracle_alpha_clean_val" in report and "layers" in report
  # The oracle α is the sweep's rule applied to the clean validation curve of the same pass.
  clean = report["sweep_clean_val"]
  assert set(clean["per_alpha"]) == {"10.0", "1000.0"}
  best = max(clean["per_alpha"].values())
  first_best = next(float(a) for a, v in clean["per_alpha"].items() if v == best)
  assert report["oracle_alpha_clean_val"] == (first_best if best > clean["baseline"] else None)
  assert clean["baseline"] == pytest.approx(report["before"]["val_accuracy_clean"])
  assert report["sweep_noisy_val"]["baseline"] == pytest.approx(
    report["before"]["val_accuracy_noisy"]
  )
  assert set(report["before"]) == set(report["after"]) == set(METRIC_KEYS)
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


def _subparsers(parser):
  (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
  return action.choices


def test_help_shows_every_default():
  for name, sub in _subparsers(cli.build_parser()).items():
    text = " ".join(sub.format_help().split())
    for action in sub._actions:
      if action.option_strings and action.default not in (None, argparse.SUPPRESS):
        assert f"(default: {action.default})" in text, (name, action.option_strings)


def test_defaults_come_from_the_library(tmp_path):
  parser = cli.build_parser()
  args = parser.parse_args(["train", "--out", str(tmp_path / "x")])
  config = cli._spec_from_args(args).train
  assert config == dataclasses.replace(TrainConfig(), seed=config.seed)
  assert cli._spec_from_args(args) == cli.RunSpec(train=config)
  args = parser.parse_args(["correct", "ckpt", "--out", str(tmp_path / "y")])
  assert args.alphas == sap_jax.DEFAULT_ALPHAS
  run_sap = inspect.signature(sap_jax.run_sap).parameters
  for name in ("n_trusted", "score", "batch_size", "class_balanced"):
    assert getattr(args, name) == run_sap[name].default, name
  assert _subparsers(parser)["correct"]._option_string_actions["--score"].choices == trusted.SCORES


def test_bad_schedule_is_refused_with_the_known_names(tmp_path):
  result = _cli("train", "--schedule", "linear", "--out", tmp_path / "x", cwd=tmp_path)
  assert result.returncode == 2
  assert "schedule='linear'" in result.stderr and "cosine" in result.stderr
  assert not (tmp_path / "x").exists()


def test_compilation_cache_option(trained, tmp_path):
  ckpt = trained / "ckpt"
  cache = tmp_path / "cache"
  result = _cli("--compilation-cache", cache, "evaluate", ckpt, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert any(cache.iterdir())  # the compiled programs were written there
  off = tmp_path / "off"
  result = _cli("--compilation-cache", "off", "evaluate", ckpt, cwd=tmp_path, cache=off)
  assert result.returncode == 0, result.stderr
  assert not off.exists()  # the option wins over the environment variable
  text = " ".join(cli.build_parser().format_help().split())
  assert "--compilation-cache DIR|off" in text and compilation.ENV_VAR in text
