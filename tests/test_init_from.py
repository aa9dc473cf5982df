"""Training from pretrained weights: ``train_model(init_from=)`` (Linen and NNX)."""

import dataclasses
import os

import jax
import numpy as np
import pytest

import sap_jax.nnx as sap_nnx
from sap_jax import init_from, models, train
from sap_jax.pretrained import flatten_names

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

# lr so small that one step leaves every float32 weight as it was (p − 1e-30·g == p)
FROZEN = train.TrainConfig(epochs=1, batch_size=16, learning_rate=1e-30, seed=1)


def _data(n=32, k=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, k, n)


def _same(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-20)


def _pretrained(k=5):
  """A trained-looking tree of the 6 → 16 → k MLP (random values, another seed)."""
  model = models.get("mlp", k, width=16)
  return model.init(jax.random.key(42), np.zeros((1, 6), np.float32))


def test_weights_are_loaded_and_a_new_head_is_reinitialised():
  x, y = _data()
  source = _pretrained(k=5)
  model = models.get("mlp", 3, width=16)
  result = train.train_model(model, x, y, FROZEN, progress=False, init_from=source)
  report = result.pretrained
  assert set(report.reinitialized) == {"params/head/kernel", "params/head/bias"}
  assert report.missing == () and report.unexpected == ()
  got, want = flatten_names(result.variables), flatten_names(source)
  assert set(report.loaded) == set(got) - set(report.reinitialized) != set()
  for name in report.loaded:
    _same(got[name], want[name])
  fresh = flatten_names(train.train_model(model, x, y, FROZEN, progress=False).variables)
  for name in report.reinitialized:  # the head keeps the run's own initialisation
    _same(got[name], fresh[name])
  assert train.train_model(model, x, y, FROZEN, progress=False).pretrained is None


def test_a_file_of_named_arrays_gives_the_same_run(tmp_path):
  x, y = _data()
  source = _pretrained(k=3)
  path = tmp_path / "weights.npz"
  np.savez(path, **{k: np.asarray(v) for k, v in flatten_names(source).items()})
  model = models.get("mlp", 3, width=16)
  cfg = dataclasses.replace(FROZEN, learning_rate=0.05, epochs=2)
  a = train.train_model(model, x, y, cfg, progress=False, init_from=str(path))
  b = train.train_model(model, x, y, cfg, progress=False, init_from=source)
  assert a.pretrained == b.pretrained and a.pretrained.reinitialized == ()
  same = jax.tree_util.tree_map(np.array_equal, a.variables, b.variables)
  assert all(jax.tree_util.tree_leaves(same))
  record = init_from.record(a.pretrained, str(path))
  assert record["source"] == str(path) and sorted(record["loaded"]) == sorted(a.pretrained.loaded)
  text = init_from.describe(a.pretrained, str(path))
  assert f"loaded: {len(a.pretrained.loaded)} (params/" in text and "missing: 0" in text


def test_a_shape_mismatch_outside_the_head_is_refused_before_training():
  x, y = _data()
  source = models.get("mlp", 3, width=8).init(jax.random.key(0), np.zeros((1, 6), np.float32))
  model = models.get("mlp", 3, width=16)
  epochs = []
  with pytest.raises(ValueError, match=r"params/.*kernel: model \(6, 16\), pretrained \(6, 8\)"):
    train.train_model(model, x, y, FROZEN, progress=False, init_from=source, log_fn=epochs.append)
  assert epochs == []
  with pytest.raises(FileNotFoundError, match="check the path"):
    train.train_model(model, x, y, FROZEN, progress=False, init_from="/no/such/weights.npz")


def test_nnx_twin_starts_from_the_same_weights():
  x, y = _data()
  source = _pretrained(k=3)
  linen = train.train_model(
    models.get("mlp", 3, width=16), x, y, FROZEN, progress=False, init_from=source
  )
  nnx_model = models.get("mlp", 3, api="nnx", in_features=6, width=16, seed=0)
  result = sap_nnx.train_model(nnx_model, x, y, FROZEN, progress=False, init_from=source)
  assert result.pretrained == linen.pretrained
  got = flatten_names(sap_nnx.variables_of(result.model))
  for name, value in flatten_names(source).items():
    _same(got[name], value)


def test_a_torchvision_state_dict_is_converted():
  with np.load(os.path.join(FIXTURES, "torchvision_resnet18_small.npz")) as f:
    state = {k[len("state/") :]: f[k] for k in f.files if k.startswith("state/")}
  model = models.ResNet(
    num_classes=4, stem="imagenet", stage_sizes=(2, 2, 2, 2), block_cls=models.ResNetBlock, width=4
  )
  init = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  variables, report = init_from.initial_variables(init, state, model)
  assert set(report.reinitialized) == {"params/head/kernel", "params/head/bias"}
  assert report.missing == () and report.unexpected == ()
  np.testing.assert_array_equal(
    variables["params"]["stem_conv"]["kernel"], state["conv1.weight"].transpose(2, 3, 1, 0)
  )
