"""sap_jax.losses: the one per-example cross-entropy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sap_jax.losses import cross_entropy, model_cross_entropy


def _np_cross_entropy(z, y):
  """−log softmax(z)[y] per row, in float64, via a shifted log-sum-exp."""
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  logp = z - (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))
  return -logp[np.arange(len(y)), y]


def test_cross_entropy_equals_numpy_log_softmax():
  rng = np.random.default_rng(0)
  z = rng.normal(scale=3.0, size=(6, 5)).astype(np.float32)
  y = np.array([0, 4, 2, 2, 1, 3], np.int32)
  got = cross_entropy(jnp.asarray(z), jnp.asarray(y))
  assert got.shape == (6,) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), _np_cross_entropy(z, y), rtol=1e-6, atol=1e-6)
  # Closed forms: uniform logits give log K; a margin of 1000 against the label
  # gives 1000 (no overflow).
  np.testing.assert_allclose(
    cross_entropy(jnp.zeros((2, 5)), jnp.array([0, 3])), np.log(5.0), rtol=1e-6
  )
  np.testing.assert_allclose(cross_entropy(jnp.array([[1000.0, 0.0]]), jnp.array([1])), [1000.0])
  np.testing.assert_allclose(cross_entropy(jnp.array([[1000.0, 0.0]]), jnp.array([0])), [0.0])


def test_cross_entropy_is_float32_for_low_precision_logits():
  rng = np.random.default_rng(1)
  z = jnp.asarray(rng.normal(size=(4, 3)), jnp.bfloat16)
  y = jnp.array([2, 0, 1, 1])
  for dtype in (jnp.bfloat16, jnp.float16):
    got = cross_entropy(z.astype(dtype), y)
    assert got.dtype == jnp.float32
    # The logits are cast to float32 before the softmax: the same numbers as the
    # float32 computation on the upcast logits.
    want = cross_entropy(z.astype(dtype).astype(jnp.float32), y)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_allclose(
    np.asarray(cross_entropy(z, y)), _np_cross_entropy(np.asarray(z, np.float32), y), rtol=1e-6
  )


def test_model_cross_entropy_is_cross_entropy_of_the_forward():
  rng = np.random.default_rng(2)
  variables = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  y = jnp.array([0, 1, 2, 3, 0])

  def apply_fn(v, xs):
    return xs @ v["w"]

  want = cross_entropy(apply_fn(variables, x), y)
  np.testing.assert_array_equal(np.asarray(model_cross_entropy(apply_fn, variables, x, y)), want)
  # Traceable: under jit (apply_fn static) it gives the same losses.
  jitted = jax.jit(model_cross_entropy, static_argnums=0)
  np.testing.assert_allclose(np.asarray(jitted(apply_fn, variables, x, y)), want, rtol=1e-6)


def test_a_label_outside_the_classes_gets_nan_never_another_class():
  rng = np.random.default_rng(3)
  z = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  got = np.asarray(cross_entropy(z, jnp.array([-1, 3, 2, 1000])))
  # Without the guard the gather would wrap -1 to class 2 and give a finite loss.
  assert np.isnan(got[[0, 1, 3]]).all()
  np.testing.assert_allclose(got[2], _np_cross_entropy(np.asarray(z)[2:3], [2])[0], rtol=1e-6)
  # The gradient of valid rows is untouched by the NaN constant of invalid ones.
  g = jax.grad(lambda zz: cross_entropy(zz, jnp.array([0, 1, 2, 0])).sum())(z)
  assert np.isfinite(np.asarray(g)).all()


def test_model_cross_entropy_refuses_a_forward_that_returns_a_tuple():
  def apply_fn(v, xs):
    return xs @ v["w"], xs

  variables = {"w": jnp.ones((3, 2))}
  with pytest.raises(ValueError, match=r"apply_fn returned a tuple of 2, not logits; .*\[0\]"):
    jax.jit(model_cross_entropy, static_argnums=0)(
      apply_fn, variables, jnp.ones((2, 3)), jnp.zeros(2, jnp.int32)
    )
