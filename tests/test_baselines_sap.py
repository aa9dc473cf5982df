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


def test_sap_rounds_option_continues_from_the_sweep(problem, runs):
  import sap_jax as sj

  _, task = problem
  one = runs("sap")
  method = bl.sap_method(alphas=(1e2, 1e3, 1e4), rounds=3)
  assert method.hparams["rounds"] == 3 and "rounds" not in bl.sap_method().hparams
  result = method.run(task)
  # Round 0 is the plain method's sweep, on the same trusted set.
  assert result.details["settings"] == one.details["settings"]
  np.testing.assert_array_equal(result.details["trusted_indices"], one.details["trusted_indices"])
  want = sj.correction.sap_rounds(
    task.apply_fn,
    task.variables,
    task.x_train[one.details["trusted_indices"]],
    task.x_val,
    task.y_val,
    (1e2, 1e3, 1e4),
    rounds=3,
    seed=task.seed,
  )
  rounds = result.details["rounds"]
  assert [rec["alpha"] for rec in rounds] == [rec.alpha for rec in want.records]
  assert result.chosen["round_alphas"] == list(want.alphas)
  assert result.num_settings == 3 * len(want.records)
  leaves_equal(result.variables, want.variables)


def test_sap_clean_trusted_set_is_the_published_oracle(problem):
  import dataclasses

  from sap_jax.trusted import trusted_set

  _, task = problem
  method = bl.sap_method(
    alphas=(1e3,), score="curvature_published", trusted_labels="clean", n_trusted=100
  )
  assert method.hparams["trusted_labels"] == "clean"
  result = method.run(task)
  want = trusted_set(
    task.apply_fn,
    task.variables,
    task.x_train,
    task.y_train_clean,
    100,
    score="curvature_published",
    batch_size=256,
    seed=task.seed,
  )
  np.testing.assert_array_equal(result.details["trusted_indices"], want)
  # 100 // 10 + 1 = 11 per (clean) class.
  assert np.all(np.bincount(task.y_train_clean[want], minlength=10) == 11)
  assert result.chosen["n_trusted"] == 110
  with pytest.raises(ValueError, match="y_train_clean"):
    method.run(dataclasses.replace(task, y_train_clean=None))
  with pytest.raises(ValueError, match="trusted_labels"):
    bl.sap_method(trusted_labels="oracle")
