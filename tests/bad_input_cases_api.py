"""Bad inputs given to the library (the API half of the bad-input catalogue).

Every case calls one public entry point the way a user could get wrong (labels −1,
float labels, a stray class 1000, NaN or ``uint8`` inputs, a forward that returns a
tuple, wrong shapes, a text file given as .npz, …) and returns the error message
(`tests.bad_input_case.api_error`); tests/test_bad_inputs.py checks it. The models
are a 2-layer Dense MLP on 4 features with 3 classes, built once, so the whole list
runs in seconds.

``HOOK_CASES`` are the cases whose entry points (trusted.py, sweep.py, stats/collect.py,
baselines/base.py) call `sap_jax.input_checks` from outside it; they are part of ``CASES``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

import sap_jax
from sap_jax import train
from sap_jax.data import load_dataset
from sap_jax.data.base import Dataset
from tests.bad_input_case import Case, api_error

K = 3  # classes of the tiny model
D = 4  # input features


class _MLP(nn.Module):
  num_classes: int = K

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(8)(x)))


class _TupleMLP(nn.Module):
  """Returns (logits, features), as many research models do."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    h = nn.relu(nn.Dense(8)(x))
    return nn.Dense(K)(h), h


@functools.cache
def _model():
  """(apply_fn, variables) of the tiny MLP."""
  model = _MLP()
  variables = model.init(jax.random.key(0), np.zeros((1, D), np.float32))
  return train.eval_apply_fn(model), variables


def _data(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, D)).astype(np.float32), (np.arange(n) % K).astype(np.int32)


def _with(a: np.ndarray, index: int, value) -> np.ndarray:
  a = a.copy()
  a[index] = value
  return a


_CFG = train.TrainConfig(epochs=1, batch_size=8, learning_rate=0.1)


def _train(x=None, y=None, x_val=None, y_val=None, model=None):
  dx, dy = _data()
  x = dx if x is None else x
  y = dy if y is None else y
  return api_error(
    lambda: train.train_model(model or _MLP(), x, y, _CFG, x_val=x_val, y_val=y_val, progress=False)
  )


def _evaluate(x=None, y=None, apply_fn=None, variables=None):
  fn, v = _model()
  dx, dy = _data()
  return api_error(
    lambda: sap_jax.evaluate(
      apply_fn or fn,
      v if variables is None else variables,
      dx if x is None else x,
      dy if y is None else y,
    )
  )


def _losses(x=None, y=None, apply_fn=None, variables=None):
  fn, v = _model()
  dx, dy = _data()
  return api_error(
    lambda: sap_jax.per_example_loss(
      apply_fn or fn,
      v if variables is None else variables,
      dx if x is None else x,
      dy if y is None else y,
    )
  )


def _run_sap(x_train=None, y_train=None, x_val=None, y_val=None):
  fn, v = _model()
  dx, dy = _data()
  vx, vy = _data(12, seed=1)
  return api_error(
    lambda: sap_jax.run_sap(
      fn,
      v,
      dx if x_train is None else x_train,
      dy if y_train is None else y_train,
      vx if x_val is None else x_val,
      vy if y_val is None else y_val,
      n_trusted=8,
      alphas=(1e2, 1e3),
    )
  )


def _sweep(x_val=None, y_val=None):
  fn, v = _model()
  dx, _ = _data()
  vx, vy = _data(12, seed=1)
  stats = sap_jax.activation_stats(fn, v, [dx])
  return api_error(
    lambda: sap_jax.sweep_alpha(
      fn, v, stats, (1e2,), vx if x_val is None else x_val, vy if y_val is None else y_val
    )
  )


def _correct(x_trusted):
  fn, v = _model()
  return api_error(lambda: sap_jax.correct(fn, v, x_trusted, 1e3))


def _tuple_forward(variables, x):
  return _TupleMLP().apply(variables, x)


def _dict_forward(variables, x):
  return {"logits": _model()[0](variables, x)}


def _argmax_forward(variables, x):
  return _model()[0](variables, x).argmax(-1)


@functools.cache
def _tuple_variables():
  return _TupleMLP().init(jax.random.key(0), np.zeros((1, D), np.float32))


# ------------------------------------------------------------------ .npz files


def _npz(tmp: Path, name: str = "data.npz", **overrides) -> None:
  rng = np.random.default_rng(0)
  arrays = dict(
    x_train=rng.normal(size=(30, D)).astype(np.float32),
    y_train=np.arange(30) % 10,
    x_test=rng.normal(size=(10, D)).astype(np.float32),
    y_test=np.arange(10) % 10,
  )
  arrays.update(overrides)
  np.savez(tmp / name, **arrays)


