"""Confident learning: find the mislabelled samples, drop them, retrain.

The data-cleaning alternative to a model correction, as in cleanlab (Northcutt,
Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels",
JAIR 2021; the ``cleanlab`` package, whose ``filter.find_label_issues`` does the
flagging here):

1. Out-of-sample predicted probabilities ``P[s, k]`` by K-fold cross-validation:
   the training set is split into K folds stratified by the noisy label
   (``sklearn.model_selection.StratifiedKFold``, shuffled with the task seed); a
   fresh model is trained (``task.train_config``) on K − 1 folds and predicts
   the held-out fold, so no sample's probabilities come from a model that saw it.
2. Per-class thresholds ``t_j`` = the mean self-confidence ``mean P[s, j]`` over
   the samples labelled j.
3. Confident joint ``C[i][j]``: samples labelled i whose guessed true class is j,
   where a sample's guess is the class with ``P[s, j] >= t_j`` (the largest
   ``P`` if several; samples above no threshold are not counted), diagonal
   clipped to >= 1, then calibrated so row i sums to the count of label i (and
   the total to N), rounded preserving row totals.
4. ``prune_by_noise_rate`` (cleanlab's default ``filter_by``): for every
   off-diagonal cell (i, j), flag the ``C[i][j]`` samples labelled i with the
   largest margin ``P[s, j] − P[s, i]`` (after keeping >= 1 sample per class);
   finally unflag samples whose given label is their argmax prediction.
5. Retrain from scratch on the samples not flagged, with ``task.train_config``.

No validation-based choice is needed (one setting); ``frac_noise`` (cleanlab's
fraction of the estimated issues to remove) can be searched on the noisy
validation split, one retraining per value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sap_jax import train as tr
from sap_jax.baselines import base
from sap_jax.data.sources import is_source, subset, with_labels
from sap_jax.types import Variables

__all__ = [
  "confident_learning",
  "cross_val_probs",
  "find_label_issues",
]

FitFn = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


def find_label_issues(
  labels: Any, pred_probs: Any, *, filter_by: str = "prune_by_noise_rate", frac_noise: float = 1.0
) -> np.ndarray:
  """Boolean mask of the samples confident learning flags as mislabelled.

  A thin wrapper of ``cleanlab.filter.find_label_issues`` (single process: no
  ``fork`` of a process that runs JAX).

  Args:
    labels: ``(N,)`` given (noisy) labels.
    pred_probs: ``(N, K)`` out-of-sample predicted probabilities.
    filter_by: cleanlab's rule ("prune_by_noise_rate", "prune_by_class",
      "both", "confident_learning", "predicted_neq_given", ...).
    frac_noise: remove only this fraction of the estimated issues.

  Returns:
    bool ``(N,)``, True = flagged.
  """
  try:
    from cleanlab.filter import find_label_issues as _cl_find
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("confident learning needs the cleanlab package: pip install cleanlab") from e
  labels = np.asarray(labels)
  probs = np.asarray(pred_probs, np.float64)
  if probs.ndim != 2 or len(probs) != len(labels):
    raise ValueError(f"pred_probs must be (N, K) with N = {len(labels)}, got shape {probs.shape}.")
  return np.asarray(
    _cl_find(labels, probs, filter_by=filter_by, frac_noise=frac_noise, n_jobs=1), bool
  )


def cross_val_probs(
  fit: FitFn, x: Any, y: Any, *, num_classes: int, k_folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Out-of-sample predicted probabilities by stratified K-fold training.

  Args:
    fit: ``fit(x_train, y_train) -> predict_proba``, with
      ``predict_proba(x) -> (n, num_classes)`` probabilities.
    x: ``(N, ...)`` inputs, or a source: each fold's training and held-out samples are
      then ``Subset`` views of it (`sap_jax.data.sources.subset`), read by index.
    y: ``(N,)`` (noisy) labels.
    num_classes: K.
    k_folds: number of folds, >= 2.
    seed: shuffling of the folds.

  Returns:
    ``(probs, fold)``: float32 ``(N, K)`` probabilities, each row predicted by
    the model of fold ``fold[s]``, which was trained without sample s.
  """
  from sklearn.model_selection import StratifiedKFold

  x = x if is_source(x) else np.asarray(x)
  y = np.asarray(y)
  if k_folds < 2 or k_folds > len(y):
    raise ValueError(f"k_folds must be in [2, N={len(y)}], got {k_folds}.")
  splitter = StratifiedKFold(n_splits=k_folds, shuffle=True, random_state=seed)
  probs = np.full((len(y), num_classes), np.nan, np.float32)
  fold = np.full(len(y), -1, np.int64)
  for f, (train_idx, held_idx) in enumerate(splitter.split(np.zeros(len(y)), y)):
    predict = fit(subset(x, train_idx), y[train_idx])
    p = np.asarray(predict(subset(x, held_idx)), np.float32)
    if p.shape != (len(held_idx), num_classes):
      raise ValueError(
        f"predict_proba returned shape {p.shape}, expected ({len(held_idx)}, {num_classes})."
      )
    probs[held_idx] = p
    fold[held_idx] = f
  return probs, fold


