"""Noisy train / validation / clean test splits, as SAP uses them.

Noise is applied to the *whole* training set first, then a validation split stratified by
the noisy label is carved out of it: the validation labels are as noisy as the training
labels, because an honest SAP picks its scaling coefficient α on noisy validation data
(the clean validation labels are kept alongside for the oracle comparison).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np

from sap_jax.data.base import Dataset
from sap_jax.data.sources import Subset, is_source, subset, with_labels
from sap_jax.noise import apply_noise
from sap_jax.noise_spec import NoiseSpec

_SPLIT_STREAM = 1  # SeedSequence([seed, 1]) draws the split; default_rng(seed) the noise.


@dataclasses.dataclass(frozen=True, eq=False)
class NoisySplits:
  """Arrays to train, select and evaluate on.

  Attributes:
    x_train: float32 (N, ...) training inputs.
    y_train: int32 (N,) NOISY training labels (what models train on).
    y_train_clean: int32 (N,) original labels of the same samples.
    noise_mask: bool (N,), exactly ``y_train != y_train_clean``.
    x_val: float32 (V, ...) validation inputs (drawn from the training set).
    y_val: int32 (V,) NOISY validation labels.
    y_val_clean: int32 (V,) original validation labels (oracle only).
    x_test: float32 (M, ...) test inputs.
    y_test: int32 (M,) clean test labels.
    num_classes: Number of classes.
    class_names: One name per class.
    noise: The NoiseSpec that produced the noisy labels.
    train_indices: int64 (N,) positions of the training samples in dataset.x_train.
    val_indices: int64 (V,) positions of the validation samples in dataset.x_train.
  """

  x_train: np.ndarray
  y_train: np.ndarray
  y_train_clean: np.ndarray
  noise_mask: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  y_val_clean: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]
  noise: NoiseSpec
  train_indices: np.ndarray | None = None
  val_indices: np.ndarray | None = None

  def __post_init__(self):
    n, v = len(self.x_train), len(self.x_val)
    for what, arr, size in (
      ("y_train", self.y_train, n),
      ("y_train_clean", self.y_train_clean, n),
      ("noise_mask", self.noise_mask, n),
      ("y_val", self.y_val, v),
      ("y_val_clean", self.y_val_clean, v),
      ("y_test", self.y_test, len(self.x_test)),
    ):
      if np.shape(arr) != (size,):
        raise ValueError(
          f"{what} has shape {np.shape(arr)}, expected ({size},) to match its inputs."
        )
    mask = np.asarray(self.noise_mask)
    if mask.dtype != bool or not np.array_equal(mask, self.y_train != self.y_train_clean):
      raise ValueError(
        "noise_mask must be a bool array equal to (y_train != y_train_clean); "
        "recompute it from the labels."
      )

  @property
  def noise_rate_observed(self) -> float:
    """Fraction of training labels that differ from the clean ones."""
    return float(self.noise_mask.mean()) if self.noise_mask.size else 0.0

  @property
  def val_noise_mask(self) -> np.ndarray:
    """bool (V,), ``y_val != y_val_clean``."""
    return self.y_val != self.y_val_clean

  @property
  def streamed(self) -> bool:
    """Whether the inputs are lazy sources (read through the feeder) rather than arrays."""
    return is_source(self.x_train)

  def labelled(self, name: str) -> tuple[Any, Any]:
    """``(x, y)`` of a split by name ("train", "train_clean", "val", "val_clean",
    "test"): arrays as they are, or ``(source with those labels, None)`` for lazy
    inputs (`sap_jax.data.sources.with_labels`): what every phase takes as ``x, y``."""
    x, y = self._named(name)
    return with_labels(x, y)

  def eval_split(self, name: str) -> Any:
    """A split as an ``eval_splits`` value: ``(x, y)`` arrays, or a labelled source."""
    x, y = self.labelled(name)
    return x if y is None else (x, y)

  def corrupted(self) -> tuple[Any, Any]:
    """``(x, y)`` of the corrupted training samples with their noisy labels (as
    `labelled`): what `sap_jax.evaluation.fit_fraction` scores."""
    index = np.flatnonzero(self.noise_mask)
    if self.streamed:
      return Subset(self.x_train, index, self.y_train[index]), None
    return self.x_train[index], self.y_train[index]

  def _named(self, name: str) -> tuple[Any, np.ndarray]:
    table = {
      "train": (self.x_train, self.y_train),
      "train_clean": (self.x_train, self.y_train_clean),
      "val": (self.x_val, self.y_val),
      "val_clean": (self.x_val, self.y_val_clean),
      "test": (self.x_test, self.y_test),
    }
    if name not in table:
      raise KeyError(f"no split {name!r}; splits: {sorted(table)}.")
    return table[name]


def _check_val_fraction(val_fraction, n: int) -> int:
  if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real):
    raise ValueError(f"val_fraction must be a float in [0, 1), got {val_fraction!r}; e.g. 0.1.")
  if not 0.0 <= float(val_fraction) < 1.0:
    raise ValueError(
      f"val_fraction must be in [0, 1), got {val_fraction}; use e.g. 0.1 (or 0.0 for "
      "no validation split)."
    )
  n_val = int(round(float(val_fraction) * n))
  if n_val >= n:
    raise ValueError(
      f"val_fraction={val_fraction} of {n} training samples leaves none to train on; "
      "lower val_fraction."
    )
  return n_val


def stratified_indices(labels: np.ndarray, n_select: int, rng: np.random.Generator) -> np.ndarray:
  """Picks ``n_select`` indices with per-class counts proportional to class frequency.

  Counts follow the largest-remainder rule (ties to the lower class index), so they sum
  to exactly ``n_select`` and each class gets ``floor`` or ``ceil`` of its quota; within a
  class the samples are drawn uniformly without replacement.

  Args:
    labels: int (N,) labels to stratify on.
    n_select: How many indices to pick, 0 <= n_select <= N.
    rng: Source of randomness.

  Returns:
    Sorted int64 indices.
  """
  classes, counts = np.unique(labels, return_counts=True)
  quota = n_select * counts / labels.size
  take = np.floor(quota).astype(np.int64)
  short = n_select - int(take.sum())
  order = np.lexsort((classes, -(quota - take)))  # largest remainder first
  take[order[:short]] += 1
  chosen = [
    rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take)
  ]
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def _noisy_train_labels(dataset: Dataset, noise: NoiseSpec, seed: int) -> np.ndarray:
  if noise.kind != "human":
    noisy, _ = apply_noise(
      noise,
      dataset.y_train,
      dataset.num_classes,
      seed,
      coarse_labels=dataset.coarse_train,
      dataset_name=dataset.name,
    )
    return noisy
  if noise.variant not in dataset.noisy_label_sets:
    available = sorted(dataset.noisy_label_sets)
    hint = (
      f"available: {', '.join(available)}"
      if available
      else "this data set has none; load 'cifar10n' / 'cifar100n' (or tfds:cifar10_n)"
    )
    raise ValueError(
      f"human noise variant {noise.variant!r} not in {dataset.name!r}'s noisy_label_sets ({hint})."
    )
  return np.array(dataset.noisy_label_sets[noise.variant], np.int32)


def make_splits(
  dataset: Dataset,
  *,
  noise: NoiseSpec | str = "none",
  val_fraction: float = 0.1,
  seed: int = 0,
) -> NoisySplits:
  """Corrupts the training labels, then splits off a noisy, stratified validation set.

  1. Noise is applied to all of ``dataset.y_train`` with ``seed`` ("human:<variant>"
     takes ``dataset.noisy_label_sets[variant]``; asymmetric noise without a map in the
     spec uses ``known_class_map(dataset.name, ...)``).
  2. ``round(val_fraction · N)`` samples, stratified by their *noisy* label, become the
     validation split (stream ``SeedSequence([seed, 1])``). The rest is the training
     split; both keep the original sample order.

  Args:
    dataset: The clean data set.
    noise: A NoiseSpec or its text form, e.g. "symmetric:0.25".
    val_fraction: Fraction of the training set held out, in [0, 1).
    seed: Non-negative int; the same seed gives identical splits.

  Returns:
    The NoisySplits; the test split is the data set's clean test split.
  """
  if not isinstance(dataset, Dataset):
    raise ValueError(
      f"dataset must be a sap_jax.data.Dataset, got {type(dataset).__name__}; get one "
      "from load_dataset(name)."
    )
  noise = NoiseSpec.parse(noise)
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
  n_val = _check_val_fraction(val_fraction, len(dataset.y_train))
  noisy = _noisy_train_labels(dataset, noise, int(seed))
  rng = np.random.default_rng([int(seed), _SPLIT_STREAM])
  val_idx = stratified_indices(noisy, n_val, rng)
  keep = np.ones(noisy.size, bool)
  keep[val_idx] = False
  train_idx = np.flatnonzero(keep).astype(np.int64)
  clean = dataset.y_train
  return NoisySplits(
    x_train=subset(dataset.x_train, train_idx),
    y_train=noisy[train_idx],
    y_train_clean=clean[train_idx],
    noise_mask=noisy[train_idx] != clean[train_idx],
    x_val=subset(dataset.x_train, val_idx),
    y_val=noisy[val_idx],
    y_val_clean=clean[val_idx],
    x_test=dataset.x_test,
    y_test=dataset.y_test,
    num_classes=dataset.num_classes,
    class_names=dataset.class_names,
    noise=noise,
    train_indices=train_idx,
    val_indices=val_idx,
  )
