"""Shared fixtures: a small three-layer MLP and its own predictions as labels."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest


class SmallMLP(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Dense(16, name="first")(x))
    x = nn.relu(nn.Dense(16, name="hidden")(x))
    return nn.Dense(4, name="head")(x)


@pytest.fixture(scope="module")
def mlp():
  """``(apply_fn, variables, x, y)``: 64 inputs of width 10, y the model's predictions."""
  model = SmallMLP()
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (64, 10)))
  variables = model.init(jax.random.PRNGKey(1), x)
  apply_fn = functools.partial(model.apply, train=False)
  y = np.asarray(jnp.argmax(apply_fn(variables, x), -1))
  return apply_fn, variables, x, y
