"""sap_jax.baselines.sap: SAP behind the common interface (`sap_method`)."""

import numpy as np
import pytest

from sap_jax import baselines as bl
from sap_jax.sweep import DEFAULT_ALPHAS
from sap_jax.trusted import per_example_loss
from tests import baseline_cases as cases
from tests.baseline_cases import leaves_equal


@pytest.fixture(scope="module")
def problem():
  return cases.noisy_problem()


@pytest.fixture(scope="module")
def runs(problem):
  """Results of the contract cases on `problem`, computed once per name."""
  return cases.case_result


def test_sap_method_hparams_and_defaults():
  method = bl.sap_method(50, alphas=[10, 1e3])
  assert method.name == "sap"
  assert method.hparams["n_trusted"] == 50
  assert method.hparams["alphas"] == (10.0, 1e3)
  assert all(type(a) is float for a in method.hparams["alphas"])
  assert bl.sap_method().hparams["alphas"] == tuple(DEFAULT_ALPHAS)
  assert bl.sap_method().hparams["n_trusted"] == 1000


def test_sap_records_its_sweep_and_trusted_set(problem, runs):
  _, task = problem
  result = runs("sap")
  r = result.details["sap_result"]
  # One record per α, in grid order, holding the sweep's accuracies.
  assert [s["alpha"] for s in result.details["settings"]] == [1e2, 1e3, 1e4]
  np.testing.assert_array_equal(
    [s["val_accuracy"] for s in result.details["settings"]], r.sweep.accuracies
  )
  assert result.details["vanilla_val_accuracy"] == r.sweep.baseline_accuracy
  assert result.details["vanilla_val_accuracy"] == bl.base.val_accuracy(task, task.variables)
  assert result.details["budget_rule"] == bl.BUDGET_RULE
  # The budget: 1000 requested, clipped to N // 2; the trusted set is the n
  # lowest-loss training samples (loss at the method's batch size 256), in rank order.
  n = min(1000, task.n_train // 2)
  assert result.chosen == {"alpha": r.alpha, "n_trusted": n, "n_trusted_requested": 1000}
  losses = per_example_loss(
    task.apply_fn, task.variables, task.x_train, task.y_train, batch_size=256
  )
  np.testing.assert_array_equal(result.details["trusted_indices"], bl.base.lowest_loss(losses, n))
  # The returned variables are SAP's, and the unchanged model when no α won.
  leaves_equal(result.variables, r.variables)
  if r.alpha is None:
    leaves_equal(result.variables, task.variables)
  else:
    assert r.alpha in (1e2, 1e3, 1e4)
