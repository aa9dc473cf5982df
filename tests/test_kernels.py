"""sap_jax.kernels: reading, replacing and flattening layer kernels; the layers left alone."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sap_jax.kernels import (
  check_kernel,
  flat_kernel,
  kernel_at,
  kernel_paths,
  kernels_of,
  skipped_kernels,
  unflat_kernel,
  with_kernels,
)
from sap_jax.stats import CONV, DENSE, Layout

_LAYOUTS = {
  "dense": Layout(DENSE, (5, 3), 1),
  "conv2d": Layout(CONV, (3, 2, 4, 6), 3),
  "grouped_conv": Layout(CONV, (3, 2, 2, 6), 3, groups=2),
}


def _kernel(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("name", list(_LAYOUTS))
def test_flat_kernel_shape_and_round_trip(name):
  layout = _LAYOUTS[name]
  k = _kernel(layout.kernel_shape)
  flat = flat_kernel(k, layout)
  o = layout.kernel_shape[-1]
  assert flat.shape == (layout.groups, layout.dim, o // layout.groups)
  back = unflat_kernel(flat, layout)
  assert back.shape == layout.kernel_shape
  np.testing.assert_array_equal(np.asarray(back), np.asarray(k))


def test_dense_flat_kernel_is_the_kernel():
  layout = _LAYOUTS["dense"]
  k = _kernel(layout.kernel_shape)
  np.testing.assert_array_equal(np.asarray(flat_kernel(k, layout)), np.asarray(k)[None])


def test_conv_flat_kernel_rows_are_in_patch_feature_order():
  layout = _LAYOUTS["conv2d"]
  k = _kernel(layout.kernel_shape)  # (kh, kw, C_in, O)
  # Rows ordered (C_in, kh, kw): the channel-major patch order.
  manual = np.asarray(k).transpose(2, 0, 1, 3).reshape(24, 6)
  assert layout.dim == 24
  np.testing.assert_array_equal(np.asarray(flat_kernel(k, layout))[0], manual)
  # So patches (features in (C_in, kh, kw) order) times the flat kernel is the conv.
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 6, 4)), jnp.float32)
  dn = ("NHWC", "HWIO", "NHWC")
  out = jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=dn)
  patches = jax.lax.conv_general_dilated_patches(x, (3, 2), (1, 1), "VALID", dimension_numbers=dn)
  np.testing.assert_allclose(patches @ flat_kernel(k, layout)[0], out, rtol=1e-5, atol=1e-5)


def test_grouped_conv_flat_kernel_splits_the_outputs_by_group():
  layout = _LAYOUTS["grouped_conv"]
  k = _kernel(layout.kernel_shape)  # (kh, kw, C_in / G, O), O = G · O_g
  manual = np.asarray(k).transpose(2, 0, 1, 3).reshape(12, 6)
  flat = np.asarray(flat_kernel(k, layout))
  assert flat.shape == (2, 12, 3)
  for g in range(2):  # group g owns the output channels g·O_g … (g + 1)·O_g − 1
    np.testing.assert_array_equal(flat[g], manual[:, 3 * g : 3 * (g + 1)])


def _variables():
  return {
    "params": {
      "a": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)},
      "b": {
        "inner": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
        "other": {"scale": jnp.ones(4)},
      },
    },
    "batch_stats": {"bn": {"mean": jnp.zeros(4)}},
  }


def test_with_kernels_copies_the_path_and_shares_every_other_leaf():
  v = _variables()
  new_k = jnp.full((3, 4), 2.0)
  out = with_kernels(v, {("b", "inner"): new_k})
  assert out["params"]["b"]["inner"]["kernel"] is new_k
  # Everything off the path is the very same object …
  assert out["batch_stats"] is v["batch_stats"]
  assert out["params"]["a"] is v["params"]["a"]
  assert out["params"]["b"]["other"] is v["params"]["b"]["other"]
  assert out["params"]["b"]["inner"]["bias"] is v["params"]["b"]["inner"]["bias"]
  # … and the input is untouched: the dicts on the path are copies.
  assert out is not v and out["params"] is not v["params"]
  assert out["params"]["b"] is not v["params"]["b"]
  np.testing.assert_array_equal(v["params"]["b"]["inner"]["kernel"], 1.0)
  got = kernels_of(out, [("a",), ("b", "inner")])
  assert list(got) == [("a",), ("b", "inner")]
  assert got[("a",)] is v["params"]["a"]["kernel"] and got[("b", "inner")] is new_k


def test_kernel_errors_name_the_layer():
  v = _variables()
  assert kernel_at(v, ("b", "inner")) is v["params"]["b"]["inner"]["kernel"]
  with pytest.raises(ValueError, match="^Layer 'b/missing' of the projections has no kernel"):
    kernel_at(v, ("b", "missing"))
  with pytest.raises(ValueError, match="^Layer 'b/other' of the projections has no kernel"):
    kernel_at(v, ("b", "other"))  # a layer without a kernel
  with pytest.raises(ValueError, match="^Layer 'a/kernel' of the projections has no kernel"):
    kernel_at(v, ("a", "kernel"))  # a path to an array, not to a layer
  with pytest.raises(ValueError, match="no 'params' collection"):
    kernels_of({"batch_stats": {}}, [("a",)])
  with pytest.raises(ValueError, match="no 'params' collection"):
    with_kernels({"batch_stats": {}}, {})
  check_kernel(jnp.zeros((5, 3)), _LAYOUTS["dense"])
  with pytest.raises(ValueError, match=r"Kernel shape \(3, 5\) does not match .* shape \(5, 3\)"):
    check_kernel(jnp.zeros((3, 5)), _LAYOUTS["dense"])


class _EveryKernel(nn.Module):
  """A layer of every kernel-bearing kind: covered, unsupported, excluded, unused."""

  @nn.compact
  def __call__(self, tokens, train=False):
    h = nn.Embed(10, 4, name="embed")(tokens)  # (B, L, 4)
    h = nn.ConvLocal(4, (1,), name="local")(h)
    h = nn.ConvTranspose(4, (2,), name="up")(h)
    h = nn.Dense(4, name="body")(h)
    if train:  # only the training forward uses it
      h = nn.Dense(4, name="unused")(h)
    return nn.Dense(3, name="head")(h.mean(1))


def test_skipped_kernels_name_every_unprojected_layer_and_why():
  model = _EveryKernel()
  tokens = np.arange(12).reshape(2, 6) % 10
  v = model.init(jax.random.PRNGKey(0), tokens, train=True)
  apply_fn = functools.partial(model.apply, train=False)
  assert set(kernel_paths(v)) == {
    ("embed",),
    ("local",),
    ("up",),
    ("body",),
    ("unused",),
    ("head",),
  }
  got = skipped_kernels(apply_fn, v, tokens, [("up",), ("body",)], exclude=("head",))
  assert got == {
    "embed": "layer type Embed is not supported (an index lookup: its input is a token id, "
    "not an activation to project)",
    "local": "layer type ConvLocal is not supported (one kernel per output position (a d×d "
    "projection per position))",
    "unused": "never called in the forward",
    "head": "excluded by pattern 'head'",
  }
  ranged = skipped_kernels(apply_fn, v, tokens, [("up",)], layer_range=(0, 1))
  assert ranged["head"] == "outside layer_range (0, 1)"
