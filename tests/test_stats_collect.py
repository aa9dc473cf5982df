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
from sap_jax.stats.observe import LiftedTransformError, module_calls
from sap_jax.stats.rows import budget_rows, layer_rows
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
  # Each of the 2 · 112 rows is kept with probability 20 / 112 (per-row keys, `budget_rows`).
  layer_key = jax.random.fold_in(jax.random.PRNGKey(0), 0)
  kept = sum(float(budget_rows(layer_key, 112, 2, 20, off, None)[1].sum()) for off in (0, 2))
  assert float(s[("layer",)].count) == kept and 20 <= kept <= 60
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
  # With a budget: every row is kept with probability 100 / 168 (a full batch's rows), the
  # padded tail's 56 real rows too and never its padding: budgeted(3 + 1 samples) −
  # budgeted(3 samples) = the Gram of the tail's kept rows (global sample 3).
  two = sj.activation_stats(model.apply, v, [x[:3], x[6:]], rows_per_batch=100)
  one = sj.activation_stats(model.apply, v, [x[:3]], rows_per_batch=100)
  layer_key = jax.random.fold_in(jax.random.PRNGKey(0), 0)
  index, weight = budget_rows(layer_key, 168, 3, 100, 3, jnp.int32(56))
  rows = np.asarray(layer_rows(nn.Conv(3, (3, 3)), jnp.asarray(x[6:]))[0], np.float64)
  chosen = rows[np.asarray(index)[np.asarray(weight) == 1]]
  assert float(two[("layer",)].count) - float(one[("layer",)].count) == len(chosen) < 56
  np.testing.assert_allclose(
    two[("layer",)].gram - one[("layer",)].gram, chosen.T @ chosen, rtol=1e-4, atol=1e-3
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
  with pytest.raises(ValueError, match="batch at sample 0: contains NaN or Inf"):
    sj.activation_stats(model.apply, v, [np.full_like(x, np.inf)])
  with pytest.raises(ValueError, match="x64"):
    sj.activation_stats(model.apply, v, [x], dtype=jnp.float64)


def test_nonfinite_variables_refused_after_one_batch_and_statistics_at_the_end():
  """The step checks the variables (refused after the first batch: the rest of the
  batches are never read) and each new Gram matrix (refused at the end, naming the
  layer: an overflow to Inf in a later batch is caught)."""
  model = _Mixed()
  x = np.ones((2, 5, 6), np.float32)
  v = model.init(jax.random.PRNGKey(1), x)
  bad = jax.tree_util.tree_map(lambda a: a.at[0].set(jnp.nan) if a.ndim else a, v)
  read = []

  def batches():
    for i in range(3):
      read.append(i)
      yield x

  with pytest.raises(ValueError, match=r"Variables contain NaN or Inf at .*'head'.*'kernel'"):
    sj.activation_stats(model.apply, bad, batches())
  assert read == [0]
  huge = np.full_like(x, 1e30)  # finite inputs whose squares overflow float32
  with pytest.raises(
    ValueError, match=r"Non-finite activations \(NaN/Inf\) reached layers \['shared'"
  ):
    sj.activation_stats(model.apply, v, [x, huge])


class _Body(nn.Module):
  @nn.compact
  def __call__(self, c, _):
    return nn.Dense(4)(c), None


class _Lifted(nn.Module):
  transform: str

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(4)(x)
    if self.transform == "scan":
      scan = nn.scan(_Body, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
      return scan()(x, None)[0]
    if self.transform == "remat":
      return nn.remat(nn.Dense)(4)(x)
    vmap = nn.vmap(
      nn.Dense,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=None,
      out_axes=0,
      axis_size=2,
    )
    return vmap(4)(x).mean(0)


@pytest.mark.parametrize(
  "transform, layer",
  [("scan", "Scan_Body_0/Dense_0"), ("remat", "CheckpointDense_0"), ("vmap", "VmapDense_0")],
)
def test_lifted_transforms_are_refused_naming_layer_and_transform(transform, layer):
  model = _Lifted(transform)
  x = np.ones((3, 4), np.float32)
  v = model.init(jax.random.PRNGKey(0), x)
  with pytest.raises(LiftedTransformError, match=f"{layer!r} runs inside nn.{transform}"):
    sj.activation_stats(model.apply, v, [x])


def test_train_mode_forward_is_refused():
  class WithBN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.BatchNorm(use_running_average=not train)(nn.Dense(3)(x))

  model = WithBN()
  x = np.ones((4, 5), np.float32)
  v = model.init(jax.random.PRNGKey(0), x)

  def train_apply(variables, xx):
    return model.apply(variables, xx, train=True, mutable=["batch_stats"])

  with pytest.raises(ValueError, match="train-mode forward.*train=False"):
    sj.activation_stats(train_apply, v, [x])


def test_module_calls_lists_every_module_and_whether_covered():
  model = _Mixed()
  x = np.ones((2, 5, 6), np.float32)
  v = model.init(jax.random.PRNGKey(1), x)
  calls = module_calls(model.apply, v, x)
  assert calls[()] == ("_Mixed", False)
  assert all(covered for path, (_, covered) in calls.items() if path)
