"""sap_jax.stats.collect: interception, dense rows, streaming, shared layers, row budgets,
padded batches, errors."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sap_jax as sj
from sap_jax.stats import JITTED
from tests.stats_cases import conv_input, single_layer


class _Mixed(nn.Module):
  """Dense on tokens, DenseGeneral over two axes, a shared layer called twice."""

  @nn.compact
  def __call__(self, x, train=False):  # x: (B, L, 6)
    shared = nn.Dense(6, name="shared")
    h = shared(x)
    h = shared(nn.tanh(h))
    q = nn.DenseGeneral((2, 3), axis=-1, name="qkv")(h)  # (B, L, 2, 3)
    o = nn.DenseGeneral(5, axis=(-2, -1), name="out")(q)  # (B, L, 5)
    return nn.Dense(3, name="head")(o.mean(axis=1))


def test_dense_rows_fold_tokens_and_shared_layer_accumulates():
  model = _Mixed()
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 5, 6)))
  v = model.init(jax.random.PRNGKey(1), x)
  stats = sj.activation_stats(model.apply, v, [x])
  assert list(stats) == [("shared",), ("qkv",), ("out",), ("head",)]
  # The shared layer sees x and tanh(shared(x)): both calls' 4·5 token rows count.
  h1 = np.asarray(nn.Dense(6).apply({"params": v["params"]["shared"]}, x))
  rows = np.concatenate([x.reshape(-1, 6), np.tanh(h1).reshape(-1, 6)])
  np.testing.assert_allclose(stats[("shared",)].gram, rows.T @ rows, rtol=1e-5, atol=1e-5)
  assert float(stats[("shared",)].count) == 40
  assert stats[("out",)].layout.kernel_shape == (2, 3, 5)
  assert stats[("out",)].layout.dim == 6
  assert stats[("head",)].gram.shape == (5, 5)


def test_streaming_equals_whole_set():
  model = _Mixed()
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (10, 5, 6)))
  v = model.init(jax.random.PRNGKey(1), x)
  whole = sj.activation_stats(model.apply, v, [x])
  streamed = sj.activation_stats(model.apply, v, (x[i : i + 3] for i in range(0, 10, 3)))
  for path in whole:
    np.testing.assert_allclose(streamed[path].gram, whole[path].gram, rtol=1e-5, atol=1e-5)
    assert float(streamed[path].count) == float(whole[path].count)


def test_row_budget_keeps_that_many_rows():
  model = single_layer(functools.partial(nn.Conv, features=3, kernel_size=(3, 3)))
  x = conv_input("plain", n=4)
  v = model.init(jax.random.PRNGKey(0), x)
  s = sj.activation_stats(model.apply, v, [x[:2], x[2:]], rows_per_batch=20)
  assert float(s[("layer",)].count) == 40
  # The Gram of 40 rows of the full row set: trace equals the sum of the chosen
  # rows' squared norms, which is at most the full trace.
  full = sj.activation_stats(model.apply, v, [x])
  assert float(jnp.trace(s[("layer",)].gram)) < float(jnp.trace(full[("layer",)].gram))


def test_padded_last_batch_shares_one_compilation_and_counts_nothing():
  model = single_layer(functools.partial(nn.Conv, features=3, kernel_size=(3, 3)))
  x = conv_input("plain", n=7)
  v = model.init(jax.random.PRNGKey(0), x)
  accumulate = JITTED["stats.accumulate"]
  before = accumulate._cache_size()
  ragged = sj.activation_stats(model.apply, v, [x[:3], x[3:6], x[6:]])
  assert accumulate._cache_size() == before + 1  # the tail (1 sample) is padded to 3
  whole = sj.activation_stats(model.apply, v, [x])
  np.testing.assert_allclose(ragged[("layer",)].gram, whole[("layer",)].gram, rtol=1e-5, atol=1e-4)
  assert float(ragged[("layer",)].count) == float(whole[("layer",)].count) == 7 * 56
  # With a budget: the padded tail has 56 real rows < 100, so all of them count
  # (and only them): budgeted(3 + 1 samples) − budgeted(3 samples) = the tail's Gram.
  two = sj.activation_stats(model.apply, v, [x[:3], x[6:]], rows_per_batch=100)
  one = sj.activation_stats(model.apply, v, [x[:3]], rows_per_batch=100)
  tail = sj.activation_stats(model.apply, v, [x[6:]])
  assert float(two[("layer",)].count) == 100 + 56
  np.testing.assert_allclose(
    two[("layer",)].gram - one[("layer",)].gram, tail[("layer",)].gram, rtol=1e-4, atol=1e-3
  )


class _FlattensBatch(nn.Module):
  """Folds the batch into the token axis before a Dense: inputs are not batch-major."""

  @nn.compact
  def __call__(self, x, train=False):  # x: (B, L, 6)
    h = nn.Dense(4, name="tokens")(x.reshape(-1, x.shape[-1]))
    return nn.Dense(3, name="head")(h.reshape(x.shape[0], -1))


def test_not_batch_major_model_is_not_padded():
  model = _FlattensBatch()
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (5, 4, 6)))
  v = model.init(jax.random.PRNGKey(1), x)
  whole = sj.activation_stats(model.apply, v, [x])
  streamed = sj.activation_stats(model.apply, v, [x[:2], x[2:4], x[4:]])
  for path in whole:
    np.testing.assert_allclose(streamed[path].gram, whole[path].gram, rtol=1e-5, atol=1e-5)
    assert float(streamed[path].count) == float(whole[path].count)


def test_activation_rows_gram_matches_stats():
  model = _Mixed()
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 5, 6)))
  v = model.init(jax.random.PRNGKey(1), x)
  rows = sj.activation_rows(model.apply, v, [x[:2], x[2:]], max_rows=10_000)
  stats = sj.activation_stats(model.apply, v, [x])
  for path, (r, layout) in rows.items():
    assert layout == stats[path].layout
    np.testing.assert_allclose(r.T @ r, stats[path].gram, rtol=1e-5, atol=1e-5)


def test_errors_before_work():
  model = _Mixed()
  x = np.ones((2, 5, 6), np.float32)
  v = model.init(jax.random.PRNGKey(1), x)
  with pytest.raises(ValueError, match="empty"):
    sj.activation_stats(model.apply, v, [])

  class NoLayers(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return x * self.param("w", nn.initializers.ones, (6,))

  nl = NoLayers()
  with pytest.raises(ValueError, match="No nn.Dense"):
    sj.activation_stats(nl.apply, nl.init(jax.random.PRNGKey(0), x), [x])
  bad = jax.tree_util.tree_map(lambda a: a.at[0].set(jnp.nan) if a.ndim else a, v)
  with pytest.raises(ValueError, match="NaN or Inf"):
    sj.activation_stats(model.apply, bad, [x])
  with pytest.raises(ValueError, match="Non-finite activations"):
    sj.activation_stats(model.apply, v, [np.full_like(x, np.inf)])
  with pytest.raises(ValueError, match="x64"):
    sj.activation_stats(model.apply, v, [x], dtype=jnp.float64)
