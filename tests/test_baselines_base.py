"""sap_jax.baselines.base: the task, budgets, grids, loss ranking, and the interface
contract every method keeps."""

import dataclasses

import jax
import numpy as np
import pytest

from sap_jax import baselines as bl
from tests import baseline_cases as cases
from tests.baseline_cases import CASES, leaves_equal, same_layout


@pytest.fixture(scope="module")
def problem():
  return cases.noisy_problem()


@pytest.fixture(scope="module")
def runs(problem):
  """Results of the contract cases on `problem`, computed once per name."""
  return cases.case_result


def test_clip_budget_rule():
  assert bl.clip_budget(5000, 1170) == 585
  assert bl.clip_budget(200, 1170) == 200
  assert bl.clip_budget(3, 2) == 1
  for bad in (0, -1, 2.5):
    with pytest.raises(ValueError):
      bl.clip_budget(bad, 100)


def test_expand_grid_order_and_defaults():
  settings = bl.expand_grid({"a": 1, "b": 2, "c": 3}, {"b": (10, 20), "a": (0, 5)})
  assert settings == [
    {"a": 0, "b": 10, "c": 3},
    {"a": 5, "b": 10, "c": 3},
    {"a": 0, "b": 20, "c": 3},
    {"a": 5, "b": 20, "c": 3},
  ]
  assert bl.expand_grid({"a": 1}, None) == [{"a": 1}]


def test_lowest_and_highest_loss_break_ties_by_index():
  losses = np.array([0.5, 0.1, 0.5, 2.0, 0.1], np.float32)
  np.testing.assert_array_equal(bl.base.lowest_loss(losses, 3), [1, 4, 0])
  np.testing.assert_array_equal(bl.base.highest_loss(losses, 3), [3, 0, 2])
  with pytest.raises(ValueError, match="finite"):
    bl.base.lowest_loss(np.array([0.1, np.nan]), 1)


def test_task_validates_inputs(problem):
  _, task = problem
  with pytest.raises(ValueError, match="y_train_clean"):
    dataclasses.replace(task, y_train_clean=task.y_train[:-1])
  with pytest.raises(ValueError, match="labels"):
    bl.CorrectionTask(
      task.model,
      task.variables,
      task.x_train,
      task.y_train[:-1],
      task.x_val,
      task.y_val,
      task.train_config,
    )


# --------------------------------------------------------------------------
# Every method through the common interface.
# --------------------------------------------------------------------------


def test_vanilla_returns_the_same_variables(problem):
  _, task = problem
  result = bl.vanilla().run(task)
  assert result.variables is task.variables
  assert result.num_settings == 0 and result.method == "vanilla"
  assert result.wall_time_s > 0


@pytest.mark.parametrize("name,kwargs,num_settings", CASES, ids=[c[0] for c in CASES])
def test_method_contract(problem, runs, name, kwargs, num_settings):
  splits, task = problem
  method = bl.get_method(name, **kwargs)
  result = runs(name)
  assert result.method == name
  assert result.wall_time_s > 0
  assert result.num_settings == num_settings
  same_layout(result.variables, task.variables)
  for leaf in jax.tree_util.tree_leaves(result.variables):
    assert np.all(np.isfinite(np.asarray(leaf)))
  if num_settings > 1 or name in ("finetune", "ssd", "scrub", "sap", "cleaning"):
    settings = result.details["settings"]
    assert len(settings) == num_settings
    best = max(s["val_accuracy"] for s in settings)
    if name in ("sap", "finetune", "ssd", "scrub"):
      # These keep the unchanged model when no setting beats it on noisy val.
      best = max(best, bl.base.val_accuracy(task, task.variables))
    assert best == pytest.approx(bl.base.val_accuracy(task, result.variables))
  half = task.n_train // 2
  for key, requested in (
    ("n_retain", "n_retain_requested"),
    ("n_forget", "n_forget_requested"),
    ("n_trusted", "n_trusted_requested"),
  ):
    if key in result.chosen:
      assert result.chosen[key] == min(result.chosen[requested], half)

  if name == "retrain":
    with pytest.raises(ValueError, match="clean"):
      method.run(dataclasses.replace(task, y_train_clean=None))
    return
  # Every other method ignores the clean labels: garbage gives the same result.
  garbage = np.random.default_rng(1).integers(0, 10, task.n_train)
  other = method.run(
    bl.CorrectionTask(
      task.model,
      task.variables,
      task.x_train,
      task.y_train,
      task.x_val,
      task.y_val,
      task.train_config,
      y_train_clean=garbage,
    )
  )
  leaves_equal(other.variables, result.variables)
  assert other.chosen == result.chosen
