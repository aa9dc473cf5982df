"""The figures every report of a model trained on noisy labels gives, computed once.

`split_metrics` is what the `sap-jax` command line prints and stores and what the
experiment records hold (``experiments/results/*/cells/*.json``), under the same
names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax.sharding import Mesh

from sap_jax.data.sources import Subset, is_source, with_labels
from sap_jax.evaluation import evaluate, fit_fraction
from sap_jax.types import ApplyFn, Variables

__all__ = ["METRIC_KEYS", "split_metrics"]

METRIC_KEYS = ("test_accuracy", "val_accuracy_noisy", "val_accuracy_clean", "fit_noisy")
"""The keys of `split_metrics`' dict, in its order."""


def split_metrics(
  apply_fn: ApplyFn, variables: Variables, splits: Any, *, mesh: Mesh | None = None
) -> dict[str, float | None]:
  """Clean test accuracy, noisy/clean validation accuracy and the fit of the corrupted labels.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model's variables.
    splits: a `sap_jax.data.NoisySplits` (``x_test``/``y_test``, ``x_val`` with
      ``y_val`` (noisy) and ``y_val_clean``, ``x_train``/``y_train`` (noisy) and
      ``noise_mask``): host arrays, global arrays sharded over a mesh's data axis
      (``noise_mask`` on the host; the corrupted samples are gathered on the devices),
      or lazy sources (each split streamed once; the fit reads only the corrupted
      samples).
    mesh: the devices that evaluate host arrays or sources (`sap_jax.evaluation.evaluate`:
      each process reads its own rows, the last batch padded and masked); default one local
      device. Global arrays are read on their own mesh.

  Returns:
    ``{"test_accuracy", "val_accuracy_noisy", "val_accuracy_clean", "fit_noisy"}``:
    accuracies in [0, 1] (`sap_jax.evaluation.evaluate`), and ``fit_noisy`` the share of
    the training samples with a corrupted label that the model predicts AS that
    wrong label (memorisation, `sap_jax.evaluation.fit_fraction`), or None when no
    label is corrupted.
  """

  def accuracy(x, y) -> float:
    return evaluate(apply_fn, variables, *with_labels(x, y), mesh=mesh)["accuracy"]

  fit = None
  if splits.noise_mask.any() and is_source(splits.x_train):  # the corrupted samples only
    index = np.flatnonzero(splits.noise_mask)
    fit = accuracy(Subset(splits.x_train, index), np.asarray(splits.y_train)[index])
  elif splits.noise_mask.any():
    fit = fit_fraction(
      apply_fn, variables, splits.x_train, splits.y_train, splits.noise_mask, mesh=mesh
    )
  return {
    "test_accuracy": accuracy(splits.x_test, splits.y_test),
    "val_accuracy_noisy": accuracy(splits.x_val, splits.y_val),
    "val_accuracy_clean": accuracy(splits.x_val, splits.y_val_clean),
    "fit_noisy": fit,
  }
