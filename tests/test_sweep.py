"""decompose → apply_alpha → sweep_alpha: the two-phase α API and the α sweep."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sap_jax as sj


def _close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree_util.tree_map(lambda p, q: np.testing.assert_allclose(p, q, rtol=rtol, atol=atol), a, b)


def test_sweep_matches_one_correction_per_alpha(mlp):
  apply_fn, variables, x, y = mlp
  stats = sj.activation_stats(apply_fn, variables, [x[:32]])
  y_noisy = y.copy()
  y_noisy[::3] = (y_noisy[::3] + 1) % 4
  alphas = [1.0, 3.0, 10.0, 100.0, 1e4]
  result = sj.sweep_alpha(apply_fn, variables, stats, alphas, x[32:], y_noisy[32:], batch_size=7)
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


def test_apply_alpha_equals_projecting_every_kernel(mlp):
  apply_fn, variables, x, _ = mlp
  stats = sj.activation_stats(apply_fn, variables, [x])
  dec = sj.decompose(variables, stats)
  assert dec.paths == tuple(stats)
  for alpha in (1.0, 30.0, 3e4):
    _close(
      sj.apply_alpha(variables, dec, alpha),
      sj.project_params(variables, sj.projections(stats, alpha)),
    )


def test_apply_alpha_per_layer_and_shares_untouched_leaves(mlp):
  apply_fn, variables, x, _ = mlp
  stats = sj.select_layers(sj.activation_stats(apply_fn, variables, [x]), exclude=("head",))
  dec = sj.decompose(variables, stats)
  alpha = {("first",): 3.0, ("hidden",): 300.0}
  got = sj.apply_alpha(variables, dec, alpha)
  _close(got, sj.project_params(variables, sj.projections(stats, alpha)))
  assert got["params"]["head"]["kernel"] is variables["params"]["head"]["kernel"]
  assert got["params"]["first"]["bias"] is variables["params"]["first"]["bias"]


def test_apply_alpha_is_differentiable_and_vmappable_in_alpha(mlp):
  apply_fn, variables, x, _ = mlp
  dec = sj.decompose(variables, sj.activation_stats(apply_fn, variables, [x]))

  def out(log_alpha):
    return jnp.sum(apply_fn(sj.apply_alpha(variables, dec, jnp.exp(log_alpha)), x) ** 2)

  g = float(jax.grad(out)(jnp.log(30.0)))
  h = 1e-3
  fd = float((out(jnp.log(30.0) + h) - out(jnp.log(30.0) - h)) / (2 * h))
  assert np.isfinite(g) and g == pytest.approx(fd, rel=2e-2)
  kernels = jax.vmap(lambda a: sj.apply_alpha(variables, dec, a)["params"]["first"]["kernel"])(
    jnp.asarray([3.0, 30.0])
  )
  _close(kernels[1], sj.apply_alpha(variables, dec, 30.0)["params"]["first"]["kernel"])


def test_consume_frees_the_gram_matrices_and_gives_the_same_bases(mlp):
  apply_fn, variables, x, _ = mlp
  stats = sj.activation_stats(apply_fn, variables, [x])
  keep = sj.decompose(variables, stats)
  owned = dict(sj.activation_stats(apply_fn, variables, [x]))
  used = sj.decompose(variables, owned, consume=True)
  assert owned == {}
  _close(used.bases, keep.bases, rtol=0, atol=0)


def test_eval_splits_are_scored_at_every_alpha_and_never_choose(mlp):
  apply_fn, variables, x, y = mlp
  stats = sj.activation_stats(apply_fn, variables, [x[:32]])
  y_flip = (y + 1) % 4
  alphas = [1.0, 10.0, 1e4]
  both = sj.sweep_alpha(
    apply_fn,
    variables,
    stats,
    alphas,
    x[32:],
    y[32:],
    eval_splits={"flipped": (x[32:], y_flip[32:]), "all": (x, y)},
  )
  alone = sj.sweep_alpha(apply_fn, variables, stats, alphas, x[32:], y[32:])
  flipped = sj.sweep_alpha(apply_fn, variables, stats, alphas, x[32:], y_flip[32:])
  assert (both.best_alpha, both.best_accuracy) == (alone.best_alpha, alone.best_accuracy)
  np.testing.assert_array_equal(both.splits["val"].accuracies, alone.accuracies)
  np.testing.assert_array_equal(both.splits["flipped"].accuracies, flipped.accuracies)
  assert both.splits["flipped"].baseline == flipped.baseline_accuracy
  assert both.best_for("flipped") == (flipped.best_alpha, flipped.best_accuracy)
  assert both.accuracy_at("all", None) == 1.0
  with pytest.raises(KeyError, match="not scored"):
    both.best_for("test")
  with pytest.raises(KeyError, match="not swept"):
    both.accuracy_at("all", 5.0)


def test_sweep_accepts_a_decomposition(mlp):
  apply_fn, variables, x, y = mlp
  stats = sj.activation_stats(apply_fn, variables, [x[:32]])
  dec = sj.decompose(variables, stats)
  a = sj.sweep_alpha(apply_fn, variables, stats, [1.0, 10.0], x[32:], y[32:])
  b = sj.sweep_alpha(apply_fn, variables, dec, [1.0, 10.0], x[32:], y[32:])
  np.testing.assert_array_equal(a.accuracies, b.accuracies)
  assert (a.baseline_accuracy, a.best_alpha, a.best_accuracy) == (
    b.baseline_accuracy,
    b.best_alpha,
    b.best_accuracy,
  )


def test_choose_alpha_rule():
  assert sj.choose_alpha([1, 2, 3], [0.5, 0.7, 0.7], 0.6) == (2.0, 0.7)  # first best
  assert sj.choose_alpha([1, 2], [0.6, 0.6], 0.6) == (None, 0.6)  # ties keep the model
  assert sj.choose_alpha([1], [0.1], 0.2) == (None, 0.2)


def test_errors(mlp):
  apply_fn, variables, x, y = mlp
  stats = sj.activation_stats(apply_fn, variables, [x])
  with pytest.raises(ValueError, match="empty"):
    sj.sweep_alpha(apply_fn, variables, stats, [], x, y)
  with pytest.raises(ValueError, match="samples"):
    sj.sweep_alpha(apply_fn, variables, stats, [10.0], x, y[:5])
  with pytest.raises(ValueError, match="'val'"):
    sj.sweep_alpha(apply_fn, variables, stats, [10.0], x, y, eval_splits={"val": (x, y)})
  with pytest.raises(ValueError, match="alpha"):
    sj.apply_alpha(variables, sj.decompose(variables, stats), 0.0)


def test_split_labels_are_refused_before_the_decomposition_and_checked_once(mlp, monkeypatch):
  apply_fn, variables, x, y = mlp
  stats = sj.activation_stats(apply_fn, variables, [x])
  k = int(np.asarray(apply_fn(variables, x[:1])).shape[-1])
  bad = y.copy()
  bad[3] = k  # one past the model's outputs
  decomposed = []
  real_decompose = sj.sweep.decompose
  monkeypatch.setattr(
    sj.sweep, "decompose", lambda *a, **kw: decomposed.append(1) or real_decompose(*a, **kw)
  )
  with pytest.raises(ValueError, match=rf"^split 'test': label {k} \(at index 3\) is outside"):
    sj.sweep_alpha(apply_fn, variables, stats, [10.0], x, y, eval_splits={"test": (x, bad)})
  assert decomposed == []  # refused before any work
  # Every split's inputs are scanned once, however many α values are scored.
  checked = []
  real_check = sj.input_checks.check_inputs

  def counting_check(*a, **kw):
    checked.append(a[1])
    return real_check(*a, **kw)

  for module in (sj.input_checks, sj.evaluation):  # every name the checks are called by
    monkeypatch.setattr(module, "check_inputs", counting_check)
  result = sj.sweep_alpha(
    apply_fn, variables, stats, [1.0, 10.0, 100.0], x, y, eval_splits={"test": (x, y)}
  )
  assert sorted(checked) == ["split 'test'", "split 'val'"]  # not once per α and split
  assert result.splits["test"].accuracies.shape == (3,)
