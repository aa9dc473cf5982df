"""Tests for sap_jax.train: optimisation maths, evaluation, determinism."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sap_jax import optim, train
from sap_jax.batching import epoch_batches
from tests import fake_data


class TinyMLP(nn.Module):
  """2-layer MLP; optional BatchNorm after the hidden layer."""

  num_classes: int = 3
  bn: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(16)(x)
    if self.bn:
      x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(self.num_classes)(nn.relu(x))


class InputBN(nn.Module):
  """BatchNorm straight on the input, then a linear head."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(2)(x)


def blobs(n=240, seed=0, k=3):
  return fake_data.blobs(n, seed, k)


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


def test_schedule_values():
  lr = 0.05

  def mk(s):
    return train.make_schedule(train.TrainConfig(epochs=4, learning_rate=lr, schedule=s), 10)

  const, step, cos = mk("constant"), mk("step"), mk("cosine")
  # T = 40 steps: x0.1 at step 20 (50 %), again at step 30 (75 %).
  for t, want in [
    (0, lr),
    (19, lr),
    (20, 0.1 * lr),
    (29, 0.1 * lr),
    (30, 0.01 * lr),
    (39, 0.01 * lr),
  ]:
    assert float(step(t)) == pytest.approx(want, rel=1e-6), t
    assert float(const(t)) == pytest.approx(lr)
  for t in (0, 10, 20, 30, 40):
    want = lr * 0.5 * (1 + np.cos(np.pi * t / 40))
    assert float(cos(t)) == pytest.approx(want, rel=1e-5, abs=1e-9), t


def test_optimizer_follows_schedule():
  cfg = train.TrainConfig(
    epochs=4, learning_rate=0.5, momentum=0.0, weight_decay=0.0, schedule="step"
  )
  tx = train.make_optimizer(cfg, steps_per_epoch=10)
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  steps = []
  for _ in range(40):
    upd, state = tx.update({"w": jnp.ones(())}, state, params)
    steps.append(-float(upd["w"]))
  np.testing.assert_allclose(steps, [0.5] * 20 + [0.05] * 10 + [0.005] * 10, rtol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_weight_decay_and_momentum_match_pytorch_sgd(nesterov):
  """torch.optim.SGD: d = g + wd θ; b = μ b + d; θ -= lr (d + μ b | b)."""
  lr, mu, wd = 0.1, 0.9, 0.01
  cfg = train.TrainConfig(learning_rate=lr, momentum=mu, weight_decay=wd, nesterov=nesterov)
  tx = train.make_optimizer(cfg, steps_per_epoch=5)
  theta = {
    "Dense_0": {"kernel": jnp.array([[1.0, -2.0]])},
    "BatchNorm_0": {"scale": jnp.array([0.5])},
  }
  grads = [
    {"Dense_0": {"kernel": jnp.array([[0.3, 0.1]])}, "BatchNorm_0": {"scale": jnp.array([-0.2])}},
    {"Dense_0": {"kernel": jnp.array([[-0.1, 0.4]])}, "BatchNorm_0": {"scale": jnp.array([0.7])}},
  ]
  state = tx.init(theta)
  ref = jax.tree.map(np.asarray, theta)
  buf = jax.tree.map(np.zeros_like, ref)
  for g in grads:
    upd, state = tx.update(g, state, theta)
    theta = optax.apply_updates(theta, upd)
    d = jax.tree.map(lambda gi, p: np.asarray(gi) + wd * p, g, ref)
    buf = jax.tree.map(lambda b, di: mu * b + di, buf, d)
    step = jax.tree.map(lambda di, b: di + mu * b, d, buf) if nesterov else buf
    ref = jax.tree.map(lambda p, s: p - lr * s, ref, step)
  for got, want in zip(jax.tree.leaves(theta), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def _hand_written_sgd(params, grads, buf, lr, momentum, weight_decay):
  """The baselines' former update, written out: d = g + wd θ; b = μ b + d; θ = θ − lr b."""
  d = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
  buf = jax.tree.map(lambda b, di: momentum * b + di, buf, d)
  params = jax.tree.map(lambda p, b: p - lr * b, params, buf)
  return params, buf


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 5e-4), (0.0, 0.0), (0.5, 0.1)])
def test_tunable_sgd_is_bitwise_the_hand_written_update(jit, momentum, weight_decay):
  lr = np.float32(0.05)
  mu, wd = np.float32(momentum), np.float32(weight_decay)
  keys = iter(jax.random.split(jax.random.key(0), 16))

  def tree():
    return {
      "Dense_0": {
        "kernel": jax.random.normal(next(keys), (3, 4)),
        "bias": jax.random.normal(next(keys), (4,)),
      },
      "BatchNorm_0": {"scale": jax.random.normal(next(keys), (4,))},
    }

  params = tree()
  grads = [tree() for _ in range(4)]
  tx = optim.tunable_sgd()
  state = optim.tunable_sgd_init(
    params, learning_rate=0.05, momentum=momentum, weight_decay=weight_decay
  )

  def optax_step(p, g, s):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  def old_step(p, g, b):
    return _hand_written_sgd(p, g, b, lr, mu, wd)

  if jit:
    optax_step, old_step = jax.jit(optax_step), jax.jit(old_step)
  ref, buf = params, jax.tree.map(jnp.zeros_like, params)
  for g in grads:
    params, state = optax_step(params, g, state)
    ref, buf = old_step(ref, g, buf)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert optim.tunable_sgd() is tx  # one transformation for every setting


