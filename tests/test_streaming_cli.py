"""The command line on an image folder: streamed from its files, equal to the in-memory run."""

import json

import jax
import numpy as np
import pytest

from sap_jax import checkpoint, provenance
from sap_jax.data import load_dataset
from tests.bad_input_case import run_cli
from tests.fake_data import write_image_folder

TRAIN = (
  *("train", "--dataset", "folder", "--model", "cnn", "--epochs", "2", "--batch-size", "16"),
  *("--data-opt", "image_size=12", "--noise", "symmetric:0.25", "--seed", "2", "--quiet"),
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Train and correct on the folder, streamed (the default) and in memory (lazy=false)."""
  work = tmp_path_factory.mktemp("stream_cli")
  root = write_image_folder(work / "data", per_class=24, size=16, seed=4)
  for name, extra in (("streamed", ()), ("memory", ("--data-opt", "lazy=false"))):
    out = work / name
    done = run_cli(*TRAIN, *extra, "--data-root", root, "--out", out / "ckpt", cwd=work)
    assert done.returncode == 0, done.stderr
    done = run_cli(
      "correct", out / "ckpt", "--out", out / "sap", "--n-trusted", "30", "--no-figure", cwd=work
    )
    assert done.returncode == 0, done.stderr
  return work, root


def test_a_streamed_folder_run_equals_the_in_memory_run(runs):
  work, _ = runs
  reports = [json.loads((work / n / "sap_report.json").read_text()) for n in ("streamed", "memory")]
  for key in ("before", "after", "chosen_alpha", "sweep_noisy_val", "sweep_clean_val"):
    assert reports[0][key] == reports[1][key], key
  assert reports[0]["layers"] == reports[1]["layers"]


def test_a_streamed_folder_is_fingerprinted_by_its_files(runs, tmp_path):
  work, root = runs
  ds = load_dataset("folder", root=root, image_size=12, lazy=True)
  found = provenance.data_fingerprint(ds)
  assert found == provenance.data_fingerprint(
    load_dataset("folder", root=root, image_size=12, lazy=True)
  )
  victim = sorted((root / "train" / "coat").iterdir())[0]
  victim.write_bytes(victim.read_bytes())  # same bytes, a new modification time
  changed = provenance.data_fingerprint(load_dataset("folder", root=root, image_size=12, lazy=True))
  assert provenance.changed_arrays(found, changed) == ["x_train"]
  # the same folder held in memory has array digests: not comparable, not reported
  arrays = provenance.data_fingerprint(load_dataset("folder", root=root, image_size=12))
  assert arrays["x_train"].startswith("sha256:") and found["x_train"].startswith("files-")
  assert provenance.changed_arrays(found, arrays) == []


def test_a_streamed_folder_trains_data_parallel(runs):
  """``--data-parallel`` reads a streamed folder over the mesh (this process's devices): the
  checkpoint records the whole splits and equals the run without the flag."""
  work, root = runs
  out = work / "parallel"
  done = run_cli(*TRAIN, "--data-root", root, "--out", out, "--data-parallel", cwd=work)
  assert done.returncode == 0, done.stderr
  got, meta = checkpoint.load_checkpoint(out)
  want, want_meta = checkpoint.load_checkpoint(work / "streamed" / "ckpt")
  assert meta["metrics"] | {"train_time_s": 0} == want_meta["metrics"] | {"train_time_s": 0}
  ds = load_dataset("folder", root=root, image_size=12, lazy=True)
  samples = meta["devices"]["samples"]  # every image of the folder: nothing cut
  assert (samples["train"] + samples["val"], samples["test"]) == (len(ds.x_train), len(ds.x_test))
  for u, v in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)


def test_a_broken_image_ends_the_run_in_one_line_naming_it(tmp_path):
  root = write_image_folder(tmp_path / "data", per_class=8, size=12, seed=1)
  victim = sorted((root / "train" / "coat").iterdir())[2]
  victim.write_bytes(b"not an image")
  before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
  done = run_cli(*TRAIN, "--data-root", root, "--out", tmp_path / "ckpt", cwd=tmp_path)
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: sample "), done.stderr
  assert f"cannot read image '{victim}'" in lines[0] and "delete or replace" in lines[0]
  assert not (tmp_path / "ckpt").exists()
  assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
