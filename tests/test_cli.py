"""The `sap-jax` command line, run as a user would: in a subprocess."""

import argparse
import dataclasses
import inspect
import io
import json
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import sap_jax
from sap_jax import checkpoint, cli, compilation, provenance, trusted
from sap_jax.cli import figure, interrupts
from sap_jax.cli.progress import Progress
from sap_jax.data import load_dataset
from sap_jax.metrics import METRIC_KEYS
from sap_jax.train import TrainConfig
from tests.child_processes import interrupt_after_first_line


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


def test_train_records_the_data_fingerprint(trained):
  _, meta = checkpoint.load_checkpoint(trained / "ckpt")
  want = provenance.data_fingerprint(load_dataset("digits"))
  assert meta["data"]["fingerprint"] == want and meta["data"]["dataset"] == "digits"


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
  assert refused.returncode == 2 and "it is the input" in refused.stderr
  assert "never written" in refused.stderr

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
  assert report["format"] == "sap_jax.report" and report["n_trusted"] == 200
  # the figure beside the report: the α curves and the spectra, a PNG of this tool
  png = trained / "sap_report.png"
  assert figure.is_figure(png) and f"(figure: {png})" in result.stdout
  with Image.open(png) as image:
    assert image.format == "PNG" and image.size == (1200, 450)
  # progress went to stderr, one line per update (a pipe: no carriage returns)
  assert "\r" not in result.stderr
  # the α table on stdout: the original model and each α, the chosen one marked
  assert cli.commands.alpha_table(report) == [
    line for line in result.stdout.splitlines() if line in cli.commands.alpha_table(report)
  ]
  assert result.stdout.count("← chosen") == 1
  lines = result.stderr.splitlines()
  for phase in ("trusted set", "statistics", "decomposition"):
    assert f"correct: {phase} …" in lines and any(f"correct: {phase} done" in x for x in lines)
  assert [x for x in lines if "α sweep" in x] == [
    f"correct: α sweep {i}/2 α values scored" for i in range(3)
  ]
  assert set(report["sweep_noisy_val"]["per_alpha"]) == {"10.0", "1000.0"}
  assert report["chosen_alpha"] in (None, 10.0, 1000.0)
  assert "oracle_alpha_clean_val" in report and "layers" in report
  # the default decomposition: every layer of this small model below solve.AUTO_MIN_WIDTH
  assert report["method"] == "auto"
  assert {layer["method"] for layer in report["layers"].values()} == {"eigh"}
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
  figure_before = png.read_bytes()
  again = _cli("correct", trained / "ckpt", "--out", trained / "sap", cwd=trained)
  assert again.returncode != 0 and "--overwrite" in again.stderr
  # --overwrite replaces the checkpoint and the report this tool wrote, quietly
  again = _cli(
    "correct",
    trained / "ckpt",
    "--out",
    trained / "sap",
    "--n-trusted",
    "100",
    "--alphas",
    "10",
    "--overwrite",
    "--quiet",
    cwd=trained,
  )
  assert again.returncode == 0, again.stderr
  assert again.stderr == ""
  # --quiet silences progress, not the result: the α table is on stdout, the α marked
  assert "noisy val" in again.stdout and "clean val" in again.stdout
  assert again.stdout.count("← chosen") == 1
  assert json.loads((trained / "sap_report.json").read_text())["n_trusted"] == 100
  assert figure.is_figure(png) and png.read_bytes() != figure_before  # replaced too
  assert checkpoint.load_checkpoint(trained / "sap")[1]["sap"]["n_trusted"] == 100
  assert not [p for p in os.listdir(trained) if "sap_jax-" in p]  # no temporaries left


