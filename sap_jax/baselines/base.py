"""The interface every correction method shares: a task in, corrected variables out.

A *correction method* takes a model trained on noisy labels, its (noisy) training
data and a budget, and returns corrected variables. SAP and each baseline is a
:class:`Method`, a ``NamedTuple`` of a name, a ``run(task) -> CorrectionResult``
function and the hyperparameters it closes over, built by a factory with keyword
defaults in the optax style::

    method = sap_jax.baselines.ssd(n_forget=1000)
    result = method.run(CorrectionTask(model, variables, x_train, y_train, x_val,
                                       y_val, train_config))
    result.variables, result.wall_time_s, result.num_settings, result.chosen

Protocol shared by all methods:

* Hyperparameters are chosen on the NOISY validation split (``task.x_val``,
  ``task.y_val``), the honest protocol: the setting with the highest noisy
  validation accuracy wins, the first in grid order on ties.
  ``num_settings`` counts the settings evaluated (the paper: 16 for SAP, 675 for
  SCRUB). Only Retrain, an upper reference, reads ``task.y_train_clean``.
* Budgets (retain/forget/trusted set sizes) are given for CIFAR-scale data and
  clipped by :func:`clip_budget`: ``min(requested, N // 2)`` for N training
  samples, so a lowest-loss and a highest-loss set never overlap. ``chosen`` holds
  the size used and the size requested.
* ``wall_time_s`` covers everything the method does after it is handed the task
  (loss ranking, statistics, every setting of the search, compilation included).

This module also holds the small helpers the baselines share: grids, loss ranking,
the random streams of a method's continued training and the variables it returns. The
training itself (optimizer, train-mode forward, data order) is `sap_jax.train`'s.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
from tqdm.auto import tqdm

from sap_jax import train as tr
from sap_jax.data.feeder import feed
from sap_jax.data.sources import (
  Subset,
  first_input,
  is_source,
  source_labels,
  source_length,
  with_labels,
)
from sap_jax.input_checks import check_labelled, check_labels, output_width
from sap_jax.trusted import per_example_loss, rank_by_score
from sap_jax.types import ApplyFn, Variables

__all__ = [
  "BUDGET_RULE",
  "CorrectionResult",
  "CorrectionTask",
  "Method",
  "Outcome",
  "clip_budget",
  "expand_grid",
  "highest_loss",
  "input_batches",
  "lowest_loss",
  "make_method",
  "method_rngs",
  "search",
  "train_losses",
  "val_accuracy",
  "vanilla",
  "variables_like",
]

BUDGET_RULE = "min(requested, N // 2)"
"""How a requested set size is clipped to a training set of N samples."""


# --------------------------------------------------------------------------
# Task, result, method.
# --------------------------------------------------------------------------


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


class Outcome(NamedTuple):
  """What a method's body returns; :func:`make_method` adds name and time."""

  variables: Variables
  num_settings: int
  chosen: dict[str, Any]
  details: dict[str, Any]


class Method(NamedTuple):
  """A correction method: a name, ``run(task) -> CorrectionResult`` and the
  hyperparameters its factory closed over (for logs)."""

  name: str
  run: Callable[[CorrectionTask], CorrectionResult]
  hparams: Mapping[str, Any]


def make_method(
  name: str, body: Callable[[CorrectionTask], Outcome], hparams: Mapping[str, Any]
) -> Method:
  """Wraps ``body`` into a :class:`Method` that times it.

  Args:
    name: the method's registry name.
    body: ``body(task) -> Outcome``.
    hparams: the factory's arguments.

  Returns:
    The method; its ``run`` blocks until the variables are computed, then reports
    the wall time.
  """

  def run(task: CorrectionTask) -> CorrectionResult:
    if not isinstance(task, CorrectionTask):
      raise TypeError(f"{name}.run takes a CorrectionTask, got {type(task).__name__}.")
    start = time.perf_counter()
    out = body(task)
    variables = jax.block_until_ready(out.variables)
    wall = time.perf_counter() - start
    return CorrectionResult(
      variables=variables,
      method=name,
      wall_time_s=max(wall, 1e-9),
      num_settings=int(out.num_settings),
      chosen=dict(out.chosen),
      details=dict(out.details),
    )

  return Method(name=name, run=run, hparams=dict(hparams))


def vanilla() -> Method:
  """The trained model, unchanged (the very same variables object).

  Returns:
    A method with ``num_settings = 0``.
  """

  def body(task: CorrectionTask) -> Outcome:
    return Outcome(task.variables, 0, {}, {})

  return make_method("vanilla", body, {})


# --------------------------------------------------------------------------
# Budgets, grids, selection.
# --------------------------------------------------------------------------