def _stray_1000(tmp: Path) -> None:
  _npz(tmp, y_train=_with(np.arange(30) % 10, 7, 1000))


def _text_file(tmp: Path) -> None:
  (tmp / "data.npz").write_text("x_train,y_train\n0.1,0\n0.2,1\n")


def _object_array(tmp: Path) -> None:
  y = np.empty(30, object)
  y[:] = [int(i % 10) for i in range(30)]
  _npz(tmp, y_train=y)


def _load(tmp: Path, **options) -> str:
  return api_error(lambda: load_dataset("npz", root=tmp / "data.npz", **options))


def _no_pickle_hint(text: str) -> str:
  """The message for a non-npz file must not steer the user to unsafe pickle loading."""
  if "pickle" in text.lower():
    return f"message suggests pickle: {text}"
  return text


def _nan_dataset() -> str:
  x, y = _data()
  x = _with(x, 5, np.nan)
  return api_error(lambda: Dataset("t", x, y, x[:4] * 0, y[:4], ("a", "b", "c")))


_X, _Y = _data()

CASES: list[Case] = [
  # ---- labels
  Case(
    "evaluate-label-minus-1",
    r"label -1 \(at index 4\) is negative",
    lambda t: _evaluate(y=_with(_Y, 4, -1)),
  ),
  Case(
    "evaluate-float-labels",
    r"labels must be a 1-D integer array.*float64.*astype\(np\.int32\)",
    lambda t: _evaluate(y=_Y.astype(np.float64)),
  ),
  Case(
    "evaluate-bool-labels", r"1-D integer array.*dtype bool", lambda t: _evaluate(y=_Y % 2 == 0)
  ),
  Case(
    "evaluate-one-hot-labels",
    r"1-D integer array, got shape \(24, 3\)",
    lambda t: _evaluate(y=np.eye(K, dtype=np.int32)[_Y]),
  ),
  Case(
    "evaluate-label-out-of-range",
    r"label 3 \(at index 2\) is outside \[0, 3\) for a model with 3 outputs",
    lambda t: _evaluate(y=_with(_Y, 2, 3)),
  ),
  Case("train-label-minus-1", r"label -1 .*negative", lambda t: _train(y=_with(_Y, 0, -1))),
  Case("train-float-labels", r"integer array.*float32", lambda t: _train(y=_Y.astype(np.float32))),
  Case(
    "train-label-out-of-range",
    r"^x/y: label 7 .*outside \[0, 3\).*3 outputs",
    lambda t: _train(y=_with(_Y, 9, 7)),
  ),
  Case(
    "train-val-label-out-of-range",
    r"^x_val/y_val: label 5 .*outside \[0, 3\)",
    lambda t: _train(x_val=_X[:6], y_val=_with(_Y[:6], 1, 5)),
  ),
  Case(
    "train-val-float-labels",
    r"^x_val/y_val: labels must be a 1-D integer array",
    lambda t: _train(x_val=_X[:6], y_val=_Y[:6] + 0.5),
  ),
  Case(
    "train-val-label-minus-1",
    r"^x_val/y_val: label -1",
    lambda t: _train(x_val=_X[:6], y_val=_with(_Y[:6], 3, -1)),
  ),
  Case("losses-label-minus-1", r"label -1 .*negative", lambda t: _losses(y=_with(_Y, 1, -1))),
  Case("losses-float-labels", r"integer array", lambda t: _losses(y=_Y.astype(float))),
  Case(
    "run-sap-val-label-out-of-range",
    r"label 9 .*outside \[0, 3\)",
    lambda t: _run_sap(y_val=_with(_data(12, 1)[1], 0, 9)),
  ),
  Case("run-sap-train-label-minus-1", r"label -1", lambda t: _run_sap(y_train=_with(_Y, 3, -1))),
  # ---- inputs
  Case(
    "evaluate-nan-input",
    r"NaN or Inf in 1 sample\(s\) \(first at index 3\)",
    lambda t: _evaluate(x=_with(_X, 3, np.nan)),
  ),
  Case("evaluate-inf-input", r"NaN or Inf", lambda t: _evaluate(x=_with(_X, 0, np.inf))),
  Case(
    "evaluate-uint8-images",
    r"integer dtype uint8.*x\.astype\(np\.float32\) / 255",
    lambda t: _evaluate(x=(np.abs(_X) * 50).astype(np.uint8)),
  ),
  Case(
    "train-nan-in-x-train",
    r"^x/y: contains NaN or Inf in 1 sample",
    lambda t: _train(x=_with(_X, 11, np.nan)),
  ),
  Case(
    "train-nan-in-x-val",
    r"^x_val/y_val: contains NaN or Inf",
    lambda t: _train(x_val=_with(_X[:6], 2, np.nan), y_val=_Y[:6]),
  ),
  Case(
    "train-uint8-images",
    r"integer dtype uint8.*/ 255",
    lambda t: _train(x=(np.abs(_X) * 50).astype(np.uint8)),
  ),
  Case("losses-nan-in-x-train", r"NaN or Inf", lambda t: _losses(x=_with(_X, 0, np.nan))),
  Case(
    "run-sap-nan-in-x-train",
    r"NaN or Inf in 1 sample",
    lambda t: _run_sap(x_train=_with(_X, 20, np.nan)),
  ),
  Case(
    "sweep-uint8-val",
    r"split 'val'.*integer dtype uint8",
    lambda t: _sweep(x_val=np.ones((12, D), np.uint8)),
  ),
  Case(
    "sweep-nan-val",
    r"split 'val'.*NaN or Inf",
    lambda t: _sweep(x_val=_with(_data(12, 1)[0], 0, np.nan)),
  ),
  Case(
    "correct-uint8-trusted",
    r"x_trusted.*integer dtype uint8",
    lambda t: _correct(np.ones((8, D), np.uint8)),
  ),
  Case(
    "correct-nan-trusted", r"x_trusted.*NaN or Inf", lambda t: _correct(_with(_X[:8], 1, np.nan))
  ),
  Case("dataset-nan-x-train", r"x_train contains NaN or inf in 1 sample", lambda t: _nan_dataset()),
  # ---- shapes and sizes
  Case(
    "evaluate-length-mismatch",
    r"24 inputs but 23 labels; pass one label per input",
    lambda t: _evaluate(y=_Y[:-1]),
  ),
  Case("evaluate-empty", r"empty \(no samples\)", lambda t: _evaluate(x=_X[:0], y=_Y[:0])),
  Case(
    "evaluate-wrong-feature-count",
    r"fails on a sample of shape \(1, 5\).*per-example shape the model was built for",
    lambda t: _evaluate(x=np.zeros((24, 5), np.float32)),
  ),
  Case("evaluate-scalar-input", r"got a scalar", lambda t: _evaluate(x=np.float32(1.0))),
  Case(
    "evaluate-ragged-input",
    r"cannot be made one array",
    lambda t: _evaluate(x=[[0.0] * D, [0.0] * 3], y=np.zeros(2, np.int32)),
  ),
  Case("train-length-mismatch", r"24 inputs but 20 labels", lambda t: _train(y=_Y[:20])),
  Case(
    "train-val-wrong-shape",
    r"x_val samples have shape \(5,\) but x samples \(4,\)",
    lambda t: _train(x_val=np.zeros((6, 5), np.float32), y_val=_Y[:6]),
  ),
  Case("train-x-val-without-y-val", r"Pass both x_val and y_val", lambda t: _train(x_val=_X[:6])),
  Case("train-empty", r"empty \(no samples\)", lambda t: _train(x=_X[:0], y=_Y[:0])),
  # ---- forwards that do not return logits
  Case(
    "evaluate-tuple-forward",
    r"returned a tuple of 2, not logits; .*wrap the forward.*\[0\]",
    lambda t: _evaluate(apply_fn=_tuple_forward, variables=_tuple_variables()),
  ),
  Case(
    "evaluate-dict-forward",
    r"returned a dict with keys \['logits'\].*\['logits'\]",
    lambda t: _evaluate(apply_fn=_dict_forward),
  ),
  Case(
    "evaluate-argmax-forward",
    r"returned shape \(1,\); expected logits.*not one value per sample",
    lambda t: _evaluate(apply_fn=_argmax_forward),
  ),
  Case(
    "losses-tuple-forward",
    r"returned a tuple of 2, not logits",
    lambda t: _losses(apply_fn=_tuple_forward, variables=_tuple_variables()),
  ),
  Case(
    "train-tuple-model", r"returned a tuple of 2, not logits", lambda t: _train(model=_TupleMLP())
  ),
  Case(
    "predict-logits-dict-forward",
    r"returned a dict",
    lambda t: api_error(lambda: train.predict_logits(_dict_forward, _model()[1], _X)),
  ),
  # ---- .npz files
  Case(
    "npz-stray-label-1000",
    r"labels go up to 1000 but classes \[10\.\.999\] \(990 of 1001\) have no sample.*num_classes=1001",
    lambda t: _load(t),
    setup=_stray_1000,
  ),
  Case(
    "npz-labels-above-num-classes",
    r"labels go up to 1000 but num_classes=10",
    lambda t: _load(t, num_classes=10),
    setup=_stray_1000,
  ),
  Case(
    "npz-text-file",
    r"is not an \.npz archive.*np\.savez",
    lambda t: _no_pickle_hint(_load(t)),
    setup=_text_file,
  ),
  Case(
    "npz-object-labels",
    r"y_train in the npz holds Python objects.*store plain numeric arrays",
    lambda t: _load(t),
    setup=_object_array,
  ),
  Case(
    "npz-negative-label",
    r"negative labels",
    lambda t: _load(t),
    setup=lambda t: _npz(t, y_test=_with(np.arange(10) % 10, 0, -1)),
  ),
  Case(
    "npz-float-labels",
    r"integer class indices",
    lambda t: _load(t),
    setup=lambda t: _npz(t, y_train=(np.arange(30) % 10).astype(np.float32)),
  ),
  Case(
    "npz-nan-in-x-train",
    r"x_train in the npz contains NaN",
    lambda t: _load(t),
    setup=lambda t: _npz(t, x_train=np.full((30, D), np.nan, np.float32)),
  ),
]


