"""projections / project_params: closed forms, the input-projection identity, α behaviour."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sap_jax as sj
from tests.sap_reference import projected_input_interceptor


class _ConvNet(nn.Module):
  """Every conv geometry SAP must handle, then a Dense classifier."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3), strides=2, padding=1, name="c_stride")(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
    x = nn.relu(x)
    x = nn.Conv(8, (3, 3), kernel_dilation=2, padding=((2, 1), (1, 2)), name="c_dil")(x)
    x = nn.relu(x)
    x = nn.Conv(6, (2, 2), feature_group_count=2, padding="VALID", name="c_group")(x)
    x = nn.relu(x)
    return nn.Dense(5, name="head")(x.reshape(x.shape[0], -1))


class _Attention(nn.Module):
  """DenseGeneral projections as in multi-head attention, tokens folded into rows."""

  @nn.compact
  def __call__(self, x, train=False):  # (B, L, 6)
    x = nn.Dense(8, name="embed")(x)
    attn = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, name="attn")
    x = x + attn(x, x)
    h = nn.DenseGeneral((2, 4), axis=-1, name="split")(x)
    x = nn.DenseGeneral(8, axis=(-2, -1), name="merge")(nn.gelu(h))
    return nn.Dense(3, name="head")(x.mean(axis=1))


class _Conv1d(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):  # (B, L, C)
    x = nn.relu(nn.Conv(4, (5,), strides=2, padding="SAME", name="c1")(x))
    return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))


def _setup(model, shape, n=12, seed=0):
  x = jax.random.normal(jax.random.PRNGKey(seed), (n,) + shape)
  variables = model.init(jax.random.PRNGKey(seed + 1), x)
  apply_fn = functools.partial(model.apply, train=False)
  return apply_fn, variables, np.asarray(x)


