"""per_example_loss, input_curvature, select_trusted."""

import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

import sap_jax as sj


class _Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3, name="head")(x)


@pytest.fixture(scope="module")
def linear():
  model = _Linear()
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (37, 4)))
  y = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (37,), 0, 3), np.int32)
  variables = model.init(jax.random.PRNGKey(2), x)
  return functools.partial(model.apply, train=False), variables, x, y


def test_per_example_loss_matches_direct_computation(linear):
  apply_fn, variables, x, y = linear
  got = sj.per_example_loss(apply_fn, variables, x, y, batch_size=8)  # ragged last batch
  want = optax.softmax_cross_entropy_with_integer_labels(apply_fn(variables, x), y)
  assert got.dtype == np.float32 and got.shape == (37,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_curvature_matches_hessian_closed_form(linear):
  # For logits = x W + b the input Hessian of the CE is H = W (diag p − p pᵀ) Wᵀ.
  # The finite-difference estimator is E_v ‖∇ℓ(x+hv) − ∇ℓ(x)‖² ≈ h² E‖H v‖² =
  # h² ‖H‖_F² for Rademacher v.
  apply_fn, variables, x, y = linear
  x = x * 0.1  # small logits: the Hessian varies slowly, finite differences are exact-ish
  w = np.asarray(variables["params"]["head"]["kernel"], np.float64)
  h = 1e-2
  got = sj.input_curvature(apply_fn, variables, x, y, h=h, num_probes=400, seed=0, batch_size=16)
  p = np.asarray(jax.nn.softmax(apply_fn(variables, x)), np.float64)
  want = []
  for pi in p:
    hess = w @ (np.diag(pi) - np.outer(pi, pi)) @ w.T
    want.append(h**2 * np.sum(hess**2))
  np.testing.assert_allclose(got, want, rtol=0.25)


def test_select_trusted_lowest_scores():
  scores = np.asarray([5.0, 0.1, 3.0, 0.1, 2.0, 9.0])
  labels = np.asarray([0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(sj.select_trusted(scores, labels, 3), [1, 3, 4])
  # Class balanced: one per class (the lowest in each), in score order.
  np.testing.assert_array_equal(
    sj.select_trusted(scores, labels, 3, class_balanced=True), [1, 3, 4]
  )
  # 4 over 3 classes: one each, then the next-lowest overall (index 2, score 3.0).
  np.testing.assert_array_equal(
    sj.select_trusted(scores, labels, 4, class_balanced=True), [1, 3, 4, 2]
  )


def test_class_balanced_with_a_small_class():
  rng = np.random.default_rng(0)
  labels = np.asarray([0] * 50 + [1] * 50 + [2] * 2)
  scores = rng.random(102)
  scores[:50] -= 1.0  # class 0 has the lowest losses overall
  idx = sj.select_trusted(scores, labels, 30, class_balanced=True)
  counts = np.bincount(labels[idx], minlength=3)
  assert len(idx) == len(set(idx)) == 30
  assert counts[2] == 2  # all it has
  assert counts[1] >= 10 and counts[0] >= 10
  plain = sj.select_trusted(scores, labels, 30)
  assert np.all(labels[plain] == 0)


def test_select_trusted_errors():
  with pytest.raises(ValueError, match="n=7"):
    sj.select_trusted(np.zeros(6), np.zeros(6), 7)
  with pytest.raises(ValueError, match="n=0"):
    sj.select_trusted(np.zeros(6), np.zeros(6), 0)
  with pytest.raises(ValueError, match="equal length"):
    sj.select_trusted(np.zeros(6), np.zeros(5), 2)
  with pytest.raises(ValueError, match="NaN"):
    sj.select_trusted(np.asarray([0.0, np.nan]), np.zeros(2), 1)
  with pytest.raises(ValueError, match="Unknown score"):
    sj.trust_scores(None, None, np.zeros((2, 1)), np.zeros(2), score="entropy")


def test_float_labels_are_refused_not_truncated(mlp):
  apply_fn, variables, x, _ = mlp
  with pytest.raises(ValueError, match="integer"):
    sj.per_example_loss(apply_fn, variables, x[:2], np.asarray([0.9, 1.7]))
  with pytest.raises(ValueError, match="2 inputs but 1 labels"):
    sj.input_curvature(apply_fn, variables, x[:2], np.asarray([0]))


def test_published_curvature_matches_slow_reference(linear):
  # Published estimator (github.com/sangamesh-kodge/SAP, regr_estimate): per batch B,
  # probe v = h (r + 1e-7), score_i = mean_v ‖∇_{x_i}[L_B(x + v) − L_B(x)]‖ with L_B the
  # batch-MEAN loss. For logits x W + b, ∇_{x_i} L_B(z) = W (softmax(z_i W + b) − e_y) / |B|.
  apply_fn, variables, x, y = linear
  w = np.asarray(variables["params"]["head"]["kernel"], np.float64)
  b = np.asarray(variables["params"]["head"]["bias"], np.float64)
  h, probes, bs, seed = 1e-2, 3, 16, 7
  got = sj.trusted.published_curvature(
    apply_fn, variables, x, y, h=h, num_probes=probes, seed=seed, batch_size=bs
  )

  def grad(z, label, size):
    logits = z @ w + b
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return w @ (p - np.eye(3)[label]) / size

  want = []
  for i, start in enumerate(range(0, len(x), bs)):
    xb, yb = np.asarray(x[start : start + bs], np.float64), y[start : start + bs]
    padded = (bs,) + x.shape[1:]  # the probes are drawn for the padded batch shape
    r = np.asarray(
      sj.trusted.rademacher_probes(jax.random.fold_in(jax.random.PRNGKey(seed), i), probes, padded)
    )
    for j in range(len(xb)):
      norms = [
        np.linalg.norm(
          grad(xb[j] + h * (r[k, j] + 1e-7), yb[j], len(xb)) - grad(xb[j], yb[j], len(xb))
        )
        for k in range(probes)
      ]
      want.append(np.mean(norms))
  assert len(x) % bs != 0  # a short last batch: its scores carry 1/5, not 1/16
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-9)


def test_select_per_class_takes_the_lowest_of_each_class():
  scores = np.asarray([5.0, 0.1, 3.0, 0.2, 2.0, 9.0, 0.5])
  labels = np.asarray([0, 0, 1, 1, 2, 2, 0])
  np.testing.assert_array_equal(sj.trusted.select_per_class(scores, labels, 2), [1, 3, 6, 4, 2, 5])
  np.testing.assert_array_equal(sj.trusted.select_per_class(scores, labels, 1), [1, 3, 4])


def test_trusted_set_published_takes_n_over_k_plus_one_per_class(linear):
  apply_fn, variables, x, y = linear
  got = sj.trusted.trusted_set(apply_fn, variables, x, y, 6, score="curvature_published", seed=3)
  scores = sj.trusted.published_curvature(apply_fn, variables, x, y, seed=3)
  # 6 // 3 + 1 = 3 per class, the lowest published-curvature samples of each class.
  np.testing.assert_array_equal(got, sj.trusted.select_per_class(scores, y, 3))
  assert np.all(np.bincount(y[got], minlength=3) == 3)
  plain = sj.trusted.trusted_set(apply_fn, variables, x, y, 6, score="loss")
  np.testing.assert_array_equal(
    plain, sj.select_trusted(sj.per_example_loss(apply_fn, variables, x, y), y, 6)
  )
  with pytest.raises(ValueError, match="Unknown score"):
    sj.trusted.trusted_set(apply_fn, variables, x, y, 6, score="curv")


def test_sharded_curvature_refuses_host_arrays_and_unknown_kinds(linear):
  apply_fn, variables, x, y = linear
  with pytest.raises(ValueError, match="for a host array use input_curvature"):
    sj.trusted.sharded_curvature(apply_fn, variables, x, y, "curvature")
  with pytest.raises(ValueError, match='kind must be "curvature"'):
    sj.trusted.sharded_curvature(apply_fn, variables, x, y, "loss")
