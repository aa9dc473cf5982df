"""SAP in one call, and SAP in rounds (the published code's ``--num-rounds``).

`correct` corrects a model with one α. `sap_rounds` repeats the correction the way
the published code (github.com/sangamesh-kodge/SAP, ``main.py`` and
``activation_projection_based_unlearning`` in ``utils.py``) does, every round scored
on the (noisy) validation split:

* round 0 is SAP: rows = the trusted inputs of every layer, P₀(α) for each α of the
  grid, kernels K → P₀ K; the α of highest validation accuracy is kept if it beats the
  unchanged model, else the model is returned unchanged;
* round r ≥ 1 starts from the round r−1 model, whose kernels are Q_{r−1} K (K the
  original kernel, Q_{r−1} = P₀ P₁ ⋯ P_{r−1} the composed projection). Its rows are the
  inputs the original kernel actually sees in that model: each layer's input a in the
  round r−1 model's forward pass, multiplied by Q_{r−1} (a Q_{r−1}; Gram matrix
  Q_{r−1}ᵀ C Q_{r−1}). P_r(α) is built from them for every α of the grid × 10^r and the
  candidate kernels are Q_{r−1} P_r K. In the published PyTorch layout (W = Kᵀ, out ×
  in, y = a Wᵀ) this is W ← W (Q_{r−1} P_r)ᵀ with W the original weight, the
  published order (``torch.matmul(prev_recur_proj_mat, projection)``, then
  ``weight · matᵀ``);
* the rounds stop at the first round where no α beats the model entering it (the
  published ``break``), or after ``rounds`` rounds.

One difference from the published code, kept on purpose: from round 1 on, the
published code collects its rows and scores its candidates on the round r−1 model
projected once more (it applies ``project_weights`` to a model that already carries
Q_{r−1}, so the forward passes see Q_{r−1} twice) but returns the original model
projected once, W (Q_{r−1} P_r)ᵀ: the model it scored is not the model it returns.
Here the rows come from, and every candidate scored is, the model that is returned.

Biases, BatchNorm parameters and every other leaf are never touched.

Trusted inputs that are a global array sharded over a mesh's data axis
(`sap_jax.sharding`) stay where they are: each device accumulates its own samples'
statistics, combined once per round, and each layer's eigendecomposition (from round 1
on, with its congruence Qᵀ C Q) runs on one device only and is then shared
(`sap_jax.spread_eigh`); the variables and the result are replicated on the mesh.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sap_jax import projection as proj
from sap_jax import sharding as shd
from sap_jax import solve as slv
from sap_jax.arg_checks import check_count, check_layer_range, check_seed, layer_check
from sap_jax.batching import batched
from sap_jax.decomposition import Decomposition, apply_alpha, decompose
from sap_jax.evaluation import check_finite_inputs, evaluate
from sap_jax.kernels import kernels_of, with_kernels
from sap_jax.layer_keys import per_layer_alpha
from sap_jax.layers import exclude_patterns, select_layers
from sap_jax.spread_eigh import congruence, spread_eigh
from sap_jax.stats import LayerStats, Layout, activation_stats
from sap_jax.stats.calls import ALL_CALLS
from sap_jax.sweep import DEFAULT_ALPHAS, check_split, choose_alpha, sweep_alpha
from sap_jax.types import ApplyFn, Path, Variables

Projections = dict[Path, proj.Projection]


def _scaled(alpha: Any, scale: float) -> Any:
  if isinstance(alpha, Mapping):
    return {p: a * scale for p, a in alpha.items()}
  return alpha * scale


_congruence = jax.jit(congruence)

_eigh_jit = jax.jit(proj.eigh_basis)


@functools.partial(jax.jit, static_argnames=("layouts",))
def _compose_jit(previous, layer_bases, alpha, *, layouts):
  """Q_{r−1} P_r(α) per layer (P_r(α) alone when ``previous`` is None)."""
  hp = jax.lax.Precision.HIGHEST
  out = {}
  for path, _ in layouts:
    a = alpha[path] if isinstance(alpha, Mapping) else alpha
    p = proj.projection_matrix(layer_bases[path], a)
    if previous is not None:
      p = jnp.matmul(previous[path], p, precision=hp)
    out[path] = p
  return out


@functools.partial(jax.jit, static_argnames=("layouts",))
def _project_jit(kernels, matrices, *, layouts):
  return {
    path: proj.project_kernel(kernels[path], proj.Projection(matrices[path], layout))
    for path, layout in layouts
  }


JITTED = {
  "correction.congruence": _congruence,
  "correction.eigh": _eigh_jit,
  "correction.compose": _compose_jit,
  "correction.project": _project_jit,
}
"""The module-level compiled programs (see `sap_jax.compile_cache`)."""


def _batches(x_trusted: Any, batch_size: int, rows_per_batch: int | None):
  """The trusted inputs' batches and the row budget that keeps one process's rows.

  A sharded global array becomes its `sap_jax.sharding.local_batches` of
  ⌈batch_size / shards⌉ samples per device (no sample moves), the last one padded and
  masked as one process pads its last batch; when that rounds the batch up, the budget
  grows with it, so that each row is kept with the probability rows_per_batch / (rows of
  batch_size samples), as one process keeps it.
  """
  found = shd.data_axis_of(x_trusted)
  if found is None:
    return batched(x_trusted, batch_size), rows_per_batch
  shards = shd.num_shards(*found)
  size = -(-batch_size // shards) * shards
  batches = list(shd.local_batches(x_trusted, size, pad=True))
  if rows_per_batch is None or size == batch_size:
    return batches, rows_per_batch
  return batches, rows_per_batch * size / batch_size


def _input_stats(
  apply_fn, current, x_trusted, *, batch_size, exclude, layer_range, rows_per_batch, seed, calls
) -> dict[Path, LayerStats]:
  """The Gram matrices C of each selected layer's input a in ``current``'s forward."""
  batches, budget = _batches(x_trusted, batch_size, rows_per_batch)
  stats = activation_stats(
    apply_fn, current, batches, rows_per_batch=budget, seed=seed, calls=calls
  )
  return select_layers(stats, exclude=exclude, layer_range=layer_range)


def round_stats(
  apply_fn: ApplyFn,
  current: Variables,
  x_trusted: Any,
  previous: Projections | None,
  *,
  batch_size: int = 128,
  exclude: Sequence[str] = (),
  layer_range: tuple[int | None, int | None] | None = None,
  rows_per_batch: int | None = None,
  seed: int = 0,
  calls: Any = ALL_CALLS,
) -> dict[Path, LayerStats]:
  """A round's statistics: the Gram matrices of the rows a Q_{r−1}.

  Args:
    apply_fn: eval-mode forward.
    current: the round r−1 model (kernels Q_{r−1} K), whose forward gives each layer's
      input a.
    x_trusted: the trusted inputs (host, or a global array sharded over a data axis).
    previous: the composed projections Q_{r−1} per layer (None in round 0: the rows
      are the inputs themselves).
    batch_size, exclude, layer_range, rows_per_batch, seed, calls: as in `correct`.

  Returns:
    path → `LayerStats` with ``gram = Q_{r−1}ᵀ C Q_{r−1}``, C the inputs' Gram matrix.
  """
  stats = _input_stats(
    apply_fn,
    current,
    x_trusted,
    batch_size=batch_size,
    exclude=exclude,
    layer_range=layer_range,
    rows_per_batch=rows_per_batch,
    seed=seed,
    calls=calls,
  )
  if previous is None:
    return stats
  return {
    p: LayerStats(gram=_congruence(previous[p].matrix, s.gram), count=s.count, layout=s.layout)
    for p, s in stats.items()
  }


def round_bases(
  stats: Mapping[Path, LayerStats],
  previous: Projections | None,
  mesh: tuple[Mesh, str] | None = None,
) -> dict[Path, proj.Basis]:
  """Each layer's eigenbasis of Q_{r−1}ᵀ C Q_{r−1} (of C when ``previous`` is None).

  Args:
    stats: the inputs' statistics C (not yet transformed: `round_stats` with
      ``previous=None``).
    previous: the composed projections Q_{r−1}, or None.
    mesh: ``(mesh, axis)`` when the statistics were combined over a mesh: each layer's
      congruence and eigh then run on one device and the bases are shared
      (`sap_jax.spread_eigh.spread_eigh`); None: on the statistics' device.
  """
  grams = {p: s.gram for p, s in stats.items()}
  transforms = None if previous is None else {p: previous[p].matrix for p in grams}
  if mesh is not None:
    return spread_eigh(grams, *mesh, transforms=transforms)
  if transforms is not None:
    grams = {p: _congruence(transforms[p], g) for p, g in grams.items()}
  return {p: _eigh_jit(g) for p, g in grams.items()}


def _first_decomposition(variables, stats, mesh, method=slv.EIGH) -> Decomposition:
  """Round 0's decomposition (one α: ``n_alphas=1``); over a mesh each eigh layer's eigh
  runs on one device. ``consume``: frees each Gram matrix as it is decomposed."""
  return decompose(variables, stats, consume=True, method=method, n_alphas=1, mesh=mesh)


def compose(
  previous: Projections | None,
  layer_bases: Mapping[Path, proj.Basis],
  layouts: Sequence[tuple[Path, Layout]],
  alpha: Any,
) -> Projections:
  """The composed projections Q_r = Q_{r−1} P_r(α) (P_r(α) when ``previous`` is None).

  A layer then computes a Q_r K: the original kernel K sees the inputs a Q_{r−1} P_r.
  """
  layouts = tuple(layouts)
  prev = None if previous is None else {p: q.matrix for p, q in previous.items()}
  alpha = (
    {p: jnp.asarray(a, jnp.float32) for p, a in alpha.items()}
    if isinstance(alpha, Mapping)
    else jnp.asarray(alpha, jnp.float32)
  )
  mats = _compose_jit(prev, dict(layer_bases), alpha, layouts=layouts)
  return {p: proj.Projection(mats[p], layout) for p, layout in layouts}


def projected(variables: Variables, projections: Projections) -> Variables:
  """``variables`` with every kernel K of ``projections`` replaced by Q K (Q any matrix)."""
  layouts = tuple((p, q.layout) for p, q in projections.items())
  kernels = kernels_of(variables, [p for p, _ in layouts])
  mats = {p: q.matrix for p, q in projections.items()}
  return with_kernels(variables, _project_jit(kernels, mats, layouts=layouts))


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
  method: str = slv.AUTO,
  calls: Any = ALL_CALLS,
) -> Variables:
  """Corrects a model with SAP: statistics on the trusted inputs → projections → params.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: model variables (not modified).
    x_trusted: the trusted inputs (N_trust, …): a host array, or a global array sharded
      over a mesh's data axis (`sap_jax.sharding`; each device then accumulates its own
      samples' statistics, and each layer's eigendecomposition runs on one device, the
      bases shared: `sap_jax.spread_eigh`).
    alpha: scaling coefficient α > 0 (scalar or dict path → scalar).
    batch_size: trusted samples per forward pass while collecting statistics.
    exclude: glob patterns of layer paths to leave unchanged (see `select_layers`).
    layer_range: slice of layers (call order) to project.
    rounds: apply this many rounds with the published code's rows and composition
      (module docstring), round r with α × 10^r, every round applied (there is no
      validation split to score them on; `sap_rounds` scores them and stops). 1 is the
      paper's method.
    rows_per_batch: optional row budget per layer and batch (default: all rows).
    seed: seed of the row subsampling (round r uses ``seed + r``).
    method: how each layer is decomposed with ``rounds=1`` (`sap_jax.decompose` for one
      α): "auto" (default), "eigh" or "solve". More rounds compose every round's
      projection matrix from its eigenbasis, so they take "auto" or "eigh" and use eigh.
    calls: which call of a layer called more than once per forward counts: "all"
      (default) or e.g. ``{"head": 1}`` (see `sap_jax.run_sap`); checked before any work.

  Returns:
    Corrected variables (replicated on the mesh for sharded ``x_trusted``).
  """
  x_trusted = check_finite_inputs(x_trusted, "x_trusted")
  proj.check_alpha(alpha)
  exclude, layer_range = exclude_patterns(exclude), check_layer_range(layer_range)
  check_count(rounds, "rounds")
  check_count(batch_size, "batch_size")
  check_count(rows_per_batch, "rows_per_batch", optional=True)
  check_seed(seed)
  slv.check_method(method, rounds)
  # A shape-only trace: the selection leaves a layer and none is inside a lifted transform.
  layer_check(
    apply_fn,
    variables,
    tuple(x_trusted.shape[1:]),
    min(batch_size, len(x_trusted)),
    exclude=exclude,
    layer_range=layer_range,
    calls=calls,
  )
  opts = dict(
    batch_size=batch_size,
    exclude=exclude,
    layer_range=layer_range,
    rows_per_batch=rows_per_batch,
    calls=calls,
  )
  mesh = shd.data_axis_of(x_trusted)
  if mesh is not None:
    variables = shd.replicate(dict(variables), mesh[0])
  if rounds == 1:
    stats = _input_stats(apply_fn, variables, x_trusted, seed=seed, **opts)
    decomposition = _first_decomposition(variables, stats, mesh, method)
    del stats
    return apply_alpha(variables, decomposition, alpha)
  current, previous = dict(variables), None
  for r in range(rounds):
    stats = _input_stats(apply_fn, current, x_trusted, seed=seed + r, **opts)
    layouts = tuple((p, s.layout) for p, s in stats.items())
    alpha = per_layer_alpha(alpha, stats)
    layer_bases = round_bases(stats, previous, mesh)
    del stats
    previous = compose(previous, layer_bases, layouts, _scaled(alpha, 10.0**r))
    current = projected(variables, previous)
  return current


class RoundRecord(NamedTuple):
  """One round of `sap_rounds`.

  Attributes:
    alphas: float64[K] the round's grid (the given grid × 10^r).
    accuracies: float64[K] validation accuracy of each candidate.
    baseline: validation accuracy of the model entering the round.
    alpha: the chosen α, or None (no α beat the baseline: the rounds stop here).
  """

  alphas: np.ndarray
  accuracies: np.ndarray
  baseline: float
  alpha: float | None


class RoundsResult(NamedTuple):
  """What `sap_rounds` did.

  Attributes:
    variables: the corrected variables (the given ones when round 0 kept the model).
    alphas: the chosen α of every accepted round, in order (len = rounds accepted).
    records: one `RoundRecord` per round run (the last one rejected unless the
      ``rounds`` limit stopped them).
    projections: the composed projection Q of every corrected layer (kernels Q K), or
      None when no round was accepted.
    val_accuracy: validation accuracy of ``variables``.
  """

  variables: Variables
  alphas: tuple[float, ...]
  records: tuple[RoundRecord, ...]
  projections: Projections | None
  val_accuracy: float


def sap_rounds(
  apply_fn: ApplyFn,
  variables: Mapping[str, Any],
  x_trusted: Any,
  x_val: Any,
  y_val: Any,
  alphas: Sequence[float] = DEFAULT_ALPHAS,
  *,
  rounds: int = 3,
  batch_size: int = 256,
  exclude: Sequence[str] = (),
  layer_range: tuple[int | None, int | None] | None = None,
  rows_per_batch: int | None = None,
  seed: int = 0,
  first: tuple[Decomposition, Any] | None = None,
  calls: Any = ALL_CALLS,
) -> RoundsResult:
  """SAP in rounds, the published code's ``--num-rounds``, scored on ``(x_val, y_val)``.

  See the module docstring for the rows, the composition and the stopping rule. Every
  round's α is chosen by `sap_jax.sweep.choose_alpha` (the first α of highest
  accuracy, if it beats the model entering the round).

  Args:
    apply_fn: eval-mode forward.
    variables: the trained (noisy) model (not modified).
    x_trusted: the trusted inputs (the same set every round, as the published code's
      cached curvature ranking); host, or sharded over a mesh's data axis as in
      `correct` (the variables, and the result, are then replicated on the mesh).
    x_val, y_val: the split every round is scored on (honest protocol: the NOISY
      validation labels).
    alphas: round 0's grid; round r uses it × 10^r.
    rounds: at most this many rounds (1: plain SAP with the α sweep).
    batch_size: trusted samples per forward pass (evaluation: ``max(batch_size, 512)``).
    exclude, layer_range: layers to leave alone, the same every round.
    rows_per_batch: optional row budget per layer and batch.
    seed: seed of the row subsampling (round r uses ``seed + r``).
    first: ``(decomposition, sweep)`` of a round 0 already run on these trusted
      inputs (`sap_jax.run_sap`'s ``result.decomposition`` and ``result.sweep``, whose
      choice split must be ``(x_val, y_val)``): round 0 is then not recomputed.
    calls: which call of a layer called more than once per forward counts, the same
      every round (see `sap_jax.run_sap`).

  Returns:
    A `RoundsResult`.
  """
  x_trusted = check_finite_inputs(x_trusted, "x_trusted")
  x_val, y_val = check_split(x_val, y_val, "val")
  grid = np.asarray(alphas, np.float64).reshape(-1)
  if grid.size == 0:
    raise ValueError("alphas is empty; give at least one α (e.g. DEFAULT_ALPHAS).")
  proj.check_alpha(jnp.asarray(grid))
  if rounds < 1:
    raise ValueError(f"rounds must be ≥ 1, got {rounds}.")
  opts = dict(
    batch_size=batch_size,
    exclude=exclude,
    layer_range=layer_range,
    rows_per_batch=rows_per_batch,
    calls=calls,
  )
  eval_bs = max(batch_size, 512)
  mesh = shd.data_axis_of(x_trusted)
  if mesh is not None:
    variables = shd.replicate(dict(variables), mesh[0])
  if first is None:
    stats = _input_stats(apply_fn, variables, x_trusted, seed=seed, **opts)
    decomposition = _first_decomposition(variables, stats, mesh)
    del stats
    sweep = sweep_alpha(apply_fn, variables, decomposition, grid, x_val, y_val, batch_size=eval_bs)
  else:
    decomposition, sweep = first
    if not np.array_equal(np.asarray(sweep.alphas, np.float64), grid):
      raise ValueError(
        f"first's sweep used the grid {list(sweep.alphas)}, not {grid.tolist()}; pass the "
        "grid round 0 was run with."
      )
    if decomposition.solves:
      raise ValueError(
        "rounds compose each round's projection matrix from its eigenbasis; first's "
        f"decomposition used the solve path on {len(decomposition.solves)} layers: pass "
        "decompose(..., method='eigh')."
      )
  records = [RoundRecord(grid, np.asarray(sweep.accuracies), sweep.baseline_accuracy, None)]
  if sweep.best_alpha is None:
    return RoundsResult(dict(variables), (), tuple(records), None, float(sweep.baseline_accuracy))
  records[0] = records[0]._replace(alpha=sweep.best_alpha)
  chosen = [sweep.best_alpha]
  best = float(sweep.best_accuracy)
  current = apply_alpha(variables, decomposition, sweep.best_alpha)  # the model round 0 scored
  previous = compose(None, decomposition.bases, decomposition.layouts, sweep.best_alpha)
  del decomposition
  for r in range(1, rounds):
    stats = _input_stats(apply_fn, current, x_trusted, seed=seed + r, **opts)
    layouts = tuple((p, s.layout) for p, s in stats.items())
    layer_bases = round_bases(stats, previous, mesh)
    del stats
    grid_r = grid * 10.0**r
    accuracies = []
    for a in grid_r:
      v = projected(variables, compose(previous, layer_bases, layouts, float(a)))
      accuracies.append(evaluate(apply_fn, v, x_val, y_val, batch_size=eval_bs)["accuracy"])
    alpha_r, acc_r = choose_alpha(grid_r, accuracies, best)
    records.append(RoundRecord(grid_r, np.asarray(accuracies, np.float64), best, alpha_r))
    if alpha_r is None:
      break
    previous, best = compose(previous, layer_bases, layouts, alpha_r), acc_r
    current = projected(variables, previous)  # the very model scored (same programs)
    chosen.append(alpha_r)
  return RoundsResult(current, tuple(chosen), tuple(records), previous, best)
