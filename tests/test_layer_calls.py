"""Which call of a layer called more than once per forward counts (``calls``).

A layer applied twice (big_vision's ViT ``head``: on the tokens, then on the pooled
vector) sums the rows of both calls by default, with a warning. ``calls={layer: k}``
makes only call k's inputs count. Checked here against a slow obvious implementation:
every Dense call's input captured with `flax.linen.intercept_methods` (nothing of
sap_jax), its Gram matrix and SAP projection P = V diag(λ(α)) Vᵀ computed in float64
numpy; every refusal comes before the first executed forward; the command line's
``--layer-call NAME=K`` becomes ``calls`` (its run end to end, on a trained checkpoint:
tests/bad_input_cases_cli.py, ``cli_correct_layer_call_*``).
"""

from __future__ import annotations

import json
import warnings

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import nnx

import sap_jax
import sap_jax.nnx
from sap_jax import source_pipeline
from sap_jax.cli.commands import build_parser
from sap_jax.data.sources import ArraySource
from sap_jax.stats.calls import RepeatedLayer, chosen_calls, layer_calls
from tests.child_processes import run_devices_child

B, T, D = 8, 5, 2  # samples, tokens, features
FORWARDS = [0]


def _bump() -> None:
  FORWARDS[0] += 1


class _Shared(nn.Module):
  """Two layers called twice: ``embed`` on the tokens and on their mean, ``head`` on the
  tokens (output unused) and on the pooled vector; ``out`` called once.
  Calls in forward order: embed 0, head 0, embed 1, head 1, out."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    jax.debug.callback(_bump)  # once per executed forward, never in a shape-only trace
    embed, head = nn.Dense(6, name="embed"), nn.Dense(4, name="head")
    tokens = embed(x)  # (B, T, 6): B·T rows
    head(tokens)  # B·T rows, its output unused
    pooled = tokens.mean(1) + embed(x.mean(1))  # B rows
    return nn.Dense(3, name="out")(nn.relu(head(pooled)))  # B rows


MODEL = _Shared()
X = np.random.default_rng(0).normal(size=(B, T, D)).astype(np.float32)
VARIABLES = MODEL.init(jax.random.PRNGKey(0), X)
APPLY = MODEL.apply
LAYERS = [("embed",), ("head",), ("out",)]


def call_inputs(x: np.ndarray) -> dict[str, list[np.ndarray]]:
  """Every Dense call's input rows (float64), per layer name, in call order."""
  seen: dict[str, list[np.ndarray]] = {}

  def grab(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, nn.Dense):
      rows = np.asarray(args[0], np.float64)
      seen.setdefault(context.module.name, []).append(rows.reshape(-1, rows.shape[-1]))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(grab):
    MODEL.apply(VARIABLES, x)
  return seen


def projection_by_hand(rows: np.ndarray, alpha: float) -> np.ndarray:
  """P = V diag(λ) Vᵀ, λ = α σ̃ / ((α − 1) σ̃ + 1), σ̃ = σ² / Σσ², from the SVD of R."""
  _, s, vt = np.linalg.svd(rows, full_matrices=False)
  sigma = s**2 / np.sum(s**2)
  lam = alpha * sigma / ((alpha - 1.0) * sigma + 1.0)
  return vt.T @ np.diag(lam) @ vt


def _close(got, want) -> None:
  want = np.asarray(want, np.float64)
  np.testing.assert_allclose(
    np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-5 * abs(want).max()
  )


def _no_warning(fn):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    return fn()


# ------------------------------------------------------------------ the statistics


@pytest.mark.parametrize("k", [0, 1])
def test_a_chosen_call_counts_only_its_own_inputs(k):
  inputs = call_inputs(X)
  stats = sap_jax.activation_stats(APPLY, VARIABLES, [X], calls={"head": k, "embed": 1 - k})
  for name, call in (("head", k), ("embed", 1 - k)):
    rows = inputs[name][call]
    _close(stats[(name,)].gram, rows.T @ rows)
    assert float(stats[(name,)].count) == len(rows)
  rows = inputs["out"][0]
  _close(stats[("out",)].gram, rows.T @ rows)
  assert list(stats) == LAYERS  # first-call order, whichever call counts


def test_all_sums_every_call_as_before():
  x = X[:7]  # a batch shape of its own: the warning comes from the trace, once per program
  inputs = call_inputs(x)
  with pytest.warns(UserWarning, match=r"'embed' 2 times \(rows per call 35, 7\); 'head' 2"):
    summed = sap_jax.activation_stats(APPLY, VARIABLES, [x], calls="all")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    default = sap_jax.activation_stats(APPLY, VARIABLES, [x])
  for path in LAYERS:
    want = sum(r.T @ r for r in inputs[path[0]])
    _close(summed[path].gram, want)
    assert np.array_equal(summed[path].gram, default[path].gram)
    assert float(summed[path].count) == sum(len(r) for r in inputs[path[0]])


