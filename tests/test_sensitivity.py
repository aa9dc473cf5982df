"""alpha_sensitivity: ∂L/∂ log α_l against central differences (float64), and the
per-layer gradients summing to the shared-α gradient."""

import jax
import numpy as np
import pytest

import sap_jax as sj
from sap_jax.objective import corrected_variables
from tests.differentiable_cases import mean_loss, smooth_case


@pytest.fixture(scope="module")
def case():
  with jax.enable_x64(True):
    yield smooth_case()


def _loss_at(case, alpha):
  v = corrected_variables(case.variables, case.decomposition, alpha)
  return mean_loss(case.apply_fn, v, case.x_val, case.y_val)


@pytest.mark.parametrize("alpha", [3.0, 50.0])
def test_per_layer_gradients_match_central_differences(case, alpha):
  with jax.enable_x64(True):
    s = sj.alpha_sensitivity(
      case.apply_fn,
      case.variables,
      case.decomposition,
      case.x_val,
      case.y_val,
      alpha,
      batch_size=7,
    )
    paths = case.decomposition.paths
    assert set(s.per_layer) == set(paths)
    h = 1e-5
    for p in paths:
      up = {q: alpha * np.exp(h if q == p else 0.0) for q in paths}
      down = {q: alpha * np.exp(-h if q == p else 0.0) for q in paths}
      fd = (_loss_at(case, up) - _loss_at(case, down)) / (2 * h)
      np.testing.assert_allclose(s.per_layer[p], fd, rtol=1e-6, atol=1e-10)
    assert s.loss == pytest.approx(_loss_at(case, alpha), rel=1e-12)


def test_per_layer_gradients_sum_to_the_shared_alpha_gradient(case):
  with jax.enable_x64(True):
    alpha, h = 20.0, 1e-5
    s = sj.alpha_sensitivity(
      case.apply_fn, case.variables, case.decomposition, case.x_val, case.y_val, alpha
    )
    fd = (_loss_at(case, alpha * np.exp(h)) - _loss_at(case, alpha * np.exp(-h))) / (2 * h)
    assert s.total == pytest.approx(sum(s.per_layer.values()), rel=1e-12)
    assert s.total == pytest.approx(fd, rel=1e-6)


def test_per_layer_alpha_and_curve(case):
  with jax.enable_x64(True):
    paths = case.decomposition.paths
    alpha = {p: 5.0 * (i + 1) for i, p in enumerate(paths)}
    s = sj.alpha_sensitivity(
      case.apply_fn, case.variables, case.decomposition, case.x_val, case.y_val, alpha
    )
    assert s.alpha == pytest.approx(alpha)
    curve = sj.sensitivity_curve(
      case.apply_fn, case.variables, case.decomposition, case.x_val, case.y_val, [2.0, 20.0]
    )
    one = sj.alpha_sensitivity(
      case.apply_fn, case.variables, case.decomposition, case.x_val, case.y_val, 20.0
    )
    for p in paths:
      assert curve.per_layer[p][1] == pytest.approx(one.per_layer[p], rel=1e-12)
    assert curve.loss[1] == pytest.approx(one.loss, rel=1e-12)


def test_bad_alpha_is_refused(case):
  with jax.enable_x64(True):
    with pytest.raises(ValueError, match="alpha must be finite"):
      sj.alpha_sensitivity(
        case.apply_fn, case.variables, case.decomposition, case.x_val, case.y_val, -1.0
      )
    with pytest.raises(KeyError, match="no entry for layers"):
      sj.alpha_sensitivity(
        case.apply_fn,
        case.variables,
        case.decomposition,
        case.x_val,
        case.y_val,
        {case.decomposition.paths[0]: 3.0},
      )
