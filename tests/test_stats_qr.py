"""sap_jax.stats.qr: the streamed TSQR factor F has FᵀF = RᵀR for every conv geometry,
keeps a short layer's rows exactly, respects the row budget, combines across shards,
and its basis gives the Gram path's projection."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

import sap_jax as sj
from sap_jax import projection as proj
from sap_jax.stats.qr import LayerFactor, activation_factors, combine_factors, tsqr_update
from tests.stats_cases import CONV_CASES, conv_input, single_layer


def _gram64(f):
  f = np.asarray(f, np.float64)
  return np.einsum("...ki,...kj->...ij", f, f)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_factor_gram_is_the_patch_gram_for_every_conv_geometry(case):
  model = single_layer(functools.partial(nn.Conv, features=6, **CONV_CASES[case]))
  x = conv_input(case, n=4)
  v = model.init(jax.random.PRNGKey(1), x)
  batches = [x[:2], x[2:]]  # two batches: the second one updates the factor
  f = activation_factors(model.apply, v, batches)[("layer",)]
  s = sj.activation_stats(model.apply, v, batches)[("layer",)]
  assert isinstance(f, LayerFactor) and f.layout == s.layout
  assert float(f.count) == float(s.count)
  d = s.layout.dim
  assert f.factor.shape[-1] == d and f.factor.shape[-2] == min(int(s.count), d)
  want = np.asarray(s.gram, np.float64).reshape((-1, d, d))
  got = _gram64(f.factor).reshape(want.shape)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_short_layer_keeps_its_rows_and_long_layer_a_triangle():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      h = nn.relu(nn.Dense(40, name="wide")(x))  # d = 6: many rows per d
      return nn.Dense(3, name="head")(h)  # d = 40 > 24 rows: rows kept as they are

  model = Net()
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (24, 6)))
  v = model.init(jax.random.PRNGKey(1), x)
  batches = [x[:8], x[8:16], x[16:]]
  f = activation_factors(model.apply, v, batches)
  rows = sj.activation_rows(model.apply, v, batches, max_rows=10**6)
  np.testing.assert_array_equal(f[("head",)].factor, rows[("head",)][0])
  tri = np.asarray(f[("wide",)].factor)
  assert tri.shape == (6, 6) and np.allclose(np.tril(tri, -1), 0.0)
  np.testing.assert_allclose(_gram64(tri), _gram64(rows[("wide",)][0]), rtol=1e-5, atol=1e-5)


def test_row_budget_takes_the_same_rows_as_activation_stats():
  model = single_layer(functools.partial(nn.Conv, features=5, kernel_size=(3, 3)))
  x = conv_input("plain", n=4)
  v = model.init(jax.random.PRNGKey(1), x)
  x = conv_input("plain", n=5)
  batches = [x[:2], x[2:4], x[4:]]  # a short last batch too
  f = activation_factors(model.apply, v, batches, rows_per_batch=20, seed=3)[("layer",)]
  s = sj.activation_stats(model.apply, v, batches, rows_per_batch=20, seed=3)[("layer",)]
  assert float(f.count) == float(s.count) and 20 < float(s.count) < 80
  np.testing.assert_allclose(_gram64(f.factor), np.asarray(s.gram), rtol=1e-4, atol=1e-4)


def test_combine_factors_equals_one_factor_of_all_rows():
  rng = np.random.default_rng(0)
  rows = rng.normal(size=(70, 9)).astype(np.float32)
  shards = [tsqr_update(None, rows[i : i + 25]) for i in range(0, 70, 25)]
  both = combine_factors(shards)
  assert both.shape == (9, 9)
  np.testing.assert_allclose(_gram64(both), _gram64(rows), rtol=1e-5, atol=1e-4)
  with pytest.raises(ValueError, match="no factor"):
    combine_factors([])


def test_factor_basis_gives_the_gram_paths_projection(mlp):
  apply_fn, variables, x, _ = mlp
  batches = [x[:20], x[20:40], x[40:]]
  factors = activation_factors(apply_fn, variables, batches)
  stats = sj.activation_stats(apply_fn, variables, batches)
  for path in stats:
    for alpha in (1.0, 100.0, 3e4):
      p_qr = proj.projection_matrix(proj.svd_basis(factors[path].factor), alpha)
      p_eig = sj.projections(stats, alpha)[path].matrix
      np.testing.assert_allclose(p_qr, p_eig, atol=2e-4, err_msg=f"{path} α={alpha}")
  dec = sj.decompose(variables, factors)
  assert set(dec.methods.values()) == {"eigh"} and set(dec.bases) == set(stats)
  a = sj.apply_alpha(variables, dec, 30.0)
  b = sj.apply_alpha(variables, sj.decompose(variables, stats), 30.0)
  jax.tree_util.tree_map(lambda p, q: np.testing.assert_allclose(p, q, atol=1e-4), a, b)


def test_thin_svd_basis_of_few_rows():
  rows = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
  b = proj.svd_basis(rows)
  assert b.vectors.shape == (8, 3) and b.spectrum.shape == (3,)
  p = np.asarray(proj.projection_matrix(b, 1e9))  # λ → 1 on the row space, 0 elsewhere
  q, _ = np.linalg.qr(rows.T.astype(np.float64))
  np.testing.assert_allclose(p, q @ q.T, atol=1e-4)


def test_errors(mlp):
  apply_fn, variables, x, _ = mlp
  with pytest.raises(ValueError, match="empty"):
    activation_factors(apply_fn, variables, [])
  with pytest.raises(ValueError, match="rows_per_batch"):
    activation_factors(apply_fn, variables, [x], rows_per_batch=0)
  bad = np.array(x)
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match="Non-finite"):
    activation_factors(apply_fn, variables, [bad])


def test_auto_keeps_short_layers_rows_and_long_layers_gram():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      h = nn.relu(nn.Conv(40, (3, 3), name="conv")(x))  # d = 36, 4 · 49 rows per batch
      return nn.Dense(3, name="head")(h.mean((1, 2)))  # d = 40 > 12 rows in all

  model = Net()
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (12, 7, 7, 4)))
  v = model.init(jax.random.PRNGKey(1), x)
  batches = [x[:4], x[4:8], x[8:]]
  auto = sj.activation_stats(model.apply, v, batches, basis="auto")
  stats = sj.activation_stats(model.apply, v, batches)
  assert isinstance(auto[("conv",)], sj.LayerStats)
  assert isinstance(auto[("head",)], LayerFactor) and auto[("head",)].factor.shape == (12, 40)
  np.testing.assert_allclose(auto[("conv",)].gram, stats[("conv",)].gram, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(_gram64(auto[("head",)].factor), stats[("head",)].gram, atol=1e-4)
  qr = sj.activation_stats(model.apply, v, batches, basis="qr")
  assert all(isinstance(f, LayerFactor) for f in qr.values())
  for method in ("auto", "solve"):
    dec = sj.decompose(v, auto, method=method, n_alphas=8)
    assert dec.methods[("head",)] == "eigh"  # the thin SVD of the rows
    a = sj.apply_alpha(v, dec, 3e4)
    b = sj.apply_alpha(v, sj.decompose(v, stats), 3e4)
    jax.tree_util.tree_map(lambda p, q: np.testing.assert_allclose(p, q, atol=2e-4), a, b)
  with pytest.raises(ValueError, match="basis"):
    sj.activation_stats(model.apply, v, batches, basis="svd")


def test_projections_and_bases_of_tsqr_statistics_use_the_factor_not_its_gram():
  """On a steep spectrum (σ² over 12 decades) the thin SVD of the TSQR factor matches a
  float64 SVD of the rows to ≈ 3e-5 at α = 1e6; C = FᵀF in float32 would give ≈ 1e-1."""
  rng = np.random.default_rng(0)
  n, d = 600, 32
  q1, _ = np.linalg.qr(rng.normal(size=(n, d)))
  q2, _ = np.linalg.qr(rng.normal(size=(d, d)))
  x = ((q1 * np.logspace(0, -6, d)) @ q2.T).astype(np.float32)
  model = single_layer(functools.partial(nn.Dense, features=3))
  v = model.init(jax.random.PRNGKey(0), x[:1])
  batches = [x[i : i + 200] for i in range(0, n, 200)]
  factors = sj.activation_stats(model.apply, v, batches, basis="qr")
  assert isinstance(factors[("layer",)], LayerFactor)
  _, s, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
  sig = s**2 / np.sum(s**2)
  alpha = 1e6
  lam = alpha * sig / ((alpha - 1) * sig + 1)
  ref = (vt.T * lam) @ vt

  def err(p):
    return np.linalg.norm(np.asarray(p, np.float64) - ref) / np.linalg.norm(ref)

  b = sj.bases(factors)[("layer",)]
  np.testing.assert_allclose(np.sort(np.asarray(b.spectrum))[::-1], sig, rtol=1e-3, atol=1e-12)
  assert err(proj.projection_matrix(b, alpha)) < 1e-4
  assert err(sj.projections(factors, alpha)[("layer",)].matrix) < 1e-4
  # What the Gram matrix of the factor gives (the old behaviour): far worse.
  gram = proj.eigh_basis(factors[("layer",)].gram)
  assert err(proj.projection_matrix(gram, alpha)) > 1e-2