def test_a_choice_silences_the_warning_for_its_layer_only():
  x = X[:6]  # a batch shape of its own (see above)
  with pytest.warns(UserWarning) as record:
    sap_jax.activation_stats(APPLY, VARIABLES, [x], calls={"head": 1})
  text = " ".join(str(w.message) for w in record)
  assert "'embed' 2 times" in text and "'head'" not in text
  _no_warning(
    lambda: sap_jax.activation_stats(APPLY, VARIABLES, [x[:5]], calls={"embed": 0, "head": 0})
  )


def test_layers_are_keyed_by_name_or_path_tuple():
  by_name = sap_jax.activation_stats(APPLY, VARIABLES, [X], calls={"head": 1, "embed": 0})
  by_path = sap_jax.activation_stats(APPLY, VARIABLES, [X], calls={("head",): 1, ("embed",): 0})
  for path in LAYERS:
    assert np.array_equal(by_name[path].gram, by_path[path].gram)


def test_several_batches_and_the_qr_basis_count_the_same_call():
  x2 = np.random.default_rng(1).normal(size=(B, T, D)).astype(np.float32)
  rows = np.concatenate([call_inputs(X)["head"][1], call_inputs(x2)["head"][1]])
  choice = {"head": 1, "embed": 1}
  stats = sap_jax.activation_stats(APPLY, VARIABLES, iter([X, x2]), calls=choice)
  _close(stats[("head",)].gram, rows.T @ rows)
  factors = sap_jax.activation_stats(APPLY, VARIABLES, [X, x2], calls=choice, basis="qr")
  f = np.asarray(factors[("head",)].factor, np.float64)
  _close(f.T @ f, rows.T @ rows)
  assert list(factors) == LAYERS


def test_a_batch_sharded_over_devices_counts_the_same_call():
  """4 CPU devices in a child process (tests/layer_calls_child.py): each device's partial
  sums see only the chosen calls, combined once."""
  out = json.loads(run_devices_child(["tests.layer_calls_child"], devices=4).stdout)
  assert out["order"] == ["embed", "head", "out"]
  for name in out["order"]:
    _close(out["gram"][name], out["hand"][name])
    assert out["count"][name] == out["rows"][name]


def test_chosen_calls_reads_the_trace():
  found = layer_calls(APPLY, VARIABLES, X)
  assert found == {("embed",): (B * T, B), ("head",): (B * T, B), ("out",): (B,)}
  assert chosen_calls("all", found) == ()
  assert chosen_calls({"head": 1, ("embed",): 0}, found) == ((("embed",), 0), (("head",), 1))


# ------------------------------------------------------------------ the correction


@pytest.mark.parametrize("k", [0, 1])
def test_the_corrected_kernel_is_the_chosen_calls_projection(k):
  alpha = 30.0
  inputs = call_inputs(X)
  got = sap_jax.correct(APPLY, VARIABLES, X, alpha, calls={"head": k, "embed": 0}, method="eigh")
  for name, call in (("head", k), ("embed", 0), ("out", 0)):
    kernel = np.asarray(VARIABLES["params"][name]["kernel"], np.float64)
    want = projection_by_hand(inputs[name][call], alpha) @ kernel
    np.testing.assert_allclose(got["params"][name]["kernel"], want, rtol=1e-4, atol=1e-5)


def _labels(x):
  return np.asarray(np.argmax(APPLY(VARIABLES, x), -1), np.int32)


def test_run_sap_reports_which_call_counted():
  x = np.random.default_rng(2).normal(size=(40, T, D)).astype(np.float32)
  y = _labels(x)
  with pytest.warns(UserWarning, match="'embed' 2 times") as record:
    result = sap_jax.run_sap(
      APPLY, VARIABLES, x, y, x, y, n_trusted=20, alphas=[10.0], calls={"head": 1}
    )
  assert not any("'head'" in str(w.message) for w in record)
  assert result.repeated == (
    RepeatedLayer("embed", 2, (40 * T, 40), None),
    RepeatedLayer("head", 2, (40 * T, 40), 1),
  )
  assert result.layers["head"]["rows"] == 20  # one row per trusted sample: call 1 only
  assert result.layers["embed"]["rows"] == 20 * T + 20  # both calls
  sources = source_pipeline.run_sap(
    APPLY,
    VARIABLES,
    ArraySource(x, y),
    ArraySource(x, y),
    n_trusted=20,
    alphas=[10.0],
    calls={"head": 1, "embed": 0},
    trusted=result.trusted_indices,
  )
  assert [r.counted for r in sources.repeated] == [0, 1]
  assert sources.layers["head"]["rows"] == 20 and sources.layers["embed"]["rows"] == 20 * T


class _NNXShared(nnx.Module):
  """An NNX twin: ``head`` on the hidden features, then on the input itself."""

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(3, 3, rngs=rngs)
    self.head = nnx.Linear(3, 2, rngs=rngs)

  def __call__(self, x):
    jax.debug.callback(_bump)
    h = jax.nn.relu(self.hidden(x))
    return self.head(h) + self.head(2.0 * x)


