"""Tests for sap_jax.train: the training loop, its step, seeds and determinism."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from sap_jax import train
from tests.train_cases import TinyMLP, blobs


class InputBN(nn.Module):
  """BatchNorm straight on the input, then a linear head."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(2)(x)


def test_training_lowers_loss_and_fits_separable_problem():
  x, y = blobs()
  xv, yv = blobs(90, seed=1)
  cfg = train.TrainConfig(epochs=8, batch_size=32, learning_rate=0.1)
  logged = []
  res = train.train_model(
    TinyMLP(), x, y, cfg, x_val=xv, y_val=yv, progress=False, log_fn=logged.append
  )
  hist = res.history
  assert len(hist) == 8 and logged == hist
  assert [h["epoch"] for h in hist] == list(range(1, 9))
  assert hist[-1]["loss"] < 0.3 * hist[0]["loss"]
  assert hist[-1]["train_accuracy"] >= 0.95
  assert hist[-1]["val_accuracy"] >= 0.95
  assert all(h["lr"] == pytest.approx(0.1) for h in hist)
  assert res.train_time_s > 0
  ev = train.evaluate(train.eval_apply_fn(TinyMLP()), res.variables, xv, yv)
  assert ev["accuracy"] == hist[-1]["val_accuracy"]
  assert ev["loss"] == pytest.approx(hist[-1]["val_loss"])
  assert set(res.variables) == {"params"}


