"""The whole SAP recipe in one call: trusted set → statistics → α sweep → correction."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from sap_jax import projection as proj
from sap_jax import trusted as tr
from sap_jax.batching import batched
from sap_jax.layers import select_layers
from sap_jax.spectrum import stats_summary
from sap_jax.stats import activation_stats
from sap_jax.sweep import (
  DEFAULT_ALPHAS,
  Decomposition,
  SweepResult,
  apply_alpha,
  decompose,
  sweep_alpha,
)
from sap_jax.types import ApplyFn


class SAPResult(NamedTuple):
  """What `run_sap` did.

  Attributes:
    variables: corrected variables (the original ones when no α won).
    alpha: the chosen α, or None when the original model was kept.
    sweep: accuracy per α and of the original model on the noisy validation split
      (``sweep.splits["val"]``) and on every ``eval_splits`` entry.
    trusted_indices: indices into the training set of the trusted samples.
    layers: per-layer summary of the statistics (kind, d, rows, effective rank).
    timings: seconds per phase ("scores", "stats", "sweep", "project", "total").
    decomposition: the per-layer bases the sweep used (`sap_jax.apply_alpha` turns it
      into the model at any other α, with no new statistics or eigendecompositions).
  """

  variables: dict[str, Any]
  alpha: float | None
  sweep: SweepResult
  trusted_indices: np.ndarray
  layers: dict[str, dict[str, Any]]
  timings: dict[str, float]
  decomposition: Decomposition


def _block(tree):
  return jax.block_until_ready(tree)


def run_sap(
  apply_fn: ApplyFn,
  variables: Mapping[str, Any],
  x_train: Any,
  y_train: Any,
  x_val: Any,
  y_val: Any,
  *,
  n_trusted: int = 1000,
  alphas: Sequence[float] = DEFAULT_ALPHAS,
  score: str = "loss",
  class_balanced: bool = False,
  exclude: Sequence[str] = (),
  layer_range: tuple[int | None, int | None] | None = None,
  batch_size: int = 256,
  rows_per_batch: int | None = None,
  seed: int = 0,
  eval_splits: Mapping[str, tuple[Any, Any]] | None = None,
) -> SAPResult:
  """Runs SAP end to end without knowing which labels are wrong.

  1. score every training sample (cross-entropy, or input curvature) and keep the
     ``n_trusted`` lowest as the trusted set;
  2. stream each layer's input statistics on the trusted inputs;
  3. score every α in ``alphas`` on the validation split (one eigendecomposition
     per layer, then one projected evaluation per α) and keep the best, or the original model if no α
     beats it;
  4. return the corrected variables.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the trained (noisy) model's variables.
    x_train, y_train: training inputs and their (noisy) labels.
    x_val, y_val: validation split used to choose α (honest protocol: noisy labels).
    n_trusted: size of the trusted set (paper: 1000).
    alphas: α grid.
    score: "loss" (paper) or "curvature" (published code).
    class_balanced: pick ``n_trusted // K`` per class.
    exclude, layer_range: layers to leave alone (see `select_layers`).
    batch_size: samples per forward pass.
    rows_per_batch: optional row budget per layer and batch.
    seed: seed for curvature probes and row subsampling.
    eval_splits: further name → ``(x, y)`` splits scored at every α in the same pass
      (e.g. clean validation labels for the oracle α, the test set for the α curve);
      they never influence the choice. Read them from ``result.sweep.splits``.

  Returns:
    A `SAPResult`.
  """
  if n_trusted > len(x_train):
    raise ValueError(
      f"n_trusted={n_trusted} exceeds the {len(x_train)} training samples; "
      f"use n_trusted ≤ {len(x_train)}."
    )
  proj.check_alpha(np.asarray(alphas, np.float64))
  t0 = time.perf_counter()
  scores = tr.trust_scores(
    apply_fn, variables, x_train, y_train, score=score, batch_size=batch_size, seed=seed
  )
  trusted = tr.select_trusted(scores, y_train, n_trusted, class_balanced=class_balanced)
  t1 = time.perf_counter()
  stats = activation_stats(
    apply_fn,
    variables,
    batched(np.asarray(x_train)[trusted], batch_size),
    rows_per_batch=rows_per_batch,
    seed=seed,
  )
  stats = _block(select_layers(stats, exclude=exclude, layer_range=layer_range))
  t2 = time.perf_counter()
  decomposition = decompose(variables, stats)
  sweep = sweep_alpha(
    apply_fn,
    variables,
    decomposition,
    alphas,
    x_val,
    y_val,
    batch_size=max(batch_size, 512),
    eval_splits=eval_splits,
  )
  t3 = time.perf_counter()
  if sweep.best_alpha is None:
    corrected = dict(variables)
  else:  # the very model the sweep scored: same bases, same compiled projection
    corrected = _block(apply_alpha(variables, decomposition, sweep.best_alpha))
  t4 = time.perf_counter()
  return SAPResult(
    variables=corrected,
    alpha=sweep.best_alpha,
    sweep=sweep,
    trusted_indices=trusted,
    layers=stats_summary(stats, decomposition.spectra),
    timings={
      "scores": t1 - t0,
      "stats": t2 - t1,
      "sweep": t3 - t2,
      "project": t4 - t3,
      "total": t4 - t0,
    },
    decomposition=decomposition,
  )