def test_no_figure_leaves_the_png_path_alone(trained, tmp_path):
  # (without --no-figure this file is refused before any work: tests/bad_input_cases_cli.py)
  png = tmp_path / "sap_report.png"
  png.write_bytes(b"someone's picture")  # not a figure of this tool
  args = ("correct", trained / "ckpt", "--out", tmp_path / "sap", "--alphas", "10", "--quiet")
  result = _cli(*args, "--n-trusted", "100", "--no-figure", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "sap_report.json").exists() and "(figure:" not in result.stdout
  assert png.read_bytes() == b"someone's picture"


def _report(chosen, fit):
  return {
    "chosen_alpha": chosen,
    "sweep_noisy_val": {"baseline": 0.5, "per_alpha": {"10.0": 0.6, "1000.0": 0.4}},
    "sweep_clean_val": {"baseline": 0.55, "per_alpha": {"10.0": 0.7, "1000.0": 0.45}},
    "before": {"fit_noisy": fit},
  }


def test_the_alpha_table_marks_the_chosen_alpha():
  table = cli.commands.alpha_table(_report(10.0, 0.9))
  assert [line.split() for line in table] == [
    ["α", "noisy", "val", "clean", "val"],
    ["original", "50.00%", "55.00%"],
    ["10", "60.00%", "70.00%", "←", "chosen"],
    ["1000", "40.00%", "45.00%"],
  ]
  kept = cli.commands.alpha_table(_report(None, 0.9))
  assert kept[1].endswith("← chosen") and sum("chosen" in line for line in kept) == 1
  no_clean = cli.commands.alpha_table({**_report(None, 0.9), "sweep_clean_val": None})
  assert no_clean[2].split() == ["10", "60.00%", "-"]


def test_a_kept_model_that_has_not_memorised_is_explained():
  hint = cli.commands.memorisation_hint(_report(None, 0.2))
  assert "20.0%" in hint and "memorisation" in hint and "train it longer" in hint
  assert cli.commands.memorisation_hint(_report(None, 0.8)) is None  # memorised: no hint
  assert cli.commands.memorisation_hint(_report(10.0, 0.2)) is None  # SAP helped
  assert cli.commands.memorisation_hint(_report(None, None)) is None  # no corrupted label


