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
"""

from sap_jax.batching import batched
from sap_jax.correction import correct
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
from sap_jax.sensitivity import Sensitivity, SensitivityCurve, alpha_sensitivity, sensitivity_curve
from sap_jax.spectrum import stats_summary
from sap_jax.stats import LayerStats, Layout, activation_rows, activation_stats, conv_patches
from sap_jax.sweep import (
  DEFAULT_ALPHAS,
  Decomposition,
  SplitScores,
  SweepResult,
  apply_alpha,
  choose_alpha,
  decompose,
  score_alphas,
  sweep_alpha,
)
from sap_jax.trusted import (
  input_curvature,
  per_example_loss,
  rank_by_score,
  select_trusted,
  trust_scores,
)
from sap_jax.tuning import TuneResult, tune_alpha, tuning_report
from sap_jax.types import ApplyFn, Path, Variables

__version__ = "0.1.0"

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
