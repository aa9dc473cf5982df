"""sap_jax.baselines.retraining: Retrain on the clean labels, the upper reference."""

import pytest

from sap_jax import train
from tests import baseline_cases as cases


@pytest.fixture(scope="module")
def problem():
  return cases.noisy_problem()


@pytest.fixture(scope="module")
def runs(problem):
  """Results of the contract cases on `problem`, computed once per name."""
  return cases.case_result


def test_retrain_beats_vanilla_on_clean_test(problem, runs):
  splits, task = problem
  acc = lambda v: train.evaluate(task.apply_fn, v, splits.x_test, splits.y_test)["accuracy"]  # noqa: E731
  vanilla_acc = acc(runs("vanilla").variables)
  retrain_acc = acc(runs("retrain").variables)
  assert retrain_acc > vanilla_acc + 0.02, (vanilla_acc, retrain_acc)
