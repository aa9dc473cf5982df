"""Training-time augmentation as published, per record, in numpy.

The SAP authors' training code (LabelNoiseRobustness, ``utils.py``) always trains
with augmentation; these functions reproduce it sample by sample so that a data
feeder can call them inside worker processes:

* ``"cifar"`` (CIFAR-10/100 and CIFAR-N): random horizontal flip, random 32×32
  crop of the image zero-padded by 4 pixels, then normalisation with mean
  ``CIFAR_MEAN`` and std ``CIFAR_STD``; at test time normalisation only.
* ``"imagenet"`` (Clothing1M, WebVision, ImageNet-sized image folders):
  RandomResizedCrop to ``image_size`` (224; 299 for Inception-ResNet-v2), random
  horizontal flip, then the ImageNet mean/std; at test time a resize of the whole
  image to ``image_size × image_size``, then the ImageNet mean/std.
* ``"none"`` (MNIST, FashionMNIST, digits, mnist1d, spiral, npz): no
  augmentation; both transforms are the identity.

Every function takes one image ``(H, W, C)`` float32 holding **raw pixels in
[0, 1]** (not standardised): the zero padding of the CIFAR crop is black, as in
torchvision, where padding happens on the PIL image before ``ToTensor``. The
train and eval transforms of the ``"cifar"`` and ``"imagenet"`` recipes end with
:func:`normalize`, so they return standardised images. Note that today's loaders
(``sap_jax.data.cifar``, ``sap_jax.data.folder``) return images already
standardised (with their own per-data-set constants); such images must not be
passed through these transforms, which expect the loaders' pixels before their
``standardize`` step.

Randomness comes only from the ``np.random.Generator`` passed in. Build it with
:func:`sample_rng` from ``(seed, epoch, index)`` so that a sample's
augmentation depends on those three numbers alone, never on the number of worker
processes or the batch order.

Example::

  fn = train_transform("cifar", image_size=32)
  out = fn(image, sample_rng(seed=0, epoch=3, index=1234))
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from sap_jax.data.base import IMAGENET_MEAN, IMAGENET_STD
from sap_jax.data.feeder import sample_rng  # noqa: F401  (re-exported: the transforms' randomness)

# Constants of the published CIFAR recipe (used for both CIFAR-10 and CIFAR-100).
CIFAR_MEAN = (0.491, 0.482, 0.447)
CIFAR_STD = (0.247, 0.243, 0.262)
CIFAR_PADDING = 4

RECIPES = ("cifar", "imagenet", "none")

TrainTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
EvalTransform = Callable[[np.ndarray], np.ndarray]

# Data set names (lower case, "tfds:" prefix removed) and their recipe; see `recipe_for`.
_CIFAR_PREFIX = "cifar"
_IMAGENET_NAMES = ("clothing1m", "webvision", "imagenet", "imagenette")
_NO_AUGMENTATION = frozenset(
  {"digits", "mnist1d", "spiral", "mnist", "fashion_mnist", "fmnist", "kmnist", "emnist", "npz"}
)
# An image folder is "ImageNet size" from this side length on.
FOLDER_IMAGENET_MIN_SIZE = 128


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(size, numbers.Integral):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


def random_crop(
  image: np.ndarray, rng: np.random.Generator, size: int | Sequence[int], padding: int = 0
) -> np.ndarray:
  """torchvision's ``RandomCrop(size, padding)``: zero-pad, then crop a uniform window.

  Args:
    image: ``(H, W, C)`` image.
    rng: Source of the window's offsets.
    size: Output side (int) or ``(height, width)``.
    padding: Zero pixels added on every side before cropping.

  Returns:
    ``(size_h, size_w, C)``: ``pad(image)[top:top + size_h, left:left + size_w]`` with
    ``top`` uniform in ``[0, H + 2 padding - size_h]`` and ``left`` likewise.
  """
  th, tw = _pair(size)
  p = int(padding)
  padded = np.pad(image, ((p, p), (p, p), (0, 0))) if p else image
  h, w = padded.shape[:2]
  if th > h or tw > w:
    raise ValueError(
      f"crop size {(th, tw)} is larger than the padded image {(h, w)}; crop smaller or pad more."
    )
  top = int(rng.integers(0, h - th + 1))
  left = int(rng.integers(0, w - tw + 1))
  return padded[top : top + th, left : left + tw]


def random_flip(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
  """torchvision's ``RandomHorizontalFlip(p)``: mirrors the width axis with probability p."""
  if rng.random() < p:
    return image[:, ::-1]
  return image


