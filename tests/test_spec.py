"""Tests for sap_jax.spec: run specs rebuilt from JSON, data roots, data options."""

import os

import jax
import numpy as np
import pytest

from sap_jax import models
from sap_jax.spec import RunSpec, build_model, load_data


def test_data_root_is_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  spec = RunSpec(dataset="npz", data_root="data/d.npz")
  assert spec.data_root == str(tmp_path / "data" / "d.npz")
  assert RunSpec(data_root="~/x").data_root == os.path.join(os.path.expanduser("~"), "x")
  assert RunSpec.from_dict(spec.to_dict()) == spec
  monkeypatch.chdir("/")
  assert RunSpec.from_dict(spec.to_dict()).data_root == str(tmp_path / "data" / "d.npz")
  assert RunSpec().data_root is None


def test_bad_data_root_and_options_are_refused():
  with pytest.raises(ValueError, match="data_root must be a path"):
    RunSpec(data_root=3)
  with pytest.raises(ValueError, match="data_options must be a mapping"):
    RunSpec(data_options=[("a", 1)])


def test_list_valued_options_reach_the_loader():
  spec = RunSpec(dataset="mnist1d", data_options={"num_samples": [1, 2]})
  with pytest.raises(ValueError, match=r"num_samples must be an int .*\[1, 2\]"):
    load_data(spec)


def test_unknown_fields_are_refused():
  with pytest.raises(ValueError, match="Unknown RunSpec fields"):
    RunSpec.from_dict({"datset": "digits"})


def test_api_defaults_to_linen_and_round_trips():
  old = RunSpec().to_dict()
  assert "api" not in old  # a Linen spec's dict (and hashes of it) are unchanged
  assert RunSpec.from_dict(old).api == "linen"
  spec = RunSpec(model="mlp", api="nnx")
  assert spec.to_dict()["api"] == "nnx"
  assert RunSpec.from_dict(spec.to_dict()) == spec


def test_bad_api_and_models_without_nnx_twin_are_refused():
  with pytest.raises(ValueError, match="api must be one of linen, nnx"):
    RunSpec(api="torch")
  with pytest.raises(ValueError, match="'vgg11' has no NNX twin; with api 'nnx' use one of"):
    RunSpec(model="vgg11", api="nnx")


@pytest.mark.parametrize(
  "model, shape, want",
  [
    ("mlp", (8, 8, 1), {"in_features": 64}),
    ("cnn", (8, 8, 1), {"in_features": 1}),
    ("vit_tiny", (8, 8, 3), {"in_features": 3, "image_size": 8}),
  ],
)
def test_nnx_model_is_built_for_the_input_shape(model, shape, want):
  from flax import nnx

  kw = {"width": 4} if model != "vit_tiny" else {}
  spec = RunSpec(model=model, api="nnx", model_kwargs=kw, seed=3)
  built = build_model(spec, 5, shape)
  assert isinstance(built, nnx.Module)
  same = models.get(model, 5, api="nnx", seed=3, **kw, **want)  # the twin, from nnx.Rngs(seed)
  a, b = nnx.state(built, nnx.Param), nnx.state(same, nnx.Param)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(ValueError, match="pass input_shape"):
    build_model(spec, 5)
