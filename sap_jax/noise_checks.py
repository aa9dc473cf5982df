"""Argument checks shared by :mod:`sap_jax.noise` and :mod:`sap_jax.noise_maps`.

Each check returns its argument in the form the noise code uses and raises a
``ValueError`` that says what to pass instead; the public noise functions run
them before any work is done.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
  "TRANSITION_ATOL",
  "check_class_map",
  "check_labels",
  "check_num_classes",
  "check_paired_labels",
  "check_rate",
  "check_seed",
  "check_transition",
]

TRANSITION_ATOL = 1e-6
"""How far from 1 a row of a transition matrix may sum."""


def check_rate(rate: Any) -> float:
  if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
    raise ValueError(
      f"rate must be a float in [0, 1), got {rate!r} ({type(rate).__name__}); "
      "pass the fraction of labels to corrupt, e.g. rate=0.25."
    )
  rate = float(rate)
  if not (0.0 <= rate < 1.0) or math.isnan(rate):
    raise ValueError(
      f"rate must be in [0, 1), got {rate}; write the noise rate as a fraction, e.g. 0.25 for 25 %."
    )
  return rate


def check_num_classes(num_classes: Any) -> int:
  if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
    raise ValueError(
      f"num_classes must be an int >= 2, got {num_classes!r}; pass the number of "
      "classes of the data set (e.g. dataset.num_classes)."
    )
  if num_classes < 2:
    raise ValueError(
      f"num_classes must be >= 2 to corrupt labels, got {num_classes}; label noise "
      "needs at least two classes to flip between."
    )
  return int(num_classes)


def check_seed(seed: Any) -> int:
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}; pass e.g. seed=0.")
  return int(seed)


def check_labels(labels: Any, num_classes: int | None, what: str = "labels") -> np.ndarray:
  """Returns `labels` as a 1-D int64 array after checking dtype, shape and range."""
  arr = np.asarray(labels)
  if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(
      f"{what} must be an integer array, got dtype {arr.dtype}; convert with "
      f"np.asarray({what}).astype(np.int32)."
    )
  if arr.ndim != 1:
    raise ValueError(
      f"{what} must be 1-D (one class index per sample), got shape {arr.shape}; "
      "pass integer class indices, not one-hot vectors (use argmax(-1) first)."
    )
  if arr.size == 0:
    raise ValueError(f"{what} is empty; pass at least one label.")
  lo, hi = int(arr.min()), int(arr.max())
  if lo < 0 or (num_classes is not None and hi >= num_classes):
    bound = f"[0, {num_classes})" if num_classes is not None else "[0, inf)"
    raise ValueError(
      f"{what} must lie in {bound}, found values in [{lo}, {hi}]; check num_classes "
      "or remap the labels to 0..num_classes-1."
    )
  return arr.astype(np.int64)


def check_class_map(class_map: Any, num_classes: int | None) -> dict[int, int]:
  if not isinstance(class_map, Mapping):
    raise ValueError(
      f"class_map must be a mapping source_class -> target_class, got "
      f"{type(class_map).__name__}; pass e.g. class_map={{3: 5, 5: 3}}."
    )
  if not class_map:
    raise ValueError(
      "class_map is empty, so asymmetric noise would change nothing; give at least "
      "one source -> target pair, e.g. class_map={3: 5}."
    )
  out: dict[int, int] = {}
  for src, dst in class_map.items():
    for value in (src, dst):
      if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
          f"class_map entries must be ints, got {src!r} -> {dst!r}; use class indices, not names."
        )
      if value < 0 or (num_classes is not None and value >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise ValueError(
          f"class_map entry {src} -> {dst} is outside the class range {bound}; "
          "use class indices of this data set."
        )
    if int(src) == int(dst):
      raise ValueError(
        f"class_map maps class {src} to itself, which is not noise; remove the entry {src}: {dst}."
      )
    out[int(src)] = int(dst)
  return out


def check_transition(transition: Any, num_classes: int | None) -> np.ndarray:
  t = np.asarray(transition, dtype=np.float64)
  if t.ndim != 2 or t.shape[0] != t.shape[1]:
    raise ValueError(
      f"transition must be a square C x C matrix, got shape {t.shape}; entry [i, j] "
      "is P(noisy label = j | clean label = i)."
    )
  if num_classes is not None and t.shape[0] != num_classes:
    raise ValueError(
      f"transition has shape {t.shape} but num_classes={num_classes}; pass a "
      f"{num_classes} x {num_classes} matrix."
    )
  if not np.all(np.isfinite(t)) or np.any(t < 0):
    raise ValueError(
      "transition must contain finite, non-negative probabilities; fix the negative "
      "or non-finite entries."
    )
  row_sums = t.sum(axis=1)
  bad = np.flatnonzero(np.abs(row_sums - 1.0) > TRANSITION_ATOL)
  if bad.size:
    raise ValueError(
      f"transition must be row-stochastic (every row sums to 1), rows {bad.tolist()} "
      f"sum to {row_sums[bad].round(6).tolist()}; normalise with T / T.sum(1, "
      "keepdims=True)."
    )
  return t


def check_paired_labels(labels: Any, coarse_labels: Any) -> tuple[np.ndarray, np.ndarray]:
  """Fine and coarse labels as 1-D int64 arrays, after checking they pair sample by sample."""
  fine = check_labels(labels, None, "labels")
  if coarse_labels is None:
    raise ValueError(
      "coarse_labels is None but this noise needs superclass labels; pass the coarse "
      "labels paired with the fine ones (e.g. dataset.coarse_train for cifar100)."
    )
  coarse = check_labels(coarse_labels, None, "coarse_labels")
  if coarse.shape != fine.shape:
    raise ValueError(
      f"coarse_labels has shape {coarse.shape} but labels has shape {fine.shape}; "
      "pass one coarse label per sample, in the same order."
    )
  return fine, coarse
