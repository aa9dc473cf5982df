"""Image-folder trees (how Clothing1M and (mini-)WebVision are distributed).

Layout::

    root/train/<class>/*.png|jpg|...
    root/test/<class>/*          (or root/val/<class>/* when there is no test/)

Class names are the sorted sub-folder names; train and test must have the same ones.
"""

from __future__ import annotations

import os

import numpy as np

from sap_jax.data.base import (
  IMAGENET_MEAN,
  IMAGENET_STD,
  Dataset,
  check_int,
  require_root,
  standardize,
  uint8_to_unit,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def class_dirs(split_dir: str) -> list[str]:
  """The class names of a split: its sorted, non-hidden sub-folders."""
  return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _image_files(class_dir: str) -> list[str]:
  return sorted(
    e.path
    for e in os.scandir(class_dir)
    if e.is_file()
    and not e.name.startswith(".")
    and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
  )


def list_split(split_dir: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
  """Every image file of a split and its label (the class's position in ``classes``)."""
  paths, labels = [], []
  for label, cls in enumerate(classes):
    files = _image_files(os.path.join(split_dir, cls))
    paths += files
    labels += [label] * len(files)
  return paths, np.asarray(labels, np.int32)


def read_image(path: str, size: int) -> np.ndarray:
  """One image as RGB, resized to size×size (bilinear): uint8 size×size×3.

  Raises:
    ValueError: the file cannot be decoded (named, with the fix).
  """
  from PIL import Image

  try:
    with Image.open(path) as im:
      rgb = im.convert("RGB")
      if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
      return np.asarray(rgb, np.uint8)
  except OSError as err:
    raise ValueError(
      f"cannot read image {path!r} ({err}); delete or replace the broken file."
    ) from None


def decode_image(path: str, size: int, normalize: bool = True, index: int | None = None):
  """One image as `load_folder` holds it: float32 size×size×3 in [0, 1], standardised
  with the ImageNet mean/std when ``normalize`` (``index`` is named in errors)."""
  try:
    pixels = read_image(path, size)
  except ValueError as err:
    if index is None:
      raise
    raise ValueError(f"sample {index}: {err}") from None
  x = uint8_to_unit(pixels)
  return standardize(x, IMAGENET_MEAN, IMAGENET_STD) if normalize else x


def _read_images(paths: list[str], size: int) -> np.ndarray:
  """Reads images as RGB, resized to size×size (bilinear): uint8 N×size×size×3."""
  out = np.empty((len(paths), size, size, 3), np.uint8)
  for i, path in enumerate(paths):
    out[i] = read_image(path, size)
  return out


def _pick_test_dir(root: str, test_dir: str | None) -> str:
  if test_dir is not None:
    if not isinstance(test_dir, str) or not os.path.isdir(os.path.join(root, test_dir)):
      raise FileNotFoundError(
        f"test_dir={test_dir!r}: no folder {os.path.join(root, str(test_dir))!r}; "
        "pass the name of the evaluation sub-folder of root (e.g. 'test' or 'val')."
      )
    return test_dir
  for candidate in ("test", "val"):
    if os.path.isdir(os.path.join(root, candidate)):
      return candidate
  raise FileNotFoundError(
    f"{root!r} has no test/ or val/ folder; lay the data out as root/train/<class>/* "
    "and root/test/<class>/* (or pass test_dir= the evaluation folder's name)."
  )


def load_folder(
  *,
  root=None,
  seed: int = 0,
  image_size: int = 32,
  test_dir: str | None = None,
  dataset_name: str = "folder",
  lazy: bool = False,
) -> Dataset:
  """Loads ``root/train`` and ``root/test`` (or ``root/val``) image-folder trees.

  Images are read with Pillow, converted to RGB, resized to image_size×image_size
  (bilinear), scaled to [0, 1] and standardised with the ImageNet mean/std. With
  ``lazy=False`` everything is held in memory (N × image_size² × 3 float32); with
  ``lazy=True`` the inputs are `sap_jax.data.sources.FolderSource`s, which hold the file
  list and decode one image per read (the same floats), so a folder of any size costs
  its file names and labels.

  Args:
    root: The folder holding train/ and test/ (or val/).
    seed: Unused.
    image_size: Output side length in pixels.
    test_dir: Evaluation sub-folder; default "test", else "val".
    dataset_name: Name of the returned Dataset (e.g. "clothing1m").
    lazy: Inputs as lazy sources instead of arrays.

  Returns:
    The Dataset; class names are the sorted class-folder names.

  Raises:
    FileNotFoundError: if root, train/ or the test folder is missing.
    ValueError: if train and test class folders differ, a training class has no images,
      or an image cannot be decoded.
  """
  del seed
  root = require_root(root, "folder", "'folder with train/<class>/ and test/<class>/'")
  image_size = check_int(image_size, "image_size")
  if not isinstance(lazy, bool):
    raise ValueError(f"lazy must be True or False, got {lazy!r}.")
  if not isinstance(dataset_name, str) or not dataset_name:
    raise ValueError(f"dataset_name must be a non-empty string, got {dataset_name!r}.")
  train_dir = os.path.join(root, "train")
  if not os.path.isdir(train_dir):
    raise FileNotFoundError(
      f"no training folder {train_dir!r}; lay the data out as root/train/<class>/*.png "
      "and root/test/<class>/*.png."
    )
  test_dir = os.path.join(root, _pick_test_dir(root, test_dir))
  classes, test_classes = class_dirs(train_dir), class_dirs(test_dir)
  if len(classes) < 2:
    raise ValueError(
      f"{train_dir!r} has {len(classes)} class folder(s); make one sub-folder per class "
      "(at least two)."
    )
  if classes != test_classes:
    only_train = sorted(set(classes) - set(test_classes))
    only_test = sorted(set(test_classes) - set(classes))
    raise ValueError(
      f"train and {os.path.basename(test_dir)} class folders differ: only in train "
      f"{only_train}, only in {os.path.basename(test_dir)} {only_test}; give both the "
      "same class sub-folders (empty ones are allowed in the test folder)."
    )
  train_paths, y_tr = list_split(train_dir, classes)
  test_paths, y_te = list_split(test_dir, classes)
  empty = sorted(set(classes) - {classes[i] for i in np.unique(y_tr)})
  if empty:
    raise ValueError(
      f"training class folders {empty} hold no images ({', '.join(IMAGE_EXTENSIONS)}); "
      "add images or remove those folders from train/ and the test folder."
    )
  if lazy:
    from sap_jax.data.sources import FolderSource

    train = FolderSource(root, "train", image_size=image_size, classes=classes)
    test = FolderSource(root, os.path.basename(test_dir), image_size=image_size, classes=classes)
    return Dataset(
      name=dataset_name,
      x_train=train,
      y_train=train.labels,
      x_test=test,
      y_test=test.labels,
      class_names=tuple(classes),
    )
  x_tr = _read_images(train_paths, image_size)
  x_te = _read_images(test_paths, image_size)
  return Dataset(
    name=dataset_name,
    x_train=standardize(uint8_to_unit(x_tr), IMAGENET_MEAN, IMAGENET_STD),
    y_train=y_tr,
    x_test=standardize(uint8_to_unit(x_te), IMAGENET_MEAN, IMAGENET_STD),
    y_test=y_te,
    class_names=tuple(classes),
  )
