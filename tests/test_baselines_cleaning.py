"""sap_jax.baselines.cleaning: confident learning's flags, out-of-sample probabilities, and
the method's records."""

import numpy as np
import pytest

from sap_jax import baselines as bl
from tests import baseline_cases as cases


@pytest.fixture(scope="module")
def problem():
  return cases.noisy_problem()


@pytest.fixture(scope="module")
def runs(problem):
  """Results of the contract cases on `problem`, computed once per name."""
  return cases.case_result


# Three classes. Thresholds (mean self-confidence): t0 = (.9+.7+.1+.2+.48)/5 =
# .476, t1 = (.8+.9+.7+.2)/4 = .65, t2 = .8. Guessed true class (the one class
# with P >= t): a0 a1 a4 -> 0, a2 a3 -> 1; b0 b1 b2 -> 1, b3 -> 0; c* -> 2.
# Confident joint C[given][true] = [[3, 2, 0], [1, 3, 0], [0, 0, 4]] (rows already
# sum to the label counts, so calibration keeps it). prune_by_noise_rate removes,
# among label 0, the C[0][1] = 2 samples with the largest P1 − P0 (a2 .7, a3 .5;
# not a4 .02) and among label 1 the C[1][0] = 1 largest P0 − P1 (b3).
_CL_PROBS = np.array(
  [
    [0.90, 0.05, 0.05],  # 0 a0
    [0.70, 0.20, 0.10],  # 1 a1
    [0.10, 0.80, 0.10],  # 2 a2  flagged
    [0.20, 0.70, 0.10],  # 3 a3  flagged
    [0.48, 0.50, 0.02],  # 4 a4  argmax != label, but not flagged
    [0.10, 0.80, 0.10],  # 5 b0
    [0.05, 0.90, 0.05],  # 6 b1
    [0.10, 0.70, 0.20],  # 7 b2
    [0.70, 0.20, 0.10],  # 8 b3  flagged
    [0.10, 0.10, 0.80],  # 9..12 c
    [0.10, 0.10, 0.80],
    [0.10, 0.10, 0.80],
    [0.10, 0.10, 0.80],
  ]
)
_CL_LABELS = np.array([0] * 5 + [1] * 4 + [2] * 4)


def test_confident_learning_flags_hand_computed_samples():
  from cleanlab.count import compute_confident_joint, get_confident_thresholds

  np.testing.assert_allclose(
    get_confident_thresholds(_CL_LABELS, _CL_PROBS), [0.476, 0.65, 0.8], atol=1e-12
  )
  cj = compute_confident_joint(_CL_LABELS, _CL_PROBS, calibrate=False)
  np.testing.assert_array_equal(cj, [[3, 2, 0], [1, 3, 0], [0, 0, 4]])
  flagged = bl.find_label_issues(_CL_LABELS, _CL_PROBS)
  np.testing.assert_array_equal(np.flatnonzero(flagged), [2, 3, 8])
  # Plain disagreement with the prediction would also drop a4.
  disagree = bl.find_label_issues(_CL_LABELS, _CL_PROBS, filter_by="predicted_neq_given")
  np.testing.assert_array_equal(np.flatnonzero(disagree), [2, 3, 4, 8])


def test_cross_val_probs_are_out_of_sample():
  n, k, folds_wanted = 30, 3, 5
  x = np.arange(n)[:, None]
  y = np.arange(n) % k
  seen = []

  def fit(x_tr, y_tr):
    # A perfect memoriser: one-hot on its training label, uniform elsewhere.
    table = dict(zip(x_tr[:, 0].tolist(), y_tr.tolist()))
    seen.append(set(table))

    def predict(xs):
      out = np.full((len(xs), k), 1.0 / k)
      for i, s in enumerate(xs[:, 0].tolist()):
        if s in table:
          out[i] = np.eye(k)[table[s]]
      return out

    return predict

  probs, fold = bl.cross_val_probs(fit, x, y, num_classes=k, k_folds=folds_wanted, seed=0)
  np.testing.assert_allclose(probs, 1.0 / k, rtol=1e-6)  # never memorised
  assert len(seen) == folds_wanted and sorted(set(fold.tolist())) == list(range(folds_wanted))
  for s in range(n):
    assert s not in seen[fold[s]]
    assert sum(s in tr for tr in seen) == folds_wanted - 1
  for f in range(folds_wanted):  # stratified: 2 samples of each class per fold
    np.testing.assert_array_equal(np.bincount(y[fold == f], minlength=k), [2, 2, 2])


def test_cleaning_records_out_of_sample_probs(problem, runs):
  _, task = problem
  result = runs("cleaning")
  probs, folds = result.details["pred_probs"], result.details["folds"]
  assert probs.shape == (task.n_train, 10) and sorted(set(folds.tolist())) == [0, 1, 2]
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
  flagged = result.details["flagged"]
  assert result.chosen["num_removed"] == len(flagged) > 0
