"""The α sweep: every α of a grid scored on named splits, and the choice of α.

`sweep_alpha` is built on the two phases of a correction (`sap_jax.decomposition`:
`decompose` once, `apply_alpha` per α): it scores the unchanged model and every α of a
grid on any number of named splits in one pass (one projection per α, every split
evaluated on it), and chooses α on the split given as ``(x_val, y_val)`` — in the
honest protocol the *noisy* validation split. Clean validation labels or the test set,
where the caller has them, are scored by the same pass under their own names and never
influence the choice.

This module owns the grid (`DEFAULT_ALPHAS`), the checks of the splits (`check_split`,
`checked_splits`, `checked_sweep_splits`), their scoring (`score_alphas`) and the rule
that chooses α (`choose_alpha`, `SweepResult`). It re-exports the decomposition's names
(`Decomposition`, `decompose`, `apply_alpha`, …) and the host threads' from their homes,
`sap_jax.decomposition` and `sap_jax.host_threads`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from jax.sharding import Mesh

from sap_jax import solve as slv
from sap_jax.arg_checks import check_alpha_grid, check_count, check_eval_splits
from sap_jax.data.array_feeder import labels_on_host
from sap_jax.data.sources import is_source, no_separate_labels
from sap_jax.decomposition import (
  JITTED,
  PARALLEL_ABOVE,
  Decomposition,
  apply_alpha,
  check_decompose_args,
  corrected_kernels,
  decompose,
  layer_methods,
)
from sap_jax.evaluation import check_finite_inputs, evaluate_checked
from sap_jax.forward_checks import output_width
from sap_jax.host_threads import (
  MAX_DEFAULT_WORKERS,
  default_workers,
  max_workers,
  run_dearest_first,
  threads_share_context,
)
from sap_jax.input_checks import check_labels
from sap_jax.stats import LayerStats
from sap_jax.types import ApplyFn, Path, Variables

__all__ = [
  "CHOICE_SPLIT",
  "DEFAULT_ALPHAS",
  "JITTED",
  "MAX_DEFAULT_WORKERS",
  "PARALLEL_ABOVE",
  "Decomposition",
  "SplitScores",
  "SweepResult",
  "apply_alpha",
  "check_split",
  "checked_splits",
  "checked_sweep_splits",
  "choose_alpha",
  "corrected_kernels",
  "decompose",
  "default_workers",
  "layer_methods",
  "max_workers",
  "run_dearest_first",
  "score_alphas",
  "sweep_alpha",
  "sweep_checked",
  "threads_share_context",
]


# The paper's grid is 1e3…1e6 (3e4 typical on CIFAR); small models on small data
# prefer 1e2…3e3, so the default grid reaches down to 1e2.
DEFAULT_ALPHAS = (1e2, 3e2, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6)

CHOICE_SPLIT = "val"
"""The name under which `SweepResult.splits` holds the split that chooses α."""


def choose_alpha(
  alphas: Sequence[float], accuracies: Sequence[float], baseline: float
) -> tuple[float | None, float]:
  """The sweep's rule: the first α (grid order) of highest accuracy, if it beats the
  unchanged model; else None (keep the model: the unchanged model wins ties).

  Returns:
    ``(alpha or None, its accuracy)``.
  """
  accuracies = np.asarray(accuracies, np.float64)
  best = int(np.argmax(accuracies))
  if accuracies[best] > baseline:
    return float(alphas[best]), float(accuracies[best])
  return None, float(baseline)


class SplitScores(NamedTuple):
  """Accuracy on one labelled split: of the unchanged model and at every α.

  Attributes:
    accuracies: float64[K], in the sweep's α order.
    baseline: accuracy of the unchanged model.
  """

  accuracies: np.ndarray
  baseline: float


class SweepResult(NamedTuple):
  """Accuracy of the original model and of the model corrected with each α.

  Attributes:
    alphas: float64[K] the α values tried, in the given order.
    accuracies: float64[K] accuracy for each α on the split that chooses α.
    baseline_accuracy: accuracy of the unchanged model on that split.
    best_alpha: the chosen α, or None when no α beats the unchanged model
      (keeping the original model wins ties).
    best_accuracy: accuracy of the choice.
    splits: name → `SplitScores` of every scored split, the choosing one under
      ``"val"`` (`CHOICE_SPLIT`).
  """

  alphas: np.ndarray
  accuracies: np.ndarray
  baseline_accuracy: float
  best_alpha: float | None
  best_accuracy: float
  splits: dict[str, SplitScores] = {}

  def best_for(self, name: str) -> tuple[float | None, float]:
    """The α that split ``name`` would choose by the sweep's rule, and its accuracy."""
    s = self._split(name)
    return choose_alpha(self.alphas, s.accuracies, s.baseline)

  def accuracy_at(self, name: str, alpha: float | None) -> float:
    """Accuracy on split ``name`` at ``alpha`` (None: the unchanged model)."""
    s = self._split(name)
    if alpha is None:
      return float(s.baseline)
    hits = np.flatnonzero(self.alphas == float(alpha))
    if hits.size == 0:
      raise KeyError(f"alpha {alpha} was not swept; the grid is {self.alphas.tolist()}.")
    return float(s.accuracies[hits[0]])

  def _split(self, name: str) -> SplitScores:
    if name not in self.splits:
      raise KeyError(f"split {name!r} was not scored; scored splits: {sorted(self.splits)}.")
    return self.splits[name]


