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
