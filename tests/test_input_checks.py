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


# ---- issue 25: array-likes at the boundary, and messages that name the real cause


def _kinds(x, tmp_path):
  """``x`` as every array-like kind the public API takes."""
  np.save(tmp_path / "x.npy", x)
  return {
    "list": x.tolist(),
    "tuple": tuple(map(tuple, x.tolist())),
    "jax": jnp.asarray(x),
    "memmap": np.load(tmp_path / "x.npy", mmap_mode="r"),
  }


def test_as_array_rule(tmp_path):
  x = np.arange(6, dtype=np.float32).reshape(3, 2)
  for kind, value in _kinds(x, tmp_path).items():
    got = ic.as_array(value, "x")
    assert np.array_equal(np.asarray(got), x), kind
    assert isinstance(got, jax.Array) == (kind == "jax"), kind  # a jax.Array stays put
  assert ic.as_array([np.zeros(2), np.ones(2)], "x").shape == (2, 2)  # per-sample arrays
  for bad, match in [
    ([{"image": x[0], "label": 0}], r"^x: a list of records \(dicts\); a list is read as an array"),
    (({"image": x[0]},), r"a tuple of records"),
    ("x.npy", r"got a str, not inputs.*np\.load"),
    ({"x": x}, "got a dict"),
    ([x[0], "a"], "not an array of numbers|cannot be made one array"),
    (iter(x), r"not an array of numbers \(it becomes a numpy array of Python objects"),
  ]:
    with pytest.raises(ValueError, match=match):
      ic.as_array(bad, "x")


def test_every_array_like_kind_is_converted_at_every_entry_point(tmp_path):
  """Lists, tuples, jax arrays and memmaps give the numpy array's results (issue 25,
  item 2: a list once ran the whole correction, then failed on ``x.shape``)."""
  import sap_jax
  from tests.bad_input_cases_api import _data, _model

  fn, v = _model()
  x, y = _data()
  vx, vy = _data(12, seed=1)
  stats = sap_jax.activation_stats(fn, v, [x])
  dec = sap_jax.decompose(v, stats, method="eigh")
  ref = {
    "evaluate": sap_jax.evaluate(fn, v, x, y),
    "losses": np.asarray(sap_jax.per_example_loss(fn, v, x, y)),
    "logits": train.predict_logits(fn, v, x),
    "trusted": np.asarray(sap_jax.trusted.trusted_set(fn, v, x, y, 8)),
    "run_sap": sap_jax.run_sap(fn, v, x, y, vx, vy, n_trusted=8, alphas=(1e2, 1e3)).alpha,
  }
  for kind, xk in _kinds(x, tmp_path).items():
    yk = {"list": y.tolist(), "tuple": tuple(y.tolist()), "jax": jnp.asarray(y)}.get(kind, y)
    assert sap_jax.evaluate(fn, v, xk, yk) == pytest.approx(ref["evaluate"]), kind
    np.testing.assert_allclose(sap_jax.per_example_loss(fn, v, xk, yk), ref["losses"], 1e-5)
    np.testing.assert_allclose(train.predict_logits(fn, v, xk), ref["logits"], 1e-5)
    assert np.array_equal(sap_jax.trusted.trusted_set(fn, v, xk, yk, 8), ref["trusted"]), kind
    assert (
      sap_jax.run_sap(fn, v, xk, yk, vx, vy, n_trusted=8, alphas=(1e2, 1e3)).alpha
      == (ref["run_sap"])
    ), kind
    got = sap_jax.activation_stats(fn, v, [xk])
    for path, s in stats.items():
      np.testing.assert_allclose(got[path].gram, s.gram, rtol=1e-5, err_msg=kind)
    sap_jax.sweep_alpha(fn, v, dec, (1e2,), vx, vy, eval_splits={"k": (xk[:12], yk[:12])})
    assert sap_jax.correct(fn, v, xk, 1e3) is not None
    sap_jax.trusted_influence(fn, v, dec, xk, vx, vy, 1e3)


def test_nnx_run_sap_takes_a_list(tmp_path):
  from flax import nnx

  import sap_jax.nnx
  from tests.bad_input_cases_api import _data

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.l1, self.l2 = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.relu(self.l1(x)))

  x, y = _data()
  vx, vy = _data(12, seed=1)
  model = Net(nnx.Rngs(0))
  a = sap_jax.nnx.run_sap(model, x, y, vx, vy, n_trusted=8, alphas=(1e2,))
  b = sap_jax.nnx.run_sap(model, x.tolist(), y.tolist(), vx, vy, n_trusted=8, alphas=(1e2,))
  assert a.alpha == b.alpha and np.array_equal(a.trusted_indices, b.trusted_indices)


def test_forward_failure_names_train_mode_only():
  assert ic.forward_failure(TypeError("unsupported operand")) is None
  assert ic.forward_failure(ValueError("dot_general requires contracting dims")) is None
  rng = ic.forward_failure(ValueError("`deterministic` is False, but no `rngs` argument"))
  assert "train-mode forward: it needs random numbers" in rng and "train=False" in rng
  mutable = ic.forward_failure(
    ValueError(
      'Cannot update variable "mean" in "/bn" because collection "batch_stats" is immutable.'
    )
  )
  assert "updates its 'batch_stats' collection" in mutable
  axis = ic.forward_failure(NameError("Found an unbound axis name: batch. To fix this"))
  assert "device axis name 'batch'" in axis


def test_check_reads_variables(mlp):
  fn, variables = mlp
  x = np.zeros((3, 2), np.float32)
  ic.check_reads_variables(fn, variables, x)  # reads them: no error

  def closes_over(v, xx):
    del v
    return fn(variables, xx)

  with pytest.raises(ValueError, match="ignores its variables"):
    ic.check_reads_variables(closes_over, variables, x)

  def reads_only_state(v, xx):  # uses a non-params leaf but no params
    return fn(variables, xx) + 0 * jax.tree_util.tree_leaves(v)[0].sum()

  ic.check_reads_variables(reads_only_state, {"other": jnp.ones(1)}, x)  # no params: any leaf


def test_looks_like_probabilities():
  logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]], np.float32)
  probs = np.asarray(jax.nn.softmax(logits))
  assert not ic.looks_like_probabilities(logits).any()
  assert ic.looks_like_probabilities(probs).all()
  assert bool(ic.looks_like_probabilities(jnp.asarray(probs)).all())
  assert not ic.looks_like_probabilities(np.ones((2, 1))).any()  # K = 1: never
