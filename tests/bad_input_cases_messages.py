"""Bad inputs whose message must name the real cause (issue 25, items 2 and 4).

Item 2: inputs of every array-like kind (lists, tuples, jax arrays, numpy memmaps) are
converted at the boundary or refused up front with the fix; the refusals are here, one
per kind and entry point where cheap (the conversions that succeed are tested in
tests/test_input_checks.py). Item 4: an NNX module given to the Linen API, a train-mode
forward (rngs, a mutable collection, an axis name; Linen and NNX), a forward that ignores
its variables, probabilities instead of logits (a warning, whose text is the case's
text), one array given to `activation_stats` as its batches, and `trusted_influence` on
samples other than the decomposition's.

Every case runs in-process on the tiny models of tests/bad_input_cases_api.py (or an NNX
twin), so the whole list runs in seconds.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import sap_jax
from sap_jax import train
from tests.bad_input_case import Case, api_error
from tests.bad_input_cases_api import _CFG, _MLP, D, K, _data, _model

_X, _Y = _data()
_VX, _VY = _data(12, seed=1)


def _save(make):
  """A case's ``setup``: ``make()`` written to ``tmp/x.npy`` (before the checksums)."""
  return lambda tmp: np.save(tmp / "x.npy", make())


def _memmap(tmp: Path) -> np.ndarray:
  """``tmp/x.npy`` (written by `_save`) as a read-only memmap."""
  return np.load(tmp / "x.npy", mmap_mode="r")


@functools.cache
def _stats_and_decomposition(n: int = 10):
  fn, v = _model()
  stats = sap_jax.activation_stats(fn, v, [_X[:n]])
  return stats, sap_jax.decompose(v, stats, method="eigh")


def _run_sap(apply_fn=None, variables=None, x=None, y=None, **kw) -> str:
  fn, v = _model()
  return api_error(
    lambda: sap_jax.run_sap(
      fn if apply_fn is None else apply_fn,
      v if variables is None else variables,
      _X if x is None else x,
      _Y if y is None else y,
      _VX,
      _VY,
      n_trusted=8,
      alphas=(1e2, 1e3),
      **kw,
    )
  )


def _evaluate(apply_fn=None, variables=None, x=None, y=None) -> str:
  fn, v = _model()
  return api_error(
    lambda: sap_jax.evaluate(
      fn if apply_fn is None else apply_fn,
      v if variables is None else variables,
      _X if x is None else x,
      _Y if y is None else y,
    )
  )


def _stats(batches, apply_fn=None, variables=None) -> str:
  fn, v = _model()
  return api_error(
    lambda: sap_jax.activation_stats(
      fn if apply_fn is None else apply_fn, v if variables is None else variables, batches
    )
  )


def _influence(x_trusted) -> str:
  fn, v = _model()
  _, decomposition = _stats_and_decomposition()
  return api_error(
    lambda: sap_jax.trusted_influence(fn, v, decomposition, x_trusted, _VX, _VY, 1e3)
  )


def _warning(fn) -> str:
  """Runs ``fn``, which must warn (and not raise); returns the warning's text."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fn()
  texts = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
  found = [t for t in texts if "probabilities" in t]
  if not found:
    raise AssertionError(f"expected a warning about probabilities, got {texts}")
  return found[0]


# ---------------------------------------------------------------- forwards


class _Dropout(nn.Module):
  """Dropout on unless train=False."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(8)(x)))
    return nn.Dense(K)(h)


class _BatchNorm(nn.Module):
  """BatchNorm on batch statistics (and updating them) unless train=False."""

  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = nn.relu(nn.Dense(8)(x))
    h = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name)(h)
    return nn.Dense(K)(h)


@functools.cache
def _linen(module: nn.Module):
  """(the train-mode forward, variables) of a Linen module."""
  variables = module.init(jax.random.key(0), _X[:1], train=False)
  return module.apply, variables


class _NNXMLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs, mode: str = "eval"):
    self.l1 = nnx.Linear(D, 8, rngs=rngs)
    self.drop = nnx.Dropout(0.5)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.l2 = nnx.Linear(8, K, rngs=rngs)
    self.mode = mode

  def __call__(self, x):
    h = nnx.relu(self.l1(x))
    if self.mode == "dropout":  # overrides eval mode: .eval() cannot turn it off
      h = self.drop(h, deterministic=False)
    elif self.mode == "batch_stats":
      h = self.bn(h, use_running_average=False)
    return self.l2(h)


