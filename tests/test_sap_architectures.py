"""SAP on every architecture in the zoo, with no model-specific code.

For each model (tiny width), `activation_stats` must find every layer that has a
kernel, and the corrected model must equal the original model run with every
layer's inputs multiplied by its projection (the slow reference in
tests/sap_reference.py): attention's query/key/value/out DenseGeneral layers,
MLP blocks, the patch embedding, downsample convs and the classifier included.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sap_jax as sj
from sap_jax import models
from sap_jax.stats import conv
from tests.sap_reference import projected_input_interceptor

ARCHITECTURES = {
  "mlp": (dict(depth=2, width=16, batch_norm=True), (8, 8, 1)),
  "cnn": (dict(width=4), (8, 8, 1)),
  "cnn1d": (dict(width=4), (40, 1)),
  "lenet5": ({}, (28, 28, 1)),
  "vgg11": (dict(width_multiplier=1 / 16), (32, 32, 3)),
  "resnet18": (dict(width=4, stem="cifar"), (16, 16, 3)),
  "resnet50": (dict(width=2, stem="imagenet"), (32, 32, 3)),
  "vit_tiny": ({}, (8, 8, 3)),
  "inception_resnet_v2": (dict(width_multiplier=1 / 16, block_repeats=(1, 1, 1)), (75, 75, 3)),
}


def _random_variables(model, x, seed=0):
  """Variables with the model's exact tree, filled from numpy (fast: no init)."""
  abstract = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "batch_stats" in name:
      value = (
        rng.uniform(0.5, 1.5, leaf.shape)
        if name.endswith("['var']")
        else rng.normal(0, 0.1, leaf.shape)
      )
    elif name.endswith("['kernel']"):
      fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
      value = rng.normal(0, 1.0 / np.sqrt(fan_in), leaf.shape)
    elif name.endswith("['scale']"):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      value = rng.normal(0, 0.1, leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def _kernel_parents(params, prefix=()):
  for name, node in params.items():
    if isinstance(node, dict):
      if "kernel" in node:
        yield prefix + (name,)
      yield from _kernel_parents(node, prefix + (name,))


_extract_patches = jax.jit(conv.extract_patches, static_argnums=1)


def _jitted_conv_patches(module, x):
  """`sap_jax.conv_patches`, one compiled program per conv geometry and input shape:
  eager, each of its ops compiles per shape (inception_resnet_v2: 15 s of the test)."""
  x, geometry = conv.conv_geometry(module, x)
  return _extract_patches(x, geometry)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_sap_covers_every_layer_and_matches_projected_inputs(name):
  kwargs, shape = ARCHITECTURES[name]
  model = models.get(name, num_classes=5, **kwargs)
  x = np.asarray(jax.random.normal(jax.random.key(1), (3,) + shape))
  variables = _random_variables(model, x)
  apply_fn = functools.partial(model.apply, train=False)

  stats = sj.activation_stats(apply_fn, variables, [x[:2], x[2:]])
  assert set(stats) == set(_kernel_parents(variables["params"])), "every kernel's layer is found"
  assert ("head",) in stats

  # α chosen so the projection is far from the identity: the check is not vacuous. Under
  # jit (as a user runs them): one compilation each, where eager dispatch compiles every
  # layer's ops separately (inception_resnet_v2 alone: 63 s → about 45 s).
  projs = jax.jit(lambda s: sj.projections(s, 10.0))(stats)
  corrected = jax.jit(sj.project_params)(variables, projs)
  forward = jax.jit(apply_fn)
  got = np.asarray(forward(corrected, x))
  reference = projected_input_interceptor(
    {p: q.matrix for p, q in projs.items()}, patch_fn=_jitted_conv_patches
  )
  with nn.intercept_methods(reference):
    want = np.asarray(apply_fn(variables, x))
  original = np.asarray(forward(variables, x))
  assert np.abs(got - original).max() > 1e-3
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * max(1.0, np.abs(want).max()))
