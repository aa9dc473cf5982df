"""Processes that agree (`sap_jax.multihost`), the pod example (examples/pod_sap.py) on 2
processes × 4 CPU devices against one process with 8, and the CLI's many-device flags.

Children: tests/multihost_child.py (the 2-process group), examples/pod_sap.py (one
process)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from sap_jax import checkpoint, cli, multihost, train
from sap_jax.metrics import METRIC_KEYS, split_metrics
from sap_jax.spec import RunSpec, build_model, build_splits
from tests.child_processes import run_devices_child, run_process_group
from tests.multihost_child import CLI_CORRECT

EXAMPLE_ARGS = ("--epochs", "1", "--n-trusted", "128", "--alphas", "1e2,1e3,1e4,1e5")


@pytest.fixture(scope="module")
def pod(tmp_path_factory) -> dict:
  """One 2-process group (the example, the command line, disagreeing inputs; see
  tests/multihost_child.py) and the example in one process with 8 devices."""
  tmp = tmp_path_factory.mktemp("pod")
  logs = run_process_group(["tests.multihost_child", str(tmp), "1"], tmp / "logs", expect=[1, 1])
  run_devices_child(
    ["examples.pod_sap", "--single-process", *EXAMPLE_ARGS, "--out", str(tmp / "one.json")]
  )
  return {
    "two": json.loads((tmp / "example.json").read_text()),
    "one": json.loads((tmp / "one.json").read_text()),
    "logs": logs,
    "dir": tmp,
  }


def test_the_pod_example_on_two_processes_equals_one_process(pod):
  two, one = pod["two"], pod["one"]
  assert (two["processes"], two["devices"], one["processes"], one["devices"]) == (2, 8, 1, 8)
  # every split cut to a multiple of the 8 devices: 1170 → 1168, 130 → 128, 497 → 496
  assert two["samples"] == one["samples"] == {"train": 1168, "val": 128, "test": 496}
  np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=1e-6)
  for key in ("alpha", "val_accuracy_per_alpha", "test_accuracy_per_alpha"):
    assert two[key] == one[key], key
  assert (two["test_before"], two["test_after"]) == (one["test_before"], one["test_after"])
  assert len(two["val_accuracy_per_alpha"]) == 4


def test_disagreeing_processes_and_bad_shardings_get_the_error_on_every_process(pod):
  for index, log in enumerate(pod["logs"]):
    caught = [line for line in log.splitlines() if line.startswith("caught: ")]
    assert len(caught) == 4, log[-3000:]
    assert "run_sap: the 2 processes disagree on variables (process 0 / process 1;" in caught[0]
    assert f"this process {index} has a tree of 6 arrays" in caught[0]
    assert "train_model: the 2 processes disagree on config (process 0 / process 1;" in caught[1]
    assert "of shape (64, 8) sharded as P(None, 'data'): SAP needs the leading axis" in caught[2]
    assert "TrainConfig.batch_size: 36 samples cannot be split evenly over the 8" in caught[3]
    # the last one is not caught: both processes end with it (exit status 1, no hang)
    last = log.strip().splitlines()[-1]
    assert last.startswith("ValueError: run_sap: the 2 processes disagree on alphas"), last
    assert f"this process {index} has (10.0, {100.0 * (1 + index)})" in last


def test_the_command_line_trains_and_evaluates_over_two_processes(pod):
  """`sap-jax train/evaluate --distributed` on 2 × 4 devices: the checkpoint (saved by both
  processes) loads in this one process, and its recorded metrics are what one device
  computes on the same splits, whole (1170, 130 and 497 samples: none divides the 8
  devices; each one's last batch is padded and masked, nothing is cut)."""
  variables, meta = checkpoint.load_checkpoint(pod["dir"] / "ckpt")
  evaluated = json.loads((pod["dir"] / "evaluate.json").read_text())
  whole = {"train": 1170, "val": 130, "test": 497}
  assert meta["devices"] == evaluated["devices"] == {"processes": 2, "devices": 8, "samples": whole}
  spec = RunSpec.from_dict(meta["spec"])
  splits = build_splits(spec)
  assert {
    "train": len(splits.x_train),
    "val": len(splits.x_val),
    "test": len(splits.x_test),
  } == whole
  model = build_model(spec, splits.num_classes)
  here = split_metrics(train.eval_apply_fn(model), variables, splits)
  for key in METRIC_KEYS:
    assert meta["metrics"][key] == evaluated[key] == here[key], key


def test_the_command_line_corrects_over_two_processes_as_one_process(pod, tmp_path):
  """`sap-jax correct --distributed` on 2 × 4 devices gives the report one process with one
  device gives on the same checkpoint: trusted set (its noise rate), every α's accuracy,
  the chosen α, the metrics before and after; the corrected variables agree to float
  round-off."""
  out = tmp_path / "one"
  code = cli.main(
    ["--compilation-cache", "off", "correct", str(pod["dir"] / "ckpt"), "--out", str(out)]
    + list(CLI_CORRECT)
  )
  assert code == 0
  two = json.loads((pod["dir"] / "corrected_report.json").read_text())
  one = json.loads(out.with_name("one_report.json").read_text())
  assert two["devices"] == {
    "processes": 2,
    "devices": 8,
    "samples": {"train": 1170, "val": 130, "test": 497},
  }
  for key in (
    "trusted_noise_rate",
    "chosen_alpha",
    "sweep_noisy_val",
    "sweep_clean_val",
    "before",
    "after",
  ):
    assert two[key] == one[key], key
  a, _ = checkpoint.load_checkpoint(pod["dir"] / "corrected")
  b, _ = checkpoint.load_checkpoint(out)
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-5)


