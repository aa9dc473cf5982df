"""SAP behind the common interface: :func:`sap_jax.pipeline.run_sap` as a Method.

The trusted set is the ``n_trusted`` lowest-loss training samples (paper: 1000),
clipped by :func:`~sap_jax.baselines.base.clip_budget`; α is chosen from
``alphas`` on the noisy validation split, keeping the unchanged model if no α
beats it. ``num_settings = len(alphas)`` (the projected models scored; the paper
counts 16 for its SAP search).
"""

from __future__ import annotations

from collections.abc import Sequence

from sap_jax.baselines import base
from sap_jax.pipeline import run_sap
from sap_jax.sweep import DEFAULT_ALPHAS

__all__ = ["sap_method"]


def sap_method(
  n_trusted: int = 1000,
  *,
  alphas: Sequence[float] = DEFAULT_ALPHAS,
  score: str = "loss",
  class_balanced: bool = False,
  exclude: Sequence[str] = (),
  layer_range: tuple[int | None, int | None] | None = None,
  batch_size: int = 256,
  rows_per_batch: int | None = None,
) -> base.Method:
  """SAP (Scaled Activation Projection) as a correction method.

  Args:
    n_trusted: trusted-set size (paper: 1000).
    alphas: the α grid (``DEFAULT_ALPHAS``: 9 values).
    score: "loss" (paper) or "curvature" (published code) ranking.
    class_balanced: pick the trusted set per class.
    exclude: glob patterns of layers to leave alone.
    layer_range: slice of layers (call order) to project.
    batch_size: samples per forward pass.
    rows_per_batch: optional row budget per layer and batch.

  Returns:
    The method ``"sap"``; ``chosen["alpha"]`` is None when the unchanged model
    was kept; ``details["sap_result"]`` is the whole `sap_jax.SAPResult` (its
    sweep and decomposition, for records that score more splits).
  """
  alphas = tuple(float(a) for a in alphas)
  hparams = dict(
    n_trusted=n_trusted,
    alphas=alphas,
    score=score,
    class_balanced=class_balanced,
    exclude=tuple(exclude),
    layer_range=layer_range,
    batch_size=batch_size,
    rows_per_batch=rows_per_batch,
  )

  def body(task: base.CorrectionTask) -> base.Outcome:
    n = base.clip_budget(n_trusted, task.n_train)
    r = run_sap(
      task.apply_fn,
      task.variables,
      task.x_train,
      task.y_train,
      task.x_val,
      task.y_val,
      n_trusted=n,
      alphas=alphas,
      score=score,
      class_balanced=class_balanced,
      exclude=exclude,
      layer_range=layer_range,
      batch_size=batch_size,
      rows_per_batch=rows_per_batch,
      seed=task.seed,
    )
    records = [
      {"alpha": float(a), "val_accuracy": float(acc)}
      for a, acc in zip(r.sweep.alphas, r.sweep.accuracies)
    ]
    chosen = {"alpha": r.alpha, "n_trusted": n, "n_trusted_requested": n_trusted}
    details = {
      "settings": records,
      "vanilla_val_accuracy": r.sweep.baseline_accuracy,
      "trusted_indices": r.trusted_indices,
      "layers": r.layers,
      "timings": r.timings,
      "budget_rule": base.BUDGET_RULE,
      "sap_result": r,
    }
    return base.Outcome(r.variables, len(alphas), chosen, details)

  return base.make_method("sap", body, hparams)