def random_resized_crop_box(
  height: int,
  width: int,
  rng: np.random.Generator,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
  """The crop box of torchvision's ``RandomResizedCrop.get_params``.

  Up to 10 attempts draw an area fraction ``s ~ U(scale)`` and a log aspect ratio
  ``log r ~ U(log ratio)``; the box is ``w = round(sqrt(s A r))``,
  ``h = round(sqrt(s A / r))`` (A = height × width), accepted if it fits, at a
  uniform position. If no attempt fits, the fallback is the centred crop of the
  whole image with its aspect ratio clamped to ``ratio``.

  Args:
    height: Image height.
    width: Image width.
    rng: Source of the draws.
    scale: Range of the crop's area as a fraction of the image's.
    ratio: Range of the crop's aspect ratio (width / height).

  Returns:
    ``(top, left, h, w)``.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of ``image`` to ``size`` = (h, w) with Pillow, per channel, in float."""
  th, tw = size
  out = np.empty((th, tw, image.shape[2]), np.float32)
  for c in range(image.shape[2]):
    channel = Image.fromarray(np.ascontiguousarray(image[:, :, c], np.float32))
    out[:, :, c] = np.asarray(channel.resize((tw, th), Image.Resampling.BILINEAR))
  return out


def random_resized_crop(
  image: np.ndarray,
  rng: np.random.Generator,
  size: int | Sequence[int],
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
  """torchvision's ``RandomResizedCrop(size, scale, ratio)``.

  The box is :func:`random_resized_crop_box`; the crop (cut first, as torchvision
  does) is resized with Pillow's
  bilinear filter on float32 channels (mode "F"), which, like torchvision's PIL
  path and its tensor path with ``antialias=True``, widens the filter when
  shrinking (antialiasing). Values are not rounded to 8 bits.

  Args:
    image: ``(H, W, C)`` float32 image.
    rng: Source of the draws.
    size: Output side (int) or ``(height, width)``.
    scale: Range of the crop's area fraction.
    ratio: Range of the crop's aspect ratio (width / height).

  Returns:
    ``(size_h, size_w, C)`` float32.
  """
  top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng, scale, ratio)
  return _resize(image[top : top + h, left : left + w], _pair(size))


def resize(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
  """Bilinear (antialiased) resize of the whole image, as ``Resize((size, size))``.

  Args:
    image: ``(H, W, C)`` float32 image.
    size: Output side (int: square) or ``(height, width)``.

  Returns:
    ``(size_h, size_w, C)`` float32.
  """
  return _resize(image, _pair(size))


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """Per-channel ``(image - mean) / std`` over the last axis, in float32."""
  out = np.asarray(image, np.float32) - np.asarray(mean, np.float32)
  return out / np.asarray(std, np.float32)


def recipe_for(dataset_name: str, *, image_size: int | None = None) -> str:
  """The published augmentation recipe of a data set.

  The rule, on the name in lower case with a ``"tfds:"`` prefix removed:

  * names starting with ``cifar`` (cifar10, cifar100, cifar10n, cifar100n,
    tfds:cifar10, ...) → ``"cifar"``;
  * names starting with clothing1m, webvision, imagenet or imagenette → ``"imagenet"``;
  * digits, mnist1d, spiral, mnist, fashion_mnist (fmnist), kmnist, emnist, npz →
    ``"none"``;
  * ``folder``: ``"imagenet"`` if ``image_size >= FOLDER_IMAGENET_MIN_SIZE`` (128),
    else ``"none"``.

  Args:
    dataset_name: The data set's name (``Dataset.name``).
    image_size: The side of the images; required for ``folder``.

  Returns:
    One of ``RECIPES``.

  Raises:
    ValueError: for a name the rule does not cover, or ``folder`` without image_size.
  """
  if not isinstance(dataset_name, str) or not dataset_name.strip():
    raise ValueError(f"dataset_name must be a non-empty string, got {dataset_name!r}.")
  key = dataset_name.strip().lower()
  key = key.removeprefix("tfds:").strip()
  if key.startswith(_CIFAR_PREFIX):
    return "cifar"
  if key.startswith(_IMAGENET_NAMES):
    return "imagenet"
  if key in _NO_AUGMENTATION:
    return "none"
  if key == "folder":
    if (
      image_size is None
      or isinstance(image_size, bool)
      or not isinstance(image_size, numbers.Integral)
    ):
      raise ValueError(
        f"recipe_for('folder') needs image_size, the folder's image side as an int, got "
        f"{image_size!r}; pass image_size=."
      )
    return "imagenet" if image_size >= FOLDER_IMAGENET_MIN_SIZE else "none"
  raise ValueError(
    f"no published augmentation recipe for data set {dataset_name!r}; pick one of "
    f"{RECIPES} yourself and pass it to train_transform / eval_transform."
  )


def _check_recipe(recipe: str, image_size: int) -> None:
  if recipe not in RECIPES:
    raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}; see recipe_for().")
  if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
    raise ValueError(f"image_size must be a positive int (output side), got {image_size!r}.")


def train_transform(recipe: str, *, image_size: int) -> TrainTransform:
  """The composed training transform ``fn(image, rng) -> image`` of a recipe.

  Args:
    recipe: One of ``RECIPES`` (see :func:`recipe_for`).
    image_size: Output side: the crop size (32 for CIFAR; 224, or 299 for
      Inception-ResNet-v2, for ImageNet-style data). Unused by ``"none"``.

  Returns:
    A function of a raw ``(H, W, C)`` [0, 1] float32 image and a generator.
  """
  _check_recipe(recipe, image_size)
  if recipe == "cifar":

    def cifar(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
      image = random_flip(image, rng)
      image = random_crop(image, rng, image_size, CIFAR_PADDING)
      return normalize(image, CIFAR_MEAN, CIFAR_STD)

    return cifar
  if recipe == "imagenet":

    def imagenet(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
      image = random_resized_crop(image, rng, image_size)
      image = random_flip(image, rng)
      return normalize(image, IMAGENET_MEAN, IMAGENET_STD)

    return imagenet

  def identity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    del rng
    return image

  return identity


def eval_transform(recipe: str, *, image_size: int) -> EvalTransform:
  """The deterministic evaluation transform ``fn(image) -> image`` of a recipe.

  Args:
    recipe: One of ``RECIPES``.
    image_size: Output side of the ``"imagenet"`` resize; unused otherwise.

  Returns:
    ``"cifar"``: normalisation; ``"imagenet"``: resize to ``image_size`` square, then
    normalisation; ``"none"``: the identity.
  """
  _check_recipe(recipe, image_size)
  if recipe == "cifar":
    return lambda image: normalize(image, CIFAR_MEAN, CIFAR_STD)
  if recipe == "imagenet":
    return lambda image: normalize(resize(image, image_size), IMAGENET_MEAN, IMAGENET_STD)
  return lambda image: image