def check_split(
  x: Any, y: Any, name: str, apply_fn: ApplyFn | None = None, variables: Variables = None
) -> tuple[np.ndarray, np.ndarray]:
  """A labelled split, refused when empty, non-finite or mismatched: the inputs where the
  feeder reads them (`sap_jax.evaluation.check_finite_inputs`: a global array stays on its
  devices), the labels as a host int32 array (a global one all-gathered); with
  the model (``apply_fn`` and ``variables``), labels outside ``[0, K)`` and a forward
  `sap_jax.input_checks.output_width` refuses are refused too (a shape-only trace)."""
  what = f"split {name!r}"
  x = check_finite_inputs(x, what)
  if y is not None and np.ndim(y) >= 1 and len(x) != len(y):
    raise ValueError(f"{what} has {len(x)} samples but {len(y)} labels.")
  y = check_labels(labels_on_host(y), len(x), None, what)  # what needs no model, before the trace
  if apply_fn is not None:
    y = check_labels(y, len(x), output_width(apply_fn, variables, x), what)
  return x, y


def score_alphas(
  apply_fn: ApplyFn,
  variables: Variables,
  decomposition: Decomposition,
  alphas: Sequence[float],
  splits: Mapping[str, tuple[Any, Any]],
  *,
  batch_size: int = 512,
) -> dict[str, SplitScores]:
  """Accuracy of the unchanged model and at every α, on every named split.

  One projection per α (`apply_alpha`), each split evaluated on it with
  `sap_jax.evaluation.evaluate`. One α at a time through the plain compiled forward:
  a forward vmapped over K parameter sets turns every conv into a batched-kernel
  (grouped) conv, measured 5× slower than K plain forwards on CPU (ResNet18), and holds
  K parameter copies.

  Args:
    apply_fn: eval-mode forward.
    variables: the variables the decomposition was made from.
    decomposition: from `decompose`.
    alphas: the α grid.
    splits: name → ``(x, y)``.
    batch_size: samples per evaluation call.

  Returns:
    name → `SplitScores`.
  """
  splits = checked_splits(apply_fn, variables, splits)
  return _score_checked(apply_fn, variables, decomposition, alphas, splits, batch_size)


def checked_splits(
  apply_fn: ApplyFn, variables: Variables, splits: Mapping[str, tuple[Any, Any]]
) -> dict[str, tuple[Any, Any]]:
  """name → ``(x, y)`` after every check, once per split before any work (`check_split`,
  then labels in ``[0, K)`` for the model's K outputs), so the sweep scores every α
  without checking the splits again."""
  out = {}
  for name, (x, y) in splits.items():
    x, y = check_split(x, y, name)  # inputs finite, labels non-negative integers
    y = check_labels(y, len(x), output_width(apply_fn, variables, x), f"split {name!r}")
    out[name] = (x, y)
  return out


def _score_checked(
  apply_fn, variables, decomposition, alphas, splits, batch_size, progress=None, mesh=None
):
  """`score_alphas` on splits from `checked_splits`; ``progress(i, K)`` before each α and
  after the last (i: α values scored so far); host arrays evaluated on ``mesh``."""
  alphas_np = np.asarray(alphas, np.float64).reshape(-1)

  def accuracies(v) -> dict[str, float]:
    return {
      name: evaluate_checked(apply_fn, v, x, y, batch_size=batch_size, mesh=mesh)["accuracy"]
      for name, (x, y) in splits.items()
    }

  baseline = accuracies(variables)
  per_alpha = []
  for a in alphas_np:
    if progress is not None:
      progress(len(per_alpha), len(alphas_np))
    per_alpha.append(accuracies(apply_alpha(variables, decomposition, a)))
  if progress is not None:
    progress(len(per_alpha), len(alphas_np))
  return {
    name: SplitScores(np.asarray([acc[name] for acc in per_alpha], np.float64), baseline[name])
    for name in splits
  }


