"""A smooth (tanh) float64 model with a conv and two dense layers, its statistics and
decomposition: the shared case of the gradient tests (tuning, sensitivity, influence).

Call `smooth_case` inside ``with jax.enable_x64(True):``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import sap_jax as sj


class SmoothNet(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = jnp.tanh(nn.Conv(3, (3,), padding="SAME", name="conv")(x))
    x = x.reshape(x.shape[0], -1)
    x = jnp.tanh(nn.Dense(8, name="hidden")(x))
    return nn.Dense(3, name="head")(x)


class Case(NamedTuple):
  apply_fn: object
  variables: dict
  x_trusted: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  decomposition: sj.Decomposition


def smooth_case(n_trusted: int = 12, n_val: int = 30, seed: int = 0) -> Case:
  """Random float64 weights (scaled up, so the model is not near-linear), random
  labels; statistics in float64 on ``n_trusted`` inputs."""
  model = SmoothNet()
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  x_trusted = np.asarray(jax.random.normal(keys[0], (n_trusted, 6, 2), jnp.float64))
  x_val = np.asarray(jax.random.normal(keys[1], (n_val, 6, 2), jnp.float64))
  y_val = np.asarray(jax.random.randint(keys[2], (n_val,), 0, 3), np.int32)
  variables = model.init(keys[3], x_val[:2])
  variables = jax.tree_util.tree_map(lambda a: 2.0 * jnp.asarray(a, jnp.float64), variables)
  apply_fn = functools.partial(model.apply, train=False)
  stats = sj.activation_stats(apply_fn, variables, [x_trusted], dtype=jnp.float64)
  return Case(apply_fn, variables, x_trusted, x_val, y_val, sj.decompose(variables, stats))


def mean_loss(apply_fn, variables, x, y) -> float:
  """Mean cross-entropy in float64, written out."""
  logits = np.asarray(apply_fn(variables, x), np.float64)
  logits = logits - logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return float(-np.mean(logp[np.arange(len(y)), y]))
