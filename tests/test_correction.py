"""correct: SAP in one call, and several rounds."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
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


class _TwoLayer(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3, name="head")(nn.relu(nn.Dense(8, name="first")(x)))


def _reference_rounds(params, x_trusted, alphas, rounds, val=None):
  """The published rounds (sangamesh-kodge/SAP) on a 2-layer MLP, float64 numpy.

  PyTorch layout: W = Kᵀ (out × in). Round r: rows of layer l = (its input in the
  round r−1 model) @ Q_l (Q the composed projection, identity at first); SVD of the
  d × N row matrix; P = U diag(λ) Uᵀ; candidate W_l = W_l⁰ (Q_l P_l)ᵀ; α grid × 10^r.
  With ``val = (x, y)``: keep the first α of highest accuracy if it beats the model
  entering the round, else stop; without: apply every round.
  """
  w1 = np.asarray(params["first"]["kernel"], np.float64).T
  b1 = np.asarray(params["first"]["bias"], np.float64)
  w2 = np.asarray(params["head"]["kernel"], np.float64).T
  b2 = np.asarray(params["head"]["bias"], np.float64)
  x_trusted = np.asarray(x_trusted, np.float64)

  def forward(ws, x):
    return np.maximum(x @ ws[0].T + b1, 0) @ ws[1].T + b2

  def acc(ws):
    return float(np.mean(np.argmax(forward(ws, val[0]), -1) == val[1]))

  def p_of(rows, alpha):
    u, s, _ = np.linalg.svd(rows.T, full_matrices=True)
    sig = np.zeros(rows.shape[1])
    sig[: len(s)] = s**2
    sig = sig / sig.sum()
    lam = alpha * sig / ((alpha - 1) * sig + 1)
    return u @ np.diag(lam) @ u.T

  qs = [np.eye(w1.shape[1]), np.eye(w2.shape[1])]
  ws = [w1, w2]
  best = acc(ws) if val else None
  chosen = []
  for r in range(rounds):
    h = np.maximum(x_trusted @ ws[0].T + b1, 0)  # layer-2 input in the round r−1 model
    rows = [x_trusted @ qs[0], h @ qs[1]]
    cands = []
    for a in np.asarray(alphas, np.float64) * 10.0**r:
      new_q = [q @ p_of(rw, a) for q, rw in zip(qs, rows)]
      cand = [w1 @ new_q[0].T, w2 @ new_q[1].T]
      cands.append((a, new_q, cand, acc(cand) if val else None))
    if val is None:
      _, qs, ws, _ = cands[0]
      chosen.append(cands[0][0])
      continue
    top = max(range(len(cands)), key=lambda i: (cands[i][3], -i))
    if cands[top][3] <= best:
      break
    a, qs, ws, best = cands[top]
    chosen.append(a)
  return chosen, [ws[0].T, ws[1].T], best


@pytest.fixture(scope="module")
def two_layer():
  """A 2-layer MLP; trusted inputs near a 3-D subspace of R⁶; validation labels are the
  model's predictions on the inputs' projection onto that subspace, so removing the
  off-subspace directions (round after round) raises validation accuracy."""
  model = _TwoLayer()
  rng = np.random.default_rng(4)
  basis = np.linalg.qr(rng.normal(size=(6, 3)))[0]
  x_trusted = (rng.normal(size=(40, 3)) @ basis.T + 0.2 * rng.normal(size=(40, 6))).astype(
    np.float32
  )
  x_val = rng.normal(size=(300, 6)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(3), x_val)
  apply_fn = functools.partial(model.apply, train=False)
  y_val = np.asarray(jnp.argmax(apply_fn(variables, x_val @ basis @ basis.T), -1))
  return apply_fn, variables, x_trusted, x_val, y_val


def test_rounds_follow_the_published_rows_and_composition(two_layer):
  apply_fn, variables, x_trusted, _, _ = two_layer
  got = sj.correct(apply_fn, variables, x_trusted, 3.0, rounds=3, batch_size=16)
  _, (k1, k2), _ = _reference_rounds(variables["params"], x_trusted, [3.0], 3)
  np.testing.assert_allclose(got["params"]["first"]["kernel"], k1, rtol=1e-3, atol=2e-5)
  np.testing.assert_allclose(got["params"]["head"]["kernel"], k2, rtol=1e-3, atol=2e-5)
  for name in ("first", "head"):  # biases untouched
    assert got["params"][name]["bias"] is variables["params"][name]["bias"]
  # Not the naive repetition (rows of the raw inputs, re-projecting the projected kernel).
  once = sj.correct(apply_fn, variables, x_trusted, 3.0)
  naive = sj.correct(apply_fn, sj.correct(apply_fn, once, x_trusted, 30.0), x_trusted, 300.0)
  assert not np.allclose(naive["params"]["head"]["kernel"], k2, rtol=1e-3, atol=2e-5)


def test_sap_rounds_match_the_scored_reference(two_layer):
  apply_fn, variables, x_trusted, x_val, y_val = two_layer
  alphas = (3.0, 10.0, 30.0)
  got = sj.correction.sap_rounds(
    apply_fn, variables, x_trusted, x_val, y_val, alphas, rounds=4, batch_size=16
  )
  chosen, (k1, k2), best = _reference_rounds(
    variables["params"], x_trusted, alphas, 4, val=(x_val, y_val)
  )
  assert len(chosen) == 3  # the fixture makes later rounds pay off; the 4th stops them
  assert len(got.records) == 4 and got.records[-1].alpha is None
  np.testing.assert_allclose(got.alphas, chosen)
  assert got.val_accuracy == pytest.approx(best)
  np.testing.assert_allclose(got.variables["params"]["first"]["kernel"], k1, rtol=1e-3, atol=2e-5)
  np.testing.assert_allclose(got.variables["params"]["head"]["kernel"], k2, rtol=1e-3, atol=2e-5)
  # Records: grid × 10^r per round, each baseline the previous round's choice.
  for r, rec in enumerate(got.records):
    np.testing.assert_allclose(rec.alphas, np.asarray(alphas) * 10.0**r)
  for prev, rec in zip(got.records, got.records[1:]):
    assert rec.baseline == pytest.approx(np.max(prev.accuracies))
  # The returned model scores what the record says.
  acc = sj.evaluate(apply_fn, got.variables, x_val, y_val)["accuracy"]
  assert acc == pytest.approx(got.val_accuracy)
  # rounds=1 is run_sap's sweep on the same trusted inputs.
  one = sj.correction.sap_rounds(apply_fn, variables, x_trusted, x_val, y_val, alphas, rounds=1)
  assert one.alphas == (chosen[0],) and len(one.records) == 1


def test_sap_rounds_keep_the_model_when_round_zero_loses(two_layer):
  apply_fn, variables, x_trusted, x_val, _ = two_layer
  y_own = np.asarray(jnp.argmax(apply_fn(variables, x_val), -1))  # 100 % unchanged
  got = sj.correction.sap_rounds(apply_fn, variables, x_trusted, x_val, y_own, (1.0,), rounds=3)
  assert got.alphas == () and got.projections is None and len(got.records) == 1
  assert got.records[0].alpha is None and got.val_accuracy == 1.0
  leaves = jax.tree_util.tree_leaves(got.variables)
  assert all(a is b for a, b in zip(leaves, jax.tree_util.tree_leaves(variables)))


def test_errors(mlp):
  apply_fn, variables, x, y = mlp
  with pytest.raises(ValueError, match="empty|no samples"):
    sj.correct(apply_fn, variables, x[:0], 10.0)
  with pytest.raises(ValueError, match="alpha"):
    sj.correct(apply_fn, variables, x, -3.0)
  with pytest.raises(ValueError, match="NaN or Inf"):
    sj.correct(apply_fn, variables, np.full_like(x, np.nan), 10.0)
