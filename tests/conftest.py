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
# processes, a benchmark run, a trained checkpoint): all their tests run on one pytest-xdist
# worker, so the fixture is built once, not once per worker that happens to receive one of
# their tests. Every other test is balanced freely.
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


def test_scope(nodeid: str) -> str:
  """The unit pytest-xdist hands to one worker: a whole module of `ONE_WORKER_MODULES`
  (its name), else the test alone (its node id)."""
  module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
  return module if module in ONE_WORKER_MODULES else nodeid


def pytest_xdist_make_scheduler(config, log):
  """``--dist loadgroup`` (setup.cfg) schedules by `test_scope`. (pytest-xdist's own
  ``xdist_group`` marks do not group under pytest ≥ 9.2, whose node ids it can no longer
  suffix with the group; a scheduler of our own does not depend on that.)"""
  if config.getvalue("dist") != "loadgroup":
    return None
  from xdist.scheduler import LoadScopeScheduling

  class ModuleGroups(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
      return test_scope(nodeid)

  return ModuleGroups(config, log)
