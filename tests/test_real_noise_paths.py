"""Real-noise data paths end to end at small size: CIFAR-10N human labels and an
image folder (the Clothing1M / WebVision layout), each trained briefly on files
written here in the real formats, then corrected with SAP."""

import dataclasses

import chex
import numpy as np

import sap_jax as sj
from sap_jax import train
from sap_jax.spec import RunSpec, build_model, build_splits
from tests.fake_data import write_cifar10, write_cifar10n, write_image_folder

TINY_TRAIN = train.TrainConfig(epochs=2, batch_size=25, learning_rate=0.05)


def _train_and_correct(spec, n_trusted):
  splits = build_splits(spec)
  model = build_model(spec, splits.num_classes)
  apply_fn = train.eval_apply_fn(model)
  trained = train.train_model(model, splits.x_train, splits.y_train, spec.train, progress=False)
  result = sj.run_sap(
    apply_fn,
    trained.variables,
    splits.x_train,
    splits.y_train,
    splits.x_val,
    splits.y_val,
    n_trusted=n_trusted,
    alphas=[10.0, 1e3],
  )
  return splits, apply_fn, trained.variables, result


def test_cifar10n_human_labels_train_and_correct(tmp_path):
  clean = write_cifar10(tmp_path, per_batch=20)
  human = write_cifar10n(tmp_path, clean, flip=0.3)
  spec = RunSpec(
    dataset="cifar10n",
    data_root=str(tmp_path),
    noise="human:worse",
    model="resnet18",
    model_kwargs={"width": 4},
    seed=1,
    train=TINY_TRAIN,
  )
  splits, apply_fn, variables, result = _train_and_correct(spec, n_trusted=40)

  # The model trains on the human labels; the clean labels are kept for evaluation only.
  n = len(splits.x_train) + len(splits.x_val)
  assert n == clean.size == 100
  train_idx = splits.train_indices
  np.testing.assert_array_equal(splits.y_train, human["worse_label"][train_idx])
  np.testing.assert_array_equal(splits.y_train_clean, clean[train_idx])
  np.testing.assert_array_equal(
    splits.noise_mask, human["worse_label"][train_idx] != clean[train_idx]
  )
  assert 0.1 < splits.noise_mask.mean() < 0.5

  assert len(result.trusted_indices) == 40
  assert set(result.sweep.alphas) == {10.0, 1e3}
  chex.assert_trees_all_equal_shapes_and_dtypes(result.variables, variables)
  chex.assert_tree_all_finite(result.variables)
  # Every conv of the ResNet, shortcut convs included, and the classifier are covered.
  assert {"stem_conv", "head"} <= set(result.layers)
  assert any("conv_proj" in name for name in result.layers)
  acc = train.evaluate(apply_fn, result.variables, splits.x_test, splits.y_test)["accuracy"]
  assert 0.0 <= acc <= 1.0


def test_image_folder_train_and_correct(tmp_path):
  write_image_folder(tmp_path, per_class=12, size=24)
  spec = RunSpec(
    dataset="folder",
    data_root=str(tmp_path),
    data_options={"image_size": 16},
    noise="symmetric:0.25",
    model="vit_tiny",
    seed=2,
    train=dataclasses.replace(TINY_TRAIN, batch_size=8),
  )
  splits, apply_fn, variables, result = _train_and_correct(spec, n_trusted=20)
  assert splits.x_train.shape[1:] == (16, 16, 3)
  assert splits.num_classes == 3
  # Exactly round(0.25·36) corrupted labels over train + val.
  assert splits.noise_mask.sum() + (splits.y_val != splits.y_val_clean).sum() == 9
  names = set(result.layers)
  assert "patch_embed" in names and "head" in names
  assert any("query" in n for n in names) and any(n.endswith("out") for n in names)
  chex.assert_trees_all_equal_shapes_and_dtypes(result.variables, variables)
  chex.assert_tree_all_finite(result.variables)