def _activation_stats_uint8() -> str:
  fn, v = _model()
  return api_error(lambda: sap_jax.activation_stats(fn, v, [np.ones((8, D), np.uint8)]))


def _select_trusted_float_labels() -> str:
  return api_error(
    lambda: sap_jax.select_trusted(np.arange(6.0), np.arange(6) % 3 + 0.5, 3, class_balanced=True)
  )


def _task(**overrides):
  from sap_jax.baselines import CorrectionTask

  _, v = _model()
  vx, vy = _data(12, 1)
  kw = dict(
    model=_MLP(), variables=v, x_train=_X, y_train=_Y, x_val=vx, y_val=vy, train_config=_CFG
  )
  return api_error(lambda: CorrectionTask(**{**kw, **overrides}))


HOOK_CASES: list[Case] = [
  Case(
    "losses-label-out-of-range",
    r"label 3 \(at index 5\) is outside \[0, 3\)",
    lambda t: _losses(y=_with(_Y, 5, 3)),
  ),
  Case(
    "run-sap-train-label-out-of-range",
    r"label 1000 .*outside \[0, 3\)",
    lambda t: _run_sap(y_train=_with(_Y, 5, 1000)),
  ),
  Case(
    "sweep-float-val-labels",
    r"split 'val'.*labels must be a 1-D integer array",
    lambda t: _sweep(y_val=_data(12, 1)[1] + 0.5),
  ),
  Case("activation-stats-uint8", r"integer dtype uint8", lambda t: _activation_stats_uint8()),
  Case("select-trusted-float-labels", r"integer array", lambda t: _select_trusted_float_labels()),
  Case(
    "task-val-label-out-of-range",
    r"label 4 .*outside \[0, 3\)",
    lambda t: _task(y_val=_with(_data(12, 1)[1], 0, 4)),
  ),
  Case("task-nan-x-train", r"NaN or Inf", lambda t: _task(x_train=_with(_X, 0, np.nan))),
]