def test_nnx_statistics_count_the_chosen_call():
  model = _NNXShared(nnx.Rngs(0))
  x = np.random.default_rng(3).normal(size=(12, 3)).astype(np.float32)
  kernel, bias = np.asarray(model.hidden.kernel[...]), np.asarray(model.hidden.bias[...])
  first = np.maximum(x.astype(np.float64) @ kernel + bias, 0.0)  # head's call 0 input
  second = 2.0 * x.astype(np.float64)  # its call 1 input
  for k, rows in ((0, first), (1, second)):
    choice = {"head": k}
    stats = _no_warning(lambda: sap_jax.nnx.activation_stats(model, [x], calls=choice))  # noqa: B023
    _close(stats[("head",)].gram, rows.T @ rows)
  y = np.zeros(12, np.int32)
  result = sap_jax.nnx.run_sap(model, x, y, x, y, n_trusted=6, alphas=[10.0], calls={"head": 0})
  assert result.repeated == (RepeatedLayer("head", 2, (12, 12), 0),)


# ------------------------------------------------------------------ refusals, before any work

REFUSALS = {
  "unknown-layer": (
    {"heed": 1},
    r"calls names no layer \['heed'\]; the layers are \['embed', 'head', 'out'\]",
  ),
  "called-once": (
    {"out": 0},
    r"layer 'out' is called once per forward.*called more than once are \['embed', 'head'\]. Drop 'out'",
  ),
  "out-of-range": (
    {"head": 2},
    r"calls\['head'\]=2: layer 'head' is called 2 times per forward \(call numbers 0 to 1",
  ),
  "negative": ({"head": -1}, r"calls\['head'\] must be a call number \(an integer ≥ 0"),
  "float": ({"head": 1.0}, r"calls\['head'\] must be a call number"),
  "bool": ({"head": True}, r"calls\['head'\] must be a call number"),
  "text": ("last", r'calls must be "all" or a dict, got \'last\''),
  "list": ([1], r'calls must be "all" or a dict'),
  "key-type": ({1: 1}, r"calls keys are layer names such as 'embed' or path tuples, got 1"),
  "twice": ({"head": 1, ("head",): 0}, r"calls gives layer 'head' twice"),
}


def refused_before_work(fn, match: str) -> None:
  FORWARDS[0] = 0
  with pytest.raises(ValueError, match=match):
    fn()
  assert FORWARDS[0] == 0, f"{FORWARDS[0]} forward(s) ran before the refusal"


def test_the_counter_sees_executed_forwards():
  FORWARDS[0] = 0
  sap_jax.activation_stats(APPLY, VARIABLES, [X], calls={"head": 1, "embed": 1})
  assert FORWARDS[0] > 0


@pytest.mark.parametrize("name", list(REFUSALS))
def test_a_bad_choice_is_refused_before_any_work(name):
  calls, match = REFUSALS[name]
  x = np.concatenate([X] * 3)
  y = np.zeros(len(x), np.int32)
  opts = dict(n_trusted=8, alphas=[10.0], calls=calls)
  refused_before_work(lambda: sap_jax.activation_stats(APPLY, VARIABLES, [X], calls=calls), match)
  refused_before_work(lambda: sap_jax.run_sap(APPLY, VARIABLES, x, y, x, y, **opts), match)
  refused_before_work(lambda: sap_jax.correct(APPLY, VARIABLES, x, 10.0, calls=calls), match)
  src = ArraySource(x, y)
  refused_before_work(
    lambda: sap_jax.run_sap(APPLY, VARIABLES, src, None, src, None, **opts), match
  )


def test_nnx_run_sap_refuses_before_any_work():
  model = _NNXShared(nnx.Rngs(0))
  x = np.ones((6, 3), np.float32)
  y = np.zeros(6, np.int32)
  run = lambda calls: sap_jax.nnx.run_sap(model, x, y, x, y, n_trusted=3, calls=calls)  # noqa: E731
  refused_before_work(lambda: run({"head": 2}), r"layer 'head' is called 2 times")
  refused_before_work(lambda: run({"hidden": 0}), r"layer 'hidden' is called once")
  refused_before_work(lambda: run({"head/kernel": 0}), r"the layers are \['hidden', 'head'\]")


# ------------------------------------------------------------------ the command line


def _parse(*flags):
  return build_parser().parse_args(["correct", "ckpt", "--out", "o", *flags])


def test_layer_call_flags_become_the_calls_option():
  assert _parse().layer_call is None
  args = _parse("--layer-call", "head=1", "--layer-call", "blocks/0/mlp=0")
  assert args.layer_call == {"head": 1, "blocks/0/mlp": 0}


@pytest.mark.parametrize("flag", ["head", "head=", "=1", "head=-1", "head=one", "head=1.0"])
def test_a_malformed_layer_call_flag_is_refused(flag, capsys):
  with pytest.raises(SystemExit) as exit_:
    _parse("--layer-call", flag)
  assert exit_.value.code == 2
  assert "--layer-call: expected NAME=K such as head=1" in capsys.readouterr().err


def test_a_layer_given_twice_is_refused(capsys):
  with pytest.raises(SystemExit):
    _parse("--layer-call", "head=1", "--layer-call", "head=0")
  assert "gives layer 'head' twice (head=1 and head=0)" in capsys.readouterr().err
