"""sap_jax.stats.rows: gathering chosen rows, row sampling under a budget."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sap_jax.stats.rows import layer_rows, rows_at, sample_rows
from tests.stats_cases import CONV_CASES, conv_input


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_budget_rows_are_the_layers_rows(case):
  # The budget path gathers chosen patches without unfolding the others: they must
  # be exactly those rows of the full unfolding (groups included).
  conv = nn.Conv(features=6, **CONV_CASES[case])
  x = jnp.asarray(conv_input(case))
  rows, layout = layer_rows(conv, x)
  n = rows.shape[-2]
  index = jnp.asarray(np.random.default_rng(0).permutation(n)[: n // 2])
  got = rows_at(conv, x, index, layout)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.take(rows, index, axis=-2)))


def test_row_sampling_is_distinct_and_prefers_real_rows():
  idx = np.asarray(sample_rows(jax.random.PRNGKey(3), 50, 20, jnp.int32(30)))
  assert len(set(idx.tolist())) == 20 and idx.max() < 30  # 30 real rows ≥ budget
  idx = np.asarray(sample_rows(jax.random.PRNGKey(3), 50, 20, jnp.int32(12)))
  assert len(set(idx.tolist())) == 20 and set(range(12)) <= set(idx.tolist())


class _ConvNet(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    h = nn.relu(nn.Conv(4, (3, 3), padding="VALID", name="conv")(x))
    return nn.Dense(3, name="head")(h.reshape(len(x), -1))


def test_row_budget_keeps_the_same_rows_whatever_the_batching():
  import sap_jax as sj

  model = _ConvNet()
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (300, 6, 6, 2)))  # ragged tails
  v = model.init(jax.random.PRNGKey(1), x)
  # 16 patches per sample: budget = a quarter of a full batch's rows at either size.
  small = sj.activation_stats(model.apply, v, sj.batched(x, 64), rows_per_batch=64 * 4, seed=5)
  large = sj.activation_stats(model.apply, v, sj.batched(x, 256), rows_per_batch=256 * 4, seed=5)
  conv = ("conv",)
  assert float(small[conv].count) == float(large[conv].count)
  assert 0.2 * 300 * 16 < float(small[conv].count) < 0.3 * 300 * 16
  np.testing.assert_allclose(small[conv].gram, large[conv].gram, rtol=1e-5, atol=1e-4)
  # Another seed keeps other rows.
  other = sj.activation_stats(model.apply, v, sj.batched(x, 64), rows_per_batch=256, seed=6)
  assert not np.allclose(small[conv].gram, other[conv].gram, rtol=1e-2)


class _Probe(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(2, name="layer")(x)


def test_row_budget_includes_every_row_with_the_same_probability():
  # One-hot inputs e_i through a Dense layer (one row per sample): the Gram matrix is
  # diag(1[row i kept]). Batches 64, 64, 64, 8 with a budget of 16 rows: p = 1/4 for
  # every row, the short last batch's included (a per-batch cap of 16 would keep all 8 of
  # its rows: frequency 1).
  import sap_jax as sj

  n = 200
  x = np.eye(n, dtype=np.float32)
  model = _Probe()
  v = model.init(jax.random.PRNGKey(0), x[:1])
  kept = np.stack(
    [
      np.diag(
        np.asarray(
          sj.activation_stats(model.apply, v, sj.batched(x, 64), rows_per_batch=16, seed=s)[
            ("layer",)
          ].gram
        )
      )
      for s in range(100)
    ]
  )
  assert set(np.unique(kept)) <= {0.0, 1.0}
  freq = kept.mean(0)
  assert abs(freq.mean() - 0.25) < 0.01  # 20,000 draws: sd 0.003
  assert abs(freq[192:].mean() - 0.25) < 0.07  # the last batch's 8 rows, 800 draws: sd 0.015
  assert abs(freq[:64].mean() - freq[128:192].mean()) < 0.04


def test_budget_rows_weights_and_padding():
  from sap_jax.stats.rows import budget_margin, budget_rows

  key = jax.random.PRNGKey(0)
  index, weight = budget_rows(key, 400, 100, 40, 0, jnp.int32(200))
  index, weight = np.asarray(index), np.asarray(weight)
  assert len(index) == budget_margin(40) == 40 + 38 + 8
  assert len(set(index.tolist())) == len(index)
  assert np.all(index[weight == 1] < 200)  # padding rows are never kept
  # The kept rows depend on the global sample, not the batch: samples 50…99 of a batch at
  # offset 0 are samples 0…49 of a batch at offset 50.
  a_idx, a_w = budget_rows(key, 400, 100, 40, 0, None)
  b_idx, b_w = budget_rows(key, 200, 50, 20, 50, None)
  a = {int(i) - 200 for i, w in zip(np.asarray(a_idx), np.asarray(a_w)) if w and i >= 200}
  b = {int(i) for i, w in zip(np.asarray(b_idx), np.asarray(b_w)) if w}
  assert a == b and len(a) > 0