MODELS = {
  "conv": (_ConvNet(), (9, 9, 4)),
  "attention": (_Attention(), (5, 6)),
  "conv1d": (_Conv1d(), (11, 3)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_alpha_one_is_normalised_gram(name):
  model, shape = MODELS[name]
  apply_fn, variables, x = _setup(model, shape)
  stats = sj.activation_stats(apply_fn, variables, [x])
  projs = sj.projections(stats, 1.0)
  for path, s in stats.items():
    gram = np.asarray(s.gram, np.float64)
    want = gram / np.trace(gram, axis1=-2, axis2=-1)[..., None, None]
    np.testing.assert_allclose(projs[path].matrix, want, rtol=2e-4, atol=2e-6, err_msg=str(path))


@pytest.mark.parametrize("name", list(MODELS))
def test_corrected_model_equals_model_with_projected_inputs(name):
  model, shape = MODELS[name]
  apply_fn, variables, x = _setup(model, shape)
  stats = sj.activation_stats(apply_fn, variables, [x])
  rng = np.random.default_rng(0)
  # An arbitrary (non-symmetric) P per layer: the identity must hold for any P.
  arbitrary = {
    path: sj.Projection(
      jnp.asarray(rng.normal(size=s.gram.shape) / np.sqrt(s.layout.dim), jnp.float32), s.layout
    )
    for path, s in stats.items()
  }
  corrected = sj.project_params(variables, arbitrary)
  got = np.asarray(apply_fn(corrected, x))
  with nn.intercept_methods(
    projected_input_interceptor({p: q.matrix for p, q in arbitrary.items()})
  ):
    want = np.asarray(apply_fn(variables, x))
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_project_params_touches_only_kernels_and_never_the_input():
  apply_fn, variables, x = _setup(*MODELS["conv"])
  before = jax.tree_util.tree_map(np.array, variables)
  stats = sj.activation_stats(apply_fn, variables, [x])
  corrected = sj.project_params(variables, sj.projections(stats, 10.0))
  chex.assert_trees_all_equal(variables, before)  # input unchanged
  flat_new = dict(jax.tree_util.tree_leaves_with_path(corrected))
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      assert not np.allclose(flat_new[path], leaf), name
    else:
      assert flat_new[path] is leaf, name  # biases, BatchNorm: the very same arrays


def test_large_alpha_on_full_rank_inputs_changes_nothing():
  model = _Conv1d()
  apply_fn, variables, x = _setup(model, (11, 3), n=64)
  stats = sj.activation_stats(apply_fn, variables, [x])
  corrected = sj.project_params(variables, sj.projections(stats, 1e9))
  np.testing.assert_allclose(apply_fn(corrected, x), apply_fn(variables, x), rtol=1e-4, atol=1e-4)


def test_rank_deficient_and_zero_inputs_stay_finite():
  class Dead(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      h = nn.Dense(16, name="d1")(x)
      h = nn.Dense(8, name="dead")(jnp.zeros_like(h))  # all-zero inputs
      return nn.Dense(3, name="head")(h + x[:, :8])

  model = Dead()
  apply_fn, variables, x = _setup(model, (32,), n=5)  # 5 rows < d = 32
  stats = sj.activation_stats(apply_fn, variables, [x])
  for alpha in (1.0, 3e4, 1e9):
    projs = sj.projections(stats, alpha)
    chex.assert_tree_all_finite(projs)
    np.testing.assert_array_equal(projs[("dead",)].matrix, 0.0)
    corrected = sj.project_params(variables, projs)
    chex.assert_tree_all_finite(corrected)
    # Directions the trusted inputs never use get λ = 0: rank(P) ≤ #rows.
    assert np.linalg.matrix_rank(np.asarray(projs[("d1",)].matrix), tol=1e-5) <= 5


def test_importance_closed_forms():
  s = jnp.asarray([0.0, 1e-4, 0.1, 0.5])
  np.testing.assert_allclose(sj.importance(s, 1.0), s, rtol=1e-6)
  lam = sj.importance(s, 1e12)
  np.testing.assert_allclose(lam[1:], 1.0, rtol=1e-4)
  assert lam[0] == 0.0
  # Monotone in α and in σ̃.
  assert np.all(np.diff(np.asarray(sj.importance(s, 30.0))) > 0)
  assert float(sj.importance(0.1, 10.0)) < float(sj.importance(0.1, 100.0))


def test_projections_differentiable_and_vmappable_in_alpha():
  apply_fn, variables, x = _setup(*MODELS["conv1d"])
  stats = sj.activation_stats(apply_fn, variables, [x])

  def total(alpha):
    return sum(jnp.sum(p.matrix) for p in sj.projections(stats, alpha).values())

  a = 50.0
  grad = jax.grad(total)(a)
  fd = (total(a * 1.001) - total(a * 0.999)) / (0.002 * a)
  np.testing.assert_allclose(grad, fd, rtol=2e-2)
  alphas = jnp.asarray([1.0, 10.0, 1e3])
  batched = jax.vmap(lambda a: sj.projections(stats, a))(alphas)
  for i, a in enumerate(alphas):
    single = sj.projections(stats, float(a))
    for path in stats:
      np.testing.assert_allclose(batched[path].matrix[i], single[path].matrix, rtol=1e-5, atol=1e-6)


def test_per_layer_alpha():
  apply_fn, variables, x = _setup(*MODELS["conv1d"])
  stats = sj.activation_stats(apply_fn, variables, [x])
  per_layer = sj.projections(stats, {("c1",): 1.0, ("head",): 1e3})
  np.testing.assert_allclose(per_layer[("c1",)].matrix, sj.projections(stats, 1.0)[("c1",)].matrix)
  np.testing.assert_allclose(
    per_layer[("head",)].matrix, sj.projections(stats, 1e3)[("head",)].matrix
  )
  with pytest.raises(KeyError, match="head"):
    sj.projections(stats, {("c1",): 1.0})


def test_svd_basis_agrees_with_eigh():
  apply_fn, variables, x = _setup(*MODELS["conv"])
  rows = sj.activation_rows(apply_fn, variables, [x], max_rows=10**6)
  stats = sj.activation_stats(apply_fn, variables, [x])
  for path, (r, _layout) in rows.items():
    for alpha in (1.0, 100.0, 3e4):
      p_svd = sj.projection_matrix(sj.svd_basis(r), alpha)
      p_eig = sj.projections(stats, alpha)[path].matrix
      np.testing.assert_allclose(p_svd, p_eig, atol=2e-4, err_msg=f"{path} α={alpha}")


def test_bad_alpha_and_foreign_statistics():
  apply_fn, variables, x = _setup(*MODELS["conv1d"])
  stats = sj.activation_stats(apply_fn, variables, [x])
  for bad in (0.0, -1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="alpha"):
      sj.projections(stats, bad)
  other_apply, other_vars, _ = _setup(*MODELS["conv"])
  with pytest.raises(ValueError, match="different model"):
    sj.project_params(other_vars, sj.projections(stats, 10.0))
  wider = _Conv1d()
  _, wide_vars, _ = _setup(wider, (13, 3))  # same layer names, other head shape
  with pytest.raises(ValueError, match="different model"):
    sj.project_params(wide_vars, sj.projections(stats, 10.0))


def test_svd_basis_is_thin_memory_linear_in_rows():
  # The thin SVD: a full one's U would be 20,000² floats (1.6 GB).
  rows = jax.ShapeDtypeStruct((20_000, 9), jnp.float32)
  compiled = jax.jit(sj.svd_basis).lower(rows).compile()
  shapes = jax.eval_shape(sj.svd_basis, rows)
  assert shapes.vectors.shape == (9, 9) and shapes.spectrum.shape == (9,)
  mem = compiled.memory_analysis()
  if mem is not None:  # not every backend reports it
    assert mem.temp_size_in_bytes < 50 * 20_000 * 9 * 4  # O(rows · d), not O(rows²)
  r = np.random.default_rng(0).normal(size=(20_000, 9)).astype(np.float32)
  b = sj.svd_basis(r)
  gram = r.astype(np.float64).T @ r
  want = gram / np.trace(gram)
  np.testing.assert_allclose(sj.projection_matrix(b, 1.0), want, atol=1e-6)
