"""NNX training: the Linen training code on a split NNX model, so Linen and NNX twins
trained from the same weights with the same seed give the same weights and history."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sap_jax.nnx as snnx
from sap_jax import models, train
from tests import fake_data

X, Y = fake_data.blobs(96, 0, 3)


def _linen_init(model, x, config):
  rngs = train.run_rngs(config.seed)
  steps = len(x) // config.batch_size
  return train.variables_of(
    train.create_train_state(model, x[:1], config, rngs.init, steps_per_epoch=steps)
  )


def _leaves(tree):
  return [np.asarray(a) for a in jax.tree.leaves(tree)]


def _rng_leaves(model):
  """The model's RNG-stream state as plain arrays (key data for keys)."""
  leaves = jax.tree.leaves(nnx.state(model, nnx.RngState))
  return [
    np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a)
    for a in leaves
  ]


def _assert_trees_close(a, b, **tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_allclose(x, y, **tol)


@pytest.mark.parametrize(
  "name, kwargs, options",
  [
    (
      "cnn",
      dict(width=4, batch_norm=True),
      dict(mixup_alpha=0.4, label_smoothing=0.1, logit_clip=2.0, weight_decay=5e-4),
    ),
    ("mlp", dict(depth=1, width=8, batch_norm=True), dict(sam_rho=0.05, mentormix=True)),
  ],
)
def test_linen_and_nnx_twins_train_to_the_same_weights_and_history(name, kwargs, options):
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (64, 6, 6, 1)))
  y = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (64,), 0, 3))
  config = train.TrainConfig(
    epochs=2, batch_size=16, learning_rate=0.05, schedule="cosine", seed=4, **options
  )
  linen = models.get(name, 3, **kwargs)
  want = train.train_model(linen, x, y, config, x_val=x[:16], y_val=y[:16], progress=False)
  in_features = 36 if name == "mlp" else 1
  twin = models.get(name, 3, api="nnx", in_features=in_features, **kwargs)
  twin = snnx.load_linen_variables(twin, _linen_init(linen, x, config))
  before = _leaves(nnx.state(twin))
  got = snnx.train_model(twin, x, y, config, x_val=x[:16], y_val=y[:16], progress=False)

  assert [set(e) for e in got.history] == [set(e) for e in want.history]
  for g, w in zip(got.history, want.history):
    for key in w:
      np.testing.assert_allclose(g[key], w[key], rtol=1e-5, atol=1e-6)
  variables = snnx.variables_of(got.model)  # the Linen layout: {"params", "batch_stats"}
  _assert_trees_close(variables, want.variables, rtol=1e-5, atol=1e-6)
  for a, b in zip(before, _leaves(nnx.state(twin))):  # the user's model is untouched
    np.testing.assert_array_equal(a, b)
  assert got.model is not twin and type(got.model) is type(twin)


class DropoutNet(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.dense = nnx.Linear(2, 16, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.head = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(self.drop(nnx.relu(self.dense(x))))


def test_dropout_draws_from_the_run_seed_and_leaves_the_models_rng_state():
  x, y = fake_data.blobs(48, 1, 3)
  model = DropoutNet(nnx.Rngs(0))
  rng_before = _rng_leaves(model)
  assert rng_before
  config = train.TrainConfig(epochs=2, batch_size=48, learning_rate=0.1, seed=0)
  a = snnx.train_model(model, x, y, config, progress=False)
  b = snnx.train_model(model, x, y, config, progress=False)
  c = snnx.train_model(
    model, x, y, train.TrainConfig(**{**config.to_dict(), "seed": 1}), progress=False
  )
  assert a.history == b.history
  _assert_trees_close(snnx.variables_of(a.model), snnx.variables_of(b.model), rtol=0, atol=0)
  # One full batch: the data order cannot matter, only the dropout masks of seed 1.
  assert a.history[0]["loss"] != c.history[0]["loss"]
  for model_ in (model, a.model):
    for got, want in zip(_rng_leaves(model_), rng_before, strict=True):
      np.testing.assert_array_equal(got, want)
  # Dropout is on in training: without it (the same weights) the first loss differs.
  model.drop.rate = 0.0
  d = snnx.train_model(model, x, y, config, progress=False)
  assert d.history[0]["loss"] != a.history[0]["loss"]


def test_nnx_optimizer_with_the_training_chain_takes_the_same_step():
  x, y = fake_data.blobs(48, 2, 3)
  model = DropoutNet(nnx.Rngs(3))
  model.drop.rate = 0.0
  config = train.TrainConfig(epochs=1, batch_size=48, learning_rate=0.1, weight_decay=1e-3)
  want = snnx.train_model(model, x, y, config, progress=False).model

  mine = nnx.clone(model)
  opt = snnx.optimizer(mine, config, steps_per_epoch=1)
  mine.train()

  def loss(m):
    return optax.softmax_cross_entropy_with_integer_labels(m(jnp.asarray(x)), y).mean()

  opt.update(mine, nnx.grad(loss)(mine))
  _assert_trees_close(nnx.state(mine, nnx.Param), nnx.state(want, nnx.Param), rtol=1e-5, atol=1e-6)


def test_in_place_training_writes_the_trained_arrays_into_the_model():
  x, y = fake_data.blobs(48, 3, 3)
  model = DropoutNet(nnx.Rngs(5))
  config = train.TrainConfig(epochs=1, batch_size=16, learning_rate=0.1)
  want = snnx.train_model(model, x, y, config, progress=False)
  rngs = _rng_leaves(model)
  got = snnx.train_model_in_place(model, x, y, config, progress=False)
  assert got.model is model and got.history == want.history
  _assert_trees_close(nnx.state(model, nnx.Param), nnx.state(want.model, nnx.Param), rtol=0, atol=0)
  for a, b in zip(_rng_leaves(model), rngs, strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_linen_module_is_refused_with_the_linen_way():
  with pytest.raises(TypeError, match=r"sap_jax\.train\.train_model\(model, x, y, config\)"):
    snnx.train_model(models.get("mlp", 3), X, Y, train.TrainConfig(epochs=1))
