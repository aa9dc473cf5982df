"""sap_jax: Scaled Activation Projection (SAP) for Flax models.

SAP (Kodge et al., AAAI 2025) repairs a model trained on noisy labels in one shot:
it projects every Dense/Conv layer's inputs onto the subspace spanned by the
activations of a trusted subset of the training data, with directions weighted by
their share of the activation energy. The core is a handful of pure functions:

    stats = sap_jax.activation_stats(apply_fn, variables, batches)   # statistics
    decomposition = sap_jax.decompose(variables, stats)              # once per layer
    corrected = sap_jax.apply_alpha(variables, decomposition, 3e4)   # any α, cheaply

or `sap_jax.sweep_alpha(...)` to choose α on a validation split, `sap_jax.correct(...)`
for one α in one call, and `sap_jax.run_sap(...)` for the whole recipe.

Where each concept lives: `trusted` (trusted set), `stats` (layer interception, conv
patches, Gram statistics), `projection` (σ̃ → λ(α) → P and the kernel update),
`sweep` (decompose → apply α → score splits), `correction` (`correct`), `pipeline`
(`run_sap`), `layers` (layer selection), `spectrum` (spectrum summaries),
`evaluation` (accuracy and loss), `kernels` (kernels in a variables tree).

Importing the package is cheap: every name below is imported from its module on first
use (PEP 562), so `sap-jax --help` and `--version` answer without loading JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the eager imports, for type checkers and editors
  from sap_jax.batching import batched
  from sap_jax.correction import correct
  from sap_jax.decomposition import Decomposition, apply_alpha, decompose
  from sap_jax.evaluation import evaluate
  from sap_jax.influence import Influence, trusted_influence
  from sap_jax.layers import select_layers
  from sap_jax.pipeline import SAPResult, run_sap
  from sap_jax.projection import (
    Basis,
    Projection,
    bases,
    eigh_basis,
    importance,
    normalised_spectrum,
    project_kernel,
    project_params,
    projection_matrix,
    projections,
    projections_from_bases,
    svd_basis,
  )
  from sap_jax.sample_scores import input_curvature, per_example_loss, trust_scores
  from sap_jax.sensitivity import (
    Sensitivity,
    SensitivityCurve,
    alpha_sensitivity,
    sensitivity_curve,
  )
  from sap_jax.spectrum import stats_summary
  from sap_jax.stats import LayerStats, Layout, activation_rows, activation_stats, conv_patches
  from sap_jax.sweep import (
    DEFAULT_ALPHAS,
    SplitScores,
    SweepResult,
    choose_alpha,
    score_alphas,
    sweep_alpha,
  )
  from sap_jax.trusted import rank_by_score, select_trusted
  from sap_jax.tuning import TuneResult, tune_alpha, tuning_report
  from sap_jax.types import ApplyFn, Path, Variables

__version__ = "0.1.0"

_HOMES: dict[str, str] = {
  "batched": "sap_jax.batching",
  "correct": "sap_jax.correction",
  "Decomposition": "sap_jax.decomposition",
  "apply_alpha": "sap_jax.decomposition",
  "decompose": "sap_jax.decomposition",
  "evaluate": "sap_jax.evaluation",
  "Influence": "sap_jax.influence",
  "trusted_influence": "sap_jax.influence",
  "select_layers": "sap_jax.layers",
  "SAPResult": "sap_jax.pipeline",
  "run_sap": "sap_jax.pipeline",
  "Basis": "sap_jax.projection",
  "Projection": "sap_jax.projection",
  "bases": "sap_jax.projection",
  "eigh_basis": "sap_jax.projection",
  "importance": "sap_jax.projection",
  "normalised_spectrum": "sap_jax.projection",
  "project_kernel": "sap_jax.projection",
  "project_params": "sap_jax.projection",
  "projection_matrix": "sap_jax.projection",
  "projections": "sap_jax.projection",
  "projections_from_bases": "sap_jax.projection",
  "svd_basis": "sap_jax.projection",
  "input_curvature": "sap_jax.sample_scores",
  "per_example_loss": "sap_jax.sample_scores",
  "trust_scores": "sap_jax.sample_scores",
  "Sensitivity": "sap_jax.sensitivity",
  "SensitivityCurve": "sap_jax.sensitivity",
  "alpha_sensitivity": "sap_jax.sensitivity",
  "sensitivity_curve": "sap_jax.sensitivity",
  "stats_summary": "sap_jax.spectrum",
  "LayerStats": "sap_jax.stats",
  "Layout": "sap_jax.stats",
  "activation_rows": "sap_jax.stats",
  "activation_stats": "sap_jax.stats",
  "conv_patches": "sap_jax.stats",
  "DEFAULT_ALPHAS": "sap_jax.sweep",
  "SplitScores": "sap_jax.sweep",
  "SweepResult": "sap_jax.sweep",
  "choose_alpha": "sap_jax.sweep",
  "score_alphas": "sap_jax.sweep",
  "sweep_alpha": "sap_jax.sweep",
  "rank_by_score": "sap_jax.trusted",
  "select_trusted": "sap_jax.trusted",
  "TuneResult": "sap_jax.tuning",
  "tune_alpha": "sap_jax.tuning",
  "tuning_report": "sap_jax.tuning",
  "ApplyFn": "sap_jax.types",
  "Path": "sap_jax.types",
  "Variables": "sap_jax.types",
}
"""Where each public name lives: `__getattr__` imports it from there on first use."""

__all__ = [
  "DEFAULT_ALPHAS",
  "ApplyFn",
  "Basis",
  "Decomposition",
  "Influence",
  "LayerStats",
  "Layout",
  "Path",
  "Projection",
  "SAPResult",
  "Sensitivity",
  "SensitivityCurve",
  "SplitScores",
  "SweepResult",
  "TuneResult",
  "Variables",
  "activation_rows",
  "activation_stats",
  "alpha_sensitivity",
  "apply_alpha",
  "bases",
  "batched",
  "choose_alpha",
  "conv_patches",
  "correct",
  "decompose",
  "eigh_basis",
  "evaluate",
  "importance",
  "input_curvature",
  "normalised_spectrum",
  "per_example_loss",
  "project_kernel",
  "project_params",
  "projection_matrix",
  "projections",
  "projections_from_bases",
  "rank_by_score",
  "run_sap",
  "score_alphas",
  "select_layers",
  "select_trusted",
  "sensitivity_curve",
  "stats_summary",
  "svd_basis",
  "sweep_alpha",
  "trust_scores",
  "trusted_influence",
  "tune_alpha",
  "tuning_report",
]


def __getattr__(name: str) -> Any:
  """A public name (imported from its module on first use) or a submodule."""
  home = _HOMES.get(name)
  if home is not None:
    value = getattr(importlib.import_module(home), name)
  else:
    try:
      value = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"{__name__}.{name}":
        raise
      raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *_HOMES})
