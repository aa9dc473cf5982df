"""The trusted set: training samples whose (noisy) labels the model is surest of.

The paper takes the N_trust samples with the lowest cross-entropy loss under the
trained model. The published code ranks by an input-curvature score instead (a
finite-difference estimate of how sharply the loss bends around the input: low
curvature = typical, likely correctly labelled), per class. Both are here; loss
is the default, class-balanced selection an option.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sap_jax.batching import padded_batches
from sap_jax.evaluation import check_xy
from sap_jax.hashable import hashable
from sap_jax.losses import model_cross_entropy
from sap_jax.types import ApplyFn

# Module-level: one compilation per (model, batch shape), reused by later calls.
_losses_jit = jax.jit(model_cross_entropy, static_argnums=0)


def per_example_loss(
  apply_fn: ApplyFn,
  variables: Any,
  x: Any,
  y: Any,
  *,
  batch_size: int = 512,
) -> np.ndarray:
  """Cross-entropy of every sample under the model (eval mode).

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: model variables.
    x: inputs (N, …).
    y: integer labels (N,), the labels the model was trained on.
    batch_size: samples per jitted call (the last batch is padded, not recompiled).

  Returns:
    float32[N] losses.
  """
  x, y = check_xy(x, y)
  y = y.astype(np.int32)
  fn = hashable(apply_fn)
  out = [
    np.asarray(_losses_jit(fn, variables, xb, yb))[:real]
    for (xb, yb), real in padded_batches(x, y, batch_size=batch_size)
  ]
  return np.concatenate(out).astype(np.float32)


def _curvature(apply_fn, variables, x, y, key, h, num_probes):
  def grad_x(xx):
    return jax.grad(lambda z: jnp.sum(model_cross_entropy(apply_fn, variables, z, y)))(xx)

  g0 = grad_x(x)

  def probe(carry, k):
    r = jax.random.rademacher(k, x.shape, x.dtype)
    g1 = grad_x(x + h * r)
    return carry + jnp.sum((g1 - g0).reshape(len(x), -1) ** 2, axis=1), None

  total, _ = jax.lax.scan(probe, jnp.zeros(len(x)), jax.random.split(key, num_probes))
  return total / num_probes


_curvature_jit = jax.jit(_curvature, static_argnums=(0, 6))

JITTED = {"trusted.losses": _losses_jit, "trusted.curvature": _curvature_jit}
"""The module-level compiled programs (see `sap_jax.compile_cache`)."""


def input_curvature(
  apply_fn: ApplyFn,
  variables: Any,
  x: Any,
  y: Any,
  *,
  h: float = 1e-3,
  num_probes: int = 10,
  seed: int = 0,
  batch_size: int = 256,
) -> np.ndarray:
  """Finite-difference input-curvature score of every sample.

  For Rademacher probes v ∈ {±1}^shape(x):

      curv(x) = mean_v ‖∇ₓ ℓ(x + h v, y) − ∇ₓ ℓ(x, y)‖²  (≈ h² ‖H_x v‖²),

  the estimator of Garg, Roy et al. ("Memorization through the lens of curvature
  of loss function around samples", ICML 2024) that SAP's published code uses to
  rank samples. High curvature marks atypical or mislabelled samples.

  Args:
    apply_fn: eval-mode forward.
    variables: model variables.
    x: inputs (N, …).
    y: integer labels (N,).
    h: finite-difference step.
    num_probes: number of random probes averaged.
    seed: seed of the probes.
    batch_size: samples per jitted call.

  Returns:
    float32[N] curvature scores (lower = more trusted).
  """
  x, y = check_xy(x, y)
  if h <= 0 or num_probes < 1:
    raise ValueError(f"Need h > 0 and num_probes ≥ 1, got h={h}, num_probes={num_probes}.")
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)

  fn = hashable(apply_fn)
  key = jax.random.PRNGKey(seed)
  out = []
  for i, ((xb, yb), real) in enumerate(padded_batches(x, y, batch_size=batch_size)):
    k = jax.random.fold_in(key, i)
    out.append(np.asarray(_curvature_jit(fn, variables, xb, yb, k, h, num_probes))[:real])
  return np.concatenate(out).astype(np.float32)


SCORES = ("loss", "curvature")


def trust_scores(
  apply_fn: ApplyFn,
  variables: Any,
  x: Any,
  y: Any,
  *,
  score: str = "loss",
  batch_size: int = 512,
  seed: int = 0,
) -> np.ndarray:
  """Per-sample scores to rank by (lower = more trusted): "loss" or "curvature"."""
  if score == "loss":
    return per_example_loss(apply_fn, variables, x, y, batch_size=batch_size)
  if score == "curvature":
    return input_curvature(apply_fn, variables, x, y, seed=seed, batch_size=min(batch_size, 256))
  raise ValueError(f"Unknown score {score!r}; choose one of {SCORES}.")


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
    labels: int[N] (noisy) labels, used for class-balanced selection.
    n: how many samples to select, 1 ≤ n ≤ N.
    class_balanced: split ``n`` evenly over the classes present in ``labels``
      (the lowest-scoring n // K of each class, the remainder to the next-lowest
      samples overall; a class with too few samples gives all it has and the rest
      is filled the same way).

  Returns:
    int64 indices, sorted by score (ties broken by index), no duplicates.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels)
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
  classes = np.unique(labels)
  share = n // len(classes)
  chosen = np.zeros(len(scores), bool)
  for c in classes:
    in_class = order[labels[order] == c]
    chosen[in_class[:share]] = True
  rest = order[~chosen[order]][: n - int(chosen.sum())]
  chosen[rest] = True
  return order[chosen[order]].astype(np.int64)
