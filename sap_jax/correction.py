"""SAP in one call: statistics on the trusted inputs → decomposition → corrected variables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sap_jax import projection as proj
from sap_jax.batching import batched
from sap_jax.evaluation import check_finite_inputs
from sap_jax.layers import select_layers
from sap_jax.stats import activation_stats
from sap_jax.sweep import apply_alpha, decompose
from sap_jax.types import ApplyFn, Variables


def correct(
  apply_fn: ApplyFn,
  variables: Mapping[str, Any],
  x_trusted: Any,
  alpha: Any,
  *,
  batch_size: int = 128,
  exclude: Sequence[str] = (),
  layer_range: tuple[int | None, int | None] | None = None,
  rounds: int = 1,
  rows_per_batch: int | None = None,
  seed: int = 0,
) -> Variables:
  """Corrects a model with SAP: statistics on the trusted inputs → projections → params.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: model variables (not modified).
    x_trusted: the trusted inputs (N_trust, …).
    alpha: scaling coefficient α > 0 (scalar or dict path → scalar).
    batch_size: trusted samples per forward pass while collecting statistics.
    exclude: glob patterns of layer paths to leave unchanged (see `select_layers`).
    layer_range: slice of layers (call order) to project.
    rounds: repeat the correction this many times on the corrected model, α × 10
      each round (as the published code allows). 1 is the paper's method.
    rows_per_batch: optional row budget per layer and batch (default: all rows).
    seed: seed of the row subsampling.

  Returns:
    Corrected variables.
  """
  x_trusted = check_finite_inputs(x_trusted, "x_trusted")
  proj.check_alpha(alpha)
  if rounds < 1:
    raise ValueError(f"rounds must be ≥ 1, got {rounds}.")
  current = dict(variables)
  for r in range(rounds):
    stats = activation_stats(
      apply_fn,
      current,
      batched(x_trusted, batch_size),
      rows_per_batch=rows_per_batch,
      seed=seed + r,
    )
    stats = select_layers(stats, exclude=exclude, layer_range=layer_range)
    scale = 10.0**r
    alpha_r = (
      {p: a * scale for p, a in alpha.items()} if isinstance(alpha, Mapping) else alpha * scale
    )
    decomposition = decompose(current, stats, consume=True)  # frees each Gram matrix
    del stats
    current = apply_alpha(current, decomposition, alpha_r)
  return current
