"""Shared cases of the stats tests: conv geometries, a one-layer model, inputs."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

CONV_CASES = {
  "plain": dict(kernel_size=(3, 3)),
  "stride_pad": dict(kernel_size=(3, 3), strides=2, padding=1),
  "valid": dict(kernel_size=(2, 3), padding="VALID"),
  "dilation": dict(kernel_size=(3, 3), kernel_dilation=2, padding=((2, 1), (0, 3))),
  "groups": dict(kernel_size=(3, 3), feature_group_count=2, strides=(1, 2)),
  "input_dilation": dict(kernel_size=(2, 2), input_dilation=2, padding=((0, 0), (1, 1))),
  "conv1d": dict(kernel_size=(5,), strides=2, padding="SAME"),
}


def single_layer(layer):
  """A model made of one layer, named "layer"."""

  class One(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return layer(name="layer")(x)

  return One()


def conv_input(case, rng=0, n=3):
  """A random input for a `CONV_CASES` case: (n, 9, 4) for conv1d, else (n, 7, 8, 4)."""
  shape = (n, 9, 4) if case == "conv1d" else (n, 7, 8, 4)
  return np.asarray(jax.random.normal(jax.random.PRNGKey(rng), shape))
