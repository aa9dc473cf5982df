"""What a correction method is handed and what it returns: `CorrectionTask` and
`CorrectionResult`.

The task bundles the trained model, its noisy training data (arrays or a source), the
noisy validation split that scores settings, the training config of continued training
and the clean labels only Retrain may read; it is checked once, at construction. The
interface that runs a method on it is `sap_jax.baselines.base` (which re-exports both).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, NamedTuple

import flax.linen as nn
import numpy as np

from sap_jax import train as tr
from sap_jax.data.sources import (
  Subset,
  first_input,
  is_source,
  source_labels,
  source_length,
  with_labels,
)
from sap_jax.forward_checks import output_width
from sap_jax.input_checks import check_labelled, check_labels
from sap_jax.types import ApplyFn, Variables

__all__ = ["CorrectionResult", "CorrectionTask"]


def _labels(y: Any, what: str) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(
      f"{what} must be a 1-D integer array, got shape {y.shape} "
      f"dtype {y.dtype}; pass class indices."
    )
  return y.astype(np.int32, copy=False)


@dataclasses.dataclass(frozen=True, eq=False)
class CorrectionTask:
  """Everything a correction method may use.

  The data are arrays in memory, or random-access sources (`sap_jax.data.sources`: an
  image folder read one image at a time, a ``Subset`` of one, an ``ArraySource``), both
  splits alike. With sources every method reads the data through the feeder
  (`sap_jax.data.feeder.feed`): its subsets (retain, forget, folds) are ``Subset`` views
  read by index, never an array of all inputs; the labels, N integers, are held as an
  array either way.

  Attributes:
    model: the Linen module, called as ``model.apply(v, x, train=bool)``.
    variables: the trained (noisy) model, ``{"params", ["batch_stats"]}``.
    x_train: ``(N, ...)`` training inputs, or a source of N records.
    y_train: ``(N,)`` NOISY training labels (what the model was trained on); with a
      source, None takes the labels of its records.
    x_val: ``(V, ...)`` validation inputs, or a source (when ``x_train`` is one).
    y_val: ``(V,)`` NOISY validation labels, for hyperparameter choice; with a source,
      None takes its records' labels.
    train_config: how the vanilla model was trained; Retrain and confident
      learning train with it again.
    y_train_clean: ``(N,)`` clean training labels or None. Only Retrain may
      read them; every other method ignores them.
    seed: seed of the method's own randomness (data order, row sampling).
  """

  model: nn.Module
  variables: Variables
  x_train: Any
  y_train: Any
  x_val: Any
  y_val: Any
  train_config: tr.TrainConfig
  y_train_clean: np.ndarray | None = None
  seed: int = 0

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
    streamed = is_source(self.x_train)
    if streamed != is_source(self.x_val):
      raise ValueError(
        "x_train and x_val must both be arrays or both be sources; wrap arrays with "
        "sap_jax.data.sources.ArraySource(x, y)."
      )
    if streamed:
      n = source_length(self.x_train, "x_train")
      v = source_length(self.x_val, "x_val")
      for name, source in (("y_train", self.x_train), ("y_val", self.x_val)):
        if getattr(self, name) is None:  # the records' own labels, read once
          set_(name, source_labels(source, name.replace("y_", "x_")))
    else:
      set_("x_train", np.asarray(self.x_train))
      set_("x_val", np.asarray(self.x_val))
      n, v = len(self.x_train), len(self.x_val)
    set_("y_train", _labels(self.y_train, "y_train"))
    set_("y_val", _labels(self.y_val, "y_val"))
    if n < 2 or len(self.y_train) != n:
      raise ValueError(
        f"x_train has {n} samples and y_train {len(self.y_train)} "
        "labels; pass at least 2 samples with one label each."
      )
    if v < 1 or len(self.y_val) != v:
      raise ValueError(
        f"x_val has {v} samples and y_val {len(self.y_val)} "
        "labels; pass a non-empty noisy validation split."
      )
    if self.y_train_clean is not None:
      clean = _labels(self.y_train_clean, "y_train_clean")
      if clean.shape != (n,):
        raise ValueError(f"y_train_clean has shape {clean.shape}, expected ({n},).")
      set_("y_train_clean", clean)
    if not isinstance(self.train_config, tr.TrainConfig):
      raise ValueError(
        f"train_config must be a sap_jax.train.TrainConfig, got {type(self.train_config).__name__}."
      )
    if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
      raise ValueError(f"seed must be a non-negative int, got {self.seed!r}.")
    if "params" not in self.variables:
      raise ValueError(
        f"variables must be a dict with a 'params' collection, got keys {sorted(self.variables)}."
      )
    if streamed:  # the records' inputs are checked as they stream
      k = self.num_classes
      check_labels(self.y_train, n, k, "x_train/y_train")
      check_labels(self.y_val, v, k, "x_val/y_val")
      if self.y_train_clean is not None:
        check_labels(self.y_train_clean, n, k, "x_train/y_train_clean")
    else:
      check_labelled(self.apply_fn, self.variables, self.x_train, self.y_train, "x_train/y_train")
      check_labelled(self.apply_fn, self.variables, self.x_val, self.y_val, "x_val/y_val")

  @property
  def n_train(self) -> int:
    """N, the number of training samples."""
    return len(self.x_train)

  @property
  def streamed(self) -> bool:
    """Whether the data are sources (read through the feeder) rather than arrays."""
    return is_source(self.x_train)

  @property
  def num_classes(self) -> int:
    """K, the model's outputs (a shape-only trace on one validation input)."""
    sample = first_input(self.x_val, "x_val") if self.streamed else self.x_val[:1]
    return output_width(self.apply_fn, self.variables, sample)

  @property
  def apply_fn(self) -> ApplyFn:
    """Eval-mode forward ``apply_fn(variables, x) -> logits`` (hashable)."""
    return tr.eval_apply_fn(self.model)

  def train_data(self, labels: Any = None) -> tuple[Any, Any]:
    """``(x, y)`` of the training split as every phase takes it: the arrays, or of a
    source ``(Subset(x_train, labels=y), None)`` (`sap_jax.data.sources.with_labels`).

    Args:
      labels: the labels to pair with the inputs (default the noisy ``y_train``).
    """
    return with_labels(self.x_train, self.y_train if labels is None else labels)

  def val_data(self) -> tuple[Any, Any]:
    """``(x, y)`` of the noisy validation split, as `train_data`."""
    return with_labels(self.x_val, self.y_val)

  def train_subset(self, indices: Any) -> tuple[Any, Any]:
    """``(x, y)`` of the training samples ``indices`` with their noisy labels:
    ``(x_train[indices], y_train[indices])`` of arrays, ``(Subset view, None)`` of a
    source (read by index when used, nothing loaded here)."""
    indices = np.asarray(indices)
    if self.streamed:
      return Subset(self.x_train, indices, self.y_train[indices]), None
    return self.x_train[indices], self.y_train[indices]

  @classmethod
  def from_splits(
    cls,
    model: nn.Module,
    variables: Variables,
    splits: Any,
    train_config: tr.TrainConfig,
    *,
    seed: int = 0,
  ) -> CorrectionTask:
    """The task for a model trained on ``splits`` (a ``NoisySplits``)."""
    return cls(
      model=model,
      variables=variables,
      x_train=splits.x_train,
      y_train=splits.y_train,
      x_val=splits.x_val,
      y_val=splits.y_val,
      train_config=train_config,
      y_train_clean=splits.y_train_clean,
      seed=seed,
    )


class CorrectionResult(NamedTuple):
  """What a method returns.

  Attributes:
    variables: the corrected variables, same tree structure, shapes and dtypes
      as ``task.variables``.
    method: the method's name.
    wall_time_s: seconds from receiving the task to returning (all settings).
    num_settings: hyperparameter settings evaluated (trained or scored).
    chosen: the hyperparameters of the returned variables, and the set sizes
      used (with the requested ones) where budgets apply.
    details: method-specific records, e.g. ``settings`` (one dict per setting
      with its ``val_accuracy``) and ``vanilla_val_accuracy``.
  """

  variables: Variables
  method: str
  wall_time_s: float
  num_settings: int
  chosen: dict[str, Any]
  details: dict[str, Any]
