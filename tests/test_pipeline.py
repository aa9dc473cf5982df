"""run_sap: the whole recipe, its bookkeeping, and compile-once reuse."""

import jax.numpy as jnp
import numpy as np
import pytest

import sap_jax as sj
from sap_jax.compile_cache import cache_sizes


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


def test_run_sap_scores_eval_splits_without_letting_them_choose(mlp):
  apply_fn, variables, x, y = mlp
  trusted = sj.select_trusted(sj.per_example_loss(apply_fn, variables, x, y), y, 30)
  target = sj.correct(apply_fn, variables, x[trusted], 3.0)
  y_other = np.asarray(jnp.argmax(apply_fn(target, x), -1))
  # The choice split is the model's own predictions (nothing beats it); the extra
  # split would prefer α = 3, but must not change the choice.
  result = sj.run_sap(
    apply_fn,
    variables,
    x,
    y,
    x,
    y,
    n_trusted=30,
    alphas=[1e4, 3.0],
    eval_splits={"other": (x, y_other)},
  )
  assert result.alpha is None
  assert set(result.sweep.splits) == {"val", "other"}
  assert result.sweep.best_for("other")[0] == 3.0
  assert result.sweep.accuracy_at("other", 3.0) == np.mean(y_other == y_other)
  assert result.sweep.accuracy_at("other", None) == pytest.approx(np.mean(y == y_other))
  # the decomposition the result carries gives the α-3 model the extra split scored
  at3 = sj.apply_alpha(variables, result.decomposition, 3.0)
  assert np.mean(np.argmax(apply_fn(at3, x), -1) == y_other) == result.sweep.accuracy_at(
    "other", 3.0
  )


def test_compilations_are_reused_across_calls(mlp):
  apply_fn, variables, x, y = mlp
  kw = dict(n_trusted=30, alphas=[1.0, 10.0])
  sj.run_sap(apply_fn, variables, x, y, x[:40], y[:40], **kw)
  sizes = cache_sizes()
  sj.run_sap(apply_fn, variables, x, y, x[:40], y[:40], **kw)
  assert cache_sizes() == sizes


def test_errors(mlp):
  apply_fn, variables, x, y = mlp
  with pytest.raises(ValueError, match="n_trusted"):
    sj.run_sap(apply_fn, variables, x, y, x, y, n_trusted=65)


def test_run_sap_tune_per_layer_returns_the_tuned_model(mlp):
  """tune="per_layer": the model at the tuned α (same bases), the tuning recorded, and
  the same choice as `tune_alpha` from the grid's α."""
  apply_fn, variables, x, y = mlp
  trusted = sj.select_trusted(sj.per_example_loss(apply_fn, variables, x, y), y, 30)
  target = sj.correct(apply_fn, variables, x[trusted], 3.0)
  y_val = np.asarray(jnp.argmax(apply_fn(target, x), -1))
  options = {"folds": 3, "steps": 5}
  result = sj.run_sap(
    apply_fn,
    variables,
    x,
    y,
    x,
    y_val,
    n_trusted=30,
    alphas=[1e4, 3.0],
    tune="per_layer",
    tune_options=options,
    seed=4,
  )
  assert result.alpha == 3.0 and result.tuning is not None
  want = sj.tune_alpha(apply_fn, variables, result.decomposition, x, y_val, 3.0, seed=4, **options)
  assert result.tuning.alpha == want.alpha
  corrected = sj.apply_alpha(variables, result.decomposition, want.alpha)
  np.testing.assert_array_equal(
    result.variables["params"]["head"]["kernel"], corrected["params"]["head"]["kernel"]
  )
  plain = sj.run_sap(apply_fn, variables, x, y, x, y_val, n_trusted=30, alphas=[1e4, 3.0])
  assert plain.tuning is None


def test_run_sap_tune_errors(mlp):
  apply_fn, variables, x, y = mlp
  with pytest.raises(ValueError, match="tune must be one of"):
    sj.run_sap(apply_fn, variables, x, y, x, y, n_trusted=20, tune="global")
  with pytest.raises(ValueError, match="unknown tune_options"):
    sj.run_sap(
      apply_fn, variables, x, y, x, y, n_trusted=20, tune="per_layer", tune_options={"lr": 1}
    )
  with pytest.raises(ValueError, match="without tune"):
    sj.run_sap(apply_fn, variables, x, y, x, y, n_trusted=20, tune_options={"steps": 3})


def test_run_sap_refuses_a_lifted_transform_before_scoring(monkeypatch):
  import functools

  import flax.linen as nn
  import jax

  import sap_jax.trusted as tr

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
      return nn.relu(nn.Dense(8)(x)), None

  class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.Dense(8)(x)
      scan = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
      x, _ = scan(name="enc")(x, None)
      return nn.Dense(3, name="head")(x)

  model = Scanned()
  x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
  y = np.zeros(40, np.int32)
  variables = model.init(jax.random.PRNGKey(0), x)
  scored = []
  monkeypatch.setattr(tr, "trusted_set", lambda *a, **k: scored.append(1))
  with pytest.raises(ValueError, match=r"'enc/Dense_0' runs inside nn.scan \(module 'enc'\)"):
    sj.run_sap(functools.partial(model.apply, train=False), variables, x, y, x, y, n_trusted=10)
  assert scored == []


def test_run_sap_reports_layers_called_twice():
  import functools

  import flax.linen as nn
  import jax

  class Shared(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      head = nn.Dense(3, name="head")
      return head(nn.relu(nn.Dense(3, name="first")(x))) + head(x[:, :3])

  model = Shared()
  x = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  apply_fn = functools.partial(model.apply, train=False)
  y = np.asarray(jnp.argmax(apply_fn(variables, x), -1))
  with pytest.warns(UserWarning, match="'head' 2 times"):
    result = sj.run_sap(apply_fn, variables, x, y, x, y, n_trusted=20, alphas=[10.0])
  assert [(r.name, r.calls) for r in result.repeated] == [("head", 2)]
