"""Differentiable SAP (tuning, sensitivity, influence) on Flax NNX models: the same
numbers as the Linen core on the model's functional form, keyed by NNX graph paths."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

import sap_jax
import sap_jax.nnx as snnx


class Net(nnx.Module):
  """Linear → tanh → an nnx.List of two Linear layers (integer path elements)."""

  def __init__(self, rngs: nnx.Rngs):
    self.inp = nnx.Linear(6, 12, rngs=rngs)
    self.blocks = nnx.List([nnx.Linear(12, 12, rngs=rngs), nnx.Linear(12, 3, rngs=rngs)])

  def __call__(self, x):
    h = jax.nn.tanh(self.inp(x))
    return self.blocks[1](jax.nn.tanh(self.blocks[0](h)))


X = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (60, 6)))
Y = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (60,), 0, 3))
LAYERS = {("inp",), ("blocks", 0), ("blocks", 1)}
KW = dict(n_trusted=30, alphas=(1.0, 3.0, 10.0, 1e2, 1e3), batch_size=16)
TUNE = dict(folds=2, steps=3, learning_rate=0.1)


@pytest.fixture(scope="module")
def tuned():
  model = Net(nnx.Rngs(0))
  r = snnx.run_sap(model, X, Y, X[:30], Y[:30], tune="per_layer", tune_options=TUNE, **KW)
  apply_fn, variables = snnx.functional(model)
  core = sap_jax.run_sap(
    apply_fn, variables, X, Y, X[:30], Y[:30], tune="per_layer", tune_options=TUNE, **KW
  )
  return model, r, core, apply_fn, variables


def test_per_layer_tuning_matches_the_linen_core(tuned):
  model, r, core, _, _ = tuned
  if core.tuning is None:
    pytest.fail("the fixture must have a grid α that beats the original model")
  assert set(r.tuning.alpha) == set(core.tuning.alpha) == LAYERS
  for path, a in core.tuning.alpha.items():
    assert r.tuning.alpha[path] == pytest.approx(a, rel=1e-6)
  assert r.tuning.heldout_accuracy >= r.tuning.heldout_accuracy_start
  report = sap_jax.tuning_report(r.tuning)  # integer path elements join as "blocks/0"
  assert set(report["alpha"]) == {"inp", "blocks/0", "blocks/1"}
  assert r.model is not model


def test_sensitivity_on_the_functional_form_sums_per_layer(tuned):
  _, r, _, apply_fn, variables = tuned
  s = sap_jax.alpha_sensitivity(apply_fn, variables, r.decomposition, X[:30], Y[:30], 30.0)
  assert set(s.per_layer) == LAYERS
  assert sum(s.per_layer.values()) == pytest.approx(s.total, rel=1e-5, abs=1e-9)


def test_influence_scores_every_trusted_sample_per_layer(tuned):
  _, r, _, apply_fn, variables = tuned
  x_trusted = X[r.trusted_indices]
  inf = sap_jax.trusted_influence(
    apply_fn, variables, r.decomposition, x_trusted, X[:30], Y[:30], 30.0
  )
  assert inf.scores.shape == (len(x_trusted),) and np.all(np.isfinite(inf.scores))
  assert set(inf.per_layer) == LAYERS
  np.testing.assert_allclose(sum(inf.per_layer.values()), inf.scores, rtol=1e-4, atol=1e-7)
