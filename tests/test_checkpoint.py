"""Tests for sap_jax.checkpoint: round trips, refusals, damage detection."""

import hashlib
import json
import os
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sap_jax import checkpoint, train
from sap_jax.checkpoint_format import array_checksum
from sap_jax.layers import key_path_name


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


def test_a_disk_that_fails_the_write_is_named_once_and_nothing_is_left(tmp_path, monkeypatch):
  """Disk full inside orbax (tensorstore's message carries the OS error number): one
  OSError naming the checkpoint path, not the temporary; the temporary is gone."""
  import errno

  import orbax.checkpoint as ocp

  def full(self, *args, **kwargs):
    raise ValueError("RESOURCE_EXHAUSTED: Failed writing: No space left [os_error_code='28']")

  monkeypatch.setattr(ocp.StandardCheckpointer, "save", full)
  (tmp_path / "keep.txt").write_text("mine")
  with pytest.raises(OSError) as caught:
    checkpoint.save_checkpoint(tmp_path / "ckpt", make_variables(), METADATA)
  assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(tmp_path / "ckpt"))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


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


def _sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def test_metadata_records_one_checksum_per_array(tmp_path):
  variables = make_variables()
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", variables, METADATA)
  record = json.loads((path / checkpoint.METADATA_FILE).read_text())
  assert set(record["checksums"]) == set(record["arrays"])
  assert len(record["checksums"]) == len(jax.tree.leaves(variables))
  assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", v) for v in record["checksums"].values())
  # Same bytes, dtype and shape give the same checksum; any of them differing does not.
  kernel = np.asarray(variables["params"]["head"]["kernel"])
  assert record["checksums"]["params/head/kernel"] == array_checksum(kernel)
  assert array_checksum(kernel.reshape(4, 3)) != array_checksum(kernel)
  assert array_checksum(kernel.view(np.int32)) != array_checksum(kernel)
  restored, _ = checkpoint.load_checkpoint(path)
  for name, value in jax.tree_util.tree_flatten_with_path(restored)[0]:
    assert array_checksum(value) == record["checksums"][key_path_name(name)]


def test_flipped_bytes_on_disk_are_detected(tmp_path):
  rng = np.random.default_rng(0)
  variables = make_variables()
  variables["params"]["big"] = {"kernel": rng.normal(size=(64, 64)).astype(np.float32)}
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", variables, METADATA)
  files = [
    p
    for p in (path / checkpoint.VARIABLES_DIR).rglob("*")
    if p.is_file() and "d" in p.relative_to(path / checkpoint.VARIABLES_DIR).parts[:-1]
  ]
  assert files, "no orbax data files found"
  largest = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(largest.read_bytes())
  size = len(data)
  mid = size // 2
  for i in range(mid, mid + 4):
    data[i] ^= 0xFF
  largest.write_bytes(bytes(data))
  assert largest.stat().st_size == size
  before = _sha256(largest)
  with pytest.raises(checkpoint.DamagedCheckpoint) as err:
    checkpoint.load_checkpoint(path)
  message = str(err.value)
  assert isinstance(err.value, ValueError)
  assert message.startswith(f"damaged checkpoint {path}: ")
  assert message.endswith("; restore it from a copy")
  # Either the checksum catches the silently changed array, or orbax fails to
  # read it and its error is reported the same way.
  assert re.search(
    r"array params/big/kernel does not match its checksum \(saved [0-9a-f]{12}, "
    r"read [0-9a-f]{12}\)|cannot be read",
    message,
  ), message
  assert _sha256(largest) == before and largest.stat().st_size == size
  # A ValueError on one line: the CLI prints it as a single ``error:`` line.
  assert "\n" not in message


def test_unreadable_arrays_are_reported_as_damaged(tmp_path):
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", make_variables(), METADATA)
  for p in (path / checkpoint.VARIABLES_DIR).rglob("*"):
    if p.is_file() and p.name != "_CHECKPOINT_METADATA":
      p.write_bytes(b"\x00garbage")
  with pytest.raises(checkpoint.DamagedCheckpoint) as err:
    checkpoint.load_checkpoint(path)
  message = str(err.value)
  assert message.startswith(f"damaged checkpoint {path}: the arrays in variables/ cannot be read")
  assert message.endswith("; restore it from a copy") and "\n" not in message


