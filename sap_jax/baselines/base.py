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

This module also holds the small pure helpers the baselines share: the SGD update
of ``torch.optim.SGD`` (the optimiser of the SCRUB and SAP code), a train-mode
forward that carries BatchNorm statistics, grids, and loss ranking.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from sap_jax import train as tr

Array = jax.Array
Variables = dict[str, Any]

__all__ = [
    "BUDGET_RULE",
    "CorrectionResult",
    "CorrectionTask",
    "Method",
    "Outcome",
    "clip_budget",
    "epoch_batches",
    "expand_grid",
    "forward_train",
    "highest_loss",
    "lowest_loss",
    "make_method",
    "search",
    "sgd_init",
    "sgd_update",
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
    raise ValueError(f"{what} must be a 1-D integer array, got shape {y.shape} "
                     f"dtype {y.dtype}; pass class indices.")
  return y.astype(np.int32, copy=False)


@dataclasses.dataclass(frozen=True, eq=False)
class CorrectionTask:
  """Everything a correction method may use.

  Attributes:
    model: the Linen module, called as ``model.apply(v, x, train=bool)``.
    variables: the trained (noisy) model, ``{"params", ["batch_stats"]}``.
    x_train: ``(N, ...)`` training inputs.
    y_train: ``(N,)`` NOISY training labels (what the model was trained on).
    x_val: ``(V, ...)`` validation inputs.
    y_val: ``(V,)`` NOISY validation labels, for hyperparameter choice.
    train_config: how the vanilla model was trained; Retrain and confident
      learning train with it again.
    y_train_clean: ``(N,)`` clean training labels or None. Only Retrain may
      read them; every other method ignores them.
    seed: seed of the method's own randomness (data order, row sampling).
  """

  model: nn.Module
  variables: Variables
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  train_config: tr.TrainConfig
  y_train_clean: np.ndarray | None = None
  seed: int = 0

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
    set_("x_train", np.asarray(self.x_train))
    set_("y_train", _labels(self.y_train, "y_train"))
    set_("x_val", np.asarray(self.x_val))
    set_("y_val", _labels(self.y_val, "y_val"))
    n, v = len(self.x_train), len(self.x_val)
    if n < 2 or len(self.y_train) != n:
      raise ValueError(f"x_train has {n} samples and y_train {len(self.y_train)} "
                       "labels; pass at least 2 samples with one label each.")
    if v < 1 or len(self.y_val) != v:
      raise ValueError(f"x_val has {v} samples and y_val {len(self.y_val)} "
                       "labels; pass a non-empty noisy validation split.")
    if self.y_train_clean is not None:
      clean = _labels(self.y_train_clean, "y_train_clean")
      if clean.shape != (n,):
        raise ValueError(f"y_train_clean has shape {clean.shape}, expected ({n},).")
      set_("y_train_clean", clean)
    if not isinstance(self.train_config, tr.TrainConfig):
      raise ValueError("train_config must be a sap_jax.train.TrainConfig, got "
                       f"{type(self.train_config).__name__}.")
    if (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)
        or self.seed < 0):
      raise ValueError(f"seed must be a non-negative int, got {self.seed!r}.")
    if "params" not in self.variables:
      raise ValueError("variables must be a dict with a 'params' collection, got "
                       f"keys {sorted(self.variables)}.")

  @property
  def n_train(self) -> int:
    """N, the number of training samples."""
    return len(self.x_train)

  @property
  def apply_fn(self) -> tr.ApplyFn:
    """Eval-mode forward ``apply_fn(variables, x) -> logits`` (hashable)."""
    return tr.eval_apply_fn(self.model)

  @classmethod
  def from_splits(cls, model: nn.Module, variables: Variables, splits: Any,
                  train_config: tr.TrainConfig, *, seed: int = 0
                  ) -> CorrectionTask:
    """The task for a model trained on ``splits`` (a ``NoisySplits``)."""
    return cls(model=model, variables=variables, x_train=splits.x_train,
               y_train=splits.y_train, x_val=splits.x_val, y_val=splits.y_val,
               train_config=train_config, y_train_clean=splits.y_train_clean,
               seed=seed)


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


def make_method(name: str, body: Callable[[CorrectionTask], Outcome],
                hparams: Mapping[str, Any]) -> Method:
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
      raise TypeError(f"{name}.run takes a CorrectionTask, got "
                      f"{type(task).__name__}.")
    start = time.perf_counter()
    out = body(task)
    variables = jax.block_until_ready(out.variables)
    wall = time.perf_counter() - start
    return CorrectionResult(variables=variables, method=name,
                            wall_time_s=max(wall, 1e-9),
                            num_settings=int(out.num_settings),
                            chosen=dict(out.chosen), details=dict(out.details))

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


def expand_grid(defaults: Mapping[str, Any],
                grid: Mapping[str, Sequence[Any]] | None) -> list[dict[str, Any]]:
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
    raise ValueError(f"grid has unknown hyperparameters {unknown}; searchable: "
                     f"{sorted(defaults)}.")
  for key, values in grid.items():
    if isinstance(values, (str, bytes)) or len(values) == 0:
      raise ValueError(f"grid[{key!r}] must be a non-empty sequence of values, "
                       f"got {values!r}.")
  keys = list(grid)
  return [{**defaults, **dict(zip(keys, combo))}
          for combo in itertools.product(*(grid[k] for k in keys))]


