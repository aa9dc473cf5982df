"""correct / sweep_alpha / select_layers / run_sap on small models."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sap_jax as sj


class _MLP(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Dense(16, name="first")(x))
    x = nn.relu(nn.Dense(16, name="hidden")(x))
    return nn.Dense(4, name="head")(x)


@pytest.fixture(scope="module")
def mlp():
  model = _MLP()
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (64, 10)))
  variables = model.init(jax.random.PRNGKey(1), x)
  apply_fn = functools.partial(model.apply, train=False)
  y = np.asarray(jnp.argmax(apply_fn(variables, x), -1))
  return apply_fn, variables, x, y


def test_correct_equals_manual_pipeline(mlp):
  apply_fn, variables, x, _ = mlp
  got = sj.correct(apply_fn, variables, x, 300.0, batch_size=10)
  stats = sj.activation_stats(apply_fn, variables, [x])
  want = sj.project_params(variables, sj.projections(stats, 300.0))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got, want)


def test_exclude_and_layer_range(mlp):
  apply_fn, variables, x, _ = mlp
  stats = sj.activation_stats(apply_fn, variables, [x])
  assert list(sj.select_layers(stats, exclude=("head",))) == [("first",), ("hidden",)]
  assert list(sj.select_layers(stats, layer_range=(1, None))) == [("hidden",), ("head",)]
  assert list(sj.select_layers(stats, layer_range=(0, -1), exclude=("f*",))) == [("hidden",)]
  with pytest.raises(ValueError, match="matches no layer"):
    sj.select_layers(stats, exclude=("classifier",))
  with pytest.raises(ValueError, match="No layer left"):
    sj.select_layers(stats, exclude=("*",))
  corrected = sj.correct(apply_fn, variables, x, 10.0, exclude=("head",))
  assert corrected["params"]["head"]["kernel"] is variables["params"]["head"]["kernel"]
  assert not np.allclose(corrected["params"]["first"]["kernel"], variables["params"]["first"]["kernel"])


def test_rounds_compose_with_alpha_times_ten(mlp):
  apply_fn, variables, x, _ = mlp
  two = sj.correct(apply_fn, variables, x, 5.0, rounds=2)
  once = sj.correct(apply_fn, variables, x, 5.0)
  manual = sj.correct(apply_fn, once, x, 50.0)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), two, manual)


def test_sweep_matches_one_correction_per_alpha(mlp):
  apply_fn, variables, x, y = mlp
  stats = sj.activation_stats(apply_fn, variables, [x[:32]])
  y_noisy = y.copy()
  y_noisy[::3] = (y_noisy[::3] + 1) % 4
  alphas = [1.0, 3.0, 10.0, 100.0, 1e4]
  result = sj.sweep_alpha(apply_fn, variables, stats, alphas, x[32:], y_noisy[32:], batch_size=7, alpha_chunk=2)
  for a, acc in zip(alphas, result.accuracies):
    corrected = sj.project_params(variables, sj.projections(stats, a))
    want = np.mean(np.argmax(apply_fn(corrected, x[32:]), -1) == y_noisy[32:])
    assert acc == pytest.approx(want)
  base = np.mean(np.argmax(apply_fn(variables, x[32:]), -1) == y_noisy[32:])
  assert result.baseline_accuracy == pytest.approx(base)
  if result.best_alpha is None:
    assert result.accuracies.max() <= base
  else:
    assert result.best_accuracy == result.accuracies.max() > base


def test_sweep_keeps_original_on_ties(mlp):
  apply_fn, variables, x, y = mlp
  stats = sj.activation_stats(apply_fn, variables, [x])
  # On its own predictions the original model is perfect: nothing can beat it,
  # and a huge α that reproduces it exactly only ties.
  result = sj.sweep_alpha(apply_fn, variables, stats, [1e9], x, y)
  assert result.baseline_accuracy == 1.0
  assert result.accuracies[0] == 1.0
  assert result.best_alpha is None and result.best_accuracy == 1.0


def test_run_sap_end_to_end_bookkeeping(mlp):
  apply_fn, variables, x, y = mlp
  result = sj.run_sap(apply_fn, variables, x, y, x, y, n_trusted=20, alphas=[1.0, 1e9])
  assert len(result.trusted_indices) == 20
  assert set(result.timings) == {"scores", "stats", "sweep", "project", "total"}
  assert set(result.layers) == {"first", "hidden", "head"}
  assert result.alpha is None  # nothing beats the model on its own predictions
  assert result.variables["params"]["head"]["kernel"] is variables["params"]["head"]["kernel"]


def test_run_sap_returns_the_model_the_sweep_scored(mlp):
  apply_fn, variables, x, y = mlp
  # Validation labels = the predictions of the model corrected at α = 3 on the
  # trusted set run_sap will pick, so that α beats the unchanged model.
  trusted = sj.select_trusted(sj.per_example_loss(apply_fn, variables, x, y), y, 30)
  target = sj.correct(apply_fn, variables, x[trusted], 3.0)
  y_val = np.asarray(jnp.argmax(apply_fn(target, x), -1))
  assert np.mean(y_val != y) > 0.05
  result = sj.run_sap(apply_fn, variables, x, y, x, y_val, n_trusted=30, alphas=[1e4, 3.0])
  assert result.alpha == 3.0
  acc = np.mean(np.argmax(apply_fn(result.variables, x), -1) == y_val)
  assert acc == result.sweep.best_accuracy > result.sweep.baseline_accuracy
  # the summary reuses the sweep's spectra: same effective rank as from scratch
  stats = sj.activation_stats(apply_fn, variables, [x[result.trusted_indices]])
  fresh = sj.stats_summary(stats)
  for name, layer in result.layers.items():
    assert layer["effective_rank"] == pytest.approx(fresh[name]["effective_rank"], rel=1e-4)
    assert layer["rows"] == fresh[name]["rows"] == 30


def test_compilations_are_reused_across_calls(mlp):
  import importlib

  # (sap_jax.correct is also the name of the function the package exports)
  cr = importlib.import_module("sap_jax.correct")
  st = importlib.import_module("sap_jax.stats")
  tt = importlib.import_module("sap_jax.trusted")

  apply_fn, variables, x, y = mlp
  kw = dict(n_trusted=30, alphas=[1.0, 10.0])
  sj.run_sap(apply_fn, variables, x, y, x[:40], y[:40], **kw)
  fns = (tt._losses_jit, st._accumulate, cr._count_jit, cr._project_jit, cr._rotate_jit, cr._eigh_jit)
  sizes = [f._cache_size() for f in fns]
  sj.run_sap(apply_fn, variables, x, y, x[:40], y[:40], **kw)
  assert [f._cache_size() for f in fns] == sizes


def test_errors(mlp):
  apply_fn, variables, x, y = mlp
  with pytest.raises(ValueError, match="empty"):
    sj.correct(apply_fn, variables, x[:0], 10.0)
  with pytest.raises(ValueError, match="alpha"):
    sj.correct(apply_fn, variables, x, -3.0)
  with pytest.raises(ValueError, match="NaN or Inf"):
    sj.correct(apply_fn, variables, np.full_like(x, np.nan), 10.0)
  with pytest.raises(ValueError, match="n_trusted"):
    sj.run_sap(apply_fn, variables, x, y, x, y, n_trusted=65)
  stats = sj.activation_stats(apply_fn, variables, [x])
  with pytest.raises(ValueError, match="empty"):
    sj.sweep_alpha(apply_fn, variables, stats, [], x, y)
  with pytest.raises(ValueError, match="samples"):
    sj.sweep_alpha(apply_fn, variables, stats, [10.0], x, y[:5])
