"""sap_jax.noise_checks: each check returns its argument in the noise code's form or
raises a ValueError that says what to pass."""

import math
import types

import numpy as np
import pytest

from sap_jax import noise_checks as checks


def test_scalar_checks_return_python_numbers():
  for value, want in ((0, 0.0), (np.float32(0.25), 0.25), (0.5, 0.5)):
    got = checks.check_rate(value)
    assert type(got) is float and got == want
  got = checks.check_num_classes(np.int64(3))
  assert type(got) is int and got == 3
  got = checks.check_seed(np.int32(4))
  assert type(got) is int and got == 4


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: checks.check_rate(True), r"^rate must be a float in \[0, 1\), got True \(bool\)"),
    (lambda: checks.check_rate("0.1"), r"rate must be a float in \[0, 1\), got '0.1' \(str\)"),
    (lambda: checks.check_rate(1.0), r"^rate must be in \[0, 1\), got 1.0"),
    (lambda: checks.check_rate(math.nan), r"^rate must be in \[0, 1\), got nan"),
    (lambda: checks.check_num_classes(2.0), "^num_classes must be an int >= 2, got 2.0"),
    (lambda: checks.check_num_classes(True), "^num_classes must be an int >= 2, got True"),
    (lambda: checks.check_num_classes(1), "^num_classes must be >= 2 to corrupt labels, got 1"),
    (lambda: checks.check_seed(-1), "^seed must be a non-negative int, got -1"),
    (lambda: checks.check_seed(True), "^seed must be a non-negative int, got True"),
    (lambda: checks.check_seed(1.5), "^seed must be a non-negative int, got 1.5"),
  ],
)
def test_scalar_check_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_check_labels_returns_int64_and_names_the_argument():
  got = checks.check_labels(np.array([2, 0, 1], np.int32), 3)
  assert got.dtype == np.int64
  np.testing.assert_array_equal(got, [2, 0, 1])
  assert checks.check_labels([0, 99], None).tolist() == [0, 99]  # no upper bound
  with pytest.raises(ValueError, match="^fine must be an integer array, got dtype bool"):
    checks.check_labels(np.array([True, False]), 2, "fine")
  with pytest.raises(ValueError, match="^labels must be an integer array, got dtype float64"):
    checks.check_labels(np.array([0.0, 1.0]), 2)
  with pytest.raises(ValueError, match=r"^labels must be 1-D .* got shape \(2, 1\)"):
    checks.check_labels(np.zeros((2, 1), np.int32), 2)
  with pytest.raises(ValueError, match="^labels is empty"):
    checks.check_labels(np.zeros(0, np.int32), 2)
  with pytest.raises(ValueError, match=r"^labels must lie in \[0, 3\), found values in \[0, 3\]"):
    checks.check_labels([0, 3], 3)
  with pytest.raises(
    ValueError, match=r"^labels must lie in \[0, inf\), found values in \[-1, 2\]"
  ):
    checks.check_labels([-1, 2], None)


def test_check_class_map_returns_a_plain_int_dict():
  got = checks.check_class_map(types.MappingProxyType({np.int64(3): np.int32(5)}), 10)
  assert got == {3: 5} and type(got) is dict
  assert all(type(k) is int and type(v) is int for k, v in got.items())
  assert checks.check_class_map({0: 50}, None) == {0: 50}  # no upper bound
  with pytest.raises(ValueError, match="^class_map must be a mapping .* got list"):
    checks.check_class_map([(3, 5)], 10)
  with pytest.raises(ValueError, match="^class_map entries must be ints, got 3.0 -> 5"):
    checks.check_class_map({3.0: 5}, 10)
  with pytest.raises(ValueError, match="^class_map entries must be ints, got True -> 5"):
    checks.check_class_map({True: 5}, 10)
  with pytest.raises(ValueError, match="^class_map entry -1 -> 2 is outside the class range >= 0"):
    checks.check_class_map({-1: 2}, None)
  with pytest.raises(
    ValueError, match=r"^class_map entry 3 -> 10 is outside the class range \[0, 10\)"
  ):
    checks.check_class_map({3: 10}, 10)


def test_check_transition_tolerance_and_messages():
  t = np.array([[0.5, 0.5], [0.25, 0.75]], np.float32)
  got = checks.check_transition(t, 2)
  assert got.dtype == np.float64
  np.testing.assert_array_equal(got, t.astype(np.float64))
  assert checks.check_transition(t, None).shape == (2, 2)
  eps = checks.TRANSITION_ATOL
  assert eps == 1e-6
  checks.check_transition([[1.0, 0.0], [0.0, 1.0 + eps / 2]], 2)  # within the tolerance
  with pytest.raises(ValueError, match=r"row-stochastic .* rows \[1\] sum to \[1.000002\]"):
    checks.check_transition([[1.0, 0.0], [0.0, 1.0 + 2 * eps]], 2)
  with pytest.raises(ValueError, match="finite, non-negative"):
    checks.check_transition([[np.nan, 1.0], [0.0, 1.0]], 2)
  with pytest.raises(ValueError, match=r"^transition has shape \(2, 2\) but num_classes=3"):
    checks.check_transition(t, 3)
  with pytest.raises(
    ValueError, match=r"^transition must be a square C x C matrix, got shape \(2, 3\)"
  ):
    checks.check_transition(np.ones((2, 3)) / 3, None)


def test_check_paired_labels():
  fine, coarse = checks.check_paired_labels(np.array([0, 1, 2], np.int32), [1, 1, 0])
  assert fine.dtype == coarse.dtype == np.int64
  np.testing.assert_array_equal(coarse, [1, 1, 0])
  with pytest.raises(ValueError, match="^coarse_labels is None"):
    checks.check_paired_labels([0, 1], None)
  with pytest.raises(
    ValueError, match=r"^coarse_labels has shape \(1,\) but labels has shape \(2,\)"
  ):
    checks.check_paired_labels([0, 1], [0])
  with pytest.raises(ValueError, match="^coarse_labels must be an integer array"):
    checks.check_paired_labels([0, 1], [0.0, 1.0])
