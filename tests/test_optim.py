"""sap_jax.optim: the schedules, torch.optim.SGD as an optax chain, and its grid form."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sap_jax import optim
from sap_jax.train_config import TrainConfig


def test_schedule_values():
  lr = 0.05

  def mk(s):
    return optim.make_schedule(TrainConfig(epochs=4, learning_rate=lr, schedule=s), 10)

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
  cfg = TrainConfig(epochs=4, learning_rate=0.5, momentum=0.0, weight_decay=0.0, schedule="step")
  tx = optim.make_optimizer(cfg, steps_per_epoch=10)
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
  cfg = TrainConfig(learning_rate=lr, momentum=mu, weight_decay=wd, nesterov=nesterov)
  tx = optim.make_optimizer(cfg, steps_per_epoch=5)
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
