"""Augmentation in training: the published recipe of a data set, on the images the
loaders give (standardised).

`TrainConfig.augment` names what a training run does to its training images:
``"none"`` (nothing), ``"auto"`` (the recipe of the data set,
`sap_jax.data.augment.recipe_for`: CIFAR-style for cifar*, ImageNet-style for
clothing1m/webvision/imagenet* and image folders of side ≥ 128, none for digits,
MNIST-1D, the spiral, MNIST and npz), ``"cifar"`` or ``"imagenet"``. The transform runs
in the feeder, per sample (`sap_jax.data.feeder.feed`, in grain workers when
``workers > 0``), with ``rng = sample_rng(seed, epoch, index)``.

**Standardised inputs.** Every loader returns standardised images,
``s = (r − m) / σ`` per channel, with its own constants (`loader_standardization`). The
recipes of `sap_jax.data.augment` take raw pixels ``r`` in [0, 1] and end by
normalising. Here the same geometric steps run on ``s`` directly, and the final
normalisation is the loader's, for three reasons:

* every pixel operation of the recipes commutes with a per-channel affine map: a flip
  and a crop move pixels, and the bilinear resize of RandomResizedCrop takes convex
  combinations (Pillow's weights sum to 1); only the crop's zero padding is not a moved
  pixel, and it becomes the standardised black ``−m / σ``. So
  ``T_std(s) = (T_raw(r) − m) / σ`` (tested against `sap_jax.data.augment` on the same
  draws, `tests/test_augmentation.py`);
* evaluation, the trusted set, the SAP statistics and the baselines all read the
  loader's standardised images unchanged: the recipes' evaluation transforms
  (CIFAR: normalisation; ImageNet: resize to the input side, then normalisation) are
  what the loaders already do (a folder is decoded at ``image_size``), so no other path
  needs a view, and train and test can never disagree on the normalisation;
* the CIFAR recipe's constants (0.491, 0.482, 0.447) / (0.247, 0.243, 0.262) differ from
  the loader's by < 0.001: the model sees the loader's, as it does at test time.

For a data set whose constants are not known here (``tfds:*``, whose loader measures
them on the training split, and ``npz``), the padding is 0, the training split's mean
colour. A folder's RandomResizedCrop crops the image already decoded at the input side
(the published code crops the original file), so small crops are slightly blurrier.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from sap_jax.data import augment as recipes
from sap_jax.data.base import IMAGENET_MEAN, IMAGENET_STD
from sap_jax.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from sap_jax.data.feeder import Transform
from sap_jax.train_config import AUGMENTS

__all__ = [
  "AUGMENTS",
  "loader_standardization",
  "recipe_of",
  "standardized_black",
  "train_transform",
  "training_transform",
]

# Loader name prefixes (lower case) and the mean/std their loader standardises with.
_STANDARDIZATIONS = (
  ("cifar100", (CIFAR100_MEAN, CIFAR100_STD)),  # cifar100, cifar100n
  ("cifar10", (CIFAR10_MEAN, CIFAR10_STD)),  # cifar10, cifar10n
  ("folder", (IMAGENET_MEAN, IMAGENET_STD)),
  ("clothing1m", (IMAGENET_MEAN, IMAGENET_STD)),
  ("webvision", (IMAGENET_MEAN, IMAGENET_STD)),
  ("imagenet", (IMAGENET_MEAN, IMAGENET_STD)),
)


def loader_standardization(
  dataset_name: str | None,
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
  """``(mean, std)`` the loader of ``dataset_name`` standardises with, or None when
  unknown here (``tfds:*`` measures them on the data, ``npz`` stores what it is given)."""
  if not dataset_name:
    return None
  key = dataset_name.strip().lower()
  for prefix, constants in _STANDARDIZATIONS:
    if key.startswith(prefix):
      return constants
  return None


def standardized_black(dataset_name: str | None, channels: int) -> np.ndarray:
  """The standardised value of a black pixel, ``−mean / std`` per channel (float32),
  or zeros (the mean colour) when the loader's constants are unknown."""
  constants = loader_standardization(dataset_name)
  if constants is None or len(constants[0]) != channels:
    return np.zeros(channels, np.float32)
  mean, std = (np.asarray(c, np.float32) for c in constants)
  return -mean / std


