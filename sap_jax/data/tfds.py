"""TensorFlow Datasets read through ``tfds.data_source`` (random access, no TensorFlow).

``tensorflow_datasets`` is an optional dependency (``pip install 'sap-jax[tfds]'``) and is
imported only when a ``tfds:<name>`` data set is loaded. The data must already be prepared
in the ArrayRecord format: preparing needs TensorFlow and internet, reading does not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sap_jax.data.base import Dataset, as_int32_labels, check_int, num_classes_of, standardize
from sap_jax.data.sources import RecordSource

_READ_CHUNK = 1024

# TFDS fields holding CIFAR-N human labels (cifar10_n, cifar100_n) -> our variant names.
TFDS_HUMAN_FIELDS = {
  "aggre_label": "aggre",
  "worse_label": "worse",
  "random_label1": "random1",
  "random_label2": "random2",
  "random_label3": "random3",
  "noise_label": "noisy100",
}


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as err:
    raise ModuleNotFoundError(
      "loading 'tfds:<name>' needs tensorflow-datasets, which is not installed; "
      "install it with: pip install 'sap-jax[tfds]'."
    ) from err
  return tfds


def _prepare_hint(name: str, data_dir: str | None) -> str:
  where = data_dir or "~/tensorflow_datasets (or $TFDS_DATA_DIR)"
  return (
    f"prepare it once on a machine with TensorFlow and internet:\n"
    f"    pip install tensorflow tensorflow-datasets array_record\n"
    f"    tfds build {name} --data_dir=<dir> --file_format=array_record\n"
    f"then copy <dir>/{name.split('/')[0]} into {where} (pass that folder as root=). "
    "tfds.data_source reads only the array_record file format."
  )


def _read_split(source: Sequence, keys: Sequence[str]) -> dict[str, np.ndarray]:
  """Reads every record of a random-access source; stacks the requested fields."""
  n = len(source)
  getitems = getattr(source, "__getitems__", None)
  columns: dict[str, list] = {k: [] for k in keys}
  for start in range(0, n, _READ_CHUNK):
    indices = list(range(start, min(start + _READ_CHUNK, n)))
    records = getitems(indices) if getitems is not None else [source[i] for i in indices]
    for record in records:
      for k in keys:
        columns[k].append(np.asarray(record[k]))
  return {k: np.stack(v) if v else np.zeros((0,)) for k, v in columns.items()}


def _scan_split(source: Sequence, keys: Sequence[str], stats_of: str | None):
  """One pass over a split: the fields ``keys`` stacked (labels: small), and with
  ``stats_of`` (the split's name) the per-channel mean and std of its images in float64,
  without holding the images."""
  n = len(source)
  getitems = getattr(source, "__getitems__", None)
  columns: dict[str, list] = {k: [] for k in keys}
  total = squares = None
  count = 0
  for start in range(0, n, _READ_CHUNK):
    indices = list(range(start, min(start + _READ_CHUNK, n)))
    records = getitems(indices) if getitems is not None else [source[i] for i in indices]
    for record in records:
      for k in keys:
        columns[k].append(np.asarray(record[k]))
      if stats_of is not None:
        x = _images_to_float(np.asarray(record["image"])[None], stats_of)[0].astype(np.float64)
        pixels = x.reshape(-1, x.shape[-1])
        total = pixels.sum(0) if total is None else total + pixels.sum(0)
        squares = (pixels**2).sum(0) if squares is None else squares + (pixels**2).sum(0)
        count += len(pixels)
  out = {k: np.stack(v) if v else np.zeros((0,)) for k, v in columns.items()}
  if stats_of is None:
    return out, None
  mean = total / count
  std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
  return out, (mean, np.where(std > 0, std, 1.0))


def _feature_names(source: Any, key: str) -> tuple[str, ...] | None:
  """ClassLabel names of a feature, when the source exposes its DatasetInfo."""
  try:
    names = source.dataset_info.features[key].names
  except (AttributeError, KeyError, TypeError):
    return None
  return tuple(str(n) for n in names) if names else None


def _images_to_float(images: np.ndarray, split: str) -> np.ndarray:
  if images.ndim == 3:  # N×H×W grayscale without a channel axis
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(
      f"the 'image' field of split {split!r} stacks to shape {images.shape}; expected "
      "N×H×W×C images of one size (resize variable-size data sets before loading)."
    )
  x = images.astype(np.float32)
  if np.issubdtype(images.dtype, np.integer):
    x /= np.float32(255.0)
  return x


def load_tfds(
  tfds_name: str,
  *,
  root=None,
  seed: int = 0,
  label_key: str = "label",
  coarse_key: str = "coarse_label",
  train_split: str = "train",
  test_split: str = "test",
  num_classes: int | None = None,
  lazy: bool = False,
) -> Dataset:
  """Loads a prepared TFDS image-classification data set (into memory, or lazily).

  Images are scaled by 1/255 (integer dtypes) and standardised per channel with the
  training split's mean and std. A ``coarse_key`` field (CIFAR-100's "coarse_label") is
  kept as coarse labels; CIFAR-N fields (aggre_label, worse_label, random_label1..3 of
  cifar10_n; noise_label of cifar100_n) become ``noisy_label_sets``.

  Args:
    tfds_name: TFDS name, optionally with config/version ("cifar100", "cifar10_n").
    root: TFDS data_dir holding the prepared data (default: TFDS's own default).
    seed: Unused.
    label_key: Field with the class label.
    coarse_key: Field with superclass labels, used when present.
    train_split: Split used for training.
    test_split: Split used for testing.
    num_classes: C when the label feature names no classes and some class has no
      sample (otherwise C is the largest label + 1, every class present).
    lazy: the inputs as `sap_jax.data.sources.RecordSource`s over the TFDS data sources
      (one image read and converted per access) instead of arrays: one pass over the
      splits reads the labels and the training split's per-channel mean and std (as
      float64 sums, so they equal the in-memory ones to float tolerance), and no array
      of all images is built.

  Returns:
    A Dataset named ``"tfds:" + tfds_name``.

  Raises:
    ModuleNotFoundError: if tensorflow-datasets is not installed.
    FileNotFoundError: if the data set is not prepared in ``root``.
    ValueError: on unknown splits or fields.
  """
  del seed
  if not isinstance(tfds_name, str) or not tfds_name.strip():
    raise ValueError(
      f"tfds name must be a non-empty string, got {tfds_name!r}; write e.g. 'tfds:cifar10'."
    )
  for what, value in (
    ("label_key", label_key),
    ("coarse_key", coarse_key),
    ("train_split", train_split),
    ("test_split", test_split),
  ):
    if not isinstance(value, str) or not value:
      raise ValueError(f"{what} must be a non-empty string, got {value!r}.")
  data_dir = None if root is None else os.fspath(root)
  tfds = _import_tfds()
  try:
    sources = tfds.data_source(tfds_name, data_dir=data_dir, download=False)
  except Exception as err:  # tfds raises several types for "not there"; keep its message.
    raise FileNotFoundError(
      f"tfds data set {tfds_name!r} could not be opened from "
      f"{data_dir or 'the default data_dir'} ({type(err).__name__}: {err}); "
      + _prepare_hint(tfds_name, data_dir)
    ) from err
  if not isinstance(sources, Mapping):
    sources = {train_split: sources}
  available = sorted(str(s) for s in sources)
  for split in (train_split, test_split):
    if split not in sources:
      raise ValueError(
        f"tfds data set {tfds_name!r} has no split {split!r} (splits: {available}); "
        "choose others with train_split=/test_split=."
      )
  train_src, test_src = sources[train_split], sources[test_split]
  if len(train_src) == 0:
    raise ValueError(f"split {train_split!r} of {tfds_name!r} is empty; pick another.")
  fields = set(train_src[0])
  missing = [k for k in ("image", label_key) if k not in fields]
  if missing:
    raise ValueError(
      f"tfds data set {tfds_name!r} has no field(s) {missing} (fields: "
      f"{sorted(fields)}); set label_key= to the label field of an image data set."
    )
  has_coarse = coarse_key in fields
  human = {k: v for k, v in TFDS_HUMAN_FIELDS.items() if k in fields and k != label_key}
  keys = ["image", label_key] + ([coarse_key] if has_coarse else [])
  if not isinstance(lazy, bool):
    raise ValueError(f"lazy must be True or False, got {lazy!r}.")
  if lazy:
    labels = keys[1:]
    train, (mean, std) = _scan_split(train_src, labels + list(human), train_split)
    test, _ = _scan_split(test_src, labels, None)

    def convert(image: np.ndarray) -> np.ndarray:
      return standardize(_images_to_float(image[None], train_split)[0], mean, std)

    x_tr = RecordSource(train_src, label_key=label_key, convert=convert)
    x_te = RecordSource(test_src, label_key=label_key, convert=convert)
  else:
    train = _read_split(train_src, keys + list(human))
    test = _read_split(test_src, keys)
    x_tr = _images_to_float(train["image"], train_split)
    x_te = _images_to_float(test["image"], test_split)
    mean = x_tr.mean(axis=(0, 1, 2), dtype=np.float64)
    std = x_tr.std(axis=(0, 1, 2), dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    x_tr, x_te = standardize(x_tr, mean, std), standardize(x_te, mean, std)
  y_tr = as_int32_labels(train[label_key], f"{train_split}[{label_key!r}]")
  y_te = as_int32_labels(test[label_key], f"{test_split}[{label_key!r}]")
  class_names = _feature_names(train_src, label_key)
  if num_classes is not None:
    num_classes = check_int(num_classes, "num_classes", minimum=2)
  n = num_classes_of([y_tr, y_te], class_names, num_classes, where=f"tfds:{tfds_name}")
  if class_names is None:
    class_names = tuple(str(c) for c in range(max(n, 2)))
  coarse = {}
  if has_coarse:
    coarse = dict(
      coarse_train=as_int32_labels(train[coarse_key], coarse_key),
      coarse_test=as_int32_labels(test[coarse_key], coarse_key),
      coarse_names=_feature_names(train_src, coarse_key),
    )
  return Dataset(
    name=f"tfds:{tfds_name}",
    x_train=x_tr,
    y_train=y_tr,
    x_test=x_te,
    y_test=y_te,
    class_names=class_names,
    noisy_label_sets={v: as_int32_labels(train[k], k) for k, v in human.items()},
    **coarse,
  )