def test_checkpoint_without_checksums_still_loads(tmp_path):
  variables = make_variables()
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", variables, METADATA)
  meta_file = path / checkpoint.METADATA_FILE
  record = json.loads(meta_file.read_text())
  del record["checksums"]  # As written before checksums were recorded.
  meta_file.write_text(json.dumps(record, indent=2, sort_keys=True))
  restored, meta = checkpoint.load_checkpoint(path)
  assert meta["noise"] == "sym:0.25"
  for want, got in zip(jax.tree.leaves(variables), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_the_run_spec_and_label_fingerprint_are_sealed_field_by_field(tmp_path):
  """An edit of a field of ``spec`` or ``labels`` after the save is damage naming the
  field; other metadata, and a checkpoint saved before seals existed, load as before."""
  metadata = {**METADATA, "spec": {"seed": 0, "noise": "symmetric:0.25", "n_val": 100}}
  metadata["labels"] = {"y_train": "sha256:ab"}
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", make_variables(), metadata)
  meta_file = path / checkpoint.METADATA_FILE
  saved = json.loads(meta_file.read_text())
  assert saved["sealed"] == checkpoint.seal(metadata)
  assert set(saved["sealed"]) == {"spec", "labels"}
  assert set(saved["sealed"]["spec"]) == {"seed", "noise", "n_val"}

  def edited(change, keep_seal=True):
    record = json.loads(json.dumps(saved))
    change(record)
    if not keep_seal:
      del record["sealed"]
    meta_file.write_text(json.dumps(record))

  edited(lambda r: r["metadata"]["spec"].update(seed=7, n_val=50))
  with pytest.raises(checkpoint.DamagedCheckpoint, match=r": spec\.n_val, spec\.seed in metadata"):
    checkpoint.load_checkpoint(path)
  edited(lambda r: r["metadata"]["spec"].update(extra=1))  # a field added by hand
  with pytest.raises(
    checkpoint.DamagedCheckpoint, match=r": spec\.extra in metadata\.json changed"
  ):
    checkpoint.load_checkpoint(path)
  edited(lambda r: r["metadata"].pop("labels"))
  with pytest.raises(checkpoint.DamagedCheckpoint, match=r": labels\.y_train in metadata"):
    checkpoint.load_checkpoint(path)
  edited(lambda r: r["metadata"].update(noise="other"))  # not sealed
  assert checkpoint.load_checkpoint(path)[1]["noise"] == "other"
  edited(lambda r: r["metadata"]["spec"].update(seed=7), keep_seal=False)  # an older save
  assert checkpoint.load_checkpoint(path)[1]["spec"]["seed"] == 7


def test_incomplete_checksums_entry_is_damaged(tmp_path):
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", make_variables(), METADATA)
  meta_file = path / checkpoint.METADATA_FILE
  record = json.loads(meta_file.read_text())
  del record["checksums"]["params/head/kernel"]
  meta_file.write_text(json.dumps(record))
  with pytest.raises(checkpoint.DamagedCheckpoint, match="one checksum per array"):
    checkpoint.load_checkpoint(path)


def test_overwrite_replaces_only_a_checkpoint(tmp_path):
  folder = tmp_path / "mine"
  folder.mkdir()
  (folder / "thesis.tex").write_text("years of work")
  (tmp_path / "notes.txt").write_text("notes")
  not_ours = tmp_path / "other"
  not_ours.mkdir()
  (not_ours / checkpoint.METADATA_FILE).write_text('{"format": "something else"}')
  before = snapshot(tmp_path)
  for target, match in [
    (folder, r"a folder with 1 entry \(thesis.tex\), not a sap_jax checkpoint"),
    (tmp_path / "notes.txt", "a file of 5 bytes, not a sap_jax checkpoint"),
    (not_ours, "not a sap_jax checkpoint"),
  ]:
    with pytest.raises(FileExistsError, match=match):
      checkpoint.save_checkpoint(target, make_variables(), METADATA, overwrite=True)
  assert snapshot(tmp_path) == before
  assert sorted(os.listdir(tmp_path)) == ["mine", "notes.txt", "other"]


def test_protected_input_is_never_replaced_or_written_into(tmp_path):
  source = checkpoint.save_checkpoint(tmp_path / "in", make_variables(), METADATA)
  before = snapshot(tmp_path)
  for target in (source, source / "variables", source / checkpoint.METADATA_FILE, tmp_path):
    with pytest.raises(FileExistsError, match="input"):
      checkpoint.save_checkpoint(target, make_variables(), {}, overwrite=True, protect=[source])
  assert snapshot(tmp_path) == before


def test_is_checkpoint(tmp_path):
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", make_variables(), METADATA)
  assert checkpoint.is_checkpoint(path) and checkpoint.KIND.recognise(path)
  assert not checkpoint.is_checkpoint(path / checkpoint.METADATA_FILE)
  assert not checkpoint.is_checkpoint(tmp_path / "missing")
  (tmp_path / "link").symlink_to(path)
  assert not checkpoint.is_checkpoint(tmp_path / "link")


def test_a_save_killed_midway_is_named_and_cleaned_by_the_next_save(tmp_path):
  dead = 2**22 + 1  # above Linux's largest pid_max: never a live process
  leftover = tmp_path / f".ckpt.sap_jax-tmp-{dead}-0123abcd"
  (leftover / "variables").mkdir(parents=True)
  (leftover / "variables" / "partial").write_bytes(b"\x00" * 10)
  with pytest.raises(FileNotFoundError, match=r"its save was interrupted .*\.ckpt\.sap_jax-tmp"):
    checkpoint.load_checkpoint(tmp_path / "ckpt")
  with pytest.raises(ValueError, match="unfinished folder of an interrupted save"):
    checkpoint.load_checkpoint(leftover)
  assert leftover.exists()  # reading never removes anything
  checkpoint.save_checkpoint(tmp_path / "ckpt", make_variables(), METADATA)
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_incomplete_checkpoint_without_metadata_is_damaged(tmp_path):
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", make_variables(), METADATA)
  (path / checkpoint.METADATA_FILE).unlink()
  with pytest.raises(checkpoint.DamagedCheckpoint, match="no metadata.json .*restore it"):
    checkpoint.load_checkpoint(path)


def test_a_file_is_not_a_checkpoint(tmp_path):
  (tmp_path / "x.npz").write_text("text")
  with pytest.raises(ValueError, match="a file of 4 bytes, not a sap_jax checkpoint directory"):
    checkpoint.load_checkpoint(tmp_path / "x.npz")


# ------------------------------------------------------------------ NNX models


def _nnx_cnn(seed: int = 0, width: int = 4):
  from sap_jax import models

  return models.get("cnn", 3, api="nnx", in_features=1, width=width, batch_norm=True, seed=seed)


def test_nnx_model_round_trip_gives_the_same_state_and_outputs(tmp_path):
  from flax import nnx

  import sap_jax.nnx as snnx

  model = _nnx_cnn(seed=1)
  model.block1.bn.mean[...] = jnp.arange(4, dtype=jnp.float32)  # running stats are saved
  path = snnx.save_checkpoint(tmp_path / "ckpt", model, {"api": "nnx"})
  raw, meta = checkpoint.load_checkpoint(path)
  assert meta == {"api": "nnx"}
  assert set(raw) == {"params", "batch_stats"}  # the Linen twin's layout, no RNG state
  template = _nnx_cnn(seed=2)
  template_before = [np.asarray(a) for a in jax.tree.leaves(nnx.state(template))]
  loaded, meta = snnx.load_checkpoint(path, template)
  assert meta == {"api": "nnx"}
  for a, b in zip(jax.tree.leaves(nnx.state(loaded)), jax.tree.leaves(nnx.state(model))):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(template_before, jax.tree.leaves(nnx.state(template))):
    np.testing.assert_array_equal(a, b)  # the template is not modified
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1)))
  model.eval()
  loaded.eval()
  np.testing.assert_array_equal(loaded(x), model(x))
  with pytest.raises(FileExistsError):
    snnx.save_checkpoint(path, model, {})


