"""select_layers: which layers SAP corrects."""

import numpy as np
import pytest

import sap_jax as sj
from sap_jax.layers import path_name, skipped_layers


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


def test_path_name_and_patterns_take_integer_elements():
  assert path_name(("layers", 0, "attn")) == "layers/0/attn"
  stats = {("layers", 0): None, ("layers", 1): None, ("head",): None}
  assert list(sj.select_layers(stats, exclude=("layers/1",))) == [("layers", 0), ("head",)]


def test_skipped_layers_give_each_reason():
  kinds = {("a",): None, ("b",): None, ("emb",): "Embed", ("c",): None, ("d",): None}
  called = [("a",), ("b",), ("c",)]
  got = skipped_layers(kinds, called, [("a",)], exclude=("b",), layer_range=(0, 1))
  assert got == {
    "b": "excluded by pattern 'b'",
    "emb": "layer type Embed is not supported (an index lookup: its input is a token id, "
    "not an activation to project)",
    "c": "outside layer_range (0, 1)",
    "d": "never called in the forward",
  }
