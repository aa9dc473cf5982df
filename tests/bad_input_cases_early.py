"""Arguments refused before any work (the catalogue's cases for issue 25, item 1).

Every case gives one entry point (`run_sap` on arrays and on sources, `sweep_alpha`,
`tune_alpha`, `correct`) one bad argument other than the inputs and labels themselves:
a trusted-set size that is not an integer in range, an α grid that is empty, NaN or
≤ 0, an ``exclude`` / ``layer_range`` that leaves no layer, a ``calls`` choice of a
layer the forward does not call more than once, a row budget, caller-chosen
trusted indices out of range or repeated, an eval split with the reserved name or the
wrong shape, tuning options the validation split cannot serve. tests/test_checks_before_work.py
shows that each such refusal comes before the first forward; here each message is held
to naming the problem and the fix. The model is the 2-layer MLP of
tests/bad_input_cases_api.py (4 features, 3 classes; its layers in call order are
"Dense_1", the hidden layer, then "Dense_0", the head).
"""

from __future__ import annotations

import functools

import sap_jax
from sap_jax.data.sources import ArraySource
from tests.bad_input_case import Case, api_error
from tests.bad_input_cases_api import _data, _model, _with

_X, _Y = _data()  # 24 training samples
_XV, _YV = _data(12, seed=1)  # 12 validation samples


def _run_sap(**kw) -> str:
  fn, v = _model()
  data = dict(x_train=_X, y_train=_Y, x_val=_XV, y_val=_YV)
  data.update({k: kw.pop(k) for k in list(kw) if k in data})
  opts = {"n_trusted": 8, "alphas": (1e2, 1e3), **kw}
  return api_error(lambda: sap_jax.run_sap(fn, v, *data.values(), **opts))


def _run_sap_sources(**kw) -> str:
  fn, v = _model()
  train, val = ArraySource(_X, _Y), ArraySource(_XV, _YV)
  opts = {"n_trusted": 8, "alphas": (1e2, 1e3), **kw}
  return api_error(lambda: sap_jax.run_sap(fn, v, train, None, val, None, **opts))


@functools.cache
def _decomposition():
  fn, v = _model()
  return sap_jax.decompose(v, sap_jax.activation_stats(fn, v, [_X]))


def _sweep(**kw) -> str:
  fn, v = _model()
  alphas = kw.pop("alphas", (1e2,))
  return api_error(lambda: sap_jax.sweep_alpha(fn, v, _decomposition(), alphas, _XV, _YV, **kw))


def _tune(**kw) -> str:
  fn, v = _model()
  return api_error(lambda: sap_jax.tune_alpha(fn, v, _decomposition(), _XV, _YV, 1e3, **kw))


def _correct(**kw) -> str:
  fn, v = _model()
  return api_error(lambda: sap_jax.correct(fn, v, _X[:8], 1e3, **kw))


