"""The NNX model zoo: each twin has its Linen model's parameters, and SAP on the two
(same weights) gives the same statistics, the same α and the same corrected outputs."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import nnx

import sap_jax
import sap_jax.nnx as snnx
from sap_jax import models
from sap_jax.models import nnx_resnet as snnx_resnet

# name → (Linen kwargs, NNX-only kwargs, input shape)
TWINS = {
  "mlp": (dict(depth=2, width=16, batch_norm=True), dict(in_features=64), (8, 8, 1)),
  "cnn": (dict(width=4, batch_norm=True), dict(in_features=1), (8, 8, 1)),
  "resnet18": (dict(width=4), dict(in_features=3), (8, 8, 3)),
  "vit_tiny": ({}, dict(in_features=3, image_size=8), (8, 8, 3)),
}


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


@functools.cache
def _twins(name):
  linen_kw, nnx_kw, shape = TWINS[name]
  linen = models.get(name, 3, **linen_kw)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (48, *shape)))
  variables = linen.init(jax.random.PRNGKey(1), x[:2], train=False)
  twin = models.get(name, 3, api="nnx", **linen_kw, **nnx_kw)
  return linen, variables, twin, x


@pytest.mark.parametrize("name", list(TWINS))
def test_twin_has_equal_parameter_count_and_output(name):
  linen, variables, twin, x = _twins(name)
  assert _count(nnx.state(twin, nnx.Param)) == _count(variables["params"])
  loaded = snnx.load_linen_variables(twin, variables)
  loaded.eval()
  want = linen.apply(variables, x, train=False)
  np.testing.assert_allclose(loaded(x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(TWINS))
def test_sap_on_linen_and_nnx_twins_agrees(name):
  linen, variables, twin, x = _twins(name)
  loaded = snnx.load_linen_variables(twin, variables)
  apply_fn = functools.partial(linen.apply, train=False)
  y = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (48,), 0, 3))
  kw = dict(n_trusted=24, alphas=(3.0, 30.0, 1e3), batch_size=24)
  lin = sap_jax.run_sap(apply_fn, variables, x, y, x[:24], y[:24], **kw)
  nx = snnx.run_sap(loaded, x, y, x[:24], y[:24], **kw)
  np.testing.assert_array_equal(nx.trusted_indices, lin.trusted_indices)
  assert set(nx.layers) == set(lin.layers)
  for key, summary in lin.layers.items():
    assert nx.layers[key]["rows"] == summary["rows"]
    np.testing.assert_allclose(
      nx.layers[key]["effective_rank"], summary["effective_rank"], rtol=1e-3
    )
  np.testing.assert_array_equal(nx.sweep.accuracies, lin.sweep.accuracies)
  assert nx.alpha == lin.alpha
  corrected = nx.model
  corrected.eval()
  want = linen.apply(lin.variables, x, train=False)
  np.testing.assert_allclose(corrected(x), want, rtol=1e-3, atol=1e-4)


# A bottleneck ResNet one block deep (2 → 8 channels: the projection shortcut): ResNet-50's
# block at a fraction of its compile time (the v1.5 stride is checked on the torch fixture).
BOTTLENECK = dict(stage_sizes=(1,), block_cls=models.BottleneckResNetBlock, width=2)


@functools.cache
def _bottleneck_twins():
  linen = models.ResNet(num_classes=3, **BOTTLENECK)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 3)))
  # Random values in the model's tree (no init to compile), running statistics included.
  rng = np.random.default_rng(1)
  variables = jax.tree_util.tree_map_with_path(
    lambda path, leaf: np.asarray(
      rng.uniform(0.5, 1.5, leaf.shape)
      if path[-1].key in ("var", "scale")
      else rng.normal(0, 0.3, leaf.shape),
      np.float32,
    ),
    jax.eval_shape(linen.init, jax.random.PRNGKey(0), x[:1]),
  )
  twin = nnx.eval_shape(lambda: models.get("resnet", 3, api="nnx", in_features=3, **BOTTLENECK))
  return linen, variables, snnx.load_linen_variables(twin, variables), x


def test_resnet50_twin_has_resnet50s_parameters():
  twin = nnx.eval_shape(
    lambda: models.get("resnet50", 1000, api="nnx", in_features=3, stem="imagenet")
  )
  assert _count(nnx.state(twin, nnx.Param)) == 25_557_032  # torchvision's resnet50
  assert isinstance(twin.stage2_block1, snnx_resnet.BottleneckResNetBlock)
  assert twin.stage2_block1.conv2.strides == (2, 2)  # v1.5: the stride on the 3×3
  assert twin.stage2_block1.conv1.strides == (1, 1)


def test_bottleneck_twin_train_step_equals_linen():
  linen, variables, loaded, x = _bottleneck_twins()
  want, updated = jax.jit(lambda v, x: linen.apply(v, x, train=True, mutable=["batch_stats"]))(
    variables, x
  )
  twin = nnx.clone(loaded)
  twin.train()  # batch statistics, and the running ones move by momentum 0.9
  got = nnx.jit(lambda m, x: m(x))(twin, x)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  got_stats = snnx.variables_of(twin)["batch_stats"]
  assert jax.tree_util.tree_structure(got_stats) == jax.tree_util.tree_structure(
    updated["batch_stats"]
  )
  for a, b in zip(
    jax.tree_util.tree_leaves(got_stats), jax.tree_util.tree_leaves(updated["batch_stats"])
  ):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_run_sap_on_the_bottleneck_twin_finds_every_layer():
  _, variables, loaded, x = _bottleneck_twins()
  y = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (8,), 0, 3))
  result = snnx.run_sap(loaded, x, y, x[:4], y[:4], n_trusted=4, alphas=(3.0, 1e3), batch_size=8)
  kernels = {
    "/".join(k.key for k in path[:-1])
    for path, _ in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    if path[-1].key == "kernel"
  }
  assert set(result.layers) == kernels and len(kernels) == 6
  # rows: one per trusted sample (4) and output position (8×8 maps throughout)
  for name in ("conv1", "conv2", "conv3", "conv_proj"):
    assert result.layers[f"stage1_block1/{name}"]["rows"] == 4 * 8 * 8
  assert result.layers["head"]["rows"] == 4


def test_unknown_twin_and_mismatched_weights_are_refused():
  with pytest.raises(ValueError, match="no NNX twin"):
    models.get("vgg11", 3, api="nnx")
  with pytest.raises(ValueError, match='api must be "linen" or "nnx"'):
    models.get("cnn", 3, api="torch")
  _, variables, _, _ = _twins("cnn")
  other = models.get("cnn", 3, api="nnx", width=8, in_features=1)
  with pytest.raises(ValueError, match="do not match"):
    snnx.load_linen_variables(other, variables)
  with pytest.raises(ValueError, match="block_cls must be ResNetBlock or BottleneckResNetBlock"):
    models.get("resnet", 3, api="nnx", in_features=3, block_cls=nnx.Linear)
