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


# Modules whose module-scoped fixture is expensive (a child process over many devices or
# processes, a benchmark run, a trained checkpoint): their tests run on one pytest-xdist
# worker (``--dist loadgroup`` in setup.cfg), so the fixture is built once, not once per
# worker that happens to receive one of their tests. Every other test is balanced freely.
ONE_WORKER_MODULES = (
  "test_baselines_sources",
  "test_bench_paper_scale",
  "test_bench_sharding",
  "test_bench_smoke",
  "test_checkpoint_processes",
  "test_experiments_differentiable",
  "test_feeder",
  "test_multihost",
  "test_sensitivity",
  "test_sharding",
  "test_sharding_nnx",
  "test_streaming",
  "test_streaming_cli",
)


def pytest_collection_modifyitems(config, items):
  for item in items:
    module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
    if module in ONE_WORKER_MODULES:
      item.add_marker(pytest.mark.xdist_group(module))