def test_nnx_checkpoint_refuses_a_model_it_does_not_fit(tmp_path):
  import sap_jax.nnx as snnx

  path = snnx.save_checkpoint(tmp_path / "ckpt", _nnx_cnn(), {})
  with pytest.raises(ValueError, match=r"does not fit the model: .*params/block1/conv/kernel"):
    snnx.load_checkpoint(path, _nnx_cnn(width=8))
  with pytest.raises(TypeError, match=r"sap_jax\.checkpoint\.load_checkpoint\(path\)"):
    snnx.load_checkpoint(path, nn.Dense(3))


# ------------------------------------------------------------------ target shardings


def test_load_into_a_sharding_puts_every_array_there(tmp_path):
  device = jax.devices()[0]
  single = jax.sharding.make_single_device_sharding(device)
  variables = make_variables()
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", variables, METADATA)
  with pytest.raises(ValueError, match="batch_stats/BatchNorm_0/var is float64, which JAX"):
    checkpoint.load_checkpoint(path, sharding=single)
  del variables["batch_stats"]["BatchNorm_0"]["var"]
  path = checkpoint.save_checkpoint(tmp_path / "f32", variables, METADATA)
  restored, _ = checkpoint.load_checkpoint(path, sharding=single)
  for want, got in zip(jax.tree.leaves(variables), jax.tree.leaves(restored)):
    assert isinstance(got, jax.Array) and got.sharding == single  # numpy-saved ones too
    assert got.dtype == want.dtype and np.asarray(got).tobytes() == np.asarray(want).tobytes()
  # A prefix: batch_stats into the sharding, params by the default rule (as saved).
  restored, _ = checkpoint.load_checkpoint(path, sharding={"batch_stats": single})
  assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(restored["batch_stats"]))
  assert isinstance(restored["params"]["head"]["kernel"], jax.Array)
  restored, _ = checkpoint.load_checkpoint(path, sharding={"batch_stats": {"count": single}})
  assert isinstance(restored["batch_stats"]["count"], jax.Array)
  assert isinstance(restored["batch_stats"]["BatchNorm_0"]["mean"], np.ndarray)


