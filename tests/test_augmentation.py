"""Augmentation in training (`sap_jax.augmentation`, `TrainConfig.augment`).

The recipes run on the loaders' standardised images; the equivalence this relies on,
``T_std(standardize(r)) = standardize(T_raw(r))`` for the published raw-pixel recipes
of `sap_jax.data.augment` on the same draws, is checked here, as are the rule that
picks a recipe, the config's keys and the wiring through `train_model`.
"""

import dataclasses

import jax
import numpy as np
import pytest

from experiments import grid
from experiments.config import load_config
from sap_jax import augmentation as aug
from sap_jax import models, train
from sap_jax.data import augment as recipes
from sap_jax.data.base import IMAGENET_MEAN, IMAGENET_STD, standardize
from sap_jax.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from sap_jax.data.feeder import feed, sample_rng
from sap_jax.data.sources import ArraySource


def _raw(shape, seed=0):
  return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _unstandardize(x, mean, std):
  return np.asarray(x, np.float64) * np.asarray(std) + np.asarray(mean)


@pytest.mark.parametrize("seed", range(12))
def test_cifar_recipe_on_standardised_images_equals_the_raw_recipe(seed):
  raw = _raw((32, 32, 3), seed)
  fn = aug.training_transform("cifar", "cifar10", raw.shape)
  got = fn(standardize(raw.copy(), CIFAR10_MEAN, CIFAR10_STD), sample_rng(seed, 1, 7))
  want = recipes.train_transform("cifar", image_size=32)(raw, sample_rng(seed, 1, 7))
  assert got.shape == (32, 32, 3) and got.dtype == np.float32
  # the same pixels in raw space: both undo their own normalisation
  np.testing.assert_allclose(
    _unstandardize(got, CIFAR10_MEAN, CIFAR10_STD),
    _unstandardize(want, recipes.CIFAR_MEAN, recipes.CIFAR_STD),
    atol=2e-6,
  )


def test_cifar_padding_is_the_loaders_standardised_black():
  raw = _raw((32, 32, 3)) * 0.5 + 0.5  # no black pixel in the image itself
  fn = aug.training_transform("cifar", "cifar10", raw.shape)
  black = -np.asarray(CIFAR10_MEAN, np.float32) / np.asarray(CIFAR10_STD, np.float32)
  std = standardize(raw.copy(), CIFAR10_MEAN, CIFAR10_STD)
  padded_pixels = 0
  for index in range(40):
    out = fn(std, sample_rng(0, 0, index))
    is_black = np.all(out == black, axis=-1)
    padded_pixels += int(is_black.sum())
    # every black pixel lies in a border band of at most 4 pixels
    rows, cols = np.nonzero(is_black)
    assert np.all((np.minimum(rows, 31 - rows) < 4) | (np.minimum(cols, 31 - cols) < 4))
  assert padded_pixels > 0
  np.testing.assert_array_equal(aug.standardized_black("cifar10", 3), black)
  np.testing.assert_array_equal(aug.standardized_black("tfds:cifar10", 3), np.zeros(3))


@pytest.mark.parametrize("seed", range(6))
def test_imagenet_recipe_on_standardised_images_equals_the_raw_recipe(seed):
  raw = _raw((24, 20, 3), seed)
  fn = aug.training_transform("imagenet", "folder", raw.shape)
  got = fn(standardize(raw.copy(), IMAGENET_MEAN, IMAGENET_STD), sample_rng(seed, 2, 3))
  want = recipes.train_transform("imagenet", image_size=24)
  # the raw recipe makes squares; compare on a square image for the exact same draws
  square = _raw((24, 24, 3), seed)
  fn_sq = aug.training_transform("imagenet", "folder", square.shape)
  got_sq = fn_sq(standardize(square.copy(), IMAGENET_MEAN, IMAGENET_STD), sample_rng(seed, 2, 3))
  want_sq = want(square, sample_rng(seed, 2, 3))
  assert got.shape == (24, 20, 3) and got_sq.shape == (24, 24, 3)
  # bilinear weights sum to one: the resize commutes with the per-channel affine map
  np.testing.assert_allclose(
    _unstandardize(got_sq, IMAGENET_MEAN, IMAGENET_STD),
    _unstandardize(want_sq, IMAGENET_MEAN, IMAGENET_STD),
    atol=2e-5,
  )


def test_recipe_rule_and_bad_settings():
  assert aug.recipe_of("auto", "cifar10", 32) == "cifar"
  assert aug.recipe_of("auto", "tfds:cifar100", 32) == "cifar"
  assert aug.recipe_of("auto", "folder", 224) == "imagenet"
  assert aug.recipe_of("auto", "folder", 32) == "none"
  for name in ("digits", "mnist1d", "spiral", "npz"):
    assert aug.recipe_of("auto", name, None) == "none"
    assert aug.training_transform("auto", name, (40, 1)) is None
  assert aug.recipe_of("cifar", None, None) == "cifar"
  with pytest.raises(ValueError, match="pass dataset="):
    aug.recipe_of("auto", None, 32)
  with pytest.raises(ValueError, match="one of"):
    aug.recipe_of("randaugment", "cifar10", 32)
  with pytest.raises(ValueError, match=r"needs \(H, W, C\) images.*augment='none'"):
    aug.training_transform("cifar", "cifar10", (40, 1))
  with pytest.raises(ValueError, match="augment='x'"):
    train.TrainConfig(augment="x")


