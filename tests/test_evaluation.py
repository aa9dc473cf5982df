"""sap_jax.evaluation: accuracy, loss and logits over padded batches, fit fraction, and
the input checks."""

import jax
import numpy as np
import pytest

from sap_jax import train
from sap_jax.evaluation import check_xy, evaluate, fit_fraction, predict_logits
from tests.train_cases import TinyMLP, blobs


def test_evaluate_and_predict_match_direct_with_ragged_batch():
  x, y = blobs(23, seed=3)
  model = TinyMLP()
  variables = model.init(jax.random.key(0), x[:1])
  apply_fn = train.eval_apply_fn(model)
  logits = np.asarray(model.apply(variables, x, train=False))
  want_acc = float(np.mean(logits.argmax(-1) == y))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want_loss = float(-np.mean(logp[np.arange(23), y]))
  for bs in (8, 23, 1024):  # 8 -> batches of 8, 8, 7 (padded and masked).
    ev = evaluate(apply_fn, variables, x, y, batch_size=bs)
    assert ev["accuracy"] == pytest.approx(want_acc)
    assert ev["loss"] == pytest.approx(want_loss, rel=1e-5)
    got = predict_logits(apply_fn, variables, x, batch_size=bs)
    assert isinstance(got, np.ndarray) and got.shape == (23, 3)
    np.testing.assert_allclose(got, logits, rtol=1e-5, atol=1e-6)
  # Equal modules give equal apply_fns: jit reuses the compilation.
  assert train.eval_apply_fn(TinyMLP()) == apply_fn
  assert hash(train.eval_apply_fn(TinyMLP())) == hash(apply_fn)


def test_fit_fraction_on_known_predictions():
  # apply_fn returns its input, so x holds the logits directly.
  def identity(v, x):
    return x

  preds = np.array([0, 1, 2, 2, 1, 0])
  x = 2 * np.eye(3, dtype=np.float32)[preds]  # logits, not one-hot probabilities
  y_noisy = np.array([0, 1, 1, 2, 0, 1])
  mask = np.array([False, True, True, True, True, False])
  # Corrupted samples 1..4: predictions 1,2,2,1 vs noisy 1,1,2,0 -> 2/4.
  assert fit_fraction(identity, {}, x, y_noisy, mask) == 0.5
  with pytest.raises(ValueError, match="no corrupted"):
    fit_fraction(identity, {}, x, y_noisy, np.zeros(6, bool))
  with pytest.raises(ValueError, match="boolean"):
    fit_fraction(identity, {}, x, y_noisy, np.ones(6))


def _linear_apply(variables, x):
  """A tiny linear model: logits = x W + b."""
  return x @ variables["w"] + variables["b"]


def _linear_problem():
  rng = np.random.default_rng(0)
  variables = {
    "w": rng.normal(size=(4, 3)).astype(np.float32),
    "b": rng.normal(size=(3,)).astype(np.float32),
  }
  x = rng.normal(size=(7, 4)).astype(np.float32)
  y = np.array([0, 1, 2, 0, 1, 2, 0], np.int32)
  logits = x.astype(np.float64) @ variables["w"] + variables["b"]
  return variables, x, y, logits


def test_evaluate_linear_model_with_ragged_last_batch_equals_direct_computation():
  variables, x, y, logits = _linear_problem()
  correct = int(np.sum(logits.argmax(-1) == y))
  assert 0 < correct < 7  # a non-trivial accuracy
  m = logits.max(-1, keepdims=True)
  logp = logits - (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))
  want_loss = -np.mean(logp[np.arange(7), y])
  for bs in (3, 7, 1024):  # 3 -> batches of 3, 3 and 1 (padded with x[0], masked)
    ev = evaluate(_linear_apply, variables, x, y, batch_size=bs)
    assert set(ev) == {"accuracy", "loss"}
    assert ev["accuracy"] == correct / 7
    assert ev["loss"] == pytest.approx(want_loss, rel=1e-5)
    assert type(ev["accuracy"]) is float and type(ev["loss"]) is float


def test_predict_logits_equals_the_direct_forward():
  variables, x, _, logits = _linear_problem()
  for bs in (3, 7, 1024):
    got = predict_logits(_linear_apply, variables, x, batch_size=bs)
    assert isinstance(got, np.ndarray) and got.shape == (7, 3)
    np.testing.assert_allclose(got, logits, rtol=1e-5, atol=1e-6)


def test_check_xy_returns_host_arrays_and_names_the_problem():
  x, y = check_xy([[1.0], [2.0]], [0, 1])
  assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
  np.testing.assert_array_equal(y, [0, 1])
  x, y = check_xy(np.zeros((3, 2)), None)
  assert y is None and x.shape == (3, 2)
  with pytest.raises(ValueError, match="^x/y: 3 inputs but 2 labels; pass one label per input"):
    check_xy(np.zeros((3, 2)), np.zeros(2, np.int32))
  with pytest.raises(
    ValueError, match=r"^val: labels must be a 1-D integer array, got shape \(3,\) dtype float64"
  ):
    check_xy(np.zeros((3, 2)), np.zeros(3), "val")
  with pytest.raises(ValueError, match=r"labels must be a 1-D integer array, got shape \(3, 1\)"):
    check_xy(np.zeros((3, 2)), np.zeros((3, 1), np.int32))
  with pytest.raises(ValueError, match=r"^x: empty \(no samples\); pass at least one"):
    check_xy(np.zeros((0, 2)), None, "x")
  with pytest.raises(ValueError, match="^x/y: empty"):
    check_xy(np.zeros((0, 2)), np.zeros(0, np.int32))
  # evaluate and predict_logits run the same checks.
  with pytest.raises(ValueError, match="integer array"):
    evaluate(_linear_apply, {}, np.zeros((3, 4), np.float32), np.zeros(3))
  with pytest.raises(ValueError, match="no samples"):
    predict_logits(_linear_apply, {}, np.zeros((0, 4), np.float32))


def test_evaluate_checks_labels_against_the_model_and_the_forward_output():
  x, y = blobs(12, seed=4)
  model = TinyMLP()
  variables = model.init(jax.random.key(0), x[:1])
  apply_fn = train.eval_apply_fn(model)
  bad = y.copy()
  bad[5] = 3
  with pytest.raises(ValueError, match=r"^x/y: label 3 \(at index 5\) is outside \[0, 3\)"):
    evaluate(apply_fn, variables, x, bad)
  bad[5] = -1
  with pytest.raises(ValueError, match="label -1"):
    evaluate(apply_fn, variables, x, bad)
  nan = x.copy()
  nan[7, 0] = np.nan  # refused explicitly, not left to the batched forward
  with pytest.raises(ValueError, match=r"NaN or Inf in 1 sample\(s\) \(first at index 7\)"):
    evaluate(apply_fn, variables, nan, y)
  with pytest.raises(ValueError, match=r"integer dtype uint8.*/ 255"):
    evaluate(apply_fn, variables, x.astype(np.uint8), y)
  with pytest.raises(ValueError, match="returned a tuple of 2"):
    evaluate(lambda v, xs: (apply_fn(v, xs), xs), variables, x, y)
  with pytest.raises(ValueError, match="returned a dict"):
    predict_logits(lambda v, xs: {"logits": apply_fn(v, xs)}, variables, x)
  with pytest.raises(ValueError, match=r"integer dtype int64"):
    check_xy(np.zeros((2, 2), np.int64), None)
