"""sap_jax.solve and decompose(method=...): every path (eigh, solve, qr, svd) against a
float64 SVD of the same rows, on a steep, three rank-deficient and a memorised model's
statistics; λ ≈ 0 on the directions the rows never use; grad and vmap in α and grad in
the Gram matrix; the cost model's choices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sap_jax as sj
from sap_jax import projection as proj
from sap_jax import solve as slv
from sap_jax.stats.qr import activation_factors, combine_factors

ALPHAS = (1e2, 3e4, 1e6)


def _p64(rows, alpha):
  """The slow obvious reference: float64 SVD of the rows, λ(α) on every direction."""
  _, s, vt = np.linalg.svd(np.asarray(rows, np.float64), full_matrices=False)
  sig = s**2 / np.sum(s**2)
  lam = alpha * sig / ((alpha - 1) * sig + 1)
  return (vt.T * lam) @ vt


def _null(rows):
  """Orthonormal basis (d, d − rank) of the directions the rows never use (float64)."""
  _, s, vt = np.linalg.svd(np.asarray(rows, np.float64))
  rank = int(np.sum(s > 1e-9 * s[0]))
  return vt[rank:].T


def _steep(n=4000, d=48, seed=0):
  rng = np.random.default_rng(seed)
  q1, _ = np.linalg.qr(rng.normal(size=(n, d)))
  q2, _ = np.linalg.qr(rng.normal(size=(d, d)))
  return (q1 * np.logspace(0, -6, d)) @ q2.T  # σ² over 12 decades


def _cases():
  rng = np.random.default_rng(1)
  zero = rng.normal(size=(500, 48))
  zero[:, [3, 17, 30]] = 0.0
  q, _ = np.linalg.qr(rng.normal(size=(48, 48)))
  low = (rng.normal(size=(500, 10)) @ rng.normal(size=(10, 48))) @ q.T
  return {
    "steep": _steep(),
    "few_rows": rng.normal(size=(20, 48)),
    "zero_columns": zero,
    "rotated_low_rank": low,
  }


CASES = _cases()


def _paths(rows, alpha):
  """P(α) of every path from float32 rows / their float32 Gram matrix."""
  r32 = jnp.asarray(rows, jnp.float32)
  gram = jnp.matmul(r32.T, r32, precision=jax.lax.Precision.HIGHEST)
  factor = combine_factors([r32[i : i + 128] for i in range(0, len(rows), 128)])
  return {
    "eigh": proj.projection_matrix(proj.eigh_basis(gram), alpha),
    "solve": slv.projection_matrix(gram, alpha),
    "qr": proj.projection_matrix(proj.svd_basis(factor), alpha),
    "svd": proj.projection_matrix(proj.svd_basis(r32), alpha),
  }


# Relative Frobenius error against the float64 SVD, per (case, α): bounds a few times
# above what each path measures (see the report), far below what a wrong formula, a
# missing normalisation or a dropped cut-off gives (O(1)).
STEEP_BOUNDS = {
  1e2: dict(eigh=2e-4, solve=2e-4, qr=2e-5, svd=2e-5),
  3e4: dict(eigh=2e-2, solve=1e-2, qr=3e-5, svd=3e-5),
  1e6: dict(eigh=2.5e-1, solve=1e-1, qr=4e-5, svd=4e-5),
}
DEFICIENT_BOUNDS = {1e2: 5e-5, 3e4: 2e-3, 1e6: 4e-2}  # solve; the others ≤ 1e-5


def test_steep_spectrum_every_path_against_float64():
  rows = CASES["steep"]
  for alpha in ALPHAS:
    ref = _p64(rows, alpha)
    for name, p in _paths(rows, alpha).items():
      err = np.linalg.norm(np.asarray(p, np.float64) - ref) / np.linalg.norm(ref)
      assert err < STEEP_BOUNDS[alpha][name], (name, alpha, err)
  # The TSQR basis is as accurate as the SVD of the rows; the Gram paths are not.
  ref = _p64(rows, 1e6)
  errs = {k: np.linalg.norm(np.asarray(p, np.float64) - ref) for k, p in _paths(rows, 1e6).items()}
  assert errs["qr"] < 1e-3 * errs["eigh"] and errs["qr"] < 1e-3 * errs["solve"]


@pytest.mark.parametrize("case", ["few_rows", "zero_columns", "rotated_low_rank"])
def test_rank_deficient_every_path_against_float64_and_unused_directions(case):
  rows = CASES[case]
  null = _null(rows)
  assert null.shape[1] > 0
  for alpha in ALPHAS:
    ref = _p64(rows, alpha)
    for name, p in _paths(rows, alpha).items():
      p = np.asarray(p, np.float64)
      bound = DEFICIENT_BOUNDS[alpha] if name == "solve" else 1e-5
      err = np.linalg.norm(p - ref) / np.linalg.norm(ref)
      assert err < bound, (name, alpha, err)
      # Directions the rows never use get λ ≈ 0 (‖P v‖ for v in the null space).
      leak = np.linalg.norm(p @ null, 2)
      assert leak < bound, (name, alpha, leak)
  if case == "zero_columns":  # exact zero directions: exactly 0 up to round-off
    p = np.asarray(_paths(rows, 1e6)["solve"])
    assert np.abs(p[[3, 17, 30]]).max() < 1e-6 and np.abs(p[:, [3, 17, 30]]).max() < 1e-6


def test_all_zero_inputs_give_a_zero_kernel():
  data = slv.prepare(jnp.zeros((1, 6, 6)), jnp.ones((1, 6, 3)))
  for alpha in ALPHAS:
    assert np.all(np.asarray(slv.project(data, alpha)) == 0.0)


@pytest.fixture(scope="module")
def memorised():
  """A small MLP trained to fit random labels (memorised), and its trusted statistics."""
  import flax.linen as nn
  import optax

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.relu(nn.Dense(64, name="first")(x))
      x = nn.relu(nn.Dense(64, name="hidden")(x))
      return nn.Dense(5, name="head")(x)

  model = Net()
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 24)).astype(np.float32)
  y = rng.integers(0, 5, 200)
  params = model.init(jax.random.PRNGKey(0), x)
  opt = optax.adam(1e-2)
  state = opt.init(params)

  @jax.jit
  def step(p, s):
    def loss(p):
      logits = model.apply(p, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    g = jax.grad(loss)(p)
    u, s = opt.update(g, s)
    return optax.apply_updates(p, u), s

  for _ in range(400):
    params, state = step(params, state)
  acc = float(np.mean(np.argmax(model.apply(params, x), -1) == y))
  assert acc > 0.95  # memorised
  apply_fn = model.apply
  rows = sj.activation_rows(apply_fn, params, [x[:100]], max_rows=10**6)
  stats = sj.activation_stats(apply_fn, params, [x[:50], x[50:100]])
  return apply_fn, params, x, y, rows, stats


def test_memorised_model_statistics_every_path(memorised):
  apply_fn, params, x, y, rows, stats = memorised
  for path, (r, _) in rows.items():
    for alpha in ALPHAS:
      ref = _p64(np.asarray(r), alpha)
      got = {
        "eigh": proj.projection_matrix(proj.eigh_basis(stats[path].gram), alpha),
        "solve": slv.projection_matrix(stats[path].gram, alpha),
      }
      for name, p in got.items():
        err = np.linalg.norm(np.asarray(p, np.float64) - ref) / np.linalg.norm(ref)
        assert err < {1e2: 1e-4, 3e4: 3e-3, 1e6: 5e-2}[alpha], (path, name, alpha, err)
  # The whole model: the same predictions on every path at the paper's α.
  factors = activation_factors(apply_fn, params, [x[:50], x[50:100]])
  want = np.argmax(apply_fn(sj.apply_alpha(params, sj.decompose(params, stats), 3e4), x), -1)
  for dec in (
    sj.decompose(params, stats, method="solve"),
    sj.decompose(params, stats, method="auto", n_alphas=9),
    sj.decompose(params, factors),
  ):
    got = np.argmax(apply_fn(sj.apply_alpha(params, dec, 3e4), x), -1)
    assert np.mean(got == want) >= 0.99


def test_decompose_methods_agree_and_record_the_choice(mlp):
  apply_fn, variables, x, _ = mlp
  stats = sj.activation_stats(apply_fn, variables, [x])
  eigh = sj.decompose(variables, stats)
  solve = sj.decompose(variables, stats, method="solve")
  assert set(eigh.methods.values()) == {"eigh"} and set(solve.methods.values()) == {"solve"}
  assert solve.bases == {} and set(solve.solves) == set(stats) and solve.paths == eigh.paths
  for alpha in (1.0, 30.0, 3e4, {("first",): 3.0, ("hidden",): 300.0, ("head",): 1e4}):
    a = sj.apply_alpha(variables, eigh, alpha)
    b = sj.apply_alpha(variables, solve, alpha)
    jax.tree_util.tree_map(lambda p, q: np.testing.assert_allclose(p, q, atol=2e-4), a, b)
  with pytest.raises(ValueError, match="method"):
    sj.decompose(variables, stats, method="qr")
  with pytest.raises(ValueError, match="n_alphas"):
    sj.decompose(variables, stats, method="auto", n_alphas=0)
  with pytest.raises(KeyError, match="head"):
    sj.apply_alpha(variables, solve, {("first",): 3.0, ("hidden",): 3.0})


def test_solve_path_grad_and_vmap_in_alpha_and_grad_in_the_gram(mlp):
  apply_fn, variables, x, _ = mlp
  stats = sj.activation_stats(apply_fn, variables, [x])
  dec = sj.decompose(variables, stats, method="solve")

  def out(log_alpha):
    return jnp.sum(apply_fn(sj.apply_alpha(variables, dec, jnp.exp(log_alpha)), x) ** 2)

  g = float(jax.grad(out)(jnp.log(30.0)))
  h = 1e-3
  fd = float((out(jnp.log(30.0) + h) - out(jnp.log(30.0) - h)) / (2 * h))
  assert np.isfinite(g) and g == pytest.approx(fd, rel=2e-2)
  ks = jax.vmap(lambda a: sj.apply_alpha(variables, dec, a)["params"]["first"]["kernel"])(
    jnp.asarray([3.0, 30.0])
  )
  np.testing.assert_allclose(
    ks[1], sj.apply_alpha(variables, dec, 30.0)["params"]["first"]["kernel"], rtol=1e-5, atol=1e-6
  )
  # Gradient with respect to the Gram matrix, against a central difference along a
  # symmetric direction.
  gram = stats[("hidden",)].gram
  kernel = variables["params"]["hidden"]["kernel"][None]

  def f(c):
    return jnp.sum(slv.project(slv.prepare(c[None], kernel), 300.0) ** 2)

  e = np.random.default_rng(0).normal(size=gram.shape)
  e = jnp.asarray((e + e.T) * float(jnp.trace(gram)) / gram.shape[0], jnp.float32)
  gd = float(jnp.sum(jax.grad(f)(gram) * e))
  h = 1e-3
  fd = float((f(gram + h * e) - f(gram - h * e)) / (2 * h))
  assert np.isfinite(gd) and gd == pytest.approx(fd, rel=1e-2)


def test_cost_model_choices():
  # One correction: the solve path wherever d is large; a long sweep: eigh.
  assert slv.choose_method(4608, 512, 1) == "solve"
  assert slv.choose_method(4608, 512, 8) == "solve"
  assert slv.choose_method(4608, 512, 40) == "eigh"
  # A wide output makes every solve dearer than a rotation, pushing towards eigh.
  assert slv.choose_method(1152, 4096, 8) == "eigh"
  for d, o, k in ((1024, 64, 1), (2304, 64, 9), (4608, 512, 9)):
    want = "solve" if slv.solve_cost(d, o, k) < slv.eigh_cost(d, o, k) else "eigh"
    assert slv.choose_method(d, o, k) == want
  # Below AUTO_MIN_WIDTH: eigh, whatever the cost model says (tests/test_default_method.py).
  assert slv.choose_method(576, 64, 9) == "eigh" and slv.choose_method(27, 64, 1) == "eigh"
  # The closed forms.
  d, o, k = 100, 10, 3
  assert slv.eigh_cost(d, o, k) == slv.EIGH_CUBIC * d**3 + 2 * d * d * o * (1 + k)
  assert slv.solve_cost(d, o, k, groups=2) == 2 * (
    slv.CHOLESKY_CUBIC * d**3 + 2 * d * d * o + k * (slv.CHOLESKY_CUBIC * d**3 + 4 * d * d * o)
  )


def test_layer_methods_follow_the_cost_model(mlp):
  apply_fn, variables, x, _ = mlp
  stats = sj.activation_stats(apply_fn, variables, [x])
  from sap_jax.sweep import layer_methods

  for k in (1, 9, 100):
    got = layer_methods(stats, method="auto", n_alphas=k)
    for path, s in stats.items():
      out = s.layout.kernel_shape[-1]
      assert got[path] == slv.choose_method(s.layout.dim, out, k)


def _wide_relu(n=300, d=768, seed=0):
  """A wide layer with fewer rows than inputs: ReLU features of a 64-dim input plus a
  mean, so σ̃ runs from ≈ 0.5 (the mean direction) down to ≈ 3e-5, rank n < d."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(64, d)) / 8
  h = np.maximum(rng.normal(size=(n, 64)) @ w + 0.5, 0)
  return h + 0.1 * np.maximum(rng.normal(size=(n, d)), 0)


