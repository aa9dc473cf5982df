"""sap_jax.stats.conv: im2col against a loop reference, flax's padding modes."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sap_jax as sj
from tests.sap_reference import im2col
from tests.stats_cases import CONV_CASES, conv_input


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_patches_match_loop_im2col(case):
  kw = CONV_CASES[case]
  conv = nn.Conv(features=6, **kw)
  x = conv_input(case)
  got = np.asarray(sj.conv_patches(conv, jnp.asarray(x)))
  padding = kw.get("padding", "SAME")
  ks = kw["kernel_size"]
  if isinstance(padding, int):
    padding = [(padding, padding)] * len(ks)
  want, _ = im2col(
    x, ks, kw.get("strides", 1), padding, kw.get("kernel_dilation", 1), kw.get("input_dilation", 1)
  )
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_circular_and_causal_padding_match_flax_conv():
  # The patches of a padded conv, multiplied by the flattened kernel, must give
  # the layer's own output: this checks the flax-specific padding modes.
  for padding, shape in [
    ("CIRCULAR", (2, 6, 5, 3)),
    ("CAUSAL", (2, 9, 3)),
    ("REFLECT", (2, 6, 5, 3)),
  ]:
    ks = (3,) if len(shape) == 3 else (3, 2)
    conv = nn.Conv(4, ks, padding=padding, use_bias=False)
    x = jax.random.normal(jax.random.PRNGKey(2), shape)
    v = conv.init(jax.random.PRNGKey(3), x)
    k = np.asarray(v["params"]["kernel"])
    n_in = len(ks) + 1
    perm = (n_in - 1,) + tuple(range(n_in - 1)) + (n_in,)
    flat = k.transpose(perm).reshape(-1, 4)
    rows = np.asarray(sj.conv_patches(conv, x))
    want = np.asarray(conv.apply(v, x)).reshape(-1, 4)
    np.testing.assert_allclose(rows @ flat, want, rtol=1e-4, atol=1e-4)