@pytest.mark.parametrize(
  "sharding, match",
  [
    ({"param": None}, r"sharding names \['param'\] at the top level, .*'batch_stats', 'params'"),
    ({"params": {"head": {"kernel": {"x": None}}}}, "a dict at params/head/kernel"),
    ("replicated", "sharding at the top level is a str"),
    ({"params": [None]}, "sharding at params is a list"),
  ],
)
def test_a_sharding_that_does_not_fit_the_variables_is_refused(tmp_path, sharding, match):
  path = checkpoint.save_checkpoint(tmp_path / "ckpt", make_variables(), METADATA)
  with pytest.raises(ValueError, match=match):
    checkpoint.load_checkpoint(path, sharding=sharding)


def test_nnx_checkpoint_loads_into_the_models_own_sharding(tmp_path):
  import sap_jax.nnx as snnx

  model = _nnx_cnn(seed=1)
  path = snnx.save_checkpoint(tmp_path / "ckpt", model, {})
  loaded, _ = snnx.load_checkpoint(path, _nnx_cnn(seed=2), sharding="model")
  for a, b in zip(
    jax.tree.leaves(snnx.variables_of(loaded)), jax.tree.leaves(snnx.variables_of(model))
  ):
    assert a.sharding == b.sharding and np.asarray(a).tobytes() == np.asarray(b).tobytes()
  with pytest.raises(ValueError, match="pass 'model'"):
    snnx.load_checkpoint(path, _nnx_cnn(), sharding="mesh")


def test_importing_shows_no_warning_of_orbax_even_with_python_warnings_on():
  """orbax itself uses what newer jax deprecates (jax 0.12: SingleDeviceSharding): with
  ``-W default`` that warning would be an extra line on every command's standard error."""
  import subprocess
  import sys

  result = subprocess.run(
    [sys.executable, "-W", "default", "-c", "import sap_jax.checkpoint"],
    capture_output=True,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    timeout=300,
  )
  assert result.returncode == 0 and "orbax" not in result.stderr, result.stderr