def _sealed_then_edited(tmp: Path) -> None:
  """A checkpoint whose spec seed was edited by hand after the save."""
  import json

  from sap_jax import checkpoint

  variables = {"params": {"w": np.ones((2, 2), np.float32)}}
  path = checkpoint.save_checkpoint(tmp / "ckpt", variables, {"spec": {"seed": 0}})
  meta = path / checkpoint.METADATA_FILE
  record = json.loads(meta.read_text())
  record["metadata"]["spec"]["seed"] = 7
  meta.write_text(json.dumps(record))


def _load_edited_checkpoint(tmp: Path) -> str:
  from sap_jax import checkpoint

  return api_error(lambda: checkpoint.load_checkpoint(tmp / "ckpt"), ValueError)


def _save_to(where: str):
  def act(tmp: Path) -> str:
    from sap_jax import checkpoint, safe_write

    variables = {"params": {"w": np.ones((2, 2), np.float32)}}
    return api_error(
      lambda: checkpoint.save_checkpoint(where, variables, {}), safe_write.RefusedWrite
    )

  return act


CASES += [
  Case(
    "load-checkpoint-hand-edited-spec",
    r"damaged checkpoint .*ckpt: spec\.seed in metadata\.json changed after the save",
    _load_edited_checkpoint,
    _sealed_then_edited,
  ),
  Case(
    "save-checkpoint-to-the-root",
    r"cannot write the checkpoint at /: it is the root of the file system; choose a new path",
    _save_to("/"),
  ),
  Case(
    "save-checkpoint-unknown-user",
    r"cannot use the path ~sap_jax_nouser/ckpt: this machine has no user 'sap_jax_nouser'",
    _save_to("~sap_jax_nouser/ckpt"),
  ),
]

CASES += HOOK_CASES  # the hooks are in (trusted.py, sweep.py, stats/collect.py, baselines/base.py)
