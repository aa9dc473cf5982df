"""The trusted set: training samples whose (noisy) labels the model is surest of.

The paper takes the N_trust samples with the lowest cross-entropy loss under the
trained model. The published code ranks by an input-curvature score instead (a
finite-difference estimate of how sharply the loss bends around the input: low
curvature = typical, likely correctly labelled), per class. Both are here; loss
is the default, class-balanced selection an option.

This module owns the selection: the ranking by score (`rank_by_score`), the lowest
``n`` overall or per class (`select_trusted`, `select_per_class`) and the whole step
(`trusted_set`). The scores themselves (`SCORES`: loss, curvature, the published
curvature) live in `sap_jax.sample_scores`, whose public names this module re-exports.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax.sharding import Mesh

from sap_jax import sharding as shd
from sap_jax.data.sources import is_source, no_separate_labels
from sap_jax.input_checks import check_labels
from sap_jax.sample_scores import (
  JITTED,
  SCORES,
  curvature_layout,
  curvature_of_batch,
  input_curvature,
  layout_batch,
  per_example_loss,
  published_curvature,
  rademacher_probes,
  sharded_curvature,
  trust_scores,
)
from sap_jax.types import ApplyFn

__all__ = [
  "JITTED",
  "SCORES",
  "curvature_layout",
  "curvature_of_batch",
  "input_curvature",
  "layout_batch",
  "per_example_loss",
  "published_curvature",
  "rademacher_probes",
  "rank_by_score",
  "select_per_class",
  "select_trusted",
  "sharded_curvature",
  "trust_scores",
  "trusted_set",
]


def rank_by_score(scores: Any, *, descending: bool = False) -> np.ndarray:
  """Indices that order ``scores`` (ascending, or descending), ties broken by index.

  The one ranking used by `select_trusted` and by the baselines' lowest-/highest-
  loss sets.

  Args:
    scores: float[N] per-sample scores (e.g. losses).
    descending: highest score first.

  Returns:
    int64[N] indices.

  Raises:
    ValueError: scores not 1-D, or holding NaN/Inf.
  """
  scores = np.asarray(scores, np.float64)
  if scores.ndim != 1:
    raise ValueError(f"scores must be 1-D (one per sample), got shape {scores.shape}.")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores contain NaN or Inf; the model's losses are not finite.")
  return np.lexsort((np.arange(len(scores)), -scores if descending else scores)).astype(np.int64)


def select_trusted(
  scores: Any,
  labels: Any,
  n: int,
  *,
  class_balanced: bool = False,
) -> np.ndarray:
  """Indices of the ``n`` samples with the lowest scores (e.g. losses).

  Args:
    scores: float[N] per-sample scores, lower = more trusted.
    labels: int[N] (noisy) labels, used for class-balanced selection (a host array or
      a sharded global array).
    n: how many samples to select, 1 ≤ n ≤ N.
    class_balanced: split ``n`` evenly over the classes present in ``labels``
      (the lowest-scoring n // K of each class, the remainder to the next-lowest
      samples overall; a class with too few samples gives all it has and the rest
      is filled the same way).

  Returns:
    int64 indices, sorted by score (ties broken by index), no duplicates.
  """
  scores = np.asarray(scores, np.float64)
  labels = shd.to_host(labels)  # a sharded global array is all-gathered (N labels)
  if scores.ndim != 1 or labels.shape != scores.shape:
    raise ValueError(
      f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}."
    )
  if not 1 <= n <= len(scores):
    raise ValueError(
      f"Cannot select n={n} trusted samples from {len(scores)}: choose "
      f"1 ≤ n ≤ {len(scores)} (e.g. --n-trusted {min(1000, len(scores))})."
    )
  order = rank_by_score(scores)
  if not class_balanced:
    return order[:n].astype(np.int64)
  labels = check_labels(labels, len(scores), None, "labels")
  classes = np.unique(labels)
  share = n // len(classes)
  chosen = np.zeros(len(scores), bool)
  for c in classes:
    in_class = order[labels[order] == c]
    chosen[in_class[:share]] = True
  rest = order[~chosen[order]][: n - int(chosen.sum())]
  chosen[rest] = True
  return order[chosen[order]].astype(np.int64)


def select_per_class(scores: Any, labels: Any, per_class: int) -> np.ndarray:
  """The ``per_class`` lowest-scoring samples of every class in ``labels`` (all of a
  smaller class), the published code's class-balanced selection.

  Returns:
    int64 indices sorted by score (ties broken by index), no duplicates.
  """
  scores = np.asarray(scores, np.float64)
  labels = shd.to_host(labels)  # a sharded global array is all-gathered (N labels)
  if scores.ndim != 1 or labels.shape != scores.shape:
    raise ValueError(
      f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}."
    )
  if per_class < 1:
    raise ValueError(f"per_class must be ≥ 1, got {per_class}.")
  order = rank_by_score(scores)
  chosen = np.zeros(len(scores), bool)
  for c in np.unique(labels):
    chosen[order[labels[order] == c][:per_class]] = True
  return order[chosen[order]].astype(np.int64)


def trusted_set(
  apply_fn: ApplyFn,
  variables: Any,
  x: Any,
  y: Any,
  n: int,
  *,
  score: str = "loss",
  class_balanced: bool = False,
  batch_size: int = 512,
  seed: int = 0,
  mesh: Mesh | None = None,
) -> np.ndarray:
  """Scores the samples (`trust_scores`) and selects the trusted set.

  "loss" and "curvature" take the ``n`` lowest (`select_trusted`, per class with
  ``class_balanced``); "curvature_published" follows the published code: the
  ``n // K + 1`` lowest of each of the K classes (`select_per_class`, always class
  balanced, ``K · (n // K + 1)`` samples when every class has enough).

  Args:
    apply_fn, variables: the model.
    x, y: the candidates and the labels to score them with (the noisy training labels
      in the honest protocol; the clean ones for the published code's oracle): host
      arrays, or global arrays sharded over a mesh's data axis (`trust_scores`).
    n: trusted-set size, 1 ≤ n ≤ len(x).
    score: one of `SCORES`.
    class_balanced: per-class selection ("loss", "curvature").
    batch_size: samples per scoring call.
    seed: seed of the curvature probes.
    mesh: the devices that score host arrays or a source (default one local device; the
      same scores, so the same set, on any mesh). A global array is read on its own mesh.

  Returns:
    int64 indices into ``x``.
  """
  if score not in SCORES:
    raise ValueError(f"Unknown score {score!r}; choose one of {SCORES}.")
  if is_source(x):
    from sap_jax import streaming

    no_separate_labels(y)
    return streaming.trusted_indices(
      apply_fn,
      variables,
      x,
      n,
      score=score,
      class_balanced=class_balanced,
      batch_size=batch_size,
      seed=seed,
      mesh=mesh,
    )
  if not 1 <= n <= len(x):
    raise ValueError(f"Cannot select n={n} trusted samples from {len(x)}: choose 1 ≤ n ≤ {len(x)}.")
  scores = trust_scores(
    apply_fn, variables, x, y, score=score, batch_size=batch_size, seed=seed, mesh=mesh
  )
  y = shd.to_host(y)  # N labels, for the ranking on the host
  if score == "curvature_published":
    return select_per_class(scores, y, n // len(np.unique(y)) + 1)
  return select_trusted(scores, y, n, class_balanced=class_balanced)