def test_make_optimizer_is_shared_by_configs_with_one_optimizer_part():
  a = train.TrainConfig(seed=0, batch_size=32, mixup_alpha=0.2)
  b = train.TrainConfig(seed=5, batch_size=64, eval_every=3)
  assert a.part("optimizer") == b.part("optimizer")
  assert train.make_optimizer(a, 10) is train.make_optimizer(b, 10)
  c = train.TrainConfig(learning_rate=0.01)
  assert c.part("optimizer") != a.part("optimizer")
  assert train.make_optimizer(c, 10) is not train.make_optimizer(a, 10)
  # The step's part ignores the optimizer, the data order and the run length ...
  assert train.TrainConfig(epochs=3, learning_rate=0.2, seed=4).part(
    "step"
  ) == train.TrainConfig().part("step")
  # ... but not the loss options; SAM belongs to both.
  assert train.TrainConfig(logit_clip=2.0).part("step") != train.TrainConfig().part("step")
  sam = train.TrainConfig(sam_rho=0.05)
  assert sam.part("step").sam_rho == sam.part("optimizer").sam_rho == 0.05
  with pytest.raises(ValueError, match="part"):
    a.part("loop")


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


def test_epoch_batches_drop_or_fill_the_last_batch():
  perm = np.random.default_rng(0).permutation(10)
  full = epoch_batches(np.random.default_rng(0), 10, 4, drop_last=True)
  np.testing.assert_array_equal(full, perm[:8].reshape(2, 4))
  filled = epoch_batches(np.random.default_rng(0), 10, 4)
  np.testing.assert_array_equal(filled, np.concatenate([perm, perm[:2]]).reshape(3, 4))
  # One permutation per call: consecutive epochs differ; bs is clipped to n.
  rng = np.random.default_rng(1)
  assert not np.array_equal(epoch_batches(rng, 10, 10), epoch_batches(rng, 10, 10))
  assert epoch_batches(rng, 3, 8).shape == (1, 3)
  with pytest.raises(ValueError, match="batch_size"):
    epoch_batches(rng, 3, 0)


def test_state_from_variables_continues_training_with_train_forward():
  x, y = blobs(32, seed=5)
  model = TinyMLP(bn=True)
  variables = model.init(jax.random.key(0), x[:1])
  state = train.state_from_variables(
    model, variables, learning_rate=0.1, momentum=0.0, weight_decay=0.0
  )
  logits, stats = train.train_forward(state, state.params, x, jax.random.key(1))
  want, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(logits, want, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(upd["batch_stats"])):
    np.testing.assert_array_equal(a, b)
  # Plain SGD, lr 0.1: θ ← θ − 0.1 g.
  grads = jax.tree.map(jnp.ones_like, state.params)
  new = state.apply_gradients(grads=grads)
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, b - 0.1, rtol=1e-6)
  assert train.variables_of(new).keys() == {"params", "batch_stats"}


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
    ev = train.evaluate(apply_fn, variables, x, y, batch_size=bs)
    assert ev["accuracy"] == pytest.approx(want_acc)
    assert ev["loss"] == pytest.approx(want_loss, rel=1e-5)
    got = train.predict_logits(apply_fn, variables, x, batch_size=bs)
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
  x = np.eye(3, dtype=np.float32)[preds]
  y_noisy = np.array([0, 1, 1, 2, 0, 1])
  mask = np.array([False, True, True, True, True, False])
  # Corrupted samples 1..4: predictions 1,2,2,1 vs noisy 1,1,2,0 -> 2/4.
  assert train.fit_fraction(identity, {}, x, y_noisy, mask) == 0.5
  with pytest.raises(ValueError, match="no corrupted"):
    train.fit_fraction(identity, {}, x, y_noisy, np.zeros(6, bool))
  with pytest.raises(ValueError, match="boolean"):
    train.fit_fraction(identity, {}, x, y_noisy, np.ones(6))


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


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"schedule": "linear"}, "schedule"),
    ({"mentormix": True, "mixup_alpha": 0.2}, "mixup_alpha=0"),
    ({"momentum": 1.0}, "momentum"),
    ({"logit_clip": 0.0}, "logit_clip"),
  ],
)
def test_config_rejects_bad_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    train.TrainConfig(**kwargs)


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