WIDE_ALPHAS = (1.0, 1e2, 1e4, 1e6, 1e8, 1e10, 1e12)


@pytest.mark.parametrize(
  "name, rows, bound",
  [
    # Bounds ≈ 3× what the path measures (1.7e-4 and 4.8e-3, flat at α ≥ 1e8, where λ
    # has reached 1 on every used direction), far below the all-NaN kernel of the
    # unshifted Cholesky from α ≈ 1e8…1e10 and the O(1) of a wrong formula. The ReLU
    # layer's error is the float32 Gram matrix's: its round-off (eps · σ̃_max ≈ 6e-8)
    # is within 1e3 of its smallest used σ̃ (3e-5), which no float32 Gram path resolves
    # exactly (eigh: 2.3e-4).
    ("gaussian", np.random.default_rng(2).normal(size=(300, 768)), 5e-4),
    ("relu", _wide_relu(), 1.5e-2),
  ],
)
def test_solve_path_finite_and_correct_from_alpha_1_to_1e12_on_a_wide_layer(name, rows, bound):
  r32 = jnp.asarray(rows, jnp.float32)
  gram = jnp.matmul(r32.T, r32, precision=jax.lax.Precision.HIGHEST)
  # The float64 reference, once: SVD of the rows (rank n = 300 of d = 768 inputs).
  _, s, vt = np.linalg.svd(np.asarray(rows, np.float64), full_matrices=True)
  n = rows.shape[0]
  used, null = vt[:n], vt[n:].T
  sig = s**2 / np.sum(s**2)
  alphas = np.asarray(WIDE_ALPHAS, np.float32)
  got = jax.jit(jax.vmap(lambda a: slv.projection_matrix(gram, a)))(alphas)
  for alpha, p in zip(WIDE_ALPHAS, np.asarray(got, np.float64)):
    assert np.all(np.isfinite(p)), (name, alpha)
    lam = alpha * sig / ((alpha - 1) * sig + 1)
    ref = (used.T * lam) @ used
    err = np.linalg.norm(p - ref) / np.linalg.norm(ref)
    assert err < bound, (name, alpha, err)
    assert np.linalg.norm(p @ null, 2) < 10 * bound, (name, alpha)  # unused: λ ≈ 0


def test_solve_path_alpha_below_one_matches_float64():
  rows = CASES["few_rows"]
  gram = jnp.asarray(rows.T @ rows, jnp.float32)
  for alpha in (1e-6, 1e-2, 0.5):
    p = np.asarray(slv.projection_matrix(gram, alpha))
    ref = _p64(rows, alpha)
    assert np.linalg.norm(p - ref) / np.linalg.norm(ref) < 1e-5, alpha
