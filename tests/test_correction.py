"""correct: SAP in one call, and several rounds."""

import jax
import numpy as np
import pytest

import sap_jax as sj


def test_correct_equals_manual_pipeline(mlp):
  apply_fn, variables, x, _ = mlp
  got = sj.correct(apply_fn, variables, x, 300.0, batch_size=10)
  stats = sj.activation_stats(apply_fn, variables, [x])
  want = sj.project_params(variables, sj.projections(stats, 300.0))
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got, want
  )


def test_rounds_compose_with_alpha_times_ten(mlp):
  apply_fn, variables, x, _ = mlp
  two = sj.correct(apply_fn, variables, x, 5.0, rounds=2)
  once = sj.correct(apply_fn, variables, x, 5.0)
  manual = sj.correct(apply_fn, once, x, 50.0)
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), two, manual
  )


def test_errors(mlp):
  apply_fn, variables, x, y = mlp
  with pytest.raises(ValueError, match="empty"):
    sj.correct(apply_fn, variables, x[:0], 10.0)
  with pytest.raises(ValueError, match="alpha"):
    sj.correct(apply_fn, variables, x, -3.0)
  with pytest.raises(ValueError, match="NaN or Inf"):
    sj.correct(apply_fn, variables, np.full_like(x, np.nan), 10.0)
