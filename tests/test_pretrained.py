"""Pretrained initialisation: reading named arrays (npz, safetensors, checkpoints, orbax)
and merging them into a model's variables by name."""

import json
import os
import struct

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sap_jax.checkpoint import save_checkpoint
from sap_jax.convert import torchvision as convert
from sap_jax.pretrained import (
  PretrainedReport,
  flatten_names,
  load_named_arrays,
  merge_pretrained,
)


class Net(nn.Module):
  num_classes: int = 4
  width: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(self.width, (3, 3), name="conv")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(x))
    return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


def _init(seed=0, **kw):
  return Net(**kw).init(jax.random.key(seed), jnp.zeros((1, 6, 6, 2)))


def _write_safetensors(path, tensors, tags):
  """The format written out by hand: u64 header length, JSON header, raw buffer."""
  header, chunks, offset = {"__metadata__": {"format": "test"}}, [], 0
  for name in reversed(list(tensors)):  # buffer order differs from header order
    raw = np.ascontiguousarray(tensors[name]).tobytes()
    header[name] = {
      "dtype": tags[name],
      "shape": list(tensors[name].shape),
      "data_offsets": [offset, offset + len(raw)],
    }
    chunks.append(raw)
    offset += len(raw)
  text = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def test_safetensors_are_parsed_exactly(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {
    "a.weight": rng.standard_normal((3, 4)).astype(np.float32),
    "b": rng.standard_normal(5).astype(np.float16),
    "c": rng.standard_normal((2, 2)).astype(ml_dtypes.bfloat16),
    "steps": np.array(7, np.int64),
    "mask": np.array([True, False, True]),
  }
  tags = {"a.weight": "F32", "b": "F16", "c": "BF16", "steps": "I64", "mask": "BOOL"}
  path = str(tmp_path / "w.safetensors")
  _write_safetensors(path, tensors, tags)
  got = load_named_arrays(path)
  assert set(got) == set(tensors)
  for k, v in tensors.items():
    assert got[k].dtype == v.dtype and got[k].shape == v.shape
    np.testing.assert_array_equal(got[k], v)
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:-3])  # truncated buffer
  with pytest.raises(ValueError, match="do not fit its shape"):
    load_named_arrays(path)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", 10**6) + b"{}")
  with pytest.raises(ValueError, match="header length"):
    load_named_arrays(path)


def test_npz_checkpoint_and_orbax_directories_give_slash_names(tmp_path):
  variables = jax.tree_util.tree_map(np.asarray, _init())
  flat = flatten_names(variables)
  assert "params/conv/kernel" in flat and "batch_stats/bn/mean" in flat
  np.savez(tmp_path / "v.npz", **flat)
  ckpt = save_checkpoint(tmp_path / "ckpt", variables, {"note": "test"})
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "orbax_params", variables["params"])
  checkpointer.save(tmp_path / "orbax_vars", variables)
  checkpointer.wait_until_finished()
  for where, want in (
    (tmp_path / "v.npz", flat),
    (ckpt, flat),
    (tmp_path / "orbax_vars", flat),
    (tmp_path / "orbax_params", {k: v for k, v in flat.items() if k.startswith("params/")}),
  ):
    got = load_named_arrays(where)
    assert set(got) == set(want), where
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_unknown_or_missing_files_are_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match="no pretrained weights"):
    load_named_arrays(tmp_path / "nothing.npz")
  (tmp_path / "w.pt").write_bytes(b"x")
  with pytest.raises(ValueError, match=r"give a \.npz or \.safetensors file"):
    load_named_arrays(tmp_path / "w.pt")


def test_merge_loads_by_name_reinitialises_the_head_and_reports():
  init = _init(seed=0, num_classes=4)
  source = flatten_names(_init(seed=1, num_classes=10))
  source = {k: np.asarray(v, np.float64) for k, v in source.items()}  # cast back to float32
  source["params/extra/kernel"] = np.zeros(2)
  del source["batch_stats/bn/var"]
  variables, report = merge_pretrained(init, source)
  assert isinstance(report, PretrainedReport)
  assert report.loaded == (
    "batch_stats/bn/mean",
    "params/bn/bias",
    "params/bn/scale",
    "params/conv/bias",
    "params/conv/kernel",
  )
  assert report.missing == ("batch_stats/bn/var",)
  assert report.unexpected == ("params/extra/kernel",)
  assert report.reinitialized == ("params/head/bias", "params/head/kernel")
  json.dumps(report._asdict())
  out = flatten_names(variables)
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(init)
  for name, leaf in flatten_names(init).items():
    assert out[name].dtype == leaf.dtype and out[name].shape == leaf.shape
    want = source[name] if name in report.loaded else leaf
    np.testing.assert_array_equal(np.asarray(out[name]), np.asarray(want, np.float32))


def test_merge_takes_nested_trees_and_globs():
  init = _init(seed=0, num_classes=4)
  other = _init(seed=1, num_classes=10)
  a, ra = merge_pretrained(init, other, reinit=("params/head/*",))
  b, rb = merge_pretrained(init, flatten_names(other))
  assert ra == rb
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_merge_refuses_other_shape_changes_naming_both_shapes():
  init = _init(seed=0, width=3)
  other = _init(seed=1, width=5)
  with pytest.raises(ValueError) as e:
    merge_pretrained(init, other)
  msg = str(e.value)
  assert "params/conv/kernel: model (3, 3, 2, 3), pretrained (3, 3, 2, 5)" in msg
  assert "reinit=" in msg
  with pytest.raises(ValueError, match="no pretrained array matches a model variable"):
    merge_pretrained(init, {"conv1.weight": np.zeros((3, 2, 3, 3))})


def test_merge_of_converted_torchvision_weights_for_new_classes():
  import sap_jax.models

  with np.load(
    os.path.join(os.path.dirname(__file__), "fixtures", "torchvision_vit_small.npz")
  ) as f:
    state = {k[len("state/") :]: f[k] for k in f.files if k.startswith("state/")}
  model = sap_jax.models.get(
    "vit", num_classes=3, patch_size=8, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64
  )
  init = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  variables, report = merge_pretrained(init, convert.vit_variables(state, num_heads=2))
  assert report.reinitialized == ("params/head/bias", "params/head/kernel")
  assert report.missing == () and report.unexpected == ()
  assert len(report.loaded) == len(flatten_names(init)) - 2
  np.testing.assert_array_equal(
    variables["params"]["encoderblock_0"]["mlp"]["fc1"]["kernel"],
    state["encoder.layers.encoder_layer_0.mlp.0.weight"].T,
  )
