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

from sap_jax.arg_checks import is_integer, is_number
from sap_jax.data.feeder import feed
from sap_jax.data.sources import first_input, is_source, no_separate_labels, source_length
from sap_jax.decomposition import Decomposition
from sap_jax.forward_checks import output_width
from sap_jax.hashable import hashable
from sap_jax.layers import path_name
from sap_jax.objective import corrected_variables, cross_entropy, log_alpha_of
from sap_jax.sweep import check_split
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


def _ce_correct(apply_fn, log_alpha, data, x, y):
  variables, decomposition = data
  alpha = {p: jnp.exp(a) for p, a in log_alpha.items()}
  logits = apply_fn(corrected_variables(variables, decomposition, alpha), x)
  return cross_entropy(logits, y), jnp.argmax(logits, -1) == y


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _batch_grad(apply_fn, log_alpha, data, x, y, mask):
  """∂/∂ log α of the summed cross-entropy of a batch's real samples."""

  def total(la):
    ce, _ = _ce_correct(apply_fn, la, data, x, y)
    return jnp.sum(jnp.where(mask, ce, 0.0))

  return jax.grad(total)(log_alpha)


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _batch_scores(apply_fn, log_alpha, data, x, y, mask):
  """Correct count and cross-entropy sum of a batch's real samples."""
  ce, correct = _ce_correct(apply_fn, log_alpha, data, x, y)
  return jnp.sum(correct & mask), jnp.sum(jnp.where(mask, ce, 0.0))


@functools.partial(jax.jit, static_argnames=("learning_rate",))
def _adam_update(log_alpha, state, grad_fit, log_alpha0, penalty, *, learning_rate):
  """One Adam step on log α from the data term's gradient plus the penalty's."""

  def drift(la):
    return penalty * jnp.mean(jnp.stack([(la[p] - log_alpha0[p]) ** 2 for p in la]))

  grad = jax.tree_util.tree_map(jnp.add, grad_fit, jax.grad(drift)(log_alpha))
  updates, state = optax.adam(learning_rate).update(grad, state, log_alpha)
  return optax.apply_updates(log_alpha, updates), state


class _SourceFit:
  """`tune_alpha`'s fits over a source: every step's gradient a sum over the feeder's
  batches of the training folds (a ``Subset`` view), every step's held-out scores one
  pass over the held-out fold's view; nothing holds the split."""

  def __init__(self, apply_fn, log_alpha0, data, source, k, batch_size, learning_rate):
    self.fn, self.log_alpha0, self.data, self.source = apply_fn, log_alpha0, data, source
    self.k, self.batch_size, self.learning_rate = k, batch_size, learning_rate

  def _batches(self, indices):
    return feed(
      self.source, self.batch_size, indices=indices, num_classes=self.k, what="split 'val'"
    )

  def scores(self, log_alpha, indices) -> tuple[float, float]:
    correct, loss = 0, 0.0
    for b in self._batches(indices):
      c, s = jax.device_get(_batch_scores(self.fn, log_alpha, self.data, b.x, b.y, b.mask))
      correct, loss = correct + int(c), loss + float(s)
    return correct, loss

  def step(self, log_alpha, state, indices, penalty):
    grad = None
    for b in self._batches(indices):
      g = _batch_grad(self.fn, log_alpha, self.data, b.x, b.y, b.mask)
      grad = g if grad is None else jax.tree_util.tree_map(jnp.add, grad, g)
    dtype = next(iter(log_alpha.values())).dtype
    grad = jax.tree_util.tree_map(lambda g: g / jnp.asarray(len(indices), dtype), grad)
    return _adam_update(
      log_alpha,
      state,
      grad,
      self.log_alpha0,
      jnp.asarray(penalty, dtype),
      learning_rate=self.learning_rate,
    )

  def run(self, train, held, steps, penalty):
    """Held-out ``(correct, loss)`` sums before each step and after the last, and the
    trajectory of log α."""
    log_alpha = self.log_alpha0
    state = optax.adam(self.learning_rate).init(log_alpha)
    correct, loss, path = np.zeros(steps + 1), np.zeros(steps + 1), []
    for t in range(steps + 1):
      path.append(log_alpha)
      if held is not None:
        correct[t], loss[t] = self.scores(log_alpha, held)
      if t < steps:
        log_alpha, state = self.step(log_alpha, state, train, penalty)
    return correct, loss, path


