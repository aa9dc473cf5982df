"""The `Dataset` container and the small helpers every loader shares."""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sap_jax.data.sources import input_shape, is_source, source_length
from sap_jax.input_checks import all_finite

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_x(x: Any, what: str) -> np.ndarray:
  if is_source(x):  # a lazy source: its records are checked as they are read
    source_length(x, what)
    return x
  if not isinstance(x, np.ndarray) or x.dtype != np.float32:
    dtype = getattr(x, "dtype", type(x).__name__)
    raise ValueError(
      f"{what} must be a float32 numpy array, got {dtype}; convert with "
      f"np.asarray({what}, np.float32)."
    )
  if x.ndim < 2:
    raise ValueError(
      f"{what} must have shape (N, ...) with per-example features, got shape "
      f"{x.shape}; add a feature axis, e.g. x[:, None]."
    )
  if not all_finite(x):
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    raise ValueError(
      f"{what} contains NaN or inf in {int(bad.sum())} sample(s) (first at index "
      f"{int(np.argmax(bad))}); clean or drop those samples first."
    )
  return x


def _check_y(y: Any, n: int, num_classes: int, what: str) -> np.ndarray:
  if not isinstance(y, np.ndarray) or y.dtype != np.int32:
    dtype = getattr(y, "dtype", type(y).__name__)
    raise ValueError(
      f"{what} must be an int32 numpy array, got {dtype}; convert with "
      f"np.asarray({what}, np.int32)."
    )
  if y.shape != (n,):
    raise ValueError(f"{what} must have shape ({n},) (one class index per example), got {y.shape}.")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(
      f"{what} must lie in [0, {num_classes}), found [{y.min()}, {y.max()}]; give one "
      "name per class or remap the labels to 0..C-1."
    )
  return y


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A classification data set: labels in memory, inputs as numpy arrays or as lazy
  random-access sources (`sap_jax.data.sources`: an image folder read one image at a
  time), whose records are checked as they are read.

  Attributes:
    name: Source name ("digits", "cifar10", "tfds:cifar100", ...); selects the known
      asymmetric noise map (see `sap_jax.noise.known_class_map`).
    x_train: float32 (N, ...) inputs: images N×H×W×C, mnist1d N×40×1, spiral N×2.
    y_train: int32 (N,) clean (original) labels.
    x_test: float32 (M, ...) inputs, same per-example shape as x_train.
    y_test: int32 (M,) clean labels.
    class_names: One name per class; its length is the number of classes.
    coarse_train: Optional int32 (N,) superclass labels (CIFAR-100).
    coarse_test: Optional int32 (M,) superclass labels.
    coarse_names: Optional superclass names.
    noisy_label_sets: Human label sets for the train split (CIFAR-N), keyed by variant
      ("aggre", "worse", "random1".."random3", "noisy100"); int32 (N,) each.
  """

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  class_names: tuple[str, ...]
  coarse_train: np.ndarray | None = None
  coarse_test: np.ndarray | None = None
  coarse_names: tuple[str, ...] | None = None
  noisy_label_sets: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"Dataset name must be a non-empty string, got {self.name!r}.")
    if isinstance(self.class_names, str) or not isinstance(self.class_names, Sequence):
      raise ValueError(
        "class_names must be a sequence of strings, got "
        f"{type(self.class_names).__name__}; pass e.g. ('cat', 'dog')."
      )
    object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
    c = len(self.class_names)
    if c < 2:
      raise ValueError(
        f"a classification data set needs >= 2 classes, got {self.class_names}; "
        "give one name per class."
      )
    x_train = _check_x(self.x_train, "x_train")
    x_test = _check_x(self.x_test, "x_test")
    if input_shape(x_train) != input_shape(x_test):
      raise ValueError(
        f"x_train examples have shape {input_shape(x_train)} but x_test examples "
        f"{input_shape(x_test)}; train and test must share the per-example shape."
      )
    _check_y(self.y_train, len(x_train), c, "y_train")
    _check_y(self.y_test, len(x_test), c, "y_test")
    self._check_coarse()
    if not isinstance(self.noisy_label_sets, Mapping):
      raise ValueError(
        "noisy_label_sets must be a mapping variant -> labels, got "
        f"{type(self.noisy_label_sets).__name__}."
      )
    sets = {
      str(k): _check_y(v, len(x_train), c, f"noisy_label_sets[{k!r}]")
      for k, v in self.noisy_label_sets.items()
    }
    object.__setattr__(self, "noisy_label_sets", sets)  # a private copy

  def _check_coarse(self):
    if (self.coarse_train is None) != (self.coarse_test is None):
      raise ValueError("give both coarse_train and coarse_test, or neither.")
    if self.coarse_train is None:
      if self.coarse_names is not None:
        raise ValueError(
          "coarse_names given without coarse_train/coarse_test; drop coarse_names "
          "or pass the coarse labels."
        )
      return
    if self.coarse_names is not None:
      object.__setattr__(self, "coarse_names", tuple(str(n) for n in self.coarse_names))
      n_coarse = len(self.coarse_names)
    else:
      n_coarse = np.iinfo(np.int32).max
    _check_y(self.coarse_train, len(self.x_train), n_coarse, "coarse_train")
    _check_y(self.coarse_test, len(self.x_test), n_coarse, "coarse_test")

  @property
  def num_classes(self) -> int:
    """Number of classes, ``len(class_names)``."""
    return len(self.class_names)

  @property
  def input_shape(self) -> tuple[int, ...]:
    """Per-example input shape, e.g. (32, 32, 3)."""
    return input_shape(self.x_train)

  def __repr__(self) -> str:
    extra = ""
    if self.coarse_train is not None:
      extra += f", coarse_names={self.coarse_names is not None}"
    if self.noisy_label_sets:
      extra += f", noisy_label_sets={sorted(self.noisy_label_sets)}"
    return (
      f"Dataset(name={self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
      f"input_shape={self.input_shape}, num_classes={self.num_classes}{extra})"
    )


# --------------------------------------------------------------------------------------
# Shared helpers for loaders.
# --------------------------------------------------------------------------------------


def check_int(value: Any, what: str, minimum: int = 1) -> int:
  """Returns ``value`` as an int after checking it is an int >= ``minimum``."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}.")
  return int(value)


