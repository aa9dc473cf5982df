"""Shared cases of the baselines tests: a linear model, tree comparisons, and one small
noisy problem with every method run on it once per test process."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np

from sap_jax import baselines as bl
from sap_jax import models, train
from sap_jax.data import load_dataset, make_splits


class Linear(nn.Module):
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(self.num_classes, name="head")(x)


def leaves_equal(a, b):
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def same_layout(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert x.shape == y.shape and x.dtype == y.dtype


def linear_variables(d=4, k=3, seed=1):
  rng = np.random.default_rng(seed)
  return {
    "params": {
      "head": {
        "kernel": rng.normal(size=(d, k)).astype(np.float32),
        "bias": rng.normal(size=(k,)).astype(np.float32),
      }
    }
  }


# --------------------------------------------------------------------------
# A small noisy problem shared by the harness tests: digits, 25 % symmetric
# noise, a one-hidden-layer MLP with BatchNorm trained briefly.
# --------------------------------------------------------------------------

CASES = [
  ("vanilla", {}, 0),
  ("sap", {"alphas": (1e2, 1e3, 1e4)}, 3),
  ("retrain", {}, 1),
  ("finetune", {"epochs": 2, "grid": {"lr": (1e-3, 1e-2)}}, 2),
  ("ssd", {"grid": {"alpha": (10.0, 1.0)}}, 2),
  ("scrub", {"epochs": 2, "grid": {"lr": (5e-4, 5e-3)}}, 2),
  ("cleaning", {"k_folds": 3}, 1),
]
"""``(name, factory kwargs, num_settings)`` of every method on `noisy_problem`."""


@functools.cache
def noisy_problem():
  """``(splits, task)``, built once per test process (test modules share it)."""
  splits = make_splits(load_dataset("digits"), noise="symmetric:0.25", seed=0)
  model = models.get("mlp", num_classes=10, depth=1, width=32, batch_norm=True)
  config = train.TrainConfig(epochs=20, batch_size=64, learning_rate=0.05, seed=0)
  variables = train.train_model(
    model, splits.x_train, splits.y_train, config, progress=False
  ).variables
  task = bl.CorrectionTask.from_splits(model, variables, splits, config)
  return splits, task


@functools.cache
def case_result(name):
  """The result of the `CASES` method ``name`` on `noisy_problem`, computed once."""
  _, task = noisy_problem()
  kwargs = {c[0]: c[1] for c in CASES}[name]
  return bl.get_method(name, **kwargs).run(task)