def _tune_on_source(apply_fn, log_alpha0, data, source, ids, penalties, *, steps, **options):
  """The cross-validation of `tune_alpha` over a source: the pooled held-out curves of
  every penalty, then the returned α (see `tune_alpha`)."""
  n, folds = len(ids), int(ids.max()) + 1
  fit = _SourceFit(apply_fn, log_alpha0, data, source, **options)
  curves, choices = {}, []
  for pen in penalties:
    acc, loss = np.zeros(steps + 1), np.zeros(steps + 1)
    for k in range(folds):
      c, s, _ = fit.run(np.flatnonzero(ids != k), np.flatnonzero(ids == k), steps, pen)
      acc, loss = acc + c, loss + s
    curves[pen] = (acc / n, loss / n)
    t = _best_step(*curves[pen])
    choices.append((curves[pen][0][t], -curves[pen][1][t], t, pen))
  final = None
  best = max(range(len(choices)), key=lambda i: (choices[i][0], choices[i][1], -i))
  t_star, pen_star = choices[best][2], choices[best][3]
  if t_star > 0:
    _, _, path = fit.run(np.arange(n), None, t_star, pen_star)
    final = (path[t_star], fit.scores(path[t_star], np.arange(n))[0] / n)
  return curves, choices, final


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
  """The fold of every sample: a seeded permutation dealt into ``folds`` folds."""
  ids = np.empty(n, np.int64)
  ids[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
  return ids


def _best_step(acc: np.ndarray, loss: np.ndarray) -> int:
  """Highest accuracy, ties to lower loss, then to fewer steps."""
  order = np.lexsort((np.arange(len(acc)), loss, -acc))
  return int(order[0])


TUNE_OPTIONS = ("folds", "steps", "learning_rate", "penalty")
"""The keyword arguments of `tune_alpha` that `sap_jax.run_sap`'s ``tune_options`` takes."""


TUNE_MODES = (None, "per_layer")
"""What `sap_jax.run_sap`'s ``tune`` accepts: None (the grid's α) or "per_layer" (`tune_alpha`)."""


def check_tune_request(tune: Any, tune_options: Any, n: int) -> dict[str, Any]:
  """`sap_jax.run_sap`'s ``tune`` and ``tune_options`` for a validation split of ``n``
  samples, refused before any work (`check_tune_options`); returns the options as a dict.

  Raises:
    ValueError: ``tune`` not in `TUNE_MODES`, an option `tune_alpha` does not take,
      options without ``tune``, or options `check_tune_options` refuses.
  """
  if tune not in TUNE_MODES:
    raise ValueError(f"tune must be one of {TUNE_MODES}, got {tune!r}.")
  tune_options = dict(tune_options or {})
  unknown = sorted(set(tune_options) - set(TUNE_OPTIONS))
  if unknown:
    raise ValueError(
      f"unknown tune_options {unknown}; tune_alpha takes folds, steps, learning_rate, penalty."
    )
  if tune_options and tune is None:
    raise ValueError('tune_options were given without tune; pass tune="per_layer".')
  if tune is not None:
    check_tune_options(n, **tune_options)
  return tune_options


def check_tune_options(
  n: int,
  *,
  folds: Any = DEFAULT_FOLDS,
  steps: Any = DEFAULT_STEPS,
  learning_rate: Any = DEFAULT_LEARNING_RATE,
  penalty: Any = 0.0,
) -> tuple[float, ...]:
  """Refuses `tune_alpha` options that cannot run on ``n`` validation samples, before any
  work; returns the penalties (one or several).

  Raises:
    ValueError: ``folds`` not an integer in ``[2, n]`` (a validation split too small for
      the folds says so), ``steps`` not an integer ≥ 1, ``learning_rate`` not a finite
      number > 0, a penalty not finite and ≥ 0.
  """
  if not is_integer(folds) or folds < 2:
    raise ValueError(f"folds must be an integer ≥ 2, got {folds!r}.")
  if folds > n:
    raise ValueError(
      f"the validation split has {n} samples, too few for folds={folds} (each fold holds at "
      f"least one sample); pass folds ≤ {n} or a larger validation split."
    )
  if not is_integer(steps) or steps < 1:
    raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}.")
  if not is_number(learning_rate) or not (np.isfinite(float(learning_rate)) and learning_rate > 0):
    raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}.")
  try:
    penalties = tuple(float(p) for p in np.atleast_1d(np.asarray(penalty, np.float64)))
  except (TypeError, ValueError):
    penalties = ()
  if not penalties or any(not (np.isfinite(p) and p >= 0) for p in penalties):
    raise ValueError(f"penalty must be finite and ≥ 0 (one value or several), got {penalty!r}.")
  return penalties


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
  batch_size: int = 512,
) -> TuneResult:
  """Learns one α per layer (in log space) on the noisy validation split.

  Args:
    apply_fn: eval-mode forward.
    variables: the variables ``decomposition`` was made from.
    decomposition: from `sap_jax.decompose` (the bases are reused, never recomputed).
    x_val, y_val: the noisy validation split (full batch: every step is one forward
      and backward pass over it). Or a labelled source (`sap_jax.data.sources`, ``y_val``
      None): every step's gradient is then summed over the feeder's batches of the
      training folds and every held-out fold scored in one pass, each fold a ``Subset``
      view read by index, so the split is never held (the same α to float tolerance).
    alpha: the start, the grid's best α (a scalar for every layer, or a dict).
    folds: cross-validation folds (≥ 2, ≤ the number of samples).
    steps: Adam steps per fit (the early-stopping horizon).
    learning_rate: Adam's step size on log α.
    penalty: weight of ``mean_l (log α_l − log α_l⁰)²``, or several weights for the
      cross-validation to choose from.
    seed: seed of the fold assignment (the only randomness).
    batch_size: samples per batch over a source (arrays: one full batch).

  Returns:
    A `TuneResult`. Deterministic for a seed.
  """
  streamed = is_source(x_val)
  if streamed:
    no_separate_labels(y_val, "y_val")
    n = source_length(x_val, "split 'val'")
  else:
    x_val, y_val = check_split(x_val, y_val, "val", apply_fn, variables)
    n = len(x_val)
  penalties = check_tune_options(
    n, folds=folds, steps=steps, learning_rate=learning_rate, penalty=penalty
  )
  if not is_integer(batch_size) or batch_size < 1:
    raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}.")
  log_alpha0 = log_alpha_of(decomposition, alpha)
  dtype = next(iter(log_alpha0.values())).dtype
  fn = hashable(apply_fn)
  data = (variables, decomposition)
  ids = fold_ids(n, folds, seed)
  start = {p: float(np.exp(float(a))) for p, a in log_alpha0.items()}
  if streamed:
    k = output_width(apply_fn, variables, first_input(x_val, "split 'val'"))
    curves, choices, final = _tune_on_source(
      fn,
      log_alpha0,
      data,
      x_val,
      ids,
      penalties,
      steps=steps,
      k=k,
      batch_size=batch_size,
      learning_rate=float(learning_rate),
    )
    return _result(curves, choices, penalties, start, final)
  x, y = jnp.asarray(x_val), jnp.asarray(y_val)

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
  t_star, pen_star = choices[best][2], choices[best][3]
  final = None
  if t_star > 0:
    _, correct, path = fit(np.ones(n), pen_star)
    final = ({p: a[t_star] for p, a in path.items()}, correct[t_star].mean())
  return _result(curves, choices, penalties, start, final)


def _result(curves, choices, penalties, start, final) -> TuneResult:
  """The `TuneResult` of the cross-validation's ``choices`` (one per penalty) and the
  ``final`` fit on the whole split (its log α at t* and accuracy, or None when t* = 0):
  the start is kept unless that accuracy is at least the start's."""
  best = max(range(len(choices)), key=lambda i: (choices[i][0], choices[i][1], -i))
  acc_t, neg_loss_t, t_star, pen_star = choices[best]
  acc0, loss0 = curves[penalties[0]][0][0], curves[penalties[0]][1][0]
  tuned, val_acc = start, float(acc0)
  if final is not None and final[1] >= acc0:
    tuned = {p: float(np.exp(float(a))) for p, a in final[0].items()}
    val_acc = float(final[1])
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
