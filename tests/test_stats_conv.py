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


TRANSPOSE_CASES = {
  "stride2_same": dict(kernel_size=(3, 3), strides=2, padding="SAME"),
  "stride2_valid": dict(kernel_size=(2, 3), strides=(2, 1), padding="VALID"),
  "explicit_dilated": dict(
    kernel_size=(3, 2), strides=2, padding=((1, 2), (0, 1)), kernel_dilation=2
  ),
  "conv1d": dict(kernel_size=(4,), strides=3, padding="SAME"),
}


def _transpose_rows(x, kw):
  """Loop im2col of the strides-dilated input with JAX's own transposed padding: the
  rows a transposed conv's kernel meets."""
  from jax._src.lax.convolution import _conv_transpose_padding

  ks = kw["kernel_size"]
  n = len(ks)
  s = kw.get("strides", 1)
  s = (s,) * n if isinstance(s, int) else s
  d = kw.get("kernel_dilation", 1)
  d = (d,) * n if isinstance(d, int) else d
  pad = kw["padding"]
  if isinstance(pad, str):
    pad = [_conv_transpose_padding((k - 1) * dd + 1, ss, pad) for k, ss, dd in zip(ks, s, d)]
  return im2col(x, ks, 1, [tuple(p) for p in pad], d, s)


@pytest.mark.parametrize("case", list(TRANSPOSE_CASES))
def test_conv_transpose_rows_stats_and_projected_inputs_identity(case):
  kw = TRANSPOSE_CASES[case]
  layer = nn.ConvTranspose(features=5, **kw)
  x = np.asarray(
    jax.random.normal(jax.random.PRNGKey(0), (2, 5, 3) if case == "conv1d" else (2, 4, 5, 3))
  )
  v = layer.init(jax.random.PRNGKey(1), x)
  kernel = np.asarray(v["params"]["kernel"], np.float64)  # (*k, C_in, C_out)
  n_in = kernel.ndim - 1
  flat = kernel.transpose((n_in - 1, *range(n_in - 1), n_in)).reshape(-1, 5)  # (C·Πk, O)
  rows, out_shape = _transpose_rows(x, kw)
  bias = np.asarray(v["params"]["bias"], np.float64)
  # The rows are what the layer multiplies: rows · K is the layer's own output.
  y = np.asarray(layer.apply(v, x), np.float64)
  np.testing.assert_allclose((rows @ flat + bias).reshape(y.shape), y, rtol=1e-4, atol=1e-4)
  stats = sj.activation_stats(layer.apply, v, [x])
  gram = rows.T @ rows
  np.testing.assert_allclose(stats[()].gram, gram, rtol=1e-4, atol=1e-4)
  assert float(stats[()].count) == rows.shape[0]
  # α = 1: P = C / tr C.
  np.testing.assert_allclose(
    sj.projections(stats, 1.0)[()].matrix, gram / np.trace(gram), rtol=1e-3, atol=1e-6
  )
  # Corrected layer == original layer on projected rows.
  p = sj.projections(stats, 50.0)[()]
  corrected = sj.project_params(v, {(): p})
  want = (rows @ np.asarray(p.matrix, np.float64) @ flat + bias).reshape(y.shape)
  np.testing.assert_allclose(layer.apply(corrected, x), want, rtol=1e-3, atol=1e-4)


def test_conv_transpose_with_transpose_kernel_or_circular_is_not_covered():
  from sap_jax.stats.observe import covered_layer

  assert covered_layer(nn.ConvTranspose(4, (3,), transpose_kernel=True)) is None
  assert covered_layer(nn.ConvTranspose(4, (3,), padding="CIRCULAR")) is None
  assert isinstance(covered_layer(nn.ConvTranspose(4, (3,), strides=2))[0], nn.Conv)