def require_root(root: Any, source: str, expects: str) -> str:
  """Returns ``root`` as a string path, raising if it is missing or not a path."""
  if root is None:
    raise ValueError(f"data set {source!r} reads files: pass root={expects}.")
  if not isinstance(root, (str, os.PathLike)):
    raise ValueError(f"root must be a path (str or os.PathLike), got {type(root).__name__}.")
  return os.fspath(root)


def standardize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """Per-channel ``(x - mean) / std`` over the last axis, in float32.

  Args:
    x: float32 array (..., C); modified in place.
    mean: C channel means.
    std: C channel standard deviations (> 0).

  Returns:
    ``x``, standardised.
  """
  x -= np.asarray(mean, np.float32)
  x /= np.asarray(std, np.float32)
  return x


def uint8_to_unit(images: np.ndarray) -> np.ndarray:
  """uint8 images → float32 in [0, 1] (a new array)."""
  x = images.astype(np.float32)
  x /= np.float32(255.0)
  return x


def as_int32_labels(y: Any, what: str) -> np.ndarray:
  """Casts integer class indices to a 1-D int32 array, raising on anything else."""
  arr = np.asarray(y)
  if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(
      f"{what} must hold integer class indices, got dtype {arr.dtype}; store the "
      "labels as an integer array."
    )
  if arr.ndim != 1:
    raise ValueError(f"{what} must be 1-D (one class index per example), got shape {arr.shape}.")
  if arr.size and arr.min() < 0:
    raise ValueError(
      f"{what} contains negative labels (min {arr.min()}); labels must be class indices 0..C-1."
    )
  return arr.astype(np.int32)


def _spans(values: np.ndarray, limit: int = 3) -> str:
  """``[3, 10..999]``-style text of sorted ints (the first ``limit`` runs)."""
  runs, start = [], values[0]
  for prev, cur in zip(values[:-1], values[1:]):
    if cur != prev + 1:
      runs.append((start, prev))
      start = cur
  runs.append((start, values[-1]))
  text = [str(a) if a == b else f"{a}..{b}" for a, b in runs[:limit]]
  return "[" + ", ".join(text) + (", ..." if len(runs) > limit else "") + "]"


def num_classes_of(
  labels: Sequence[np.ndarray],
  class_names: Sequence[str] | None,
  num_classes: int | None,
  *,
  where: str,
) -> int:
  """The number of classes C of a loaded data set, by one rule for every loader.

  ``len(class_names)`` when the source names its classes, else ``num_classes`` when the
  user gives it, else the largest label + 1 — and then every class 0..C-1 must have a
  sample in some split, so one stray label (a 1000 among classes 0–9) is refused
  instead of making a 1001-class data set.

  Args:
    labels: the integer label arrays of every split.
    class_names: the source's class names, or None.
    num_classes: C as given by the user, or None.
    where: the source in messages ("the npz").

  Raises:
    ValueError: labels ≥ C, names and num_classes that disagree, classes without a
      sample when C is inferred.
  """
  seen = np.unique(np.concatenate(labels))
  top = int(seen[-1]) + 1 if seen.size else 0
  if class_names is not None:
    if num_classes is not None and num_classes != len(class_names):
      raise ValueError(
        f"num_classes={num_classes} but class_names in {where} has {len(class_names)} "
        "entries; give one of them, or make them agree."
      )
    if top > len(class_names):
      raise ValueError(
        f"labels go up to {top - 1} but class_names has {len(class_names)} "
        "entries; store one name per class."
      )
    return len(class_names)
  if num_classes is not None:
    if top > num_classes:
      raise ValueError(
        f"labels go up to {top - 1} but num_classes={num_classes}; labels must lie in "
        f"[0, {num_classes}): fix the labels or raise num_classes."
      )
    return num_classes
  missing = np.setdiff1d(np.arange(top), seen)
  if missing.size:
    raise ValueError(
      f"labels go up to {top - 1} but classes {_spans(missing)} ({missing.size} of {top}) "
      f"have no sample in {where}; a stray label? Fix it, or, if those classes are "
      f"meant to be empty, pass num_classes={top} (--data-opt num_classes={top}) or name the "
      "classes."
    )
  return top
