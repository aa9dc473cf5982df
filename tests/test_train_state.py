"""sap_jax.train_state: fresh and continued train states and the training forward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sap_jax.hashable import ModuleApply
from sap_jax.optim import make_optimizer
from sap_jax.train_config import TrainConfig
from sap_jax.train_state import (
  create_train_state,
  state_from_variables,
  train_forward,
  variables_of,
)
from tests.train_cases import TinyMLP, blobs


def test_state_from_variables_continues_training_with_train_forward():
  x, y = blobs(32, seed=5)
  model = TinyMLP(bn=True)
  variables = model.init(jax.random.key(0), x[:1])
  state = state_from_variables(model, variables, learning_rate=0.1, momentum=0.0, weight_decay=0.0)
  logits, stats = train_forward(state, state.params, x, jax.random.key(1))
  want, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(logits, want, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(upd["batch_stats"])):
    np.testing.assert_array_equal(a, b)
  # Plain SGD, lr 0.1: θ ← θ − 0.1 g.
  grads = jax.tree.map(jnp.ones_like, state.params)
  new = state.apply_gradients(grads=grads)
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, b - 0.1, rtol=1e-6)
  assert variables_of(new).keys() == {"params", "batch_stats"}


class _WithCache(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    self.variable("cache", "last", lambda: jnp.zeros(x.shape[-1]))
    return nn.Dense(2)(x)


class _Sequence(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(2)(x)[:, None, :]  # (batch, 1, K): not logits


def test_create_train_state_reads_the_model_and_checks_it():
  x, _ = blobs(8, seed=6)
  config = TrainConfig(learning_rate=0.1)
  state = create_train_state(TinyMLP(num_classes=4), x[:1], config, jax.random.key(0))
  assert state.num_classes == 4
  assert state.step.dtype == jnp.int32 and int(state.step) == 0
  assert state.apply_fn == ModuleApply(TinyMLP(num_classes=4))
  assert state.batch_stats == {} and variables_of(state).keys() == {"params"}
  assert state.tx is make_optimizer(config, 1)
  bn = create_train_state(TinyMLP(bn=True), x[:1], config, jax.random.key(0))
  assert variables_of(bn).keys() == {"params", "batch_stats"}
  with pytest.raises(ValueError, match="schedule='cosine' depends on the run length"):
    create_train_state(TinyMLP(), x[:1], TrainConfig(schedule="cosine"), jax.random.key(0))
  cosine = create_train_state(
    TinyMLP(), x[:1], TrainConfig(schedule="cosine"), jax.random.key(0), steps_per_epoch=5
  )
  assert cosine.tx is make_optimizer(TrainConfig(schedule="cosine"), 5)
  with pytest.raises(ValueError, match=r"variable collections \['cache'\]"):
    create_train_state(_WithCache(), x[:1], config, jax.random.key(0))
  with pytest.raises(ValueError, match=r"shape \(1, 1, 2\); expected logits"):
    create_train_state(_Sequence(), x[:1], config, jax.random.key(0))