def test_train_config_dict_omits_the_default_augment():
  assert "augment" not in train.TrainConfig().to_dict()
  d = train.TrainConfig(augment="auto").to_dict()
  assert d["augment"] == "auto" and train.TrainConfig(**d) == train.TrainConfig(augment="auto")
  # augmentation is data, not compiled: the step and optimizer keys ignore it
  assert train.TrainConfig(augment="cifar").part("step") == train.TrainConfig().part("step")


def test_committed_experiment_keys_are_unchanged():
  keys = {c.vanilla_key for c in grid.expand(load_config("table1")[0])}
  assert "digits-cnn-symmetric0.1-s12484-340e50e55f" in keys
  spiral = {c.vanilla_key for c in grid.expand(load_config("spiral")[0])}
  assert len(spiral) > 0 and all("augment" not in k for k in spiral)


def _data(n=48, side=8, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((n, side, side, 3)).astype(np.float32), rng.integers(0, 3, n)


CONFIG = train.TrainConfig(epochs=2, batch_size=16, learning_rate=0.05, seed=3)


def test_train_model_augments_by_config_as_by_an_explicit_transform():
  x, y = _data()
  model = models.get("mlp", 3, width=16)
  cfg = dataclasses.replace(CONFIG, augment="cifar")
  by_config = train.train_model(model, x, y, cfg, progress=False, dataset="cifar10")
  fn = aug.training_transform("cifar", "cifar10", x.shape[1:])
  by_hand = train.train_model(model, ArraySource(x, y), None, CONFIG, progress=False, transform=fn)
  plain = train.train_model(model, x, y, CONFIG, progress=False)
  again = train.train_model(model, x, y, cfg, progress=False, dataset="cifar10")
  same = jax.tree_util.tree_map(np.array_equal, by_config.variables, by_hand.variables)
  assert all(jax.tree_util.tree_leaves(same))
  assert all(
    jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(np.array_equal, by_config.variables, again.variables)
    )
  )
  differs = jax.tree_util.tree_map(
    lambda a, b: not np.array_equal(a, b), by_config.variables, plain.variables
  )
  assert any(jax.tree_util.tree_leaves(differs))


def test_augment_none_and_auto_on_digits_train_on_the_arrays_unchanged():
  x, y = _data(n=32, side=4)
  model = models.get("mlp", 3, width=8)
  base = train.train_model(model, x, y, CONFIG, progress=False)
  auto = train.train_model(
    model, x, y, dataclasses.replace(CONFIG, augment="auto"), progress=False, dataset="digits"
  )
  same = jax.tree_util.tree_map(np.array_equal, base.variables, auto.variables)
  assert all(jax.tree_util.tree_leaves(same))
  with pytest.raises(ValueError, match="pass dataset="):
    train.train_model(model, x, y, dataclasses.replace(CONFIG, augment="auto"), progress=False)


def test_grain_workers_draw_the_same_augmentation_as_the_main_process():
  x, y = _data(n=20)
  source = ArraySource(x, y)
  fn = aug.training_transform("cifar", "cifar10", x.shape[1:])
  here = [np.asarray(b.x) for b in feed(source, 8, transform=fn, seed=1, epoch=2)]
  there = [np.asarray(b.x) for b in feed(source, 8, transform=fn, seed=1, epoch=2, workers=2)]
  assert len(here) == len(there) == 3
  for a, b in zip(here, there):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(here[0][:, :, :, 0], x[:8, :, :, 0])  # something moved


def test_a_folder_decoded_at_the_input_side_is_the_imagenet_eval_transform(tmp_path):
  """Evaluation needs no view: the folder source's decode (bilinear resize of the whole
  image to image_size, then the ImageNet mean/std) is the recipe's eval transform, up to
  the 8-bit rounding of Pillow's RGB resize."""
  from PIL import Image

  from sap_jax.data.sources import FolderSource

  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (2, 45, 45, 3), dtype=np.uint8)
  for k, name in enumerate(("a", "b")):
    (tmp_path / "train" / name).mkdir(parents=True)
    Image.fromarray(pixels[k]).save(tmp_path / "train" / name / "0.png")
  source = FolderSource(tmp_path, "train", image_size=24)
  want = recipes.eval_transform("imagenet", image_size=24)
  for k in range(2):
    got = source[k]["image"]
    expected = want(pixels[k].astype(np.float32) / 255)
    # one 8-bit step over the smallest std is 1 / (255 · 0.224) ≈ 0.0175
    np.testing.assert_allclose(got, expected, atol=0.02)
