"""select_layers: which layers SAP corrects."""

import numpy as np
import pytest

import sap_jax as sj
from sap_jax.layers import path_name


def test_exclude_and_layer_range(mlp):
  apply_fn, variables, x, _ = mlp
  stats = sj.activation_stats(apply_fn, variables, [x])
  assert list(sj.select_layers(stats, exclude=("head",))) == [("first",), ("hidden",)]
  assert list(sj.select_layers(stats, layer_range=(1, None))) == [("hidden",), ("head",)]
  assert list(sj.select_layers(stats, layer_range=(0, -1), exclude=("f*",))) == [("hidden",)]
  with pytest.raises(ValueError, match="matches no layer"):
    sj.select_layers(stats, exclude=("classifier",))
  with pytest.raises(ValueError, match="No layer left"):
    sj.select_layers(stats, exclude=("*",))
  corrected = sj.correct(apply_fn, variables, x, 10.0, exclude=("head",))
  assert corrected["params"]["head"]["kernel"] is variables["params"]["head"]["kernel"]
  assert not np.allclose(
    corrected["params"]["first"]["kernel"], variables["params"]["first"]["kernel"]
  )


def test_path_name_joins_with_slashes_and_prints_integers():
  assert path_name(("block1", "Dense_0")) == "block1/Dense_0"
  assert path_name(("layers", 3, "kernel")) == "layers/3/kernel"