def test_evaluate_writes_a_report_only_where_allowed(trained, tmp_path):
  path = tmp_path / "metrics.json"
  result = _cli("evaluate", trained / "ckpt", "--report", path, "--quiet", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  written = json.loads(path.read_text())
  assert written["format"] == "sap_jax.report"
  assert {k: written[k] for k in METRIC_KEYS} == {
    k: json.loads(result.stdout)[k] for k in METRIC_KEYS
  }
  before = path.read_bytes()
  again = _cli("evaluate", trained / "ckpt", "--report", path, cwd=tmp_path)
  assert again.returncode == 2 and "--overwrite" in again.stderr and again.stdout == ""
  assert again.stderr.count("\n") == 1 and path.read_bytes() == before
  again = _cli("evaluate", trained / "ckpt", "--report", path, "--overwrite", cwd=tmp_path)
  assert again.returncode == 0, again.stderr
  other = tmp_path / "notes.json"
  other.write_text("{}")  # not a sap_jax report: never replaced
  refused = _cli("evaluate", trained / "ckpt", "--report", other, "--overwrite", cwd=tmp_path)
  assert refused.returncode == 2 and other.read_text() == "{}"


def test_noise_past_the_majority_is_refused_unless_allowed(tmp_path):
  result = _cli("train", "--noise", "symmetric:0.9", "--out", tmp_path / "x", cwd=tmp_path)
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
  assert "no longer the majority" in result.stderr and "--allow-majority-noise" in result.stderr
  assert "below 0.9" in result.stderr and not (tmp_path / "x").exists()
  args = cli.build_parser().parse_args(["train", "--out", "x", "--allow-majority-noise"])
  assert args.allow_majority_noise


def test_unknown_names_list_the_known_ones(tmp_path):
  result = _cli("train", "--dataset", "imagenet", "--out", tmp_path / "x", cwd=tmp_path)
  assert result.returncode != 0
  assert "digits" in result.stderr and "mnist1d" in result.stderr
  result = _cli("train", "--model", "alexnet", "--out", tmp_path / "x", cwd=tmp_path)
  assert result.returncode != 0 and "resnet18" in result.stderr
  assert not (tmp_path / "x").exists()


def test_version(tmp_path):
  result = _cli("--version", cwd=tmp_path)
  assert result.returncode == 0 and result.stdout.strip() == f"sap-jax {sap_jax.__version__}"


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
  config = cli.spec_from_args(args).train
  assert config == dataclasses.replace(TrainConfig(), seed=config.seed)
  assert cli.spec_from_args(args) == cli.RunSpec(train=config)
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


def _npz(path, shift=0.0):
  ds = load_dataset("digits")
  x_test = ds.x_test.copy()
  x_test[0, 0, 0, 0] += shift
  np.savez(path, x_train=ds.x_train, y_train=ds.y_train, x_test=x_test, y_test=ds.y_test)


NPZ_TRAIN = (*TRAIN[:2], "npz", *TRAIN[3:])


def test_moved_and_changed_data(tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  _npz(data / "d.npz")
  # a relative --data-root is recorded absolute
  result = _cli(*NPZ_TRAIN, "--data-root", "data/d.npz", "--out", "ckpt", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  _, meta = checkpoint.load_checkpoint(tmp_path / "ckpt")
  assert meta["spec"]["data_root"] == meta["data"]["root"] == str(data / "d.npz")
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  assert _cli("evaluate", tmp_path / "ckpt", cwd=elsewhere).returncode == 0
  (data / "d.npz").rename(elsewhere / "moved.npz")
  result = _cli("evaluate", tmp_path / "ckpt", cwd=elsewhere)
  assert result.returncode == 2 and "pass --data-root NEW_PATH" in result.stderr
  result = _cli("evaluate", tmp_path / "ckpt", "--data-root", "moved.npz", cwd=elsewhere)
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout)["test_accuracy"] == meta["metrics"]["test_accuracy"]
  _npz(elsewhere / "changed.npz", shift=0.5)
  args = ("evaluate", tmp_path / "ckpt", "--data-root", "changed.npz")
  result = _cli(*args, cwd=elsewhere)
  assert result.returncode == 2 and "test split (inputs) changed" in result.stderr
  assert "--allow-changed-data" in result.stderr
  result = _cli(*args, "--allow-changed-data", cwd=elsewhere)
  assert result.returncode == 0 and "warning: the data at" in result.stderr
  assert json.loads(result.stdout)["data_changed"] == ["x_test"]


def test_a_checkpoint_without_a_fingerprint_loads_with_a_note(trained, tmp_path):
  variables, meta = checkpoint.load_checkpoint(trained / "ckpt")
  del meta["data"]  # as written before fingerprints were recorded
  checkpoint.save_checkpoint(tmp_path / "old", variables, meta)
  result = _cli("evaluate", tmp_path / "old", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert "records no fingerprint of its data" in result.stderr


def test_a_checkpoint_without_a_label_fingerprint_loads_with_a_note(trained, tmp_path):
  variables, meta = checkpoint.load_checkpoint(trained / "ckpt")
  assert set(meta["labels"]) == {"y_train", "y_val"}
  del meta["labels"]  # as written before the noisy labels were fingerprinted
  checkpoint.save_checkpoint(tmp_path / "old", variables, meta)
  result = _cli("evaluate", tmp_path / "old", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert "records no fingerprint of its noisy labels (saved by an older" in result.stderr


def test_ctrl_c_says_nothing_was_written(tmp_path):
  env = {**os.environ, compilation.ENV_VAR: "off"}
  args = [a if a != "3" else "100000" for a in TRAIN if a != "--quiet"]  # --epochs 100000
  cmd = [sys.executable, "-m", "sap_jax", *args, "--out", str(tmp_path / "out")]
  code, first, err = interrupt_after_first_line(cmd, tmp_path, env)
  assert first.startswith("training mlp on digits"), first  # training had started
  assert code == 130, (code, err)
  assert err.strip().splitlines()[-1] == "interrupted: nothing was written."
  assert "Traceback" not in err
  assert os.listdir(tmp_path) == []


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_is_lines_in_a_pipe_a_bar_on_a_terminal_and_nothing_when_quiet():
  def drive(progress):
    for phase in ("trusted set", "statistics", "decomposition"):
      progress.phase(phase, 0, 1)
      progress.phase(phase, 1, 1)
    for i in range(4):
      progress.phase("α sweep", i, 3)

  pipe = io.StringIO()
  drive(Progress(quiet=False, stream=pipe))
  lines = pipe.getvalue().splitlines()
  assert "\r" not in pipe.getvalue() and len(lines) == 10
  assert lines[0] == "correct: trusted set …" and lines[1].startswith("correct: trusted set done")
  assert lines[-1] == "correct: α sweep 3/3 α values scored"
  terminal = _Terminal()
  drive(Progress(quiet=False, stream=terminal))
  assert "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()  # tqdm's live bar
  quiet = io.StringIO()
  drive(Progress(quiet=True, stream=quiet))
  assert quiet.getvalue() == ""


def test_training_progress_in_a_pipe_is_one_line_every_twentieth_epoch():
  pipe = io.StringIO()
  options = Progress(quiet=False, stream=pipe).train_options(epochs=100)
  assert options["progress"] is False
  for epoch in range(1, 101):
    options["log_fn"]({"epoch": epoch, "loss": 0.5, "train_accuracy": 0.75})
  lines = pipe.getvalue().splitlines()
  assert len(lines) == 20 and lines[-1] == "train epoch 100/100: loss 0.5000, train acc 0.750"
  live = Progress(quiet=False, stream=_Terminal()).train_options(5)
  assert live["progress"] is True
  live["log_fn"]({"epoch": 1})  # only the interrupt check: the bar shows the epochs


def test_a_ctrl_c_dropped_in_a_finalizer_is_raised_at_the_next_epoch(monkeypatch):
  class Finalized:
    def __del__(self):
      os.kill(os.getpid(), signal.SIGINT)  # its KeyboardInterrupt is dropped by Python

  class Broken:
    def __del__(self):
      raise ValueError("a bug in a finalizer")

  shown = []  # what reached the unraisable hook in place before (Python's prints it)
  monkeypatch.setattr(sys, "unraisablehook", lambda u: shown.append(type(u.exc_value)))
  quiet = Progress(quiet=True).train_options(100)["log_fn"]
  before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a pytest-xdist worker
  with interrupts.installed():
    quiet({"epoch": 1})  # nothing pending
    Broken()  # any other exception in a finalizer is still shown
    Finalized()  # collected at once: the handler runs inside __del__, its raise dropped
    with pytest.raises(KeyboardInterrupt):
      quiet({"epoch": 2})
  quiet({"epoch": 3})  # the record ends with the block
  assert shown == [ValueError]  # the dropped Ctrl-C printed no traceback
  assert signal.getsignal(signal.SIGINT) == before  # the handler before is back
  Broken()
  assert shown == [ValueError, ValueError]  # the hook before is back


def test_orbax_write_tasks_orphaned_by_a_failed_write_log_nothing(tmp_path, caplog):
  """After `sap-jax` ran, asyncio's report of an orbax write task whose failure nobody
  awaited (the other fragments of a write that failed, logged when the task is collected)
  is dropped; every other asyncio report still shows."""
  assert cli.main(["--compilation-cache", "off", "evaluate", str(tmp_path / "nope")]) == 2
  log = logging.getLogger("asyncio")
  orphan = (
    "Task exception was never retrieved\nfuture: <Task finished coro=<{}() done, defined at {}>"
  )
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    log.error(
      orphan.format("async_serialize_from_host", "/v/orbax/checkpoint/serialization.py:126")
    )
    log.error(orphan.format("fetch", "/v/mine.py:3"))
  assert [r.getMessage().split("coro=<")[1][:5] for r in caplog.records] == ["fetch"]


def test_user_errors_are_one_line_and_bugs_are_not_hidden(tmp_path, capsys, monkeypatch):
  assert cli.main(["--compilation-cache", "off", "evaluate", str(tmp_path / "nope")]) == 2
  assert capsys.readouterr().err == f"error: No checkpoint at {tmp_path / 'nope'}.\n"

  def denied(args):
    raise PermissionError(13, "Permission denied", "/root/secret")

  parser = cli.build_parser()
  monkeypatch.setattr(cli.commands, "build_parser", lambda: parser)  # where main reads it
  for sub in parser._subparsers._group_actions[0].choices.values():
    sub.set_defaults(func=denied)
  assert cli.main(["--compilation-cache", "off", "evaluate", "x"]) == 2
  err = capsys.readouterr().err
  assert err == "error: Permission denied: /root/secret; check the path and its permissions.\n"

  def bug(args):
    raise RuntimeError("a bug")

  for sub in parser._subparsers._group_actions[0].choices.values():
    sub.set_defaults(func=bug)
  with pytest.raises(RuntimeError, match="a bug"):
    cli.main(["--compilation-cache", "off", "evaluate", "x"])


def test_nnx_train_evaluate_correct(tmp_path):
  from sap_jax import models, train
  from sap_jax.metrics import split_metrics
  from sap_jax.spec import RunSpec, build_splits

  result = _cli(*TRAIN, "--api", "nnx", "--out", tmp_path / "ckpt", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  variables, meta = checkpoint.load_checkpoint(tmp_path / "ckpt")
  assert meta["spec"]["api"] == "nnx" and len(meta["history"]) == 3
  # The NNX twin's arrays in its Linen twin's layout: the Linen MLP scores them the same.
  spec = RunSpec.from_dict(meta["spec"])
  splits = build_splits(spec)
  linen = models.get("mlp", splits.num_classes, **spec.model_kwargs)
  same = split_metrics(train.eval_apply_fn(linen), variables, splits)
  assert {k: same[k] for k in METRIC_KEYS} == pytest.approx(
    {k: meta["metrics"][k] for k in METRIC_KEYS}
  )

  shown = _cli("evaluate", tmp_path / "ckpt", cwd=tmp_path)
  assert shown.returncode == 0, shown.stderr
  metrics = json.loads(shown.stdout)
  assert {k: metrics[k] for k in METRIC_KEYS} == {k: meta["metrics"][k] for k in METRIC_KEYS}

  args = ("--n-trusted", "200", "--alphas", "10,1000", "--quiet", "--no-figure")
  result = _cli("correct", tmp_path / "ckpt", "--out", tmp_path / "sap", *args, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  report = json.loads((tmp_path / "sap_report.json").read_text())
  assert report["before"] == {k: meta["metrics"][k] for k in METRIC_KEYS}
  assert set(report["layers"]) == {"dense1", "head"}
  corrected, sap_meta = checkpoint.load_checkpoint(tmp_path / "sap")
  assert sap_meta["spec"]["api"] == "nnx"
  after = split_metrics(train.eval_apply_fn(linen), corrected, splits)
  assert {k: after[k] for k in METRIC_KEYS} == pytest.approx(report["after"])


def test_nnx_api_without_a_twin_is_refused_before_any_work(tmp_path):
  result = _cli("train", "--model", "vgg11", "--api", "nnx", "--out", tmp_path / "x", cwd=tmp_path)
  assert result.returncode == 2 and result.stderr.count("\n") == 1
  assert "'vgg11' has no NNX twin" in result.stderr and "mlp" in result.stderr
  assert not (tmp_path / "x").exists()
