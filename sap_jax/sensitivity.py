"""Which layers carry the noise: d(validation loss)/d log α_l, layer by layer.

At a given α (a scalar shared by every layer, or one per layer) the corrected model's
mean cross-entropy L on a split is differentiated with respect to each layer's log α_l:

    s_l = ∂L / ∂ log α_l = α_l ∂L / ∂α_l.

A negative s_l says that projecting layer l *less* (a larger α_l, λ → 1 on more
directions) lowers the loss; a positive one that projecting it more (a smaller α_l)
does. With one α for every layer, d L / d log α = Σ_l s_l (chain rule), so the
per-layer scores split the scalar α's gradient among the layers. Nothing here computes
statistics or eigendecompositions: everything reads a `Decomposition`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from sap_jax.data.sources import is_source
from sap_jax.decomposition import Decomposition
from sap_jax.objective import batched_loss_and_grad, corrected_loss_sum, log_alpha_of
from sap_jax.sweep import check_split
from sap_jax.types import ApplyFn, Path, Variables


class Sensitivity(NamedTuple):
  """The gradient of a split's mean cross-entropy w.r.t. each layer's log α.

  Attributes:
    alpha: path → the α it was taken at.
    loss: the mean cross-entropy of the corrected model at ``alpha``.
    per_layer: path → ∂L/∂ log α_l.
    total: Σ_l ∂L/∂ log α_l, the gradient w.r.t. a shared log α when α is shared.
  """

  alpha: dict[Path, float]
  loss: float
  per_layer: dict[Path, float]
  total: float


def _loss_log_alpha(apply_fn, log_alpha, data, x, y, weights):
  variables, decomposition = data
  alpha = {p: jnp.exp(a) for p, a in log_alpha.items()}
  return corrected_loss_sum(apply_fn, variables, decomposition, alpha, x, y, weights)


def alpha_sensitivity(
  apply_fn: ApplyFn,
  variables: Variables,
  decomposition: Decomposition,
  x: Any,
  y: Any,
  alpha: Any,
  *,
  batch_size: int = 512,
) -> Sensitivity:
  """∂(mean cross-entropy on ``(x, y)``)/∂ log α_l for every decomposed layer.

  Args:
    apply_fn: eval-mode forward.
    variables: the variables ``decomposition`` was made from.
    decomposition: from `sap_jax.decompose` (bases computed once).
    x, y: the split (the noisy validation split, in the honest protocol): arrays, or a
      labelled source with ``y`` None (`sap_jax.data.sources`, streamed batch by batch).
    alpha: α > 0, a scalar for every layer or a dict path → α.
    batch_size: samples per compiled call (gradients are summed over batches).

  Returns:
    A `Sensitivity`; in the decomposition's dtype (float64 decompositions give float64
    gradients).
  """
  if not is_source(x):  # a source's records are checked as they stream
    x, y = check_split(x, y, "sensitivity", apply_fn, variables)
  log_alpha = log_alpha_of(decomposition, alpha)
  loss, grad = batched_loss_and_grad(
    _loss_log_alpha,
    apply_fn,
    log_alpha,
    (variables, decomposition),
    x,
    y,
    batch_size=batch_size,
  )
  per_layer = {p: float(grad[p]) for p in decomposition.paths}
  return Sensitivity(
    {p: float(np.exp(float(a))) for p, a in log_alpha.items()},
    float(loss),
    per_layer,
    float(sum(per_layer.values())),
  )


class SensitivityCurve(NamedTuple):
  """`alpha_sensitivity` along a grid of shared α.

  Attributes:
    alphas: float64[K].
    loss: float64[K] mean cross-entropy at each α.
    per_layer: path → float64[K] ∂L/∂ log α_l.
  """

  alphas: np.ndarray
  loss: np.ndarray
  per_layer: dict[Path, np.ndarray]


def sensitivity_curve(
  apply_fn: ApplyFn,
  variables: Variables,
  decomposition: Decomposition,
  x: Any,
  y: Any,
  alphas: Sequence[float],
  *,
  batch_size: int = 512,
) -> SensitivityCurve:
  """Per-layer sensitivity at every α of a grid (one α shared by every layer)."""
  alphas = np.asarray(alphas, np.float64).reshape(-1)
  if alphas.size == 0:
    raise ValueError("alphas is empty; give at least one α (e.g. DEFAULT_ALPHAS).")
  rows = [
    alpha_sensitivity(apply_fn, variables, decomposition, x, y, a, batch_size=batch_size)
    for a in alphas
  ]
  return SensitivityCurve(
    alphas,
    np.asarray([r.loss for r in rows]),
    {p: np.asarray([r.per_layer[p] for r in rows]) for p in decomposition.paths},
  )
