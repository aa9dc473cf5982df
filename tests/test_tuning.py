"""tune_alpha: deterministic for a seed, never worse than its start on held-out folds,
and it finds per-layer α that a teacher model was corrected with."""

import jax
import numpy as np
import pytest

import sap_jax as sj
from sap_jax.objective import corrected_variables
from sap_jax.tuning import fold_ids
from tests.differentiable_cases import smooth_case

START = 30.0


@pytest.fixture(scope="module")
def case():
  """Validation labels from the model corrected with a different α per layer (a teacher),
  10 % of them flipped: a shared α cannot fit them, per-layer α can."""
  with jax.enable_x64(True):
    c = smooth_case(n_trusted=40, n_val=120, seed=2)
    paths = c.decomposition.paths
    teacher = dict(zip(paths, (2.0, 1e4, 3.0)))
    logits = c.apply_fn(corrected_variables(c.variables, c.decomposition, teacher), c.x_val)
    y = np.asarray(np.argmax(logits, -1), np.int32)
    flip = np.random.default_rng(0).random(len(y)) < 0.1
    y[flip] = (y[flip] + 1) % 3
    yield c._replace(y_val=y)


def _tune(c, **kw):
  kw = {"folds": 4, "steps": 40, "learning_rate": 0.2, "seed": 3, **kw}
  return sj.tune_alpha(c.apply_fn, c.variables, c.decomposition, c.x_val, c.y_val, START, **kw)


def _accuracy(c, alpha):
  logits = np.asarray(c.apply_fn(corrected_variables(c.variables, c.decomposition, alpha), c.x_val))
  return float(np.mean(np.argmax(logits, -1) == c.y_val))


def test_tuning_beats_the_shared_alpha_on_held_out_folds(case):
  with jax.enable_x64(True):
    r = _tune(case)
    assert r.start == {p: pytest.approx(START) for p in case.decomposition.paths}
    assert r.heldout_accuracy_start == pytest.approx(_accuracy(case, START))
    assert r.improved and r.steps > 0
    assert r.heldout_accuracy > r.heldout_accuracy_start
    assert r.val_accuracy == pytest.approx(_accuracy(case, r.alpha))
    assert r.val_accuracy >= r.heldout_accuracy_start
    # The held-out curve the choice was made on: best at the chosen step.
    acc, loss = r.curves[r.penalty]
    assert acc[r.steps] == pytest.approx(r.heldout_accuracy) and acc.max() == acc[r.steps]
    assert loss[0] == pytest.approx(r.heldout_loss_start)


def test_tuning_is_deterministic_for_a_seed(case):
  with jax.enable_x64(True):
    a, b = _tune(case), _tune(case)
    assert a.alpha == b.alpha and a.steps == b.steps
    np.testing.assert_array_equal(a.curves[a.penalty][0], b.curves[b.penalty][0])
    np.testing.assert_array_equal(a.curves[a.penalty][1], b.curves[b.penalty][1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_never_worse_than_the_start_on_held_out_folds(case, seed):
  """Random labels: nothing to learn; the choice may never be below the start."""
  with jax.enable_x64(True):
    y = np.random.default_rng(seed).integers(0, 3, len(case.y_val)).astype(np.int32)
    c = case._replace(y_val=y)
    r = _tune(c, seed=seed, penalty=(0.0, 1.0))
    assert r.heldout_accuracy >= r.heldout_accuracy_start
    if r.heldout_accuracy == r.heldout_accuracy_start:
      assert r.heldout_loss <= r.heldout_loss_start
    assert r.val_accuracy >= _accuracy(c, START)
    if not r.improved:
      assert r.alpha == r.start and r.steps == 0


def test_a_large_penalty_keeps_alpha_near_the_start(case):
  """Adam's steps are ≈ learning_rate each: pulled back at every step, log α stays
  within one step of the start; unpenalised it travels much further."""
  with jax.enable_x64(True):
    drift = lambda r: max(abs(np.log(a) - np.log(START)) for a in r.alpha.values())  # noqa: E731
    assert drift(_tune(case, penalty=1e6)) <= 0.2 + 1e-6
    assert drift(_tune(case)) > 1.0


def test_fold_ids_deal_every_sample_once():
  ids = fold_ids(23, 4, seed=5)
  assert sorted(np.bincount(ids).tolist()) == [5, 6, 6, 6]
  np.testing.assert_array_equal(ids, fold_ids(23, 4, seed=5))
  assert not np.array_equal(ids, fold_ids(23, 4, seed=6))


def test_bad_settings_are_refused(case):
  with jax.enable_x64(True):
    with pytest.raises(ValueError, match="folds must be an integer ≥ 2"):
      _tune(case, folds=1)
    with pytest.raises(ValueError, match="steps must be"):
      _tune(case, steps=0)
    with pytest.raises(ValueError, match="penalty must be finite"):
      _tune(case, penalty=-1.0)


def test_tuning_report_is_plain_json(case):
  import json

  with jax.enable_x64(True):
    r = _tune(case, steps=3)
    rep = sj.tuning_report(r)
    assert json.loads(json.dumps(rep)) == rep
    assert set(rep["alpha"]) == {"/".join(p) for p in case.decomposition.paths}
    assert rep["steps"] == r.steps and rep["improved"] == r.improved


def test_tuning_over_a_source_equals_tuning_over_its_arrays(case):
  """Folds as Subset views, gradients summed over the feeder's batches: the same choice
  and the same α as the full-batch fit on the arrays, to float tolerance."""
  from sap_jax.data.sources import ArraySource

  with jax.enable_x64(True):
    x = np.asarray(case.x_val, np.float32)  # the feeder reads float32 inputs
    kw = {"folds": 3, "steps": 8, "learning_rate": 0.2, "seed": 3, "penalty": (0.0, 1.0)}
    arrays = sj.tune_alpha(
      case.apply_fn, case.variables, case.decomposition, x, case.y_val, START, **kw
    )
    source = ArraySource(x, case.y_val)
    streamed = sj.tune_alpha(
      case.apply_fn, case.variables, case.decomposition, source, None, START, batch_size=32, **kw
    )
    assert (streamed.steps, streamed.penalty, streamed.improved) == (
      arrays.steps,
      arrays.penalty,
      arrays.improved,
    )
    assert streamed.alpha.keys() == arrays.alpha.keys()
    for p, a in arrays.alpha.items():
      assert streamed.alpha[p] == pytest.approx(a, rel=1e-4)
    assert streamed.val_accuracy == pytest.approx(arrays.val_accuracy)
    for pen, (acc, loss) in arrays.curves.items():
      np.testing.assert_allclose(streamed.curves[pen][0], acc)
      np.testing.assert_allclose(streamed.curves[pen][1], loss, rtol=1e-4)
    with pytest.raises(ValueError, match="carries its own labels"):
      sj.tune_alpha(
        case.apply_fn, case.variables, case.decomposition, source, case.y_val, START, **kw
      )
