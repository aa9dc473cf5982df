"""Per-layer α learned by gradient descent on the noisy validation split.

The paper uses one α for every layer and names choosing α automatically as future
work. `tune_alpha` starts from the grid's best α (one value for every layer) and
learns log α_l per layer with optax (Adam) on the mean cross-entropy of the corrected
model over the *noisy* validation split, from the bases computed once (no new
statistics, no new eigendecompositions: each step is one forward and backward pass of
the corrected model, K̂_l = V_l (λ_l(α_l) ⊙ V_lᵀ K_l)).

The validation split is small and its labels are noisy, so the fit is guarded:

* K-fold cross-validation with early stopping. The split is cut into ``folds`` folds
  (seeded); for each, log α is trained on the other folds for ``steps`` full-batch
  steps and every step is scored on the held-out fold. The number of steps t* (0 = the
  start) is the one of highest pooled held-out accuracy (every validation sample is
  held out exactly once), ties to the lower held-out loss, then to fewer steps. So the
  cross-validated accuracy at t* is never below the start's, by construction.
* Optionally a penalty ``penalty · mean_l (log α_l − log α_l⁰)²`` pulling every log α
  towards the start; several penalties may be given and the cross-validation chooses
  among them with the same rule (the first wins ties).

The returned α is trained on the whole split for t* steps with the chosen penalty; if
that model's accuracy on the whole split is below the start's, the start is returned.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sap_jax.hashable import hashable
from sap_jax.layers import path_name
from sap_jax.objective import corrected_variables, cross_entropy, log_alpha_of
from sap_jax.sweep import Decomposition, check_split
from sap_jax.types import ApplyFn, Path, Variables

DEFAULT_STEPS = 100
DEFAULT_LEARNING_RATE = 0.05
DEFAULT_FOLDS = 5


class TuneResult(NamedTuple):
  """What `tune_alpha` learned and how the cross-validation judged it.

  Attributes:
    alpha: path → the tuned α_l (the start when tuning did not help).
    start: path → the starting α_l.
    steps: the number of steps t* the cross-validation chose (0: the start kept).
    penalty: the penalty weight chosen.
    improved: whether the tuned α differs from the start.
    heldout_accuracy, heldout_loss: pooled held-out accuracy and mean cross-entropy at
      t* (each validation sample scored by the fold model that did not see it).
    heldout_accuracy_start, heldout_loss_start: the same at the start (t = 0): the
      start model's accuracy and loss on the whole split.
    val_accuracy: accuracy of the returned α on the whole split.
    curves: penalty → ``(accuracy[steps + 1], loss[steps + 1])``, the pooled held-out
      curves the choice was made on.
  """

  alpha: dict[Path, float]
  start: dict[Path, float]
  steps: int
  penalty: float
  improved: bool
  heldout_accuracy: float
  heldout_loss: float
  heldout_accuracy_start: float
  heldout_loss_start: float
  val_accuracy: float
  curves: dict[float, tuple[np.ndarray, np.ndarray]]


def _objective(apply_fn, log_alpha, log_alpha0, data, x, y, weights, penalty):
  variables, decomposition = data
  alpha = {p: jnp.exp(a) for p, a in log_alpha.items()}
  logits = apply_fn(corrected_variables(variables, decomposition, alpha), x)
  ce = cross_entropy(logits, y)
  fit = jnp.sum(weights * ce) / jnp.sum(weights)
  drift = jnp.mean(jnp.stack([(log_alpha[p] - log_alpha0[p]) ** 2 for p in log_alpha]))
  return fit + penalty * drift, (ce, jnp.argmax(logits, -1) == y)


@functools.partial(jax.jit, static_argnames=("apply_fn", "learning_rate"))
def _step(apply_fn, log_alpha, state, log_alpha0, data, x, y, weights, penalty, *, learning_rate):
  """One full-batch Adam step on log α; the per-example CE and correctness of every
  sample before it."""
  (_, (ce, correct)), grad = jax.value_and_grad(_objective, argnums=1, has_aux=True)(
    apply_fn, log_alpha, log_alpha0, data, x, y, weights, penalty
  )
  updates, state = optax.adam(learning_rate).update(grad, state, log_alpha)
  return optax.apply_updates(log_alpha, updates), state, ce, correct


def _fit(apply_fn, log_alpha0, data, x, y, weights, penalty, *, steps, learning_rate):
  """``steps`` full-batch Adam steps; per-example CE and correctness of every sample
  before each step and after the last, (steps + 1, n), and the trajectory of log α.

  A Python loop over one compiled step: the same step inside `jax.lax.scan` measured
  10× slower on CPU (the conv backward inside XLA's while loop).
  """
  log_alpha, state = log_alpha0, optax.adam(learning_rate).init(log_alpha0)
  ces, corrects, path = [], [], []
  for _ in range(steps + 1):
    path.append(log_alpha)
    log_alpha, state, ce, correct = _step(
      apply_fn,
      log_alpha,
      state,
      log_alpha0,
      data,
      x,
      y,
      weights,
      penalty,
      learning_rate=learning_rate,
    )
    ces.append(ce)
    corrects.append(correct)
  stacked = {p: jnp.stack([la[p] for la in path]) for p in log_alpha0}
  return jnp.stack(ces), jnp.stack(corrects), stacked


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
  """The fold of every sample: a seeded permutation dealt into ``folds`` folds."""
  ids = np.empty(n, np.int64)
  ids[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
  return ids


def _best_step(acc: np.ndarray, loss: np.ndarray) -> int:
  """Highest accuracy, ties to lower loss, then to fewer steps."""
  order = np.lexsort((np.arange(len(acc)), loss, -acc))
  return int(order[0])


def tune_alpha(
  apply_fn: ApplyFn,
  variables: Variables,
  decomposition: Decomposition,
  x_val: Any,
  y_val: Any,
  alpha: Any,
  *,
  folds: int = DEFAULT_FOLDS,
  steps: int = DEFAULT_STEPS,
  learning_rate: float = DEFAULT_LEARNING_RATE,
  penalty: float | Sequence[float] = 0.0,
  seed: int = 0,
) -> TuneResult:
  """Learns one α per layer (in log space) on the noisy validation split.

  Args:
    apply_fn: eval-mode forward.
    variables: the variables ``decomposition`` was made from.
    decomposition: from `sap_jax.decompose` (the bases are reused, never recomputed).
    x_val, y_val: the noisy validation split (full batch: every step is one forward
      and backward pass over it).
    alpha: the start, the grid's best α (a scalar for every layer, or a dict).
    folds: cross-validation folds (≥ 2, ≤ the number of samples).
    steps: Adam steps per fit (the early-stopping horizon).
    learning_rate: Adam's step size on log α.
    penalty: weight of ``mean_l (log α_l − log α_l⁰)²``, or several weights for the
      cross-validation to choose from.
    seed: seed of the fold assignment (the only randomness).

  Returns:
    A `TuneResult`. Deterministic for a seed.
  """
  x_val, y_val = check_split(x_val, y_val, "val", apply_fn, variables)
  n = len(x_val)
  if not 2 <= folds <= n:
    raise ValueError(f"folds must be between 2 and the {n} validation samples, got {folds}.")
  if steps < 1:
    raise ValueError(f"steps must be ≥ 1, got {steps}.")
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
  penalties = tuple(float(p) for p in np.atleast_1d(np.asarray(penalty, np.float64)))
  if not penalties or any(not (np.isfinite(p) and p >= 0) for p in penalties):
    raise ValueError(f"penalty must be finite and ≥ 0 (one value or several), got {penalty}.")
  log_alpha0 = log_alpha_of(decomposition, alpha)
  dtype = next(iter(log_alpha0.values())).dtype
  fn = hashable(apply_fn)
  data = (variables, decomposition)
  x, y = jnp.asarray(x_val), jnp.asarray(y_val)
  ids = fold_ids(n, folds, seed)

  def fit(weights, pen):
    ce, correct, path = _fit(
      fn,
      log_alpha0,
      data,
      x,
      y,
      jnp.asarray(weights, dtype),
      jnp.asarray(pen, dtype),
      steps=steps,
      learning_rate=float(learning_rate),
    )
    return np.asarray(ce, np.float64), np.asarray(correct, np.float64), path

  curves, choices = {}, []
  for pen in penalties:
    acc = np.zeros(steps + 1)
    loss = np.zeros(steps + 1)
    for k in range(folds):
      held = ids == k
      ce, correct, _ = fit((~held).astype(np.float64), pen)
      acc += correct[:, held].sum(axis=1)
      loss += ce[:, held].sum(axis=1)
    acc, loss = acc / n, loss / n
    curves[pen] = (acc, loss)
    t = _best_step(acc, loss)
    choices.append((acc[t], -loss[t], t, pen))
  best = max(range(len(choices)), key=lambda i: (choices[i][0], choices[i][1], -i))
  acc_t, neg_loss_t, t_star, pen_star = choices[best]
  acc0, loss0 = curves[penalties[0]][0][0], curves[penalties[0]][1][0]
  start = {p: float(np.exp(float(a))) for p, a in log_alpha0.items()}
  tuned, val_acc = start, float(acc0)
  if t_star > 0:
    _, correct, path = fit(np.ones(n), pen_star)
    if correct[t_star].mean() >= acc0:
      tuned = {p: float(np.exp(float(a[t_star]))) for p, a in path.items()}
      val_acc = float(correct[t_star].mean())
  return TuneResult(
    alpha=tuned,
    start=start,
    steps=int(t_star) if tuned is not start else 0,
    penalty=float(pen_star),
    improved=tuned is not start,
    heldout_accuracy=float(acc_t),
    heldout_loss=float(-neg_loss_t),
    heldout_accuracy_start=float(acc0),
    heldout_loss_start=float(loss0),
    val_accuracy=val_acc,
    curves=curves,
  )


def tuning_report(result: TuneResult) -> dict[str, Any]:
  """A `TuneResult` as JSON-ready values (layer paths joined by "/"), for reports."""
  name = path_name
  return {
    "alpha": {name(p): a for p, a in result.alpha.items()},
    "start": {name(p): a for p, a in result.start.items()},
    "steps": result.steps,
    "penalty": result.penalty,
    "improved": result.improved,
    "heldout_accuracy": result.heldout_accuracy,
    "heldout_accuracy_start": result.heldout_accuracy_start,
    "heldout_loss": result.heldout_loss,
    "heldout_loss_start": result.heldout_loss_start,
    "val_accuracy": result.val_accuracy,
  }