def _softmax(logits: np.ndarray) -> np.ndarray:
  z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)


def _train(task: base.CorrectionTask, x: Any, y: np.ndarray, progress: bool) -> Variables:
  """A fresh model trained on ``(x, y)`` (arrays, or a source view with the labels ``y``)
  with the task's config."""
  config = task.train_config
  val = {}
  if config.early_stopping_patience is not None:
    val = dict(zip(("x_val", "y_val"), task.val_data()))
  return tr.train_model(task.model, *with_labels(x, y), config, progress=progress, **val).variables


def confident_learning(
  k_folds: int = 5,
  *,
  filter_by: str = "prune_by_noise_rate",
  frac_noise: Sequence[float] = (1.0,),
  progress: bool = False,
) -> base.Method:
  """Confident learning (cleanlab) then retraining on the kept samples.

  Args:
    k_folds: folds of the cross-validated probabilities (cleanlab: 5); each fold
      trains a model with ``task.train_config``.
    filter_by: cleanlab's flagging rule (default ``"prune_by_noise_rate"``).
    frac_noise: fractions of the flagged issues to remove; several values are
      searched on the noisy validation split, one retraining each. Default
      ``(1.0,)``: 1 setting.
    progress: show training bars.

  Returns:
    The method ``"cleaning"``; ``details`` has the out-of-sample
    ``pred_probs``, ``folds`` and, per setting, the ``flagged`` indices.
  """
  fracs = tuple(float(f) for f in frac_noise)
  if not fracs or not all(0.0 < f <= 1.0 for f in fracs):
    raise ValueError(f"frac_noise must be non-empty values in (0, 1], got {frac_noise}.")
  hparams = dict(k_folds=k_folds, filter_by=filter_by, frac_noise=fracs)

  def body(task: base.CorrectionTask) -> base.Outcome:
    if task.streamed:
      num_classes = task.num_classes
    else:
      num_classes = int(tr.predict_logits(task.apply_fn, task.variables, task.x_val[:1]).shape[-1])

    def fit(x, y):
      variables = _train(task, x, y, progress)
      return lambda xs: _softmax(tr.predict_logits(task.apply_fn, variables, xs))

    probs, folds = cross_val_probs(
      fit, task.x_train, task.y_train, num_classes=num_classes, k_folds=k_folds, seed=task.seed
    )
    flagged = {}

    def refit(frac_noise):
      mask = find_label_issues(task.y_train, probs, filter_by=filter_by, frac_noise=frac_noise)
      if mask.all():
        raise ValueError(
          "confident learning flagged every training sample; check the predicted probabilities."
        )
      flagged[frac_noise] = np.flatnonzero(mask)
      return _train(task, *task.train_subset(np.flatnonzero(~mask)), progress)

    settings = [{"frac_noise": f} for f in fracs]
    best, setting, records = base.search(task, settings, refit)
    for r in records:
      r["num_flagged"] = int(len(flagged[r["frac_noise"]]))
    chosen = {
      **setting,
      "k_folds": k_folds,
      "filter_by": filter_by,
      "num_removed": int(len(flagged[setting["frac_noise"]])),
    }
    details = {
      "settings": records,
      "pred_probs": probs,
      "folds": folds,
      "flagged": flagged[setting["frac_noise"]],
      "flagged_per_setting": flagged,
      "vanilla_val_accuracy": base.val_accuracy(task, task.variables),
    }
    return base.Outcome(best, len(settings), chosen, details)

  return base.make_method("cleaning", body, hparams)
