"""The default decomposition, method="auto": eigh below solve.AUTO_MIN_WIDTH inputs (so
every model of the committed tables is decomposed exactly as by method="eigh"), the
cost model's choice above it, through decompose, sweep_alpha, run_sap, correct, the
SAP method and their records."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import sap_jax as sj
from sap_jax import models
from sap_jax import solve as slv
from sap_jax.baselines import get_method
from sap_jax.sweep import layer_methods
from sap_jax.train import eval_apply_fn
from tests.baseline_cases import leaves_equal

WIDE = slv.AUTO_MIN_WIDTH + 6


class Wide(nn.Module):
  """A layer of d = AUTO_MIN_WIDTH + 6 inputs (the solve path) and a narrow head (eigh)."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(16, name="wide")(x))
    return nn.Dense(4, name="head")(h)


@pytest.fixture(scope="module")
def wide():
  """``(apply_fn, variables, x, y)``: 400 inputs of width WIDE in a subspace of rank 300
  (unused directions too), y the model's predictions with every 7th label moved."""
  rng = np.random.default_rng(0)
  basis = np.linalg.qr(rng.normal(size=(WIDE, 300)))[0]
  x = (rng.normal(size=(400, 300)) @ basis.T).astype(np.float32)
  model = Wide()
  variables = model.init(jax.random.PRNGKey(0), x[:1])
  y = np.asarray(jnp.argmax(model.apply(variables, x), -1)).astype(np.int32)
  y[::7] = (y[::7] + 1) % 4
  return model.apply, variables, x, y


def test_auto_keeps_eigh_below_the_min_width_and_follows_the_cost_model_above():
  for d, out, k in ((27, 64, 1), (576, 64, 5), (640, 10, 1), (slv.AUTO_MIN_WIDTH - 1, 8, 1)):
    assert slv.solve_cost(d, out, k) < slv.eigh_cost(d, out, k)  # the cost model alone: solve
    assert slv.choose_method(d, out, k) == "eigh"
  for d, out, k in ((slv.AUTO_MIN_WIDTH, 8, 1), (4608, 512, 9), (4608, 512, 40), (1152, 4096, 9)):
    want = "solve" if slv.solve_cost(d, out, k) < slv.eigh_cost(d, out, k) else "eigh"
    assert slv.choose_method(d, out, k) == want
  assert slv.choose_method(4608, 512, 1) == "solve" and slv.choose_method(4608, 512, 40) == "eigh"


@pytest.mark.parametrize(
  "name, kwargs, shape",
  [
    ("cnn", {"width": 32}, (8, 8, 1)),  # digits (table1, table2, ablations, the demo)
    ("cnn1d", {"width": 32}, (40, 1)),  # MNIST-1D
    ("mlp", {"depth": 8, "width": 256, "batch_norm": False}, (2,)),  # the spiral
  ],
)
def test_every_committed_table_model_is_decomposed_by_eigh(name, kwargs, shape):
  model = models.get(name, 10, **kwargs)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (6, *shape)))
  variables = model.init(jax.random.PRNGKey(1), x[:1])
  apply_fn = eval_apply_fn(model)
  stats = sj.activation_stats(apply_fn, variables, [x])
  assert max(s.layout.dim for s in stats.values()) < slv.AUTO_MIN_WIDTH
  for k in (1, 9, 100):
    assert set(layer_methods(stats, n_alphas=k).values()) == {"eigh"}
  if name == "cnn":  # the very arrays of method="eigh", so the committed records hold
    leaves_equal(sj.decompose(variables, stats), sj.decompose(variables, stats, method="eigh"))