def test_same_seed_identical_params_different_seed_differs():
  x, y = blobs(128)
  cfg = train.TrainConfig(epochs=2, batch_size=32)

  def run(c):
    return train.train_model(TinyMLP(bn=True), x, y, c, progress=False).variables

  a, b = run(cfg), run(cfg)
  c = run(train.TrainConfig(epochs=2, batch_size=32, seed=1))
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
  assert any(not np.array_equal(la, lc) for la, lc in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def test_runs_differing_in_seed_share_one_compiled_step():
  x, y = blobs(64, seed=4)
  model = TinyMLP(num_classes=3, bn=True)
  step = train.JITTED["train.step"]
  cfg = train.TrainConfig(epochs=1, batch_size=16, label_smoothing=0.1, nesterov=True)
  train.train_model(model, x, y, cfg, progress=False)
  size = step._cache_size()
  for seed in (1, 2):
    train.train_model(
      model, x, y, train.TrainConfig(**{**cfg.to_dict(), "seed": seed}), progress=False
    )
  assert step._cache_size() == size


def test_run_rngs_derive_every_stream_from_the_seed():
  a, b = train.run_rngs(3), train.run_rngs(3)
  np.testing.assert_array_equal(jax.random.key_data(a.init), jax.random.key_data(b.init))
  np.testing.assert_array_equal(jax.random.key_data(a.steps), jax.random.key_data(b.steps))
  assert not np.array_equal(jax.random.key_data(a.init), jax.random.key_data(a.steps))
  np.testing.assert_array_equal(a.data_order.permutation(10), b.data_order.permutation(10))
  c = train.run_rngs(4)
  assert not np.array_equal(jax.random.key_data(a.init), jax.random.key_data(c.init))


def test_batchnorm_stats_update_in_training_not_in_eval():
  model = InputBN()
  x = np.random.default_rng(0).normal(2.0, 3.0, size=(32, 2))
  x = x.astype(np.float32)
  y = np.zeros(32, np.int32)
  cfg = train.TrainConfig(learning_rate=0.1)
  state = train.create_train_state(model, x[:1], cfg, jax.random.key(0))
  before = state.batch_stats["BatchNorm_0"]
  np.testing.assert_array_equal(before["mean"], 0.0)
  new, metrics = train.train_step(state, x, y, jax.random.key(1), config=cfg)
  after = new.batch_stats["BatchNorm_0"]
  # Flax running average: ra <- momentum * ra + (1 - momentum) * batch stat.
  np.testing.assert_allclose(after["mean"], 0.1 * x.mean(0), rtol=1e-5)
  np.testing.assert_allclose(after["var"], 0.9 + 0.1 * x.var(0), rtol=1e-5)
  assert int(new.step) == 1 and np.isfinite(metrics["loss"])
  # Eval mode leaves the statistics alone and normalises with them, so a
  # sample's output does not depend on the rest of the batch.
  v = train.variables_of(new)
  _, upd = model.apply(v, x, train=False, mutable=["batch_stats"])
  for a, b in zip(jax.tree.leaves(upd["batch_stats"]), jax.tree.leaves(v["batch_stats"])):
    np.testing.assert_array_equal(a, b)
  apply_fn = train.eval_apply_fn(model)
  full = train.predict_logits(apply_fn, v, x)
  single = train.predict_logits(apply_fn, v, x[:1])
  np.testing.assert_allclose(full[:1], single, rtol=1e-5, atol=1e-6)


def test_early_stopping_returns_best_validation_variables():
  x, y = blobs(96)
  # Validation labels are wrong on purpose: the better the fit, the lower
  # their accuracy, so the best epoch comes early and training stops.
  xv, yv = blobs(60, seed=2)
  yv = (yv + 1) % 3
  cfg = train.TrainConfig(epochs=30, batch_size=32, learning_rate=0.1, early_stopping_patience=2)
  res = train.train_model(TinyMLP(), x, y, cfg, x_val=xv, y_val=yv, progress=False)
  accs = [h["val_accuracy"] for h in res.history]
  best = int(np.argmax(accs))
  assert len(res.history) == best + 1 + 2 < 30
  ev = train.evaluate(train.eval_apply_fn(TinyMLP()), res.variables, xv, yv)
  assert ev["accuracy"] == accs[best]


def test_train_model_rejects_bad_input():
  x, y = blobs(20)
  with pytest.raises(ValueError, match="batch_size"):
    train.train_model(TinyMLP(), x, y, train.TrainConfig(batch_size=64), progress=False)
  with pytest.raises(ValueError, match="validation"):
    train.train_model(
      TinyMLP(), x, y, train.TrainConfig(batch_size=8, early_stopping_patience=3), progress=False
    )
  with pytest.raises(ValueError, match="labels"):
    train.train_model(TinyMLP(), x, y[:10], train.TrainConfig(batch_size=8), progress=False)
  with pytest.raises(ValueError, match="outside"):
    train.train_model(
      TinyMLP(num_classes=2), x, y, train.TrainConfig(batch_size=8, epochs=1), progress=False
    )


def test_model_output_width_is_k_without_initialising():
  x, _ = blobs(5)
  assert train.model_output_width(TinyMLP(num_classes=7), x) == 7
  assert train.model_output_width(TinyMLP(num_classes=2, bn=True), x) == 2


class TupleMLP(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Dense(4)(x)
    return nn.Dense(3)(h), h


def test_train_model_checks_every_split_before_any_work(monkeypatch):
  def no_work(*args, **kwargs):
    raise AssertionError("training started before the inputs were checked")

  monkeypatch.setattr(train, "create_train_state", no_work)
  x, y = blobs(40)
  xv, yv = blobs(12, seed=1)
  cfg = train.TrainConfig(batch_size=8, epochs=1)

  def refused(match, **kw):
    args = dict(x=x, y=y, x_val=xv, y_val=yv) | kw
    with pytest.raises(ValueError, match=match):
      train.train_model(
        kw.pop("model", TinyMLP()),
        args["x"],
        args["y"],
        cfg,
        x_val=args["x_val"],
        y_val=args["y_val"],
        progress=False,
      )

  nan_x = x.copy()
  nan_x[3, 1] = np.nan
  refused(r"^x/y: contains NaN or Inf in 1 sample\(s\) \(first at index 3\)", x=nan_x)
  refused(r"^x_val/y_val: contains NaN", x_val=np.where(np.arange(12)[:, None] == 0, np.nan, xv))
  refused(r"integer dtype uint8", x=x.astype(np.uint8))
  refused(r"^x_val/y_val: label 3 .*outside \[0, 3\)", y_val=np.where(np.arange(12) == 4, 3, yv))
  refused(r"^x_val/y_val: labels must be a 1-D integer array", y_val=yv.astype(np.float32))
  refused(r"^x/y: label -1", y=np.where(np.arange(40) == 0, -1, y))
  refused(r"x_val samples have shape \(3,\)", x_val=np.zeros((12, 3), np.float32))
  with pytest.raises(ValueError, match=r"returned a tuple of 2, not logits; .*__call__ returns"):
    train.train_model(TupleMLP(), x, y, cfg, progress=False)
