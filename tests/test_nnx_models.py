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


def test_unknown_twin_and_mismatched_weights_are_refused():
  with pytest.raises(ValueError, match="no NNX twin"):
    models.get("vgg11", 3, api="nnx")
  with pytest.raises(ValueError, match='api must be "linen" or "nnx"'):
    models.get("cnn", 3, api="torch")
  _, variables, _, _ = _twins("cnn")
  other = models.get("cnn", 3, api="nnx", width=8, in_features=1)
  with pytest.raises(ValueError, match="do not match"):
    snnx.load_linen_variables(other, variables)
