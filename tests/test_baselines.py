"""sap_jax.baselines: the shared interface, the maths of each method, the harness."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sap_jax import baselines as bl
from sap_jax import models, train
from sap_jax.data import load_dataset, make_splits
from sap_jax.trusted import per_example_loss


class _Linear(nn.Module):
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(self.num_classes, name="head")(x)


def _leaves_equal(a, b):
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _same_layout(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert x.shape == y.shape and x.dtype == y.dtype


# --------------------------------------------------------------------------
# A small noisy problem shared by the harness tests: digits, 25 % symmetric
# noise, a one-hidden-layer MLP with BatchNorm trained briefly.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problem():
  splits = make_splits(load_dataset("digits"), noise="symmetric:0.25", seed=0)
  model = models.get("mlp", num_classes=10, depth=1, width=32, batch_norm=True)
  config = train.TrainConfig(epochs=20, batch_size=64, learning_rate=0.05, seed=0)
  variables = train.train_model(
    model, splits.x_train, splits.y_train, config, progress=False
  ).variables
  task = bl.CorrectionTask.from_splits(model, variables, splits, config)
  return splits, task


@pytest.fixture(scope="module")
def runs(problem):
  """Results of the contract cases on `problem`, computed once per name."""
  _, task = problem
  cache = {}

  def get(name):
    if name not in cache:
      kwargs = {c[0]: c[1] for c in _CASES}[name]
      cache[name] = bl.get_method(name, **kwargs).run(task)
    return cache[name]

  return get


# --------------------------------------------------------------------------
# Interface.
# --------------------------------------------------------------------------


def test_registry_names_and_errors():
  assert bl.known_methods() == ("vanilla", "sap", "retrain", "finetune", "ssd", "scrub", "cleaning")
  m = bl.get_method("ssd", n_forget=7)
  assert m.name == "ssd" and m.hparams["n_forget"] == 7
  with pytest.raises(ValueError, match="known methods"):
    bl.get_method("unlearn")
  with pytest.raises(ValueError, match="unknown hyperparameters"):
    bl.get_method("scrub", grid={"beta": (1.0,)})


def test_clip_budget_rule():
  assert bl.clip_budget(5000, 1170) == 585
  assert bl.clip_budget(200, 1170) == 200
  assert bl.clip_budget(3, 2) == 1
  for bad in (0, -1, 2.5):
    with pytest.raises(ValueError):
      bl.clip_budget(bad, 100)


def test_expand_grid_order_and_defaults():
  settings = bl.expand_grid({"a": 1, "b": 2, "c": 3}, {"b": (10, 20), "a": (0, 5)})
  assert settings == [
    {"a": 0, "b": 10, "c": 3},
    {"a": 5, "b": 10, "c": 3},
    {"a": 0, "b": 20, "c": 3},
    {"a": 5, "b": 20, "c": 3},
  ]
  assert bl.expand_grid({"a": 1}, None) == [{"a": 1}]


def test_default_grid_sizes():
  count = lambda d, g: len(bl.expand_grid(d, g))  # noqa: E731
  assert count({"lr": 0, "epochs": 0}, bl.FINETUNE_GRID) == 3
  assert count({"alpha": 0, "lambda_": 0}, bl.SSD_GRID) == 10
  assert bl.SSD_GRID["alpha"][0] == 10.0 and bl.SSD_GRID["lambda_"][0] == 1.0
  hp = dict.fromkeys(["lr", "alpha", "gamma", "temperature", "msteps", "epochs"], 0)
  assert count(hp, bl.SCRUB_GRID) == 8
  assert count(hp, bl.SCRUB_PAPER_SCALE_GRID) == 675


def test_lowest_and_highest_loss_break_ties_by_index():
  losses = np.array([0.5, 0.1, 0.5, 2.0, 0.1], np.float32)
  np.testing.assert_array_equal(bl.base.lowest_loss(losses, 3), [1, 4, 0])
  np.testing.assert_array_equal(bl.base.highest_loss(losses, 3), [3, 0, 2])
  with pytest.raises(ValueError, match="finite"):
    bl.base.lowest_loss(np.array([0.1, np.nan]), 1)


def test_task_validates_inputs(problem):
  _, task = problem
  with pytest.raises(ValueError, match="y_train_clean"):
    bl.CorrectionTask(
      task.model,
      task.variables,
      task.x_train,
      task.y_train,
      task.x_val,
      task.y_val,
      task.train_config,
      y_train_clean=task.y_train[:-1],
    )
  with pytest.raises(ValueError, match="labels"):
    bl.CorrectionTask(
      task.model,
      task.variables,
      task.x_train,
      task.y_train[:-1],
      task.x_val,
      task.y_val,
      task.train_config,
    )


# --------------------------------------------------------------------------
# SSD.
# --------------------------------------------------------------------------


def test_ssd_dampening_hand_case():
  params = {
    "dense": {"kernel": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "bias": jnp.array([1.0, -1.0])},
    "bn": {"scale": jnp.array([1.0, 1.0]), "bias": jnp.array([0.5, 0.5])},
  }
  stats = {"bn": {"mean": jnp.array([0.3, 0.4]), "var": jnp.array([2.0, 3.0])}}
  i_d = {
    "dense": {"kernel": jnp.array([[1.0, 1.0], [1.0, 0.0]]), "bias": jnp.array([0.1, 2.0])},
    "bn": {"scale": jnp.array([0.0, 1.0]), "bias": jnp.array([1.0, 1.0])},
  }
  i_f = {
    "dense": {"kernel": jnp.array([[5.0, 20.0], [11.0, 0.0]]), "bias": jnp.array([2.0, 30.0])},
    "bn": {"scale": jnp.array([1e-3, 1.0]), "bias": jnp.array([10.0, 10.5])},
  }
  variables = {"params": params, "batch_stats": stats}

  out = bl.ssd_dampen(variables, i_d, i_f, alpha=10.0, lambda_=1.0)
  # Selected where I_Df > 10·I_D; scaled by min(I_D / I_Df, 1).
  want = {
    "dense": {
      "kernel": [[1.0, 2.0 / 20.0], [3.0 / 11.0, 4.0]],
      "bias": [1.0 * 0.1 / 2.0, -1.0 * 2.0 / 30.0],
    },
    "bn": {"scale": [0.0, 1.0], "bias": [0.5, 0.5 * 1.0 / 10.5]},
  }
  jax.tree_util.tree_map(
    lambda got, w: np.testing.assert_allclose(got, np.asarray(w), rtol=1e-6), out["params"], want
  )
  assert out["batch_stats"] is stats  # BatchNorm statistics untouched
  # λ·I_D/I_Df is capped at 1: a large λ leaves selected entries as they are,
  # except where I_D = 0 (the factor is 0 for any λ).
  big = bl.ssd_dampen(variables, i_d, i_f, alpha=10.0, lambda_=1e3)["params"]
  _leaves_equal(big, {**params, "bn": {**params["bn"], "scale": jnp.array([0.0, 1.0])}})
  # Exactly at the threshold nothing is selected (strict >).
  same = bl.ssd_dampen(
    variables, i_d, jax.tree_util.tree_map(lambda d: 10.0 * d, i_d), alpha=10.0, lambda_=1.0
  )
  _leaves_equal(same["params"], params)
  _same_layout(out, variables)


def _hand_linear_grads(w, b, x, y):
  """Per-sample CE gradients of logits = x W + b: dW = x (p − e_y)ᵀ, db = p − e_y."""
  z = x @ w + b
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  r = p - np.eye(w.shape[1])[y]
  return x[:, :, None] * r[:, None, :], r


def _linear_variables(d=4, k=3, seed=1):
  rng = np.random.default_rng(seed)
  return {
    "params": {
      "head": {
        "kernel": rng.normal(size=(d, k)).astype(np.float32),
        "bias": rng.normal(size=(k,)).astype(np.float32),
      }
    }
  }


def test_fisher_diagonal_matches_hand_computation():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 4)).astype(np.float32)
  y = rng.integers(0, 3, 10).astype(np.int32)
  variables = _linear_variables()
  apply_fn = train.eval_apply_fn(_Linear())
  w = variables["params"]["head"]["kernel"].astype(np.float64)
  b = variables["params"]["head"]["bias"].astype(np.float64)
  gw, gb = _hand_linear_grads(w, b, x.astype(np.float64), y)

  # Empirical Fisher, per sample: mean over samples of squared gradients
  # (batch 4: the ragged last batch of 2 is padded and masked).
  got = bl.fisher_diagonal(apply_fn, variables, x, y, batch_size=4)
  np.testing.assert_allclose(got["head"]["kernel"], (gw**2).mean(0), rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(got["head"]["bias"], (gb**2).mean(0), rtol=1e-5, atol=1e-8)

  # The SSD code's estimator: mean over mini-batches of the squared batch gradient.
  got = bl.fisher_diagonal(apply_fn, variables, x, y, batch_size=5, per_example=False)
  want_w = np.mean([gw[i : i + 5].mean(0) ** 2 for i in (0, 5)], axis=0)
  want_b = np.mean([gb[i : i + 5].mean(0) ** 2 for i in (0, 5)], axis=0)
  np.testing.assert_allclose(got["head"]["kernel"], want_w, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(got["head"]["bias"], want_b, rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------
# SCRUB.
# --------------------------------------------------------------------------


def _np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_scrub_kl_and_one_max_and_min_step():
  model = _Linear()
  rng = np.random.default_rng(0)
  x_f = rng.normal(size=(16, 4)).astype(np.float32)
  x_r = rng.normal(size=(16, 4)).astype(np.float32)
  y_r = rng.integers(0, 3, 16).astype(np.int32)
  teacher = _linear_variables()["params"]
  logits = lambda p, x: x @ np.asarray(p["head"]["kernel"]) + np.asarray(p["head"]["bias"])  # noqa: E731
  t_f, t_r = logits(teacher, x_f), logits(teacher, x_r)
  temp = 4.0

  @jax.jit
  def kl_of(p, x, t):  # the divergence of the student p from the teacher logits t
    return bl.scrub_kl(model.apply({"params": p}, x), t, temp)

  @jax.jit
  def objective(p):
    return bl.scrub_min_objective(
      model.apply({"params": p}, x_r), t_r, y_r, alpha=0.5, gamma=0.99, temperature=temp
    )

  # The divergence is T² · mean KL(softmax(t/T) ‖ softmax(s/T)).
  s_logits = rng.normal(size=(16, 3)).astype(np.float32)
  pt, ps = _np_softmax(t_f / temp), _np_softmax(s_logits / temp)
  want = temp**2 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), -1))
  np.testing.assert_allclose(bl.scrub_kl(s_logits, t_f, temp), want, rtol=1e-5)

  # Student = teacher: KL is 0 and so is its gradient.
  assert float(kl_of(teacher, x_f, t_f)) == pytest.approx(0.0, abs=1e-7)
  g = jax.jit(jax.grad(kl_of))(teacher, x_f, t_f)
  assert max(float(np.abs(leaf).max()) for leaf in jax.tree_util.tree_leaves(g)) < 1e-6

  # A student slightly off the teacher: a max-step raises the forget KL …
  student = jax.tree_util.tree_map(
    lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32), teacher
  )
  state = train.state_from_variables(
    model, {"params": student}, learning_rate=0.5, momentum=0.0, weight_decay=0.0
  )
  new, kl_before = bl.scrub_max_step(state, x_f, t_f, jax.random.key(0), np.float32(temp))
  assert float(kl_before) == pytest.approx(float(kl_of(student, x_f, t_f)), rel=1e-5)
  assert float(kl_of(new.params, x_f, t_f)) > float(kl_before) > 0

  # … and a min-step lowers γ·CE + α·KL on the retain batch.
  new, obj_before = bl.scrub_min_step(
    state, x_r, y_r, t_r, jax.random.key(0), np.float32(temp), np.float32(0.5), np.float32(0.99)
  )
  assert float(obj_before) == pytest.approx(float(objective(student)), rel=1e-5)
  assert float(objective(new.params)) < float(obj_before)


def test_scrub_grid_compiles_each_step_once():
  """lr, momentum, weight decay live in the optimizer state: a grid reuses the steps."""
  model = _Linear(num_classes=5)  # shapes no other test uses
  rng = np.random.default_rng(2)
  x = rng.normal(size=(24, 7)).astype(np.float32)
  y = rng.integers(0, 5, 24).astype(np.int32)
  variables = model.init(jax.random.key(0), x[:1])
  steps = (bl.scrub_max_step, bl.scrub_min_step)
  sizes = []
  for lr, momentum in ((5e-4, 0.9), (5e-3, 0.5), (1e-2, 0.0)):
    bl.scrub_variables(
      model,
      variables,
      x[:8],
      x[8:],
      y[8:],
      lr=lr,
      momentum=momentum,
      epochs=2,
      msteps=1,
      batch_size=8,
      forget_batch_size=4,
    )
    sizes.append([step._cache_size() for step in steps])
  assert sizes[0] == sizes[1] == sizes[2]


# --------------------------------------------------------------------------
# Finetune.
# --------------------------------------------------------------------------


def test_finetune_trains_on_exactly_the_lowest_loss_samples():
  model = _Linear()
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 4)).astype(np.float32)
  variables = _linear_variables()
  apply_fn = train.eval_apply_fn(model)
  w, b = variables["params"]["head"]["kernel"], variables["params"]["head"]["bias"]
  y = np.argmax(x @ w + b, -1).astype(np.int32)
  # Samples 20..39 are poison: huge inputs labelled with their least likely class.
  # Their losses are enormous; one step on any of them would move the weights by
  # far more than 1.
  x[20:] *= 1e3
  y[20:] = np.argmin(x[20:] @ w + b, -1)
  losses = per_example_loss(apply_fn, variables, x, y)
  assert losses[20:].min() > 100 * losses[:20].max()

  task = bl.CorrectionTask(
    model, variables, x, y, x[:5], y[:5], train.TrainConfig(epochs=1, batch_size=8)
  )
  result = bl.finetune(
    n_retain=20, epochs=3, batch_size=8, grid=None, lr=0.1, keep_original=False
  ).run(task)
  idx = result.details["retain_indices"]
  np.testing.assert_array_equal(idx, np.argsort(losses, kind="stable")[:20])
  assert set(idx.tolist()) == set(range(20))
  delta = jax.tree_util.tree_map(
    lambda a, b: float(np.abs(np.asarray(a) - b).max()),
    result.variables["params"],
    variables["params"],
  )
  assert 0 < max(jax.tree_util.tree_leaves(delta)) < 1.0
  assert result.chosen["n_retain"] == 20 and result.num_settings == 1


def test_finetune_grid_compiles_one_step():
  """A grid of learning rates (and of epochs) runs through one compilation of the step."""
  model = _Linear(num_classes=6)  # shapes no other test uses
  rng = np.random.default_rng(3)
  x = rng.normal(size=(20, 9)).astype(np.float32)
  y = rng.integers(0, 6, 20).astype(np.int32)
  variables = model.init(jax.random.key(0), x[:1])
  before = bl.finetune_step._cache_size()
  outs = [
    bl.finetune_variables(model, variables, x, y, lr=lr, epochs=epochs, batch_size=8)
    for lr, epochs in ((1e-3, 1), (5e-2, 2))
  ]
  assert bl.finetune_step._cache_size() == before + 1
  # The settings did train with their own learning rates.
  moved = [
    float(np.abs(o["params"]["head"]["kernel"] - variables["params"]["head"]["kernel"]).max())
    for o in outs
  ]
  assert 0 < moved[0] < moved[1]


# --------------------------------------------------------------------------
# Confident learning.
# --------------------------------------------------------------------------

# Three classes. Thresholds (mean self-confidence): t0 = (.9+.7+.1+.2+.48)/5 =
# .476, t1 = (.8+.9+.7+.2)/4 = .65, t2 = .8. Guessed true class (the one class
# with P >= t): a0 a1 a4 -> 0, a2 a3 -> 1; b0 b1 b2 -> 1, b3 -> 0; c* -> 2.
# Confident joint C[given][true] = [[3, 2, 0], [1, 3, 0], [0, 0, 4]] (rows already
# sum to the label counts, so calibration keeps it). prune_by_noise_rate removes,
# among label 0, the C[0][1] = 2 samples with the largest P1 − P0 (a2 .7, a3 .5;
# not a4 .02) and among label 1 the C[1][0] = 1 largest P0 − P1 (b3).
_CL_PROBS = np.array(
  [
    [0.90, 0.05, 0.05],  # 0 a0
    [0.70, 0.20, 0.10],  # 1 a1
    [0.10, 0.80, 0.10],  # 2 a2  flagged
    [0.20, 0.70, 0.10],  # 3 a3  flagged
    [0.48, 0.50, 0.02],  # 4 a4  argmax != label, but not flagged
    [0.10, 0.80, 0.10],  # 5 b0
    [0.05, 0.90, 0.05],  # 6 b1
    [0.10, 0.70, 0.20],  # 7 b2
    [0.70, 0.20, 0.10],  # 8 b3  flagged
    [0.10, 0.10, 0.80],  # 9..12 c
    [0.10, 0.10, 0.80],
    [0.10, 0.10, 0.80],
    [0.10, 0.10, 0.80],
  ]
)
_CL_LABELS = np.array([0] * 5 + [1] * 4 + [2] * 4)


def test_confident_learning_flags_hand_computed_samples():
  from cleanlab.count import compute_confident_joint, get_confident_thresholds

  np.testing.assert_allclose(
    get_confident_thresholds(_CL_LABELS, _CL_PROBS), [0.476, 0.65, 0.8], atol=1e-12
  )
  cj = compute_confident_joint(_CL_LABELS, _CL_PROBS, calibrate=False)
  np.testing.assert_array_equal(cj, [[3, 2, 0], [1, 3, 0], [0, 0, 4]])
  flagged = bl.find_label_issues(_CL_LABELS, _CL_PROBS)
  np.testing.assert_array_equal(np.flatnonzero(flagged), [2, 3, 8])
  # Plain disagreement with the prediction would also drop a4.
  disagree = bl.find_label_issues(_CL_LABELS, _CL_PROBS, filter_by="predicted_neq_given")
  np.testing.assert_array_equal(np.flatnonzero(disagree), [2, 3, 4, 8])


def test_cross_val_probs_are_out_of_sample():
  n, k, folds_wanted = 30, 3, 5
  x = np.arange(n)[:, None]
  y = np.arange(n) % k
  seen = []

  def fit(x_tr, y_tr):
    # A perfect memoriser: one-hot on its training label, uniform elsewhere.
    table = dict(zip(x_tr[:, 0].tolist(), y_tr.tolist()))
    seen.append(set(table))

    def predict(xs):
      out = np.full((len(xs), k), 1.0 / k)
      for i, s in enumerate(xs[:, 0].tolist()):
        if s in table:
          out[i] = np.eye(k)[table[s]]
      return out

    return predict

  probs, fold = bl.cross_val_probs(fit, x, y, num_classes=k, k_folds=folds_wanted, seed=0)
  np.testing.assert_allclose(probs, 1.0 / k, rtol=1e-6)  # never memorised
  assert len(seen) == folds_wanted and sorted(set(fold.tolist())) == list(range(folds_wanted))
  for s in range(n):
    assert s not in seen[fold[s]]
    assert sum(s in tr for tr in seen) == folds_wanted - 1
  for f in range(folds_wanted):  # stratified: 2 samples of each class per fold
    np.testing.assert_array_equal(np.bincount(y[fold == f], minlength=k), [2, 2, 2])


# --------------------------------------------------------------------------
# Every method through the common interface.
# --------------------------------------------------------------------------

_CASES = [
  ("vanilla", {}, 0),
  ("sap", {"alphas": (1e2, 1e3, 1e4)}, 3),
  ("retrain", {}, 1),
  ("finetune", {"epochs": 2, "grid": {"lr": (1e-3, 1e-2)}}, 2),
  ("ssd", {"grid": {"alpha": (10.0, 1.0)}}, 2),
  ("scrub", {"epochs": 2, "grid": {"lr": (5e-4, 5e-3)}}, 2),
  ("cleaning", {"k_folds": 3}, 1),
]


def test_vanilla_returns_the_same_variables(problem):
  _, task = problem
  result = bl.vanilla().run(task)
  assert result.variables is task.variables
  assert result.num_settings == 0 and result.method == "vanilla"
  assert result.wall_time_s > 0


@pytest.mark.parametrize("name,kwargs,num_settings", _CASES, ids=[c[0] for c in _CASES])
def test_method_contract(problem, runs, name, kwargs, num_settings):
  splits, task = problem
  method = bl.get_method(name, **kwargs)
  result = runs(name)
  assert result.method == name
  assert result.wall_time_s > 0
  assert result.num_settings == num_settings
  _same_layout(result.variables, task.variables)
  for leaf in jax.tree_util.tree_leaves(result.variables):
    assert np.all(np.isfinite(np.asarray(leaf)))
  if num_settings > 1 or name in ("finetune", "ssd", "scrub", "sap", "cleaning"):
    settings = result.details["settings"]
    assert len(settings) == num_settings
    best = max(s["val_accuracy"] for s in settings)
    if name in ("sap", "finetune", "ssd", "scrub"):
      # These keep the unchanged model when no setting beats it on noisy val.
      best = max(best, bl.base.val_accuracy(task, task.variables))
    assert best == pytest.approx(bl.base.val_accuracy(task, result.variables))
  half = task.n_train // 2
  for key, requested in (
    ("n_retain", "n_retain_requested"),
    ("n_forget", "n_forget_requested"),
    ("n_trusted", "n_trusted_requested"),
  ):
    if key in result.chosen:
      assert result.chosen[key] == min(result.chosen[requested], half)

  if name == "retrain":
    with pytest.raises(ValueError, match="clean"):
      method.run(
        bl.CorrectionTask(
          task.model,
          task.variables,
          task.x_train,
          task.y_train,
          task.x_val,
          task.y_val,
          task.train_config,
        )
      )
    return
  # Every other method ignores the clean labels: garbage gives the same result.
  garbage = np.random.default_rng(1).integers(0, 10, task.n_train)
  other = method.run(
    bl.CorrectionTask(
      task.model,
      task.variables,
      task.x_train,
      task.y_train,
      task.x_val,
      task.y_val,
      task.train_config,
      y_train_clean=garbage,
    )
  )
  _leaves_equal(other.variables, result.variables)
  assert other.chosen == result.chosen


def test_cleaning_records_out_of_sample_probs(problem, runs):
  _, task = problem
  result = runs("cleaning")
  probs, folds = result.details["pred_probs"], result.details["folds"]
  assert probs.shape == (task.n_train, 10) and sorted(set(folds.tolist())) == [0, 1, 2]
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
  flagged = result.details["flagged"]
  assert result.chosen["num_removed"] == len(flagged) > 0


def test_retrain_beats_vanilla_on_clean_test(problem, runs):
  splits, task = problem
  acc = lambda v: train.evaluate(task.apply_fn, v, splits.x_test, splits.y_test)["accuracy"]  # noqa: E731
  vanilla_acc = acc(runs("vanilla").variables)
  retrain_acc = acc(runs("retrain").variables)
  assert retrain_acc > vanilla_acc + 0.02, (vanilla_acc, retrain_acc)
