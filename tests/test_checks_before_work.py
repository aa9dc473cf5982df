"""Every argument of the correction entry points is refused before any work.

`run_sap` (arrays and sources), `sap_jax.nnx.run_sap`, `correct`, `sweep_alpha`,
`tune_alpha` and `sap-jax demo`/`correct` check their arguments before scoring,
statistics or training. "Before any work" is measured, not assumed: the models below
bump a Python counter from inside their forward with `jax.debug.callback`, which runs
only when a forward actually executes (eager or compiled), never in a shape-only trace
(`jax.eval_shape`, which the checks may use). Each refusal must leave the counter at 0;
the first tests show that a run that is not refused does bump it.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import nnx

import sap_jax
import sap_jax.nnx
from sap_jax import cli, source_pipeline
from sap_jax import train as train_mod
from sap_jax.data.sources import ArraySource
from sap_jax.trusted import trusted_set

K, D = 3, 4
FORWARDS = [0]


def _bump() -> None:
  FORWARDS[0] += 1


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    jax.debug.callback(_bump)  # runs once per executed forward, never in jax.eval_shape
    return nn.Dense(K, name="head")(nn.relu(nn.Dense(8, name="hidden")(x)))


class _NNXMLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(D, 8, rngs=rngs)
    self.head = nnx.Linear(8, K, rngs=rngs)

  def __call__(self, x):
    jax.debug.callback(_bump)
    return self.head(jax.nn.relu(self.hidden(x)))


_LINEN = _MLP()
APPLY = train_mod.eval_apply_fn(_LINEN)
VARIABLES = _LINEN.init(jax.random.key(0), np.zeros((1, D), np.float32))
_rng = np.random.default_rng(0)
X = _rng.normal(size=(48, D)).astype(np.float32)
Y = (np.arange(48) % K).astype(np.int32)
XV = _rng.normal(size=(24, D)).astype(np.float32)
YV = (np.arange(24) % K).astype(np.int32)
ALPHAS = (1e2, 1e3)


def _with(a: np.ndarray, index: int, value) -> np.ndarray:
  a = a.copy()
  a[index] = value
  return a


def refused_before_work(fn, match: str) -> None:
  """``fn()`` raises a ValueError matching ``match`` and runs no forward."""
  FORWARDS[0] = 0
  with pytest.raises(ValueError, match=match):
    fn()
  assert FORWARDS[0] == 0, f"{FORWARDS[0]} forward(s) ran before the refusal"


def _run_sap(**kw):
  args = dict(x_train=X, y_train=Y, x_val=XV, y_val=YV) | {
    k: kw.pop(k) for k in ("x_train", "y_train", "x_val", "y_val") if k in kw
  }
  return sap_jax.run_sap(
    APPLY, VARIABLES, *args.values(), **{"n_trusted": 8, "alphas": ALPHAS, **kw}
  )


@pytest.fixture(scope="module")
def decomposition():
  stats = sap_jax.activation_stats(APPLY, VARIABLES, [X[:16]])
  return sap_jax.decompose(VARIABLES, stats)


def test_the_counter_sees_compiled_forwards_and_not_shape_traces(decomposition):
  FORWARDS[0] = 0
  jax.eval_shape(APPLY, VARIABLES, jax.ShapeDtypeStruct((2, D), np.float32))
  assert FORWARDS[0] == 0
  result = _run_sap()
  assert FORWARDS[0] > 0 and result.sweep.alphas.tolist() == list(ALPHAS)
  FORWARDS[0] = 0
  sap_jax.sweep_alpha(APPLY, VARIABLES, decomposition, ALPHAS, XV, YV)
  assert FORWARDS[0] > 0


# ------------------------------------------------------------------ run_sap, by group

SPLITS = {
  "val-empty": (dict(x_val=XV[:0], y_val=YV[:0]), r"^split 'val': empty"),
  "val-lengths": (dict(y_val=YV[:5]), r"^split 'val' has 24 samples but 5 labels"),
  "val-label-out-of-range": (
    dict(y_val=_with(YV, 2, 7)),
    r"^split 'val': label 7 \(at index 2\) is outside \[0, 3\)",
  ),
  "eval-empty": (dict(eval_splits={"test": (XV[:0], YV[:0])}), r"^split 'test': empty"),
  "eval-lengths": (dict(eval_splits={"test": (XV, YV[:3])}), r"24 samples but 3 labels"),
  "eval-label-out-of-range": (
    dict(eval_splits={"test": (XV, _with(YV, 0, K))}),
    r"^split 'test': label 3 \(at index 0\) is outside \[0, 3\)",
  ),
  "eval-reserved-name": (
    dict(eval_splits={"val": (XV, YV)}),
    r"may not use the name 'val': it is the choice split",
  ),
  "eval-not-a-pair": (dict(eval_splits={"test": XV}), r"eval_splits\['test'\] must be an \(x, y\)"),
  "eval-not-a-dict": (dict(eval_splits=[(XV, YV)]), r"eval_splits must be a dict name"),
  "train-empty": (dict(x_train=X[:0], y_train=Y[:0]), r"^x_train: empty"),
  "train-lengths": (dict(y_train=Y[:5]), r"48 inputs but 5 labels"),
  "train-label-out-of-range": (dict(y_train=_with(Y, 1, 9)), r"label 9 .*outside \[0, 3\)"),
  "train-label-out-of-range-with-trusted": (
    dict(y_train=_with(Y, 1, 9), trusted=[0, 1, 2]),
    r"^x_train/y_train: label 9 .*outside \[0, 3\)",
  ),
}

ALPHA_GRIDS = {
  "empty": ((), r"alphas is empty"),
  "nan": ((1e2, float("nan")), r"alpha must be finite and > 0"),
  "inf": ((float("inf"),), r"alpha must be finite and > 0"),
  "zero": ((0.0, 1e3), r"alpha must be finite and > 0"),
  "negative": ((-1e3,), r"alpha must be finite and > 0"),
  "dict": ({"head": 1e3}, r"alphas is a grid of α values"),
  "text": (("1e3",), r"alphas must be a sequence of numbers"),
}

SELECTIONS = {
  "exclude-matches-nothing": (dict(exclude=("nope",)), r"'nope' matches no layer.*'hidden'"),
  "exclude-everything": (dict(exclude=("*",)), r"No layer left to project.*'hidden', 'head'"),
  "layer-range-selects-nothing": (dict(layer_range=(5, 9)), r"No layer left to project"),
  "layer-range-one-number": (dict(layer_range=(1,)), r"layer_range must be \(start, stop\)"),
  "layer-range-floats": (dict(layer_range=(0.5, 2)), r"layer_range must be \(start, stop\)"),
  "exclude-not-strings": (dict(exclude=(1,)), r"exclude holds glob patterns"),
}

COUNTS = {
  "n-trusted-0": (dict(n_trusted=0), r"n_trusted=0 trusts no sample; use 1 ≤ n_trusted ≤ 48"),
  "n-trusted-negative": (dict(n_trusted=-5), r"n_trusted=-5 trusts no sample"),
  "n-trusted-too-many": (dict(n_trusted=49), r"n_trusted=49 exceeds the 48 training samples"),
  "n-trusted-float": (dict(n_trusted=2.5), r"n_trusted must be an integer"),
  "n-trusted-bool": (dict(n_trusted=True), r"n_trusted must be an integer"),
  "rows-per-batch-0": (dict(rows_per_batch=0), r"rows_per_batch must be an integer ≥ 1 or None"),
  "rows-per-batch-float": (dict(rows_per_batch=2.5), r"rows_per_batch must be an integer"),
  "batch-size-0": (dict(batch_size=0), r"batch_size must be an integer ≥ 1"),
  "seed-float": (dict(seed=1.5), r"seed must be an integer"),
  "score-unknown": (dict(score="lowest"), r"Unknown score 'lowest'"),
  "method-unknown": (dict(method="svd"), r"method must be one of"),
}

TRUSTED = {
  "out-of-range": ([0, 1, 48], r"trusted index 48 \(at position 2\) is outside \[0, 48\)"),
  "negative": ([0, -1], r"trusted index -1 \(at position 1\) is outside"),
  "repeated": ([3, 4, 3], r"trusted index 3 appears 2 times"),
  "empty": ([], r"trusted is empty"),
  "floats": ([0.0, 1.0], r"trusted must be a 1-D sequence of integer indices"),
  "2-d": ([[0, 1]], r"trusted must be a 1-D sequence"),
  "boolean-mask": (np.arange(48) < 8, r"np\.flatnonzero\(mask\) for a boolean mask"),
}

TUNING = {
  "folds-above-val-size": (
    dict(folds=25),
    r"validation split has 24 samples, too few for folds=25",
  ),
  "folds-1": (dict(folds=1), r"folds must be an integer ≥ 2"),
  "steps-0": (dict(steps=0), r"steps must be an integer ≥ 1"),
  "learning-rate-negative": (
    dict(learning_rate=-0.1),
    r"learning_rate must be a finite number > 0",
  ),
  "penalty-nan": (dict(penalty=float("nan")), r"penalty must be finite and ≥ 0"),
  "unknown-option": (dict(momentum=0.9), r"unknown tune_options \['momentum'\]"),
}


def _ids(cases):
  return list(cases)


@pytest.mark.parametrize("name", _ids(SPLITS))
def test_run_sap_splits(name):
  kw, match = SPLITS[name]
  refused_before_work(lambda: _run_sap(**kw), match)


@pytest.mark.parametrize("name", _ids(ALPHA_GRIDS))
def test_run_sap_alpha_grids(name):
  alphas, match = ALPHA_GRIDS[name]
  refused_before_work(lambda: _run_sap(alphas=alphas), match)


@pytest.mark.parametrize("name", _ids(SELECTIONS))
def test_run_sap_layer_selection(name):
  kw, match = SELECTIONS[name]
  refused_before_work(lambda: _run_sap(**kw), match)


@pytest.mark.parametrize("name", _ids(COUNTS))
def test_run_sap_counts_and_options(name):
  kw, match = COUNTS[name]
  refused_before_work(lambda: _run_sap(**kw), match)


@pytest.mark.parametrize("name", _ids(TRUSTED))
def test_run_sap_trusted_indices(name):
  trusted, match = TRUSTED[name]
  refused_before_work(lambda: _run_sap(trusted=trusted), match)


@pytest.mark.parametrize("name", _ids(TUNING))
def test_run_sap_tune_options(name):
  options, match = TUNING[name]
  refused_before_work(lambda: _run_sap(tune="per_layer", tune_options=options), match)


def test_run_sap_tune_options_without_tune():
  refused_before_work(lambda: _run_sap(tune_options={"folds": 3}), r"without tune")


def test_run_sap_with_trusted_ignores_n_trusted():
  """Given the trusted indices, ``n_trusted`` (unused) is not held against the data."""
  result = _run_sap(trusted=[0, 1, 2, 3], n_trusted=1000)
  assert result.trusted_indices.tolist() == [0, 1, 2, 3]


# ------------------------------------------------------------------ the other entry points


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(n_trusted=0), r"n_trusted=0 trusts no sample"),
    (dict(alphas=()), r"alphas is empty"),
    (dict(exclude=("nope",)), r"'nope' matches no layer; the layers are \['hidden', 'head'\]"),
    (dict(eval_splits={"test": (XV, _with(YV, 3, 5))}), r"^split 'test': label 5"),
    (dict(trusted=[1, 1]), r"trusted index 1 appears 2 times"),
    (dict(tune="per_layer", tune_options={"folds": 30}), r"too few for folds=30"),
  ],
  ids=["n-trusted", "alphas", "exclude", "eval-label", "trusted", "folds"],
)
def test_nnx_run_sap(kw, match):
  model = _NNXMLP(nnx.Rngs(0))
  refused_before_work(
    lambda: sap_jax.nnx.run_sap(model, X, Y, XV, YV, **{"n_trusted": 8, "alphas": ALPHAS, **kw}),
    match,
  )


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(exclude=("*",)), r"No layer left to project"),
    (dict(layer_range=(3, None)), r"No layer left to project"),
    (dict(layer_range=2), r"layer_range must be \(start, stop\)"),
    (dict(rows_per_batch=-1), r"rows_per_batch must be an integer ≥ 1"),
    (dict(batch_size=0), r"batch_size must be an integer ≥ 1"),
    (dict(rounds=0), r"rounds must be an integer ≥ 1"),
    (dict(alpha=float("nan")), r"alpha must be finite and > 0"),
    (dict(alpha=0.0), r"alpha must be finite and > 0"),
  ],
  ids=["exclude", "layer-range", "layer-range-int", "rows", "batch", "rounds", "nan", "zero"],
)
def test_correct(kw, match):
  alpha = kw.pop("alpha", 1e3)
  refused_before_work(lambda: sap_jax.correct(APPLY, VARIABLES, X[:16], alpha, **kw), match)


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(alphas=()), r"alphas is empty"),
    (dict(alphas=(1e3, -1.0)), r"alpha must be finite and > 0"),
    (dict(y_val=YV[:4]), r"24 samples but 4 labels"),
    (dict(y_val=_with(YV, 0, K)), r"label 3 \(at index 0\) is outside"),
    (dict(eval_splits={"val": (XV, YV)}), r"may not use the name 'val'"),
    (dict(eval_splits={"test": (XV[:0], YV[:0])}), r"^split 'test': empty"),
    (dict(eval_splits={"test": (XV,)}), r"must be an \(x, y\) pair"),
    (dict(batch_size=0), r"batch_size must be an integer ≥ 1"),
  ],
  ids=["empty", "negative", "lengths", "label", "reserved", "eval-empty", "not-pair", "batch"],
)
def test_sweep_alpha(decomposition, kw, match):
  args = dict(alphas=ALPHAS, x_val=XV, y_val=YV) | kw
  refused_before_work(
    lambda: sap_jax.sweep_alpha(
      APPLY,
      VARIABLES,
      decomposition,
      args.pop("alphas"),
      args.pop("x_val"),
      args.pop("y_val"),
      **args,
    ),
    match,
  )


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(folds=25), r"validation split has 24 samples, too few for folds=25"),
    (dict(folds=2.0), r"folds must be an integer ≥ 2"),
    (dict(steps=0), r"steps must be an integer ≥ 1"),
    (dict(learning_rate=float("inf")), r"learning_rate must be a finite number > 0"),
    (dict(penalty=-1.0), r"penalty must be finite and ≥ 0"),
    (dict(y_val=YV[:10]), r"24 samples but 10 labels"),
  ],
  ids=["folds-too-many", "folds-float", "steps", "learning-rate", "penalty", "lengths"],
)
def test_tune_alpha(decomposition, kw, match):
  y_val = kw.pop("y_val", YV)
  refused_before_work(
    lambda: sap_jax.tune_alpha(APPLY, VARIABLES, decomposition, XV, y_val, 1e3, **kw), match
  )


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(n_trusted=0), r"n_trusted=0 trusts no sample; use 1 ≤ n_trusted ≤ 48"),
    (dict(n_trusted=3.5), r"n_trusted must be an integer"),
    (dict(alphas=(0.0,)), r"alpha must be finite and > 0"),
    (dict(exclude=("*",)), r"No layer left to project"),
    (dict(layer_range=(7, 8)), r"No layer left to project"),
    (dict(rows_per_batch=0), r"rows_per_batch must be an integer ≥ 1"),
    (dict(trusted=[0, 48]), r"trusted index 48 .*outside \[0, 48\)"),
    (dict(trusted=[2, 2]), r"trusted index 2 appears 2 times"),
    (dict(eval_splits={"val": None}), r"may not use the name 'val'"),
    (dict(tune_options={"folds": 3}), r"tune_options were given without tune"),
    (dict(tune="per_layer", tune_options={"folds": 99}), r"too few for folds=99"),
  ],
  ids=[
    "n-trusted",
    "n-trusted-float",
    "alphas",
    "exclude",
    "layer-range",
    "rows",
    "trusted-range",
    "trusted-repeated",
    "reserved",
    "tune-options",
    "tune-folds",
  ],
)
def test_run_sap_over_sources(kw, match):
  train, val = ArraySource(X, Y), ArraySource(XV, YV)
  opts = {"n_trusted": 8, "alphas": ALPHAS, **kw}
  refused_before_work(
    lambda: sap_jax.run_sap(APPLY, VARIABLES, train, None, val, None, **opts), match
  )
  # the source pipeline itself refuses the same
  refused_before_work(lambda: source_pipeline.run_sap(APPLY, VARIABLES, train, val, **opts), match)


_NO_DATA_AXIS = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("model",))


@pytest.mark.parametrize(
  "call",
  [
    lambda mesh: _run_sap(mesh=mesh),
    lambda mesh: sap_jax.run_sap(
      APPLY, VARIABLES, ArraySource(X, Y), None, ArraySource(XV, YV), None, n_trusted=8, mesh=mesh
    ),
    lambda mesh: sap_jax.evaluate(APPLY, VARIABLES, X, Y, mesh=mesh),
    lambda mesh: trusted_set(APPLY, VARIABLES, X, Y, 8, mesh=mesh),
    lambda mesh: train_mod.train_model(
      _LINEN, X, Y, train_mod.TrainConfig(epochs=1, batch_size=16), mesh=mesh, progress=False
    ),
  ],
  ids=["run_sap", "run_sap-sources", "evaluate", "trusted_set", "train_model"],
)
@pytest.mark.parametrize(
  "mesh, match",
  [
    (4, r"mesh must be a jax.sharding.Mesh with a 'data' axis .*; got int"),
    (_NO_DATA_AXIS, r"the mesh has axes \('model',\), no 'data' axis .*data_mesh\(\)"),
  ],
  ids=["not-a-mesh", "no-data-axis"],
)
def test_a_bad_mesh_is_refused_before_work(call, mesh, match):
  refused_before_work(lambda: call(mesh), match)


# ------------------------------------------------------------------ the command line


@pytest.mark.parametrize(
  "argv, match",
  [
    (["--n-trusted", "0"], r"--n-trusted: expected an integer >= 1, got '0'"),
    (["--n-trusted", "-3"], r"--n-trusted: expected an integer >= 1"),
    (["--n-trusted", "5000"], r"--n-trusted 5000 is more than the \d+ training samples"),
    (["--epochs", "0"], r"--epochs: expected an integer >= 1"),
  ],
  ids=["zero", "negative", "too-many", "epochs"],
)
def test_demo_checks_before_training(argv, match, monkeypatch, capsys):
  def no_training(*args, **kwargs):
    raise AssertionError("training started before the arguments were checked")

  monkeypatch.setattr(train_mod, "train_model", no_training)
  with pytest.raises(SystemExit) as exit_:
    code = cli.main(["--compilation-cache", "off", "demo", "--quiet", *argv])
    raise SystemExit(code)
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err and re.search(match, err.strip().splitlines()[-1]), err


@pytest.mark.parametrize(
  "alphas", ["nan", "1e3,inf", "0", "-1e3", ","], ids=["nan", "inf", "zero", "neg", "empty"]
)
def test_correct_command_checks_alphas_before_loading(alphas, tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(
      [
        "--compilation-cache",
        "off",
        "correct",
        str(tmp_path / "no-such-run"),
        "--out",
        str(tmp_path / "out"),
        f"--alphas={alphas}",
      ]
    )
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert "--alphas" in err and ("finite" in err or "at least one" in err), err
  assert not (tmp_path / "out").exists()
