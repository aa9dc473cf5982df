"""Tests for sap_jax.checkpoint: round trips, refusals, damage detection."""

import json
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sap_jax import checkpoint, train


def make_variables():
  return {
    "params": {
      "Dense_0": {
        "kernel": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) / 7,
        "bias": jnp.array([1.5, -2.0, 0.25], jnp.bfloat16),
      },
      "head": {"kernel": jnp.full((3, 4), np.pi, jnp.float32)},
    },
    "batch_stats": {
      "BatchNorm_0": {
        "mean": np.array([0.1, 0.2, 0.3], np.float32),
        "var": np.array([1.0, 2.0, 3.0], np.float64),
      },
      "count": np.array(7, np.int32),
    },
  }


METADATA = {
  "dataset": "cifar10",
  "noise": "sym:0.25",
  "seed": np.int64(12484),
  "model": {"name": "vgg11_bn", "kwargs": {"width": 2}},
  "train_config": train.TrainConfig(epochs=3, logit_clip=2.0).to_dict(),
  "metrics": {"test_accuracy": np.float32(0.5), "history": [1.0, 0.5]},
}


def snapshot(root: Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_values_dtypes_tree_and_metadata(tmp_path):
  variables = make_variables()
  out = checkpoint.save_checkpoint(tmp_path / "ckpt", variables, METADATA)
  assert out == (tmp_path / "ckpt").absolute()
  restored, meta = checkpoint.load_checkpoint(out)
  assert jax.tree.structure(restored) == jax.tree.structure(variables)
  for (path, want), got in zip(
    jax.tree_util.tree_flatten_with_path(variables)[0], jax.tree.leaves(restored)
  ):
    assert isinstance(got, (np.ndarray, jax.Array)), path
    assert got.dtype == want.dtype and got.shape == want.shape, path
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert meta == json.loads(json.dumps(METADATA, default=lambda o: o.item()))
  assert meta["train_config"]["logit_clip"] == 2.0
  assert train.TrainConfig(**meta["train_config"]) == train.TrainConfig(epochs=3, logit_clip=2.0)
  # Human-readable: plain JSON with the metadata and the array layout.
  text = json.loads((out / checkpoint.METADATA_FILE).read_text())
  assert text["metadata"]["noise"] == "sym:0.25"
  assert text["arrays"]["params/head/kernel"]["shape"] == [3, 4]
  # Nothing but the checkpoint is left in the parent directory.
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_trained_model_round_trip_evaluates_identically(tmp_path):
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      x = nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
      return nn.Dense(2)(nn.relu(x))

  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 3)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  res = train.train_model(Net(), x, y, train.TrainConfig(epochs=2, batch_size=16), progress=False)
  path = checkpoint.save_checkpoint(tmp_path / "run", res.variables, {"history": res.history})
  restored, meta = checkpoint.load_checkpoint(path)
  apply_fn = train.eval_apply_fn(Net())
  np.testing.assert_array_equal(
    train.predict_logits(apply_fn, restored, x), train.predict_logits(apply_fn, res.variables, x)
  )
  assert meta["history"] == res.history


def test_refuses_to_overwrite_and_leaves_files_untouched(tmp_path):
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", make_variables(), METADATA)
  before = snapshot(path)
  other = jax.tree.map(lambda a: a * 0 + 1, make_variables())
  with pytest.raises(FileExistsError, match="overwrite") as err:
    checkpoint.save_checkpoint(path, other, {"x": 1})
  assert str(path) in str(err.value)
  assert snapshot(path) == before
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_overwrite_replaces(tmp_path):
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", make_variables(), METADATA)
  new = {"params": {"w": np.ones((2, 2), np.float32)}}
  checkpoint.save_checkpoint(path, new, {"run": 2}, overwrite=True)
  restored, meta = checkpoint.load_checkpoint(path)
  assert meta == {"run": 2}
  assert jax.tree.structure(restored) == jax.tree.structure(new)
  np.testing.assert_array_equal(restored["params"]["w"], 1.0)
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_bad_metadata_is_rejected_before_writing(tmp_path):
  with pytest.raises(ValueError, match="JSON"):
    checkpoint.save_checkpoint(tmp_path / "ckpt", make_variables(), {"fn": object()})
  assert not (tmp_path / "ckpt").exists() and os.listdir(tmp_path) == []


def test_metadata_types_are_converted_by_the_shared_encoder(tmp_path):
  metadata = {
    "root": Path("/data/cifar"),
    "classes": {3, 1, 2},
    "train": train.TrainConfig(epochs=2),
    "mask": np.array([True, False]),
    "acc": jnp.float32(0.5),
    "nan": float("nan"),
  }
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", make_variables(), metadata)
  _, meta = checkpoint.load_checkpoint(path)
  assert meta["root"] == "/data/cifar" and meta["classes"] == [1, 2, 3]
  assert meta["train"] == train.TrainConfig(epochs=2).to_dict()
  assert meta["mask"] == [True, False] and meta["acc"] == 0.5 and meta["nan"] != meta["nan"]
  text = (path / checkpoint.METADATA_FILE).read_text()
  assert text.startswith('{\n  "arrays": {') and '"nan": NaN' in text  # indent 2, sorted keys


def test_missing_path(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    checkpoint.load_checkpoint(missing)


def test_not_a_checkpoint(tmp_path):
  (tmp_path / "dir").mkdir()
  with pytest.raises(ValueError, match="not a sap_jax checkpoint"):
    checkpoint.load_checkpoint(tmp_path / "dir")
  (tmp_path / "dir" / "metadata.json").write_text('{"hello": 1}')
  with pytest.raises(ValueError, match="not a sap_jax checkpoint"):
    checkpoint.load_checkpoint(tmp_path / "dir")


@pytest.mark.parametrize(
  "damage, match",
  [
    ("corrupt_json", "not readable JSON"),
    ("no_variables", "variables/ directory is missing"),
    ("corrupt_arrays", "cannot be read|do not match"),
    ("spec_mismatch", "do not match"),
  ],
)
def test_damaged_checkpoint(tmp_path, damage, match):
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", make_variables(), METADATA)
  meta_file = path / checkpoint.METADATA_FILE
  if damage == "corrupt_json":
    meta_file.write_text(meta_file.read_text()[:-20])
  elif damage == "no_variables":
    for p in sorted((path / "variables").rglob("*"), reverse=True):
      p.rmdir() if p.is_dir() else p.unlink()
    (path / "variables").rmdir()
  elif damage == "corrupt_arrays":
    for p in (path / "variables").rglob("*"):
      if p.is_file() and p.name != "_CHECKPOINT_METADATA":
        p.write_bytes(b"\x00garbage")
  else:
    record = json.loads(meta_file.read_text())
    record["arrays"]["params/head/kernel"]["shape"] = [4, 3]
    meta_file.write_text(json.dumps(record))
  with pytest.raises(ValueError, match=match):
    checkpoint.load_checkpoint(path)