class _NNXNeedsRngs(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.l1 = nnx.Linear(D, 8, rngs=rngs)
    self.drop = nnx.Dropout(0.5)
    self.l2 = nnx.Linear(8, K, rngs=rngs)

  def __call__(self, x, rngs):
    return self.l2(self.drop(nnx.relu(self.l1(x)), rngs=rngs))


def _nnx(mode: str = "eval") -> nnx.Module:
  return _NNXMLP(nnx.Rngs(0), mode)


def _closure_forward(variables, x):
  """Closes over the tiny MLP's own variables: ``variables`` never reach the output."""
  del variables
  fn, v = _model()
  return fn(v, x)


def _softmax_forward(variables, x):
  return jax.nn.softmax(_model()[0](variables, x))


_NNX_FIX = r"use sap_jax\.nnx, which takes the module itself"
_EVAL_FIX = r"pass the eval-mode forward: for Linen functools\.partial\(model\.apply, train=False\)"
_BATCHED = r"wrap it: sap_jax\.batched\(x, 256\)"


# ---------------------------------------------------------------- item 2: array-likes

ARRAY_LIKE_CASES: list[Case] = [
  Case(
    "run-sap-list-of-records",
    r"^x_train: a list of records \(dicts\); a list is read as an array of samples, never "
    r"as a source.*__len__ and __getitem__",
    lambda t: _run_sap(x=[{"image": row, "label": 0} for row in _X]),
  ),
  Case(
    "run-sap-tuple-ragged",
    r"^x_train: cannot be made one array.*samples all have the same shape",
    lambda t: _run_sap(x=tuple([[0.0] * D] * 23 + [[0.0] * 3])),
  ),
  Case(
    "run-sap-list-with-nan",
    r"NaN or Inf in 1 sample\(s\) \(first at index 2\)",
    lambda t: _run_sap(x=[[np.nan] * D if i == 2 else list(r) for i, r in enumerate(_X)]),
  ),
  Case(
    "run-sap-path-string",
    r"^x_train: got a str, not inputs; pass an \(N, \.\.\.\) array \(a path must be loaded",
    lambda t: _run_sap(x="data/x_train.npy"),
  ),
  Case(
    "run-sap-memmap-uint8",
    r"integer dtype uint8.*x\.astype\(np\.float32\) / 255",
    lambda t: _run_sap(x=_memmap(t)),
    setup=_save(lambda: (np.abs(_X) * 50).astype(np.uint8)),
  ),
  Case(
    "run-sap-jax-labels-out-of-range",
    r"label 7 .*outside \[0, 3\)",
    lambda t: _run_sap(y=jnp.asarray(_Y).at[4].set(7)),
  ),
  Case("evaluate-dict-inputs", r"^x/y: got a dict, not inputs", lambda t: _evaluate(x={"x": _X})),
  Case(
    "evaluate-list-of-strings",
    r"^x/y: inputs have dtype <U\d+; pass a floating array",
    lambda t: _evaluate(x=[["a"] * D] * len(_X)),
  ),
  Case(
    "evaluate-memmap-nan",
    r"NaN or Inf in 1 sample\(s\) \(first at index 5\)",
    lambda t: _evaluate(x=_memmap(t)),
    setup=_save(lambda: _nan_at(5)),
  ),
  Case(
    "evaluate-list-labels-floats",
    r"labels must be a 1-D integer array.*float64",
    lambda t: _evaluate(y=[float(v) + 0.5 for v in _Y]),
  ),
  Case(
    "predict-logits-tuple-wrong-features",
    r"fails on a sample of shape \(1, 5\).*per-example shape",
    lambda t: api_error(
      lambda: train.predict_logits(_model()[0], _model()[1], tuple([[0.0] * 5] * 4))
    ),
  ),
  Case(
    "per-example-loss-jax-uint8",
    r"integer dtype uint8",
    lambda t: api_error(
      lambda: sap_jax.per_example_loss(*_model(), jnp.ones((24, D), jnp.uint8), _Y)
    ),
  ),
  Case(
    "trusted-set-list-labels-negative",
    r"label -1 \(at index 3\) is negative",
    lambda t: api_error(
      lambda: sap_jax.trusted.trusted_set(*_model(), _X, [0, 1, 2, -1] + list(_Y[4:]), 8)
    ),
  ),
  Case(
    "correct-list-of-records",
    r"^x_trusted: a list of records",
    lambda t: api_error(lambda: sap_jax.correct(*_model(), [{"image": _X[0]}], 1e3)),
  ),
  Case(
    "sweep-tuple-val-float-labels",
    r"split 'val'.*labels must be a 1-D integer array",
    lambda t: api_error(
      lambda: sap_jax.sweep_alpha(
        *_model(), _stats_and_decomposition()[1], (1e2,), _VX, tuple(float(v) for v in _VY)
      )
    ),
  ),
  Case(
    "tune-alpha-jax-labels-out-of-range",
    r"label 5 .*outside \[0, 3\)",
    lambda t: api_error(
      lambda: sap_jax.tune_alpha(
        *_model(), _stats_and_decomposition()[1], _VX, jnp.asarray(_VY).at[0].set(5), 1e3
      )
    ),
  ),
  Case(
    "alpha-sensitivity-memmap-nan",
    r"split 'sensitivity'.*NaN or Inf",
    lambda t: api_error(
      lambda: sap_jax.alpha_sensitivity(
        *_model(), _stats_and_decomposition()[1], _memmap(t), _VY, 1e3
      )
    ),
    setup=_save(lambda: _nan_val()),
  ),
  Case(
    "train-model-list-of-records",
    r"a list of records \(dicts\)",
    lambda t: api_error(
      lambda: train.train_model(_MLP(), [{"image": r} for r in _X], _Y, _CFG, progress=False)
    ),
  ),
  Case(
    "trusted-influence-list-subset",
    r"the 5 samples of x_trusted give layer '[^']+' 5 rows, but the decomposition's "
    r"statistics counted 10",
    lambda t: _influence(_X[:5].tolist()),
  ),
]


def _nan_at(index: int) -> np.ndarray:
  x = _X.copy()
  x[index] = np.nan
  return x


def _nan_val() -> np.ndarray:
  x = _VX.copy()
  x[1, 0] = np.nan
  return x


# ---------------------------------------------------------------- item 4: the real cause

MESSAGE_CASES: list[Case] = [
  # an NNX module given to the Linen API
  Case(
    "run-sap-nnx-module-as-apply-fn",
    r"^apply_fn is a flax\.nnx module \(_NNXMLP\), not a Linen forward; .*" + _NNX_FIX,
    lambda t: _run_sap(apply_fn=_nnx()),
  ),
  Case(
    "evaluate-nnx-module-as-variables",
    r"^variables is a flax\.nnx module \(_NNXMLP\).*" + _NNX_FIX,
    lambda t: _evaluate(variables=_nnx()),
  ),
  Case(
    "activation-stats-nnx-module",
    r"^apply_fn is a flax\.nnx module.*" + _NNX_FIX,
    lambda t: _stats([_X], apply_fn=_nnx()),
  ),
  # train-mode forwards: Linen
  Case(
    "run-sap-linen-dropout-train-mode",
    r"is a train-mode forward: it needs random numbers \(rngs\).*" + _EVAL_FIX,
    lambda t: _run_sap(*_linen(_Dropout())),
  ),
  Case(
    "evaluate-linen-batchnorm-train-mode",
    r"train-mode forward: it updates its 'batch_stats' collection \(it needs "
    r"mutable=\['batch_stats'\]\).*" + _EVAL_FIX,
    lambda t: _evaluate(*_linen(_BatchNorm())),
  ),
  Case(
    "per-example-loss-linen-batchnorm-axis-name",
    r"train-mode forward: it uses the device axis name 'batch'.*" + _EVAL_FIX,
    lambda t: api_error(
      lambda: sap_jax.per_example_loss(*_linen(_BatchNorm(axis_name="batch")), _X, _Y)
    ),
  ),
  Case(
    "activation-stats-linen-dropout-train-mode",
    r"^activation_stats: apply_fn\(variables, x\) is a train-mode forward: it needs random "
    r"numbers.*" + _EVAL_FIX,
    lambda t: _stats([_X], *_linen(_Dropout())),
  ),
  Case(
    "activation-stats-linen-batchnorm-train-mode",
    r"^activation_stats: .*train-mode forward: it updates its 'batch_stats'",
    lambda t: _stats([_X], *_linen(_BatchNorm())),
  ),
  # train-mode forwards: NNX
  Case(
    "nnx-run-sap-dropout-forced-on",
    r"train-mode forward: it needs random numbers \(rngs\).*model\.eval\(\)",
    lambda t: api_error(
      lambda: sap_jax.nnx.run_sap(_nnx("dropout"), _X, _Y, _VX, _VY, n_trusted=8, alphas=(1e2,))
    ),
  ),
  Case(
    "nnx-evaluate-batchnorm-forced-train",
    r"the NNX model is a train-mode forward: its call changed its own state "
    r"\['bn/mean', 'bn/var'\].*use_running_average=False",
    lambda t: api_error(lambda: sap_jax.nnx.evaluate(_nnx("batch_stats"), _X, _Y)),
  ),
  Case(
    "nnx-activation-stats-batchnorm-forced-train",
    r"the NNX model is a train-mode forward: its call changed its own state",
    lambda t: api_error(lambda: sap_jax.nnx.activation_stats(_nnx("batch_stats"), [_X])),
  ),
  Case(
    "nnx-evaluate-call-takes-rngs",
    r"train-mode forward: it needs random numbers \(rngs\)",
    lambda t: api_error(lambda: sap_jax.nnx.evaluate(_NNXNeedsRngs(nnx.Rngs(0)), _X, _Y)),
  ),
  # a forward that ignores its variables
  Case(
    "run-sap-closure-forward",
    r"^apply_fn\(variables, x\) ignores its variables.*corrected variables would never "
    r"reach it; pass a forward that uses the variables it is given",
    lambda t: _run_sap(apply_fn=_closure_forward),
  ),
  Case(
    "sweep-closure-forward",
    r"ignores its variables",
    lambda t: api_error(
      lambda: sap_jax.sweep_alpha(
        _closure_forward, _model()[1], _stats_and_decomposition()[1], (1e2,), _VX, _VY
      )
    ),
  ),
  Case(
    "evaluate-closure-forward",
    r"ignores its variables",
    lambda t: _evaluate(apply_fn=_closure_forward),
  ),
  # probabilities instead of logits: a warning
  Case(
    "evaluate-softmax-output-warns",
    r"returns rows that are non-negative and sum to 1 \(probabilities.*sap_jax expects "
    r"logits.*drop the final softmax",
    lambda t: _warning(lambda: sap_jax.evaluate(_softmax_forward, _model()[1], _X, _Y)),
  ),
  Case(
    "predict-logits-softmax-output-warns",
    r"probabilities.*expects logits",
    lambda t: _warning(lambda: train.predict_logits(_softmax_forward, _model()[1], _X)),
  ),
  Case(
    "sweep-softmax-output-warns",
    r"probabilities.*expects logits",
    lambda t: _warning(
      lambda: sap_jax.sweep_alpha(
        _softmax_forward, _model()[1], _stats_and_decomposition()[1], (1e2,), _VX, _VY
      )
    ),
  ),
  # activation_stats given one array instead of batches
  Case(
    "activation-stats-numpy-array",
    r"^activation_stats: batches is one array of shape \(24, 4\), which would be read sample "
    r"by sample as batches; " + _BATCHED,
    lambda t: _stats(_X),
  ),
  Case(
    "activation-stats-jax-array",
    r"batches is one array of shape \(24, 4\).*" + _BATCHED,
    lambda t: _stats(jnp.asarray(_X)),
  ),
  Case(
    "activation-stats-memmap",
    r"batches is one array of shape \(24, 4\).*" + _BATCHED,
    lambda t: _stats(_memmap(t)),
    setup=_save(lambda: _X),
  ),
  Case(
    "activation-stats-nested-lists",
    r"batches is a list of samples \(nested lists of numbers\).*" + _BATCHED,
    lambda t: _stats(_X.tolist()),
  ),
  Case(
    "activation-stats-generator-of-rows",
    r"activation_stats batch at sample 0: a batch of shape \(4,\) gives an output of shape "
    r"\(3,\), not one row per sample.*" + _BATCHED,
    lambda t: _stats(row for row in _X),
  ),
  # trusted_influence on other samples than the decomposition's
  Case(
    "trusted-influence-fewer-samples",
    r"the 5 samples of x_trusted give layer '[^']+' 5 rows, but the decomposition's statistics "
    r"counted 10 \(10 samples\); pass exactly the samples the statistics were taken on",
    lambda t: _influence(_X[:5]),
  ),
  Case(
    "trusted-influence-other-samples",
    r"x_trusted are not the samples the decomposition's statistics were taken on \(layer "
    r"'[^']+': their rows' squared norms sum to",
    lambda t: _influence(_X[10:20]),
  ),
  Case(
    "trusted-influence-jax-more-samples",
    r"the 20 samples of x_trusted give .* counted 10",
    lambda t: _influence(jnp.asarray(_X[:20])),
  ),
]

CASES: list[Case] = [*ARRAY_LIKE_CASES, *MESSAGE_CASES]
