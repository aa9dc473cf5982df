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
training itself (optimizer, train-mode forward, data order) is `sap_jax.train`'s. The task
and the result live in `sap_jax.baselines.task` (re-exported here).
"""

from __future__ import annotations

import itertools
import numbers
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from sap_jax import train as tr
from sap_jax.baselines.task import CorrectionResult, CorrectionTask
from sap_jax.data.feeder import feed
from sap_jax.data.sources import is_source
from sap_jax.sample_scores import per_example_loss
from sap_jax.trusted import rank_by_score
from sap_jax.types import Variables

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
# Method.
# --------------------------------------------------------------------------


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
