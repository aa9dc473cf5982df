"""SAP behind the common interface: :func:`sap_jax.pipeline.run_sap` as a Method.

The trusted set is the ``n_trusted`` lowest-loss training samples (paper: 1000),
clipped by :func:`~sap_jax.baselines.base.clip_budget`; α is chosen from
``alphas`` on the noisy validation split, keeping the unchanged model if no α
beats it. ``num_settings = len(alphas)`` (the projected models scored; the paper
counts 16 for its SAP search), ``rounds · len(alphas)`` at most with rounds.

Two options follow the published code (github.com/sangamesh-kodge/SAP):

* ``rounds > 1``: `sap_jax.correction.sap_rounds` after the α sweep, every round
  scored on the noisy validation split, α × 10 per round, stopping when no α improves.
* ``trusted_labels="clean"``: the trusted set is ranked with the CLEAN training labels
  (the published scripts compute curvature on the training set with its clean labels):
  an oracle, like the clean-validation α, for reference rows only ("SAP, clean trusted
  set †"). It reads ``task.y_train_clean`` and refuses to run without it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sap_jax import solve as slv
from sap_jax.baselines import base
from sap_jax.correction import sap_rounds
from sap_jax.layers import exclude_patterns
from sap_jax.pipeline import run_sap
from sap_jax.sample_scores import SCORES
from sap_jax.sweep import DEFAULT_ALPHAS
from sap_jax.trusted import trusted_set

__all__ = ["TRUSTED_LABELS", "sap_method"]

TRUSTED_LABELS = ("noisy", "clean")


def sap_method(
  n_trusted: int = 1000,
  *,
  alphas: Sequence[float] = DEFAULT_ALPHAS,
  score: str = "loss",
  class_balanced: bool = False,
  exclude: str | Sequence[str] = (),
  layer_range: tuple[int | None, int | None] | None = None,
  batch_size: int = 256,
  rows_per_batch: int | None = None,
  rounds: int = 1,
  trusted_labels: str = "noisy",
  method: str = slv.AUTO,
) -> base.Method:
  """SAP (Scaled Activation Projection) as a correction method.

  Args:
    n_trusted: trusted-set size (paper: 1000).
    alphas: the α grid (``DEFAULT_ALPHAS``: 9 values).
    score: "loss" (paper), "curvature" or "curvature_published" (the published code's
      estimator and its ``n // K + 1`` per class) ranking (`sap_jax.trusted.SCORES`).
    class_balanced: pick the trusted set per class.
    exclude: glob patterns of layers to leave alone (a string is one pattern).
    layer_range: slice of layers (call order) to project.
    batch_size: samples per forward pass.
    rows_per_batch: optional row budget per layer and batch.
    rounds: SAP rounds (published ``--num-rounds``; 1: the paper's method).
    trusted_labels: "noisy" (honest) or "clean" (the published code's oracle).
    method: how each layer is decomposed (`sap_jax.decompose`): "auto" (default),
      "eigh" or "solve"; rounds > 1 decompose round 0 by eigh (they compose its
      eigenbasis) and take "auto" or "eigh".

  Returns:
    The method ``"sap"``; ``chosen["alpha"]`` is None when the unchanged model
    was kept; ``details["sap_result"]`` is the whole `sap_jax.SAPResult` (its
    sweep and decomposition, for records that score more splits).
  """
  alphas = tuple(float(a) for a in alphas)
  if rounds < 1:
    raise ValueError(f"rounds must be ≥ 1, got {rounds}.")
  if trusted_labels not in TRUSTED_LABELS:
    raise ValueError(f"trusted_labels must be one of {TRUSTED_LABELS}, got {trusted_labels!r}.")
  if score not in SCORES:
    raise ValueError(f"Unknown score {score!r}; choose one of {SCORES}.")
  slv.check_method(method, rounds)
  hparams = dict(
    n_trusted=n_trusted,
    alphas=alphas,
    score=score,
    class_balanced=class_balanced,
    exclude=exclude_patterns(exclude),
    layer_range=layer_range,
    batch_size=batch_size,
    rows_per_batch=rows_per_batch,
  )
  # Non-default options only: the records of the committed runs keep their hparams.
  if rounds != 1:
    hparams["rounds"] = rounds
  if trusted_labels != "noisy":
    hparams["trusted_labels"] = trusted_labels
  if method != slv.AUTO:
    hparams["method"] = method

  def body(task: base.CorrectionTask) -> base.Outcome:
    if rounds > 1 and task.streamed:
      raise ValueError(
        "rounds > 1 holds the trusted set and the validation split in memory; it does not "
        "stream a source: use rounds=1 with sources, or pass the data as arrays."
      )
    n = base.clip_budget(n_trusted, task.n_train)
    trusted = None
    if trusted_labels == "clean":
      if task.y_train_clean is None:
        raise ValueError(
          "trusted_labels='clean' (the published code's oracle) needs the clean training "
          "labels, task.y_train_clean; use trusted_labels='noisy' on real noise."
        )
      trusted = trusted_set(
        task.apply_fn,
        task.variables,
        *task.train_data(task.y_train_clean),
        n,
        score=score,
        class_balanced=class_balanced,
        batch_size=batch_size,
        seed=task.seed,
      )
    r = run_sap(
      task.apply_fn,
      task.variables,
      *task.train_data(),
      *task.val_data(),
      n_trusted=n,
      alphas=alphas,
      score=score,
      class_balanced=class_balanced,
      exclude=exclude,
      layer_range=layer_range,
      batch_size=batch_size,
      rows_per_batch=rows_per_batch,
      seed=task.seed,
      trusted=trusted,
      method=slv.EIGH if rounds > 1 else method,
    )
    variables, num_settings = r.variables, len(alphas)
    round_details = None
    if rounds > 1:
      rr = sap_rounds(
        task.apply_fn,
        task.variables,
        task.x_train[r.trusted_indices],
        task.x_val,
        task.y_val,
        alphas,
        rounds=rounds,
        exclude=exclude,
        layer_range=layer_range,
        batch_size=batch_size,
        rows_per_batch=rows_per_batch,
        seed=task.seed,
        first=(r.decomposition, r.sweep),
      )
      variables = rr.variables
      num_settings = len(alphas) * len(rr.records)
      round_details = [
        {
          "alphas": rec.alphas.tolist(),
          "val_accuracies": rec.accuracies.tolist(),
          "baseline_val_accuracy": rec.baseline,
          "alpha": rec.alpha,
        }
        for rec in rr.records
      ]
    records = [
      {"alpha": float(a), "val_accuracy": float(acc)}
      for a, acc in zip(r.sweep.alphas, r.sweep.accuracies)
    ]
    chosen = {
      "alpha": r.alpha,
      "n_trusted": len(r.trusted_indices),
      "n_trusted_requested": n_trusted,
    }
    if rounds > 1:
      chosen["round_alphas"] = list(rr.alphas)
    details = {
      "settings": records,
      "vanilla_val_accuracy": r.sweep.baseline_accuracy,
      "trusted_indices": r.trusted_indices,
      "layers": r.layers,
      "timings": r.timings,
      "budget_rule": base.BUDGET_RULE,
      "sap_result": r,
    }
    if round_details is not None:
      details["rounds"] = round_details
    return base.Outcome(variables, num_settings, chosen, details)

  return base.make_method("sap", body, hparams)
