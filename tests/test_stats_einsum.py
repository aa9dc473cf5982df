"""sap_jax.stats.einsum: Einsum layers (Linen and NNX) as DenseGeneral over the
contracting axes, against rows and projected inputs built by hand."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import nnx

import sap_jax as sj
import sap_jax.nnx as snnx
from sap_jax.kernels import skipped_kernels
from sap_jax.stats.einsum import einsum_twin

# equation, input shape, kernel shape, and how the test builds the rows: the input's
# contracting axes moved last in the kernel's order.
CASES = {
  "tokens": ("btd,dnh->btnh", (3, 4, 5), (5, 2, 3), lambda x: x.reshape(-1, 5)),
  "two_axes_reordered": (
    "bij,jif->bf",
    (6, 2, 3),
    (3, 2, 4),
    lambda x: np.transpose(x, (0, 2, 1)).reshape(6, -1),
  ),
}


def _unrows(case, r, shape):
  """Inverse of the case's row builder: projected rows back to the input's shape."""
  if case == "tokens":
    return r.reshape(shape)
  return np.transpose(r.reshape(shape[0], shape[2], shape[1]), (0, 2, 1))


@pytest.mark.parametrize("case", list(CASES))
def test_linen_einsum_rows_alpha_one_and_projected_inputs(case):
  eq, x_shape, k_shape, rows_of = CASES[case]
  layer = nn.Einsum(k_shape, eq, use_bias=False)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), x_shape), np.float64)
  v = layer.init(jax.random.PRNGKey(1), x.astype(np.float32))
  stats = sj.activation_stats(layer.apply, v, [x.astype(np.float32)])
  rows = rows_of(x)
  gram = rows.T @ rows
  np.testing.assert_allclose(stats[()].gram, gram, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
    sj.projections(stats, 1.0)[()].matrix, gram / np.trace(gram), rtol=1e-3, atol=1e-6
  )
  p = sj.projections(stats, 20.0)[()]
  corrected = sj.project_params(v, {(): p})
  kernel = np.asarray(v["params"]["kernel"], np.float64)
  x_proj = _unrows(case, rows @ np.asarray(p.matrix, np.float64), x_shape)
  want = np.einsum(eq, x_proj, kernel)
  got = layer.apply(corrected, x.astype(np.float32))
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_nnx_einsum_equals_the_linen_layer(case):
  eq, x_shape, k_shape, _ = CASES[case]
  layer = nnx.Einsum(eq, k_shape, rngs=nnx.Rngs(0))
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), x_shape))
  got = snnx.activation_stats(layer, [x])[()]
  linen = nn.Einsum(k_shape, eq, use_bias=False)
  variables = {"params": {"kernel": layer.kernel[...]}}
  want = sj.activation_stats(linen.apply, variables, [x])[()]
  np.testing.assert_allclose(got.gram, want.gram, rtol=1e-6)
  corrected = snnx.project(layer, sj.projections({(): got}, 10.0))
  k = sj.project_params(variables, sj.projections({(): want}, 10.0))["params"]["kernel"]
  np.testing.assert_allclose(corrected.kernel[...], k, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "eq, why",
  [
    ("bnd,nde->bne", "batch axis"),
    ("btd,nd->btn", "do not come first"),
    ("...d,df->...f", "ellipsis"),
    ("bd,de->b", "summed over alone"),
  ],
)
def test_equations_that_are_not_dense_general_say_why(eq, why):
  assert why in einsum_twin(eq, (2, 3, 4))


def test_uncovered_einsum_is_skipped_not_projected():
  class Model(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(2, name="head")(nn.Einsum((2, 3, 4), "bnd,nde->bne", name="mix")(x).mean(1))

  model = Model()
  x = np.ones((5, 2, 3), np.float32)
  v = model.init(jax.random.PRNGKey(0), x)
  stats = sj.activation_stats(model.apply, v, [x])
  assert list(stats) == [("head",)]
  assert skipped_kernels(model.apply, v, x, stats)["mix"].startswith("layer type Einsum is not")
