"""sap_jax.input_checks: is this (x, y) valid for this model?"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sap_jax import input_checks as ic
from sap_jax import train
from tests.train_cases import TinyMLP


@pytest.fixture(scope="module")
def mlp():
  model = TinyMLP(num_classes=5)
  variables = model.init(jax.random.key(0), np.zeros((1, 2), np.float32))
  return train.eval_apply_fn(model), variables


def test_check_inputs_accepts_finite_floats_and_keeps_device_arrays():
  x = np.arange(6, dtype=np.float32).reshape(3, 2)
  got = ic.check_inputs(x)
  assert isinstance(got, np.ndarray) and np.array_equal(got, x)
  assert isinstance(ic.check_inputs([[1.0], [2.0]]), np.ndarray)
  on_device = jnp.ones((2, 3), jnp.bfloat16)
  assert ic.check_inputs(on_device) is on_device  # not pulled to the host
  # float64 values whose sum overflows are still finite: the exact path decides.
  assert ic.check_inputs(np.full((2, 1), 1e308)).shape == (2, 1)


@pytest.mark.parametrize(
  "x,match",
  [
    (None, r"^x: no inputs \(got None\)"),
    (np.float32(1.0), "got a scalar"),
    (np.zeros((0, 3), np.float32), r"^x: empty \(no samples\)"),
    ([[1.0, 2.0], [3.0]], "cannot be made one array"),
    (np.zeros((2, 2), np.uint8), r"integer dtype uint8.*x\.astype\(np\.float32\) / 255"),
    (np.zeros((2, 2), np.int64), "integer dtype int64"),
    (np.zeros((2, 2), bool), "integer dtype bool"),
    (np.array([["a"], ["b"]]), "dtype <U1; pass a floating array"),
    (np.zeros((2, 2), np.complex64), "dtype complex64"),
  ],
)
def test_check_inputs_refuses(x, match):
  with pytest.raises(ValueError, match=match):
    ic.check_inputs(x)


def test_check_inputs_counts_and_locates_nonfinite_samples():
  x = np.zeros((6, 2, 2), np.float32)
  x[2, 1, 0] = np.nan
  x[4, 0, 1] = -np.inf
  x[5, 1, 1] = np.nan
  with pytest.raises(
    ValueError, match=r"^x_train: .*NaN or Inf in 3 sample\(s\) \(first at index 2\)"
  ):
    ic.check_inputs(x, "x_train")
  with pytest.raises(ValueError, match="NaN or Inf"):
    ic.check_inputs(jnp.asarray(x))
  assert ic.all_finite(np.ones((3, 3))) and not ic.all_finite(np.array([1.0, np.nan]))
  assert not ic.all_finite(np.array([np.inf, -np.inf]))  # the sum is NaN, not ±inf


def test_check_labels_returns_int32_and_names_label_and_index():
  got = ic.check_labels(np.array([0, 2, 1], np.int64), 3, num_classes=3)
  assert got.dtype == np.int32 and got.tolist() == [0, 2, 1]
  assert ic.check_labels(jnp.array([1, 0]), 2).tolist() == [1, 0]
  assert ic.check_labels(np.array([7]), 1).tolist() == [7]  # no K: only ≥ 0 is checked
  cases = [  # (labels, n, K, message)
    (np.array([0, -1, 2]), 3, None, r"^y: label -1 \(at index 1\) is negative.*drop those samples"),
    (
      np.array([0, 3, 9, 9]),
      4,
      3,
      r"label 9 \(at index 2\) is outside \[0, 3\) for a model with 3 outputs.*10 outputs",
    ),
    (np.array([0.0, 1.0]), 2, None, r"dtype float64; pass class indices \(y\.astype\(np\.int32\)"),
    (np.array([True, False]), 2, None, "dtype bool"),
    (np.zeros((2, 3), np.int32), 2, None, r"got shape \(2, 3\)"),
    (np.array([0, 1, 2]), 2, None, "2 inputs but 3 labels"),
    (None, 2, None, "no labels"),
  ]
  for y, n, k, match in cases:
    with pytest.raises(ValueError, match=match):
      ic.check_labels(y, n, k)


def test_check_logits_output_accepts_only_one_2d_float_array():
  z = jnp.zeros((4, 3))
  assert ic.check_logits_output(z) is z
  assert ic.check_logits_output(jax.ShapeDtypeStruct((1, 7), jnp.bfloat16)).shape == (1, 7)
  refused = [
    (
      (z, z),
      r"returned a tuple of 2, not logits; .*model\.apply\(variables, x, train=False\)\[0\]",
    ),
    ({"logits": z, "h": z}, r"returned a dict with keys \['h', 'logits'\]"),
    ([z], "returned a list of 1"),
    (3.0, "returned float"),
    (jnp.zeros(4), r"returned shape \(4,\); expected logits of shape \(batch, num_classes\)"),
    (jnp.zeros((2, 3), jnp.int32), "dtype int32; expected floating logits"),
  ]
  for out, match in refused:
    with pytest.raises(ValueError, match=match):
      ic.check_logits_output(out)
  with pytest.raises(ValueError, match="^f returned a tuple.*my advice"):
    ic.check_logits_output((z,), "f", fix="my advice")


def test_output_width_traces_one_sample_without_flops(mlp):
  apply_fn, variables = mlp
  assert ic.output_width(apply_fn, variables, np.zeros((1000, 2), np.float32)) == 5
  with pytest.raises(ValueError, match=r"fails on a sample of shape \(1, 3\) float32 \(Scope"):
    ic.output_width(apply_fn, variables, np.zeros((4, 3), np.float32))
  with pytest.raises(ValueError, match="returned a tuple"):
    ic.output_width(lambda v, x: (apply_fn(v, x),), variables, np.zeros((4, 2), np.float32))


def test_check_labelled_checks_model_free_things_before_the_trace(mlp):
  apply_fn, variables = mlp
  x = np.zeros((4, 2), np.float32)
  got_x, got_y = ic.check_labelled(apply_fn, variables, x, np.array([0, 4, 1, 2]))
  assert got_x is x and got_y.dtype == np.int32
  with pytest.raises(ValueError, match=r"^val: label 5 \(at index 3\) is outside \[0, 5\)"):
    ic.check_labelled(apply_fn, variables, x, np.array([0, 1, 2, 5]), "val")
  with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
    ic.check_labelled(apply_fn, variables, x, np.array([0, 1, 2, 0]), num_classes=2)

  def broken(v, xs):
    raise AssertionError("the forward must not be traced for a model-free error")

  with pytest.raises(ValueError, match="integer array"):
    ic.check_labelled(broken, variables, x, np.zeros(4))
  with pytest.raises(ValueError, match="NaN"):
    ic.check_labelled(broken, variables, np.full((4, 2), np.nan), np.zeros(4, np.int32))
