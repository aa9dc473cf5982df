"""torchvision → registry converters, checked against torch logits stored in fixtures.

The fixtures (tests/fixtures/torchvision_*.npz) are written by
tools/verify_torchvision_converters.py from torchvision's own modules (reduced
widths, random weights and BatchNorm statistics); torch is not needed here.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sap_jax.models
from sap_jax.convert import torchvision as convert
from sap_jax.nnx import load_linen_variables

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _fixture(name):
  with np.load(os.path.join(FIXTURES, f"torchvision_{name}.npz")) as f:
    state = {k[len("state/") :]: f[k] for k in f.files if k.startswith("state/")}
    return state, f["input"], f["logits"]


def _rel(got, want):
  return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


def _shapes(tree):
  return jax.tree_util.tree_map(jnp.shape, tree)


def _apply(model, variables, x):
  return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)


RESNETS = {
  "resnet18_small": dict(stage_sizes=(2, 2, 2, 2), block_cls=sap_jax.models.ResNetBlock, width=4),
  "resnet50_small": dict(
    stage_sizes=(3, 4, 6, 3), block_cls=sap_jax.models.BottleneckResNetBlock, width=2
  ),
}


@functools.cache
def _converted_resnet(name):
  """(converted variables, input, torch logits, the Linen model's logits) of a fixture."""
  state, x, logits = _fixture(name)
  model = sap_jax.models.ResNet(num_classes=10, stem="imagenet", **RESNETS[name])
  variables = convert.resnet_variables(state)
  assert _shapes(variables) == _shapes(jax.eval_shape(model.init, jax.random.key(0), x[:1]))
  return variables, x, logits, np.asarray(_apply(model, variables, x))


@pytest.mark.parametrize("name", sorted(RESNETS))
def test_resnet_logits_match_torchvision(name):
  _, _, logits, linen_logits = _converted_resnet(name)
  assert _rel(linen_logits, logits) < 1e-4


def test_resnet_conversion_is_the_documented_layout():
  state, _, _ = _fixture("resnet18_small")
  v = convert.resnet_variables(state)
  w = state["layer2.0.downsample.0.weight"]  # (out, in, 1, 1)
  np.testing.assert_array_equal(
    v["params"]["stage2_block1"]["conv_proj"]["kernel"][0, 0], w[:, :, 0, 0].T
  )
  w = state["layer1.1.conv2.weight"]  # OIHW
  np.testing.assert_array_equal(
    v["params"]["stage1_block2"]["conv2"]["kernel"][1, 2], w[:, :, 1, 2].T
  )
  np.testing.assert_array_equal(v["params"]["head"]["kernel"], state["fc.weight"].T)
  np.testing.assert_array_equal(v["batch_stats"]["stem_bn"]["var"], state["bn1.running_var"])
  np.testing.assert_array_equal(
    v["params"]["stage4_block2"]["bn1"]["scale"], state["layer4.1.bn1.weight"]
  )


def test_vit_logits_match_torchvision():
  state, x, logits = _fixture("vit_small")
  kw = dict(patch_size=8, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64)
  model = sap_jax.models.get("vit", num_classes=10, **kw)
  variables = convert.vit_variables(state, num_heads=2)
  assert _shapes(variables) == _shapes(jax.eval_shape(model.init, jax.random.key(0), x[:1]))
  assert _rel(_apply(model, variables, x), logits) < 1e-4


def test_vit_in_proj_split_is_query_key_value_by_head():
  state, _, _ = _fixture("vit_small")
  v = convert.vit_variables(state, num_heads=np.int64(2))["params"]["encoderblock_1"]["attn"]
  w = state["encoder.layers.encoder_layer_1.self_attention.in_proj_weight"]  # (3·32, 32)
  b = state["encoder.layers.encoder_layer_1.self_attention.in_proj_bias"]
  for k, proj in enumerate(("query", "key", "value")):
    for h in range(2):
      rows = slice(32 * k + 16 * h, 32 * k + 16 * (h + 1))
      np.testing.assert_array_equal(v[proj]["kernel"][:, h, :], w[rows].T)
      np.testing.assert_array_equal(v[proj]["bias"][h], b[rows])
  wo = state["encoder.layers.encoder_layer_1.self_attention.out_proj.weight"]  # (out, in)
  np.testing.assert_array_equal(v["out"]["kernel"][1], wo[:, 16:].T)


def _nnx_logits(twin, linen_variables, x):
  """The NNX twin holding the converted variables, in eval mode."""
  twin = load_linen_variables(twin, linen_variables)
  twin.eval()  # BatchNorm on its running statistics
  return nnx.jit(lambda m, x: m(x))(twin, jnp.asarray(x))


def test_nnx_twins_take_the_converted_variables():
  state, x, logits = _fixture("resnet18_small")
  # Built abstractly (every value comes from the variables; an eager build takes ~30 s).
  twin = nnx.eval_shape(
    lambda: sap_jax.models.get(
      "resnet", 10, api="nnx", in_features=3, stage_sizes=(2, 2, 2, 2), stem="imagenet", width=4
    )
  )
  assert _rel(_nnx_logits(twin, convert.resnet_variables(state), x), logits) < 1e-4
  state, x, logits = _fixture("vit_small")
  # Built for real: its dropout layers hold RNG state that the variables do not carry.
  twin = sap_jax.models.get(
    "vit",
    10,
    api="nnx",
    in_features=3,
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    mlp_dim=64,
  )
  assert _rel(_nnx_logits(twin, convert.vit_variables(state, num_heads=2), x), logits) < 1e-4


def test_nnx_resnet50_twin_reproduces_torch_and_equals_linen():
  variables, x, logits, linen_logits = _converted_resnet("resnet50_small")
  twin = nnx.eval_shape(
    lambda: sap_jax.models.get("resnet50", 10, api="nnx", in_features=3, stem="imagenet", width=2)
  )
  got = np.asarray(_nnx_logits(twin, variables, x))
  assert _rel(got, logits) < 1e-4
  # The same convolutions in the same order: equal to the Linen model's logits (bitwise on CPU).
  np.testing.assert_allclose(got, linen_logits, rtol=1e-6, atol=1e-7)


def test_bad_state_dicts_are_refused_with_the_fix():
  state, _, _ = _fixture("resnet18_small")
  with pytest.raises(ValueError, match=r"not part of a torchvision ResNet: \['extra.weight'\]"):
    convert.resnet_variables({**state, "extra.weight": np.zeros(3)})
  partial = {k: v for k, v in state.items() if k != "layer3.1.bn2.running_var"}
  with pytest.raises(ValueError, match=r"stage3_block2/bn2 lacks \['batch_stats/var'\]"):
    convert.resnet_variables(partial)
  with pytest.raises(ValueError, match="4-D OIHW conv weight"):
    convert.resnet_variables({**state, "conv1.weight": np.zeros((4, 3))})
  with pytest.raises(ValueError, match="mapping name -> array"):
    convert.resnet_variables([1, 2])
  vit, _, _ = _fixture("vit_small")
  with pytest.raises(ValueError, match="divisible by num_heads=3"):
    convert.vit_variables(vit, num_heads=3)
  with pytest.raises(ValueError, match="num_heads must be a positive int"):
    convert.vit_variables(vit, num_heads=0)
  with pytest.raises(ValueError, match="heads.pre_logits"):
    convert.vit_variables({**vit, "heads.pre_logits.weight": np.zeros((4, 4))}, num_heads=2)


def test_fixtures_stay_small():
  for name in ("resnet18_small", "resnet50_small", "vit_small"):
    assert os.path.getsize(os.path.join(FIXTURES, f"torchvision_{name}.npz")) < 512 * 1024