CASES: list[Case] = [
  # ---- the trusted-set size
  Case(
    "run-sap-n-trusted-zero",
    r"n_trusted=0 trusts no sample; use 1 ≤ n_trusted ≤ 24",
    lambda t: _run_sap(n_trusted=0),
  ),
  Case(
    "run-sap-n-trusted-above-train-size",
    r"n_trusted=25 exceeds the 24 training samples; use 1 ≤ n_trusted ≤ 24",
    lambda t: _run_sap(n_trusted=25),
  ),
  Case(
    "run-sap-n-trusted-float",
    r"n_trusted must be an integer .*got 8\.5",
    lambda t: _run_sap(n_trusted=8.5),
  ),
  # ---- the α grid
  Case(
    "run-sap-empty-alpha-grid",
    r"alphas is empty; give at least one α",
    lambda t: _run_sap(alphas=()),
  ),
  Case(
    "run-sap-nan-in-alpha-grid",
    r"alpha must be finite and > 0",
    lambda t: _run_sap(alphas=(1e3, float("nan"))),
  ),
  Case("run-sap-zero-alpha", r"alpha must be finite and > 0", lambda t: _run_sap(alphas=(0.0,))),
  Case(
    "run-sap-alpha-grid-as-text",
    r"alphas must be a sequence of numbers",
    lambda t: _run_sap(alphas=("1e3",)),
  ),
  Case("sweep-empty-alpha-grid", r"alphas is empty", lambda t: _sweep(alphas=[])),
  # ---- the layer selection (a shape-only trace finds the layers)
  Case(
    "run-sap-exclude-matches-no-layer",
    r"exclude pattern 'classifier' matches no layer; the layers are \['Dense_1', 'Dense_0'\]",
    lambda t: _run_sap(exclude=("classifier",)),
  ),
  Case(
    "run-sap-exclude-every-layer",
    r"No layer left to project after exclude=\('Dense_\*',\).*loosen the selection",
    lambda t: _run_sap(exclude="Dense_*"),
  ),
  Case(
    "run-sap-layer-range-selects-nothing",
    r"No layer left to project after .*layer_range=\(2, None\)",
    lambda t: _run_sap(layer_range=(2, None)),
  ),
  Case(
    "correct-layer-range-selects-nothing",
    r"No layer left to project",
    lambda t: _correct(layer_range=(0, 0)),
  ),
  Case(
    "correct-layer-range-not-a-pair",
    r"layer_range must be \(start, stop\)",
    lambda t: _correct(layer_range=1),
  ),
  # ---- which call counts of a layer called more than once (`calls`; this MLP calls each once)
  Case(
    "run-sap-calls-unknown-layer",
    r"calls names no layer \['classifier'\]; the layers are \['Dense_1', 'Dense_0'\]",
    lambda t: _run_sap(calls={"classifier": 1}),
  ),
  Case(
    "run-sap-calls-layer-called-once",
    r"layer 'Dense_0' is called once per forward, so there is no call to choose; no layer "
    r"is called more than once\. Drop 'Dense_0' from calls",
    lambda t: _run_sap(calls={"Dense_0": 1}),
  ),
  Case(
    "run-sap-sources-calls-number-as-text",
    r"calls\['Dense_0'\] must be a call number \(an integer ≥ 0.*got '1'",
    lambda t: _run_sap_sources(calls={"Dense_0": "1"}),
  ),
  Case(
    "correct-calls-not-a-dict",
    r'calls must be "all" or a dict, got 1; pass calls="all"',
    lambda t: _correct(calls=1),
  ),
  # ---- row budget
  Case(
    "run-sap-rows-per-batch-zero",
    r"rows_per_batch must be an integer ≥ 1 or None, got 0",
    lambda t: _run_sap(rows_per_batch=0),
  ),
  Case(
    "correct-rows-per-batch-negative",
    r"rows_per_batch must be an integer ≥ 1 or None, got -4",
    lambda t: _correct(rows_per_batch=-4),
  ),
  # ---- caller-chosen trusted indices
  Case(
    "run-sap-trusted-index-out-of-range",
    r"trusted index 24 \(at position 1\) is outside \[0, 24\)",
    lambda t: _run_sap(trusted=[0, 24]),
  ),
  Case(
    "run-sap-trusted-index-negative",
    r"trusted index -1 \(at position 0\) is outside \[0, 24\).*no negative",
    lambda t: _run_sap(trusted=[-1, 3]),
  ),
  Case(
    "run-sap-trusted-index-repeated",
    r"trusted index 5 appears 2 times; pass each sample once",
    lambda t: _run_sap(trusted=[5, 6, 5]),
  ),
  Case(
    "run-sap-sources-trusted-index-repeated",
    r"trusted index 2 appears 3 times",
    lambda t: _run_sap_sources(trusted=[2, 2, 2]),
  ),
  # ---- splits
  Case(
    "run-sap-eval-split-named-val",
    r"eval_splits may not use the name 'val'.*name it e\.g\. 'val_clean'",
    lambda t: _run_sap(eval_splits={"val": (_XV, _YV)}),
  ),
  Case(
    "run-sap-eval-split-length-mismatch",
    r"split 'test' has 12 samples but 11 labels",
    lambda t: _run_sap(eval_splits={"test": (_XV, _YV[:11])}),
  ),
  Case(
    "run-sap-eval-split-label-out-of-range",
    r"split 'test': label 3 \(at index 4\) is outside \[0, 3\)",
    lambda t: _run_sap(eval_splits={"test": (_XV, _with(_YV, 4, 3))}),
  ),
  Case(
    "run-sap-eval-split-not-a-pair",
    r"eval_splits\['test'\] must be an \(x, y\) pair",
    lambda t: _run_sap(eval_splits={"test": _XV}),
  ),
  Case(
    "run-sap-empty-val", r"split 'val': empty", lambda t: _run_sap(x_val=_XV[:0], y_val=_YV[:0])
  ),
  Case(
    "run-sap-sources-eval-split-named-val",
    r"may not use the name 'val'",
    lambda t: _run_sap_sources(eval_splits={"val": ArraySource(_XV, _YV)}),
  ),
  # ---- tuning
  Case(
    "run-sap-tune-folds-above-val-size",
    r"validation split has 12 samples, too few for folds=13.*folds ≤ 12",
    lambda t: _run_sap(tune="per_layer", tune_options={"folds": 13}),
  ),
  Case(
    "run-sap-tune-steps-zero",
    r"steps must be an integer ≥ 1, got 0",
    lambda t: _run_sap(tune="per_layer", tune_options={"steps": 0}),
  ),
  Case("tune-alpha-one-fold", r"folds must be an integer ≥ 2, got 1", lambda t: _tune(folds=1)),
  Case(
    "tune-alpha-learning-rate-nan",
    r"learning_rate must be a finite number > 0",
    lambda t: _tune(learning_rate=float("nan")),
  ),
]