def test_default_decompose_takes_the_solve_path_on_a_wide_layer(wide):
  apply_fn, variables, x, _ = wide
  stats = sj.activation_stats(apply_fn, variables, [x[:200], x[200:]])
  dec = sj.decompose(variables, stats)
  assert dec.methods == {("wide",): "solve", ("head",): "eigh"}
  assert sj.decompose(variables, stats, n_alphas=100).methods[("wide",)] == "eigh"
  eigh = sj.decompose(variables, stats, method="eigh")
  for alpha in (1.0, 3e4):
    a = sj.apply_alpha(variables, dec, alpha)["params"]["wide"]["kernel"]
    b = sj.apply_alpha(variables, eigh, alpha)["params"]["wide"]["kernel"]
    assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 1e-3, alpha
  # the unused directions get λ ≈ 0 on the solve path too: the kernel's component there
  # is removed (the rows span 300 of the WIDE input directions)
  k = np.asarray(sj.apply_alpha(variables, dec, 3e4)["params"]["wide"]["kernel"], np.float64)
  rows = np.asarray(x, np.float64)
  _, s, vt = np.linalg.svd(rows, full_matrices=True)
  null = vt[300:].T
  k0 = np.asarray(variables["params"]["wide"]["kernel"], np.float64)
  assert np.linalg.norm(null.T @ k) < 1e-4 * np.linalg.norm(null.T @ k0)


def test_run_sap_default_records_each_layers_method_and_matches_eigh(wide):
  apply_fn, variables, x, y = wide
  kw = dict(n_trusted=200, alphas=(10.0, 1e3, 3e4))
  auto = sj.run_sap(apply_fn, variables, x[:300], y[:300], x[300:], y[300:], **kw)
  eigh = sj.run_sap(apply_fn, variables, x[:300], y[:300], x[300:], y[300:], method="eigh", **kw)
  assert auto.decomposition.methods == {("wide",): "solve", ("head",): "eigh"}
  assert auto.layers["wide"]["method"] == "solve" and auto.layers["head"]["method"] == "eigh"
  assert auto.layers["wide"]["effective_rank"] is None  # no spectrum: no d³ host eigh
  assert auto.layers["head"]["effective_rank"] == pytest.approx(
    eigh.layers["head"]["effective_rank"], rel=1e-6
  )
  assert set(eigh.decomposition.methods.values()) == {"eigh"}
  assert eigh.layers["wide"]["effective_rank"] > 1.0
  assert auto.alpha == eigh.alpha
  np.testing.assert_allclose(auto.sweep.accuracies, eigh.sweep.accuracies, atol=1 / 100 + 1e-9)
  with pytest.raises(ValueError, match="method must be one of"):
    sj.run_sap(apply_fn, variables, x[:300], y[:300], x[300:], y[300:], method="qr", **kw)


def test_per_layer_tuning_differentiates_through_a_solve_layer(wide):
  apply_fn, variables, x, y = wide
  stats = sj.activation_stats(apply_fn, variables, [x[:200]])
  dec = sj.decompose(variables, stats, n_alphas=3)
  assert dec.methods[("wide",)] == "solve"
  tuned = sj.tune_alpha(apply_fn, variables, dec, x[300:], y[300:], 1e3, folds=2, steps=3)
  assert set(tuned.alpha) == {("wide",), ("head",)}
  assert all(np.isfinite(a) and a > 0 for a in tuned.alpha.values())


def test_correct_default_is_the_default_decomposition_and_rounds_refuse_solve(wide):
  apply_fn, variables, x, _ = wide
  got = sj.correct(apply_fn, variables, x[:200], 3e4, batch_size=100)
  stats = sj.activation_stats(apply_fn, variables, sj.batched(x[:200], 100))
  want = sj.apply_alpha(variables, sj.decompose(variables, stats), 3e4)
  leaves_equal(got, want)
  eigh = sj.correct(apply_fn, variables, x[:200], 3e4, batch_size=100, method="eigh")
  leaves_equal(eigh, sj.apply_alpha(variables, sj.decompose(variables, stats, method="eigh"), 3e4))
  with pytest.raises(ValueError, match="rounds > 1 compose"):
    sj.correct(apply_fn, variables, x[:200], 3e4, rounds=2, method="solve")
  with pytest.raises(ValueError, match="method must be one of"):
    sj.correct(apply_fn, variables, x[:200], 3e4, method="svd")


def test_the_sap_method_keeps_committed_hparams_and_rounds_decompose_by_eigh():
  assert "method" not in get_method("sap").hparams  # records of the committed runs unchanged
  assert get_method("sap", method="eigh").hparams["method"] == "eigh"
  with pytest.raises(ValueError, match="rounds > 1"):
    get_method("sap", rounds=2, method="solve")
  with pytest.raises(ValueError, match="method must be one of"):
    get_method("sap", method="cholesky")
