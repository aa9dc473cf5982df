"""Every correction method on sources equals its in-memory run: the same chosen
hyperparameters and the same variables, with the data as an `ArraySource` (the noisy
labels given beside it, or in its records) and as a `FolderSource` of PNG files."""

import jax
import numpy as np
import pytest

from sap_jax import baselines as bl
from sap_jax import models, train
from sap_jax.data import load_dataset, make_splits
from sap_jax.data.folder import load_folder
from sap_jax.data.sources import ArraySource, Subset
from tests.stream_cases import SIZE, folder_sources, write_folder

# (name, factory kwargs): tiny budgets and grids, each method's every phase exercised.
CASES = [
  ("sap", {"n_trusted": 40, "alphas": (1e2, 1e4), "batch_size": 64}),
  ("finetune", {"n_retain": 40, "epochs": 2, "batch_size": 16, "grid": {"lr": (1e-2, 5e-2)}}),
  ("ssd", {"n_forget": 20, "batch_size": 16, "grid": {"alpha": (2.0, 1.0)}}),
  ("ssd", {"n_forget": 20, "n_retain": 40, "per_example": False, "batch_size": 16, "grid": None}),
  ("scrub", {"n_retain": 40, "n_forget": 12, "epochs": 2, "grid": {"msteps": (1, 2)}}),
  ("retrain", {}),
  ("cleaning", {"k_folds": 2}),
]
IDS = [f"{name}{i}" for i, (name, _) in enumerate(CASES)]


def _leaves_close(a, b, *, exact=False):
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    if exact:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    else:
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def _same_result(streamed, arrays, *, exact=False):
  assert streamed.chosen.keys() == arrays.chosen.keys()
  for key, value in arrays.chosen.items():
    if isinstance(value, float):
      assert streamed.chosen[key] == pytest.approx(value), key
    else:
      assert streamed.chosen[key] == value, key
  assert streamed.num_settings == arrays.num_settings
  for key in ("retain_indices", "forget_indices", "trusted_indices", "flagged"):
    if key in arrays.details:
      np.testing.assert_array_equal(streamed.details[key], arrays.details[key])
  _leaves_close(streamed.variables, arrays.variables, exact=exact)


@pytest.fixture(scope="module")
def digits_task():
  """A small noisy digits problem (160 training samples) and its in-memory task."""
  ds = load_dataset("digits")
  splits = make_splits(ds, noise="symmetric:0.25", seed=0)
  x, y, clean = splits.x_train[:160], splits.y_train[:160], splits.y_train_clean[:160]
  model = models.get("mlp", num_classes=10, depth=1, width=16, batch_norm=True)
  config = train.TrainConfig(epochs=4, batch_size=32, learning_rate=0.05, seed=0)
  variables = train.train_model(model, x, y, config, progress=False).variables
  variables = jax.tree_util.tree_map(np.asarray, variables)
  task = bl.CorrectionTask(
    model, variables, x, y, splits.x_val[:60], splits.y_val[:60], config, y_train_clean=clean
  )
  return task


@pytest.fixture(scope="module")
def array_runs(digits_task):
  return {i: bl.get_method(name, **kw).run(digits_task) for i, (name, kw) in enumerate(CASES)}


def _source_task(task, labels_in_records):
  """The task with its splits as `ArraySource`s: noisy labels beside the source (the
  records holding other labels), or in the records (``y`` None)."""
  if labels_in_records:
    x_train, y_train = ArraySource(task.x_train, task.y_train), None
    x_val, y_val = ArraySource(task.x_val, task.y_val), None
  else:  # the records carry the clean labels; the noisy ones are given
    x_train, y_train = ArraySource(task.x_train, task.y_train_clean), task.y_train
    x_val, y_val = Subset(ArraySource(task.x_val)), task.y_val
  return bl.CorrectionTask(
    task.model,
    task.variables,
    x_train,
    y_train,
    x_val,
    y_val,
    task.train_config,
    y_train_clean=task.y_train_clean,
  )


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_every_method_on_an_array_source_equals_its_arrays(digits_task, array_runs, case):
  name, kwargs = CASES[case]
  task = _source_task(digits_task, labels_in_records=case % 2 == 1)
  assert task.streamed
  np.testing.assert_array_equal(task.y_train, digits_task.y_train)
  streamed = bl.get_method(name, **kwargs).run(task)
  # the same samples in the same batches: bit for bit, except the α sweep and the
  # statistics, batched otherwise over a source (float tolerance)
  _same_result(streamed, array_runs[case], exact=name in ("finetune", "scrub", "retrain", "ssd"))


def test_a_folder_source_equals_its_arrays(tmp_path_factory):
  """Finetune and SSD over a PNG folder (``Subset`` views with noisy labels, as the
  streamed splits are) give the in-memory run's choice and variables, bit for bit (SAP
  over a folder: test_streaming.py)."""
  root = write_folder(tmp_path_factory.mktemp("bl") / "folder")
  ds = load_folder(root=root, image_size=SIZE)
  source, _ = folder_sources(root)
  model = models.get("mlp", num_classes=3, depth=1, width=16, batch_norm=True)
  config = train.TrainConfig(epochs=1, batch_size=16, learning_rate=0.05, seed=1)
  rng = np.random.default_rng(0)
  noisy = np.where(
    rng.random(len(ds.y_train)) < 0.25, rng.integers(0, 3, len(ds.y_train)), ds.y_train
  )
  noisy = noisy.astype(np.int32)
  variables = train.train_model(model, ds.x_train, noisy, config, progress=False).variables
  val = np.arange(0, len(ds.y_train), 3)
  arrays = bl.CorrectionTask(
    model, variables, ds.x_train, noisy, ds.x_train[val], noisy[val], config
  )
  streamed = bl.CorrectionTask(
    model, variables, Subset(source), noisy, Subset(source, val), noisy[val], config
  )
  for name, kwargs in (
    ("finetune", {"n_retain": 24, "epochs": 1, "batch_size": 8, "grid": {"lr": (1e-2, 5e-2)}}),
    ("ssd", {"n_forget": 10, "batch_size": 16, "grid": {"alpha": (2.0, 1.0)}}),
  ):
    method = bl.get_method(name, **kwargs)
    _same_result(method.run(streamed), method.run(arrays), exact=True)


def test_a_task_refuses_mixed_data_and_bad_labels_before_any_work(digits_task):
  t = digits_task
  source = ArraySource(t.x_train, t.y_train)
  with pytest.raises(ValueError, match="both be arrays or both be sources"):
    bl.CorrectionTask(t.model, t.variables, source, None, t.x_val, t.y_val, t.train_config)
  with pytest.raises(ValueError, match=r"outside|\[0, 10\)"):
    bl.CorrectionTask(
      t.model, t.variables, source, t.y_train + 10, ArraySource(t.x_val, t.y_val), None,
      t.train_config,
    )  # fmt: skip
  with pytest.raises(ValueError, match="rounds > 1"):
    task = _source_task(t, labels_in_records=True)
    bl.sap_method(n_trusted=10, alphas=(1e2,), rounds=2).run(task)