def clip_budget(requested: int, n_train: int) -> int:
  """The set size used for a requested one: ``min(requested, n_train // 2)``.

  Budgets are the paper's CIFAR sizes (5000 retain, 1000 forget); on smaller
  data they shrink to at most half the training set, so the lowest-loss and
  highest-loss sets of one method are disjoint.

  Args:
    requested: the requested size, >= 1.
    n_train: N, the number of training samples, >= 2.

  Returns:
    The size to use, in [1, N // 2].
  """
  if isinstance(requested, bool) or not isinstance(requested, numbers.Integral):
    raise ValueError(f"set size must be an int, got {requested!r}.")
  if requested < 1:
    raise ValueError(f"set size must be >= 1, got {requested}.")
  if n_train < 2:
    raise ValueError(f"need at least 2 training samples, got {n_train}.")
  return int(min(requested, n_train // 2))


def expand_grid(
  defaults: Mapping[str, Any], grid: Mapping[str, Sequence[Any]] | None
) -> list[dict[str, Any]]:
  """The settings of a grid search: the product of ``grid``'s value lists.

  Args:
    defaults: every hyperparameter with its default value.
    grid: values to try for some of them (None or ``{}``: only the defaults).

  Returns:
    One dict per setting, the grid's keys varying last-fastest in their given
    order; keys not in the grid keep their defaults.
  """
  if not grid:
    return [dict(defaults)]
  unknown = sorted(set(grid) - set(defaults))
  if unknown:
    raise ValueError(f"grid has unknown hyperparameters {unknown}; searchable: {sorted(defaults)}.")
  for key, values in grid.items():
    if isinstance(values, (str, bytes)) or len(values) == 0:
      raise ValueError(f"grid[{key!r}] must be a non-empty sequence of values, got {values!r}.")
  keys = list(grid)
  return [
    {**defaults, **dict(zip(keys, combo))} for combo in itertools.product(*(grid[k] for k in keys))
  ]


def val_accuracy(task: CorrectionTask, variables: Variables) -> float:
  """Accuracy on the noisy validation split (the honest selection score)."""
  return tr.evaluate(task.apply_fn, variables, *task.val_data())["accuracy"]


def train_losses(task: CorrectionTask, batch_size: int = 512) -> np.ndarray:
  """Cross-entropy of every training sample on its noisy label, float32[N].

  :func:`sap_jax.trusted.per_example_loss` (eval mode) of the task's model, the ranking
  SAP's trusted set uses too; of a source, streamed (`sap_jax.streaming.losses`).
  """
  return per_example_loss(task.apply_fn, task.variables, *task.train_data(), batch_size=batch_size)


def lowest_loss(losses: Any, n: int) -> np.ndarray:
  """Indices of the ``n`` lowest losses, ascending (ties: lower index first)."""
  return rank_by_score(losses)[:n]


def highest_loss(losses: Any, n: int) -> np.ndarray:
  """Indices of the ``n`` highest losses, descending (ties: lower index first)."""
  return rank_by_score(losses, descending=True)[:n]


def search(
  task: CorrectionTask,
  settings: Sequence[Mapping[str, Any]],
  fit: Callable[..., Variables],
  *,
  progress: bool = False,
  desc: str = "search",
  keep_original: bool = False,
) -> tuple[Variables, dict[str, Any], list[dict]]:
  """Runs ``fit(**setting)`` for every setting and keeps the best on noisy val.

  Only the best variables are kept in memory. With ``keep_original`` the
  unchanged model is the incumbent, as in SAP's α sweep: a setting must beat it
  on the noisy validation split to be chosen (otherwise the setting returned is
  ``{"kept_original": True}``). Without it a correction that ruins the model
  (e.g. SSD dampening a memorised model to chance) would be returned.

  Args:
    task: the task (its noisy validation split scores the settings).
    settings: from :func:`expand_grid`.
    fit: ``fit(**setting) -> variables``.
    progress: show a tqdm bar over settings.
    desc: the bar's label.

  Returns:
    ``(best_variables, best_setting, records)``, one record per setting with
    its ``val_accuracy``.
  """
  best, best_acc, best_setting, records = None, -1.0, None, []
  if keep_original:
    best, best_acc = task.variables, val_accuracy(task, task.variables)
    best_setting = {"kept_original": True}
  for setting in tqdm(settings, disable=None if progress else True, desc=desc, unit="setting"):
    variables = fit(**setting)
    acc = val_accuracy(task, variables)
    records.append({**setting, "val_accuracy": acc})
    if acc > best_acc:
      best, best_acc, best_setting = variables, acc, dict(setting)
  return best, best_setting, records


# --------------------------------------------------------------------------
# Helpers of Finetune's and SCRUB's continued training.
# --------------------------------------------------------------------------


def method_rngs(seed: int) -> tuple[np.random.Generator, jax.Array]:
  """The random streams of a method's continued training, from ``task.seed``.

  Returns:
    ``(data_order, key)``: the generator of the epochs' data order
    (:func:`sap_jax.batching.epoch_batches`) and the key whose ``fold_in(key, t)``
    is step ``t``'s dropout key.
  """
  return np.random.default_rng(seed), jax.random.key(seed)


def input_batches(x: Any, index_batches: np.ndarray, what: str = "source") -> Iterator[Any]:
  """The inputs of each row of ``index_batches`` (``(num, bs)`` positions in ``x``, from
  :func:`sap_jax.batching.epoch_batches`), one batch at a time.

  ``x[idx]`` of an array; of a source, the feeder's batches of those positions in that
  order (`sap_jax.data.feeder.feed` on one device: every row is a full batch, so the
  batches are the arrays' own, sample for sample).
  """
  if not is_source(x):
    for idx in index_batches:
      yield x[idx]
    return
  if len(index_batches) == 0:
    return
  stream = np.asarray(index_batches).reshape(-1)
  for batch in feed(x, index_batches.shape[1], indices=stream, labelled=False, what=what):
    yield batch.x


def variables_like(template: Variables, params: Any, batch_stats: Any) -> Variables:
  """``{"params", ["batch_stats"]}`` with the collections of ``template``."""
  out = dict(template)
  out["params"] = params
  if "batch_stats" in template:
    out["batch_stats"] = batch_stats
  return out