def recipe_of(augment: str, dataset_name: str | None, image_size: int | None) -> str:
  """The recipe (`sap_jax.data.augment.RECIPES`) an ``augment`` setting selects.

  Args:
    augment: one of `AUGMENTS`.
    dataset_name: the data set's name (``Dataset.name``, ``RunSpec.dataset``); needed by
      ``"auto"``.
    image_size: the images' side (``"auto"`` on a folder decides by it).

  Returns:
    ``"none"``, ``"cifar"`` or ``"imagenet"``.

  Raises:
    ValueError: an unknown setting, or ``"auto"`` without a data set the rule covers.
  """
  if augment not in AUGMENTS:
    raise ValueError(f"augment={augment!r}: pass one of {AUGMENTS}.")
  if augment != "auto":
    return augment
  if not dataset_name:
    raise ValueError(
      "augment='auto' picks the recipe by the data set's name: pass dataset= (e.g. "
      "'cifar10'), or name the recipe (augment='cifar' / 'imagenet' / 'none')."
    )
  return recipes.recipe_for(dataset_name, image_size=image_size)


def _crop_with_padding(
  image: np.ndarray, rng: np.random.Generator, size: tuple[int, int], padding: int, fill
) -> np.ndarray:
  """`sap_jax.data.augment.random_crop` with the padding filled by ``fill`` per channel
  (the same draws: the window is drawn on the padded image in both)."""
  h, w, c = image.shape
  padded = np.empty((h + 2 * padding, w + 2 * padding, c), np.float32)
  padded[...] = fill
  padded[padding : padding + h, padding : padding + w] = image
  return recipes.random_crop(padded, rng, size, padding=0)


def train_transform(
  recipe: str, *, image_shape: Sequence[int], black: Sequence[float] | None = None
) -> Transform | None:
  """The training transform of a recipe on standardised ``(H, W, C)`` images.

  The steps and the order of the draws are those of
  `sap_jax.data.augment.train_transform` without its final normalisation:

  * ``"cifar"``: random horizontal flip, then a random ``H × W`` crop of the image
    padded by 4 pixels of ``black`` on every side;
  * ``"imagenet"``: RandomResizedCrop (scale 0.08–1, ratio 3/4–4/3) back to ``H × W``,
    then a random horizontal flip;
  * ``"none"``: None (no transform).

  Args:
    recipe: one of `sap_jax.data.augment.RECIPES`.
    image_shape: ``(H, W, C)`` of the images (the output has the same shape).
    black: the standardised value of a black pixel per channel (`standardized_black`);
      default zeros.

  Returns:
    ``fn(image, rng) -> image``, or None for ``"none"``.
  """
  if recipe not in recipes.RECIPES:
    raise ValueError(f"recipe={recipe!r}: pass one of {recipes.RECIPES}.")
  if recipe == "none":
    return None
  shape = tuple(int(d) for d in image_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(
      f"augmentation {recipe!r} needs (H, W, C) images, got samples of shape {shape}; "
      "set augment='none' for other inputs."
    )
  size = shape[:2]
  fill = np.zeros(shape[2], np.float32) if black is None else np.asarray(black, np.float32)
  if fill.shape != (shape[2],):
    raise ValueError(f"black has {fill.shape} values for {shape[2]} channels; give one each.")
  if recipe == "cifar":

    def cifar(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
      image = recipes.random_flip(image, rng)
      return _crop_with_padding(image, rng, size, recipes.CIFAR_PADDING, fill)

    return cifar

  def imagenet(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = recipes.random_resized_crop(np.asarray(image, np.float32), rng, size)
    return np.ascontiguousarray(recipes.random_flip(image, rng))

  return imagenet


def training_transform(
  augment: str, dataset_name: str | None, image_shape: Sequence[int]
) -> Transform | None:
  """The per-sample training transform of a run: ``augment`` (`AUGMENTS`) resolved for
  the data set (`recipe_of`), on its standardised images (padding with the loader's
  black, `standardized_black`). None when the recipe is ``"none"``.

  Raises:
    ValueError: an unknown setting, ``"auto"`` without a covered data set, or a recipe
      for inputs that are not ``(H, W, C)`` images; before any work.
  """
  shape = tuple(int(d) for d in image_shape)
  side = shape[0] if len(shape) == 3 and isinstance(shape[0], numbers.Integral) else None
  recipe = recipe_of(augment, dataset_name, side)
  if recipe == "none":
    return None
  channels = shape[-1] if len(shape) == 3 else 0
  return train_transform(
    recipe, image_shape=shape, black=standardized_black(dataset_name, channels)
  )
