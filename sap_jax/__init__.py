"""sap_jax: Scaled Activation Projection (SAP) for Flax models.

SAP (Kodge et al., AAAI 2025) repairs a model trained on noisy labels in one shot:
it projects every Dense/Conv layer's inputs onto the subspace spanned by the
activations of a trusted subset of the training data, with directions weighted by
their share of the activation energy. The core is a handful of pure functions:

    stats = sap_jax.activation_stats(apply_fn, variables, batches)
    P = sap_jax.projections(stats, alpha=3e4)
    corrected = sap_jax.project_params(variables, P)

or `sap_jax.correct(...)` / `sap_jax.run_sap(...)` for the whole recipe.
"""

from sap_jax.correct import DEFAULT_ALPHAS, SweepResult, correct, select_layers, sweep_alpha
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
from sap_jax.stats import LayerStats, Layout, activation_rows, activation_stats, batched, conv_patches, stats_summary
from sap_jax.trusted import input_curvature, per_example_loss, select_trusted, trust_scores

__version__ = "0.1.0"

__all__ = [
    "Basis",
    "DEFAULT_ALPHAS",
    "LayerStats",
    "Layout",
    "Projection",
    "SAPResult",
    "SweepResult",
    "activation_rows",
    "activation_stats",
    "bases",
    "batched",
    "conv_patches",
    "correct",
    "eigh_basis",
    "importance",
    "input_curvature",
    "normalised_spectrum",
    "per_example_loss",
    "project_kernel",
    "project_params",
    "projection_matrix",
    "projections",
    "projections_from_bases",
    "run_sap",
    "select_layers",
    "select_trusted",
    "stats_summary",
    "svd_basis",
    "sweep_alpha",
    "trust_scores",
]