def test_processes_that_disagree_on_a_flag_are_refused_on_every_process(pod):
  for index, log in enumerate(pod["logs"]):
    assert log.count("cli exit: 2") == 2, log[-3000:]
    want = (
      f"error: sap-jax correct: the 2 processes disagree on --n-trusted (process 0 / "
      f"process 1; this process {index} has {64 + index})"
    )
    assert want in log, log[-3000:]
    want = "error: --batch-size 100 cannot be split evenly over the 8 devices; pass a multiple"
    assert want in log, log[-3000:]
  assert not (pod["dir"] / "sap").exists() and not (pod["dir"] / "indivisible").exists()


@pytest.mark.parametrize(
  "flags, message",
  [
    (
      ["--coordinator", "127.0.0.1:1"],
      "--coordinator, --num-processes and --process-id go together: --num-processes, "
      "--process-id missing",
    ),
    (
      ["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
      "--process-id 2 is not one of the 2 processes; pass 0 … 1.",
    ),
    (["--mesh", "data=1000"], "--mesh data=1000 does not span the"),
  ],
)
def test_device_flags_are_checked_before_any_work(flags, message, tmp_path, capsys):
  out = tmp_path / "never"
  code = cli.main(["--compilation-cache", "off", "train", "--out", str(out), *flags])
  assert code == 2 and not out.exists()
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_a_mesh_flag_names_its_form(capsys):
  with pytest.raises(SystemExit):
    cli.build_parser().parse_args(["evaluate", "ckpt", "--mesh", "model=4"])
  assert "expected data=N with N the number of devices, such as data=8" in capsys.readouterr().err


# ------------------------------------------------------------------ the pure parts


def test_fingerprints_follow_content_shape_dtype_and_structure():
  a = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float32)}
  same = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float32)}
  np.testing.assert_array_equal(multihost.fingerprint(a), multihost.fingerprint(same))
  variants = [
    {"w": a["w"] + 1e-7 * (a["w"] == 5), "b": a["b"]},  # one element
    {"w": a["w"].reshape(3, 2), "b": a["b"]},  # shape
    {"w": a["w"].astype(np.float64), "b": a["b"]},  # dtype
    {"w": a["w"], "c": a["b"]},  # structure
  ]
  prints = {multihost.fingerprint(v).tobytes() for v in [a, *variants]}
  assert len(prints) == 5
  assert multihost.fingerprint(a).shape == (4,) and multihost.fingerprint(a).dtype == np.int32


def test_fingerprints_of_options_ignore_memory_addresses():
  def make():
    def f(x):
      return x

    return f

  assert make() is not make()
  np.testing.assert_array_equal(multihost.fingerprint(make()), multihost.fingerprint(make()))
  assert (
    multihost.fingerprint((10.0, 100.0)).tobytes()
    != multihost.fingerprint((10.0, 1000.0)).tobytes()
  )
  assert multihost.fingerprint(None).tobytes() != multihost.fingerprint(0).tobytes()


def test_disagreements_group_the_processes_per_input():
  names = ["alphas", "variables", "seed"]
  fp = {k: multihost.fingerprint(k) for k in "abc"}
  gathered = np.stack(
    [
      np.stack([fp["a"], fp["a"], fp["a"]]),
      np.stack([fp["a"], fp["b"], fp["a"]]),
      np.stack([fp["a"], fp["c"], fp["a"]]),
      np.stack([fp["a"], fp["b"], fp["a"]]),
    ]
  )
  assert multihost.disagreements(names, gathered) == {"variables": [[0], [1, 3], [2]]}
  assert multihost.disagreements(names, gathered[[0, 0]]) == {}


def test_one_process_checks_nothing():
  multihost.check_same_across_processes({"anything": object()}, "run_sap")
