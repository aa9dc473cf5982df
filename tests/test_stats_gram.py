"""sap_jax.stats.gram: the Gram kernels (patch GEMM, shifted products) equal explicit
patch Grams of the loop im2col of tests/sap_reference.py, and the cost model picks the
kernel it should."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

import sap_jax as sj
from sap_jax.stats import gram_costs
from tests.sap_reference import im2col
from tests.stats_cases import CONV_CASES, conv_input, single_layer


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_gram_is_patch_gram(case):
  kw = CONV_CASES[case]
  model = single_layer(functools.partial(nn.Conv, features=6, **kw))
  x = conv_input(case)
  variables = model.init(jax.random.PRNGKey(1), x)
  stats = sj.activation_stats(model.apply, variables, [x])
  s = stats[("layer",)]
  padding = kw.get("padding", "SAME")
  if isinstance(padding, int):
    padding = [(padding, padding)] * len(kw["kernel_size"])
  rows, _ = im2col(
    x,
    kw["kernel_size"],
    kw.get("strides", 1),
    padding,
    kw.get("kernel_dilation", 1),
    kw.get("input_dilation", 1),
  )
  groups = kw.get("feature_group_count", 1)
  d = rows.shape[1] // groups
  want = np.stack(
    [rows[:, g * d : (g + 1) * d].T @ rows[:, g * d : (g + 1) * d] for g in range(groups)]
  )
  got = np.asarray(s.gram).reshape(want.shape)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  assert float(s.count) == rows.shape[0]
  assert s.layout.groups == groups and s.layout.dim == d


SHIFT_CASES = {
  "same_3x3": dict(kernel_size=(3, 3), padding="SAME"),
  "valid_2x3": dict(kernel_size=(2, 3), padding="VALID"),
  "explicit_dilated": dict(kernel_size=(3, 3), kernel_dilation=2, padding=((2, 1), (0, 3))),
  "cropping": dict(kernel_size=(3, 3), padding=((-1, 2), (1, 0))),
  "conv1d": dict(kernel_size=(5,), padding="SAME"),
}


# Geometries where `gram_costs` picks the shifted-product path today; the others
# go through the plain patch GEMM. Either way the Gram must equal im2col's.
FAST_PATH = {"same_3x3", "cropping", "conv1d"}


@pytest.mark.parametrize("case", list(SHIFT_CASES))
def test_shifted_product_gram_equals_im2col_gram(case):
  kw = SHIFT_CASES[case]
  conv = functools.partial(nn.Conv, features=5, **kw)

  class One(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return conv(name="layer")(x)

  model = One()
  shape = (3, 12, 5) if case == "conv1d" else (3, 11, 12, 6)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), shape))
  v = model.init(jax.random.PRNGKey(1), x)
  # The path the cost model picks for this geometry (see FAST_PATH).
  want_method = "shifts" if case in FAST_PATH else "gemm"
  assert [c["method"] for c in gram_costs(model.apply, v, x)] == [want_method]
  got = np.asarray(sj.activation_stats(model.apply, v, [x])[("layer",)].gram, np.float64)
  padding = kw["padding"]
  if not isinstance(padding, str):
    padding = [tuple(p) for p in padding]
  if isinstance(padding, list) and any(lo < 0 or hi < 0 for lo, hi in padding):
    # im2col pads only; crop explicitly for negative padding.
    crop = tuple(
      slice(max(0, -lo), x.shape[1 + i] - max(0, -hi)) for i, (lo, hi) in enumerate(padding)
    )
    x = x[(slice(None),) + crop]
    padding = [(max(0, lo), max(0, hi)) for lo, hi in padding]
  rows, _ = im2col(x, kw["kernel_size"], 1, padding, kw.get("kernel_dilation", 1), 1)
  want = rows.T @ rows
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.abs(want).max())
