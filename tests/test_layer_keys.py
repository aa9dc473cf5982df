"""sap_jax.layer_keys and `exclude` strings: a per-layer α is keyed by the names
``result.layers`` prints or by path tuples, unknown keys are refused with the layer
names, a decomposition applied to another model's variables is refused, and
``exclude="head"`` is one pattern."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

import sap_jax as sj
from sap_jax.layer_keys import check_same_model, per_layer_alpha
from sap_jax.layers import exclude_patterns, select_layers

PATHS = [("block1", "conv"), ("head",)]


def test_per_layer_alpha_accepts_names_and_paths_in_layer_order():
  assert per_layer_alpha(3.0, PATHS) == 3.0
  want = {("block1", "conv"): 1.0, ("head",): 2.0}
  assert per_layer_alpha({"head": 2.0, "block1/conv": 1.0}, PATHS) == want
  assert list(per_layer_alpha({"head": 2.0, "block1/conv": 1.0}, PATHS)) == PATHS
  assert per_layer_alpha({("head",): 2.0, "block1/conv": 1.0}, PATHS) == want
  # NNX paths hold integers; their printed name is "layers/0".
  nnx_paths = [("layers", 0), ("head",)]
  want = {("layers", 0): 1.0, ("head",): 2.0}
  assert per_layer_alpha({"layers/0": 1.0, ("head",): 2.0}, nnx_paths) == want


def test_per_layer_alpha_refusals_name_the_layers():
  with pytest.raises(ValueError, match=r"names no layer \['blokc1/conv'\]; the layers are "):
    per_layer_alpha({"blokc1/conv": 1.0, "head": 2.0}, PATHS)
  with pytest.raises(ValueError, match=r"names no layer \['head/x'\].*'block1/conv', 'head'"):
    per_layer_alpha({("head", "x"): 1.0, "block1/conv": 1.0, "head": 1.0}, PATHS)
  with pytest.raises(ValueError, match="'head' twice"):
    per_layer_alpha({("head",): 1.0, "head": 2.0, "block1/conv": 1.0}, PATHS)
  with pytest.raises(ValueError, match=r"layer names such as 'block1/conv' or path tuples, got 3"):
    per_layer_alpha({3: 1.0}, PATHS)
  with pytest.raises(KeyError, match=r"no entry for layers \['head'\]"):
    per_layer_alpha({"block1/conv": 1.0}, PATHS)


class _Net(nn.Module):
  width: int = 8

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.relu(nn.Dense(self.width, name="hidden")(x))
    return nn.Dense(3, name="head")(h)


def _setup(width=8):
  model = _Net(width)
  x = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
  v = model.init(jax.random.PRNGKey(0), x[:1])
  stats = sj.activation_stats(model.apply, v, [x])
  return model.apply, v, x, stats


def test_apply_alpha_and_projections_take_the_printed_names():
  _, v, _, stats = _setup()
  dec = sj.decompose(v, stats)
  by_path = sj.apply_alpha(v, dec, {("hidden",): 1e2, ("head",): 1e4})
  by_name = sj.apply_alpha(v, dec, {"hidden": 1e2, "head": 1e4})
  jax.tree_util.tree_map(np.testing.assert_array_equal, by_path, by_name)
  # Each layer got its own α: not the scalar result of either.
  assert not np.allclose(
    by_name["params"]["head"]["kernel"], sj.apply_alpha(v, dec, 1e2)["params"]["head"]["kernel"]
  )
  with pytest.raises(
    ValueError, match=r"names no layer \['Dense_0'\]; the layers are \['hidden', 'head'\]"
  ):
    sj.apply_alpha(v, dec, {"Dense_0": 1e2, "hidden": 1e2, "head": 1e4})
  got = sj.projections(stats, {"hidden": 1e2, "head": 1e4})
  np.testing.assert_array_equal(got[("head",)].matrix, sj.projections(stats, 1e4)[("head",)].matrix)
  with pytest.raises(ValueError, match="names no layer"):
    sj.projections(stats, {"hidden": 1e2, "head": 1e4, "logits": 1.0})


def test_apply_alpha_with_another_models_decomposition_is_refused():
  _, v, _, stats = _setup()
  _, v_wide, _, stats_wide = _setup(width=16)
  dec_wide = sj.decompose(v_wide, stats_wide)
  with pytest.raises(
    ValueError,
    match=r"another model: layer 'hidden' has a \(5, 16\) kernel there and \(5, 8\) here",
  ):
    sj.apply_alpha(v, dec_wide, 1e3)
  renamed = {"params": {"other": v["params"]["hidden"], "head": v["params"]["head"]}}
  with pytest.raises(ValueError, match="another model: its layer 'hidden' has no kernel"):
    check_same_model(renamed, sj.decompose(v, stats).kernels)


def test_exclude_string_is_one_pattern():
  assert exclude_patterns("head") == ("head",)
  assert exclude_patterns(["head", "b*"]) == ("head", "b*")
  _, _, _, stats = _setup()
  assert list(select_layers(stats, exclude="head")) == [("hidden",)]
  assert select_layers(stats, exclude="head") == select_layers(stats, exclude=("head",))
  with pytest.raises(ValueError, match="glob patterns of layer names"):
    exclude_patterns(("head", 3))