def sweep_alpha(
  apply_fn: ApplyFn,
  variables: Variables,
  stats: Mapping[Path, LayerStats] | Decomposition,
  alphas: Sequence[float],
  x_val: Any,
  y_val: Any,
  *,
  batch_size: int = 512,
  eval_splits: Mapping[str, tuple[Any, Any]] | None = None,
  progress: Callable[[int, int], None] | None = None,
  method: str = slv.AUTO,
  workers: int | None = None,
) -> SweepResult:
  """Scores every α with one decomposition per layer and chooses the best.

  Given statistics, the layers are decomposed first (`decompose` with ``workers``),
  then the unchanged model and every α are scored. (Decomposing on a host thread while
  the unchanged model is scored was measured slower on a loaded 2-core machine: the
  evaluation's own threads and the decomposition's compete for the cores.) Given a
  `Decomposition`, nothing is decomposed.

  Args:
    apply_fn: eval-mode forward.
    variables: the original variables.
    stats: statistics of the trusted set (optionally `select_layers`-filtered), or a
      `Decomposition` of them already made.
    alphas: the grid of α > 0 (e.g. `DEFAULT_ALPHAS`).
    x_val: inputs of the split that chooses α; in the honest protocol the *noisy*
      validation split. Or a labelled source (`sap_jax.data.sources`): then ``y_val`` is
      None, every ``eval_splits`` value is a source too, and each split is read once for
      the whole grid (`sap_jax.streaming.score_alphas`).
    y_val: its labels.
    batch_size: samples per evaluation call.
    eval_splits: further name → ``(x, y)`` splits to score at every α in the same pass
      (e.g. ``{"val_clean": …, "test": …}``); they never influence the choice.
    progress: optional ``progress(done, K)``, called before each α and after the last
      with the number of α values scored so far (for a progress bar; no effect on results).
    method: how `decompose` treats each layer when ``stats`` are statistics: "auto"
      (default: eigh below `sap_jax.solve.AUTO_MIN_WIDTH`, the cost model for
      K = len(alphas) α values above), "eigh" or "solve".
    workers: layers decomposed at once (see `decompose`; default `default_workers`).

  Returns:
    A `SweepResult`; ``result.splits`` holds every split, the choosing one as "val".
  """
  check_count(batch_size, "batch_size")
  if not isinstance(stats, Decomposition):  # the options first: they need no model trace
    check_decompose_args(variables, stats, method, len(check_alpha_grid(alphas)), workers)
  alphas_np, named = checked_sweep_splits(apply_fn, variables, alphas, x_val, y_val, eval_splits)
  if isinstance(stats, Decomposition):
    decomposition = stats
  else:
    decomposition = decompose(
      variables, stats, method=method, n_alphas=len(alphas_np), workers=workers
    )
  return sweep_checked(
    apply_fn, variables, decomposition, alphas_np, named, batch_size=batch_size, progress=progress
  )


def checked_sweep_splits(
  apply_fn: ApplyFn,
  variables: Variables,
  alphas: Sequence[float],
  x_val: Any,
  y_val: Any,
  eval_splits: Mapping[str, Any] | None,
) -> tuple[np.ndarray, dict[str, Any]]:
  """The α grid (`check_alpha_grid`) and every split of a sweep, name → ``(x, y)`` (a
  source when ``x_val`` is one), the choice split as "val", after every check, before any
  work; `sweep_checked` takes them as they are (`run_sap` checks them before scoring)."""
  alphas_np = check_alpha_grid(alphas)
  streamed = is_source(x_val)
  eval_splits = check_eval_splits(eval_splits, sources=streamed)
  named = {CHOICE_SPLIT: x_val if streamed else (x_val, y_val), **eval_splits}
  if streamed:
    no_separate_labels(y_val, "y_val")
    for name, split in named.items():
      if not is_source(split):
        raise ValueError(
          f"split {name!r}: with a source for x_val, every eval split is a source too "
          "(wrap arrays with sap_jax.data.sources.ArraySource(x, y))."
        )
    return alphas_np, named
  return alphas_np, checked_splits(apply_fn, variables, named)


def sweep_checked(
  apply_fn: ApplyFn,
  variables: Variables,
  decomposition: Decomposition,
  alphas_np: np.ndarray,
  named: Mapping[str, Any],
  *,
  batch_size: int = 512,
  progress: Callable[[int, int], None] | None = None,
  mesh: Mesh | None = None,
) -> SweepResult:
  """`sweep_alpha` on a decomposition and on the grid and splits of `checked_sweep_splits`;
  host arrays and sources evaluated on ``mesh`` (default one local device)."""
  if any(is_source(split) for split in named.values()):  # each split read once for the grid
    from sap_jax import streaming

    scores = streaming.score_alphas(
      apply_fn, variables, decomposition, alphas_np, named, batch_size=batch_size, mesh=mesh
    )
  else:
    scores = _score_checked(
      apply_fn, variables, decomposition, alphas_np, named, batch_size, progress, mesh
    )
  choice = scores[CHOICE_SPLIT]
  best_alpha, best_acc = choose_alpha(alphas_np, choice.accuracies, choice.baseline)
  return SweepResult(
    alphas_np, choice.accuracies, float(choice.baseline), best_alpha, best_acc, scores
  )