def val_accuracy(task: CorrectionTask, variables: Variables) -> float:
  """Accuracy on the noisy validation split (the honest selection score)."""
  return tr.evaluate(task.apply_fn, variables, task.x_val, task.y_val)["accuracy"]


@functools.partial(jax.jit, static_argnums=0)
def _batch_losses(apply_fn, variables, x, y):
  logits = apply_fn(variables, x).astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def train_losses(task: CorrectionTask, batch_size: int = 512) -> np.ndarray:
  """Cross-entropy of every training sample on its noisy label, float32[N].

  The ranking of :func:`sap_jax.trusted.per_example_loss` (eval mode), with a
  module-level jit so repeated runs on one model compile once.
  """
  x, y = task.x_train, task.y_train
  n = len(x)
  bs = min(batch_size, n)
  out = []
  for start in range(0, n, bs):
    xb, yb = x[start:start + bs], y[start:start + bs]
    real = len(xb)
    if real < bs:
      xb = np.concatenate([xb, np.repeat(xb[:1], bs - real, 0)])
      yb = np.concatenate([yb, np.repeat(yb[:1], bs - real, 0)])
    out.append(np.asarray(_batch_losses(task.apply_fn, task.variables, xb, yb))[:real])
  return np.concatenate(out).astype(np.float32)


def _finite(losses: Any) -> np.ndarray:
  losses = np.asarray(losses, np.float64)
  if losses.ndim != 1 or not np.all(np.isfinite(losses)):
    raise ValueError("losses must be a 1-D finite array; the model's outputs "
                     "are not finite.")
  return losses


def lowest_loss(losses: Any, n: int) -> np.ndarray:
  """Indices of the ``n`` lowest losses, ascending (ties: lower index first)."""
  losses = _finite(losses)
  return np.lexsort((np.arange(len(losses)), losses))[:n].astype(np.int64)


def highest_loss(losses: Any, n: int) -> np.ndarray:
  """Indices of the ``n`` highest losses, descending (ties: lower index first)."""
  losses = _finite(losses)
  return np.lexsort((np.arange(len(losses)), -losses))[:n].astype(np.int64)


def search(task: CorrectionTask, settings: Sequence[Mapping[str, Any]],
           fit: Callable[..., Variables], *, progress: bool = False,
           desc: str = "search", keep_original: bool = False,
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
  for setting in tqdm(settings, disable=not progress, desc=desc, unit="setting"):
    variables = fit(**setting)
    acc = val_accuracy(task, variables)
    records.append({**setting, "val_accuracy": acc})
    if acc > best_acc:
      best, best_acc, best_setting = variables, acc, dict(setting)
  return best, best_setting, records


# --------------------------------------------------------------------------
# Training helpers shared by Finetune and SCRUB.
# --------------------------------------------------------------------------


def forward_train(model: nn.Module, params: Any, batch_stats: Any, x: Array,
                  rng: Array) -> tuple[Array, Any]:
  """Train-mode logits and the updated BatchNorm statistics (``{}`` if none)."""
  rngs = {"dropout": rng}
  if batch_stats:
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                  x, train=True, mutable=["batch_stats"], rngs=rngs)
    return logits, updates["batch_stats"]
  return model.apply({"params": params}, x, train=True, rngs=rngs), batch_stats


def sgd_init(params: Any) -> Any:
  """Zero momentum buffers for :func:`sgd_update`."""
  return jax.tree_util.tree_map(jnp.zeros_like, params)


def sgd_update(params: Any, grads: Any, buf: Any, lr: Array, momentum: Array,
               weight_decay: Array) -> tuple[Any, Any]:
  """One ``torch.optim.SGD`` step (dampening 0, no Nesterov), pure.

  ``d = g + wd·θ``, ``b ← μ·b + d``, ``θ ← θ − lr·b``; the hyperparameters are
  traced values, so one compilation serves a whole grid.

  Returns:
    ``(new_params, new_buf)``.
  """
  d = jax.tree_util.tree_map(lambda g, p: g + weight_decay * p, grads, params)
  buf = jax.tree_util.tree_map(lambda b, di: (momentum * b + di).astype(b.dtype),
                               buf, d)
  params = jax.tree_util.tree_map(lambda p, b: (p - lr * b).astype(p.dtype),
                                  params, buf)
  return params, buf


def epoch_batches(rng: np.random.Generator, n: int, batch_size: int) -> np.ndarray:
  """Index batches of one epoch: ``ceil(n / bs)`` batches of ``bs = min(bs, n)``.

  A fresh permutation, the last batch filled up from its start, so every sample
  is visited and every batch has one shape (one compilation).

  Returns:
    int array ``(num_batches, bs)``.
  """
  bs = max(1, min(batch_size, n))
  nb = -(-n // bs)
  perm = rng.permutation(n)
  return np.resize(perm, nb * bs).reshape(nb, bs)


def variables_like(template: Variables, params: Any, batch_stats: Any) -> Variables:
  """``{"params", ["batch_stats"]}`` with the collections of ``template``."""
  out = dict(template)
  out["params"] = params
  if "batch_stats" in template:
    out["batch_stats"] = batch_stats
  return out
