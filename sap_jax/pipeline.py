"""The whole SAP recipe in one call: trusted set → statistics → α sweep → correction."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from sap_jax import multihost
from sap_jax import sharding as shd
from sap_jax import solve as slv
from sap_jax import trusted as tr
from sap_jax.arg_checks import (
  check_count,
  check_layer_range,
  check_n_trusted,
  check_seed,
  check_trusted_indices,
  layer_check,
  sample_count,
)
from sap_jax.data.array_feeder import trusted_stats_batches
from sap_jax.data.feed_layout import checked_mesh
from sap_jax.data.sources import input_shape, is_source, no_separate_labels
from sap_jax.decomposition import Decomposition, apply_alpha, decompose
from sap_jax.input_checks import as_array, check_labelled
from sap_jax.kernels import skipped_kernels
from sap_jax.layers import exclude_patterns, path_name, select_layers
from sap_jax.sample_scores import SCORES
from sap_jax.spectrum import stats_summary
from sap_jax.stats import activation_stats
from sap_jax.stats.calls import ALL_CALLS
from sap_jax.sweep import DEFAULT_ALPHAS, SweepResult, checked_sweep_splits, sweep_checked
from sap_jax.tuning import TuneResult, check_tune_request, tune_alpha
from sap_jax.types import ApplyFn


class SAPResult(NamedTuple):
  """What `run_sap` did.

  Attributes:
    variables: corrected variables (the original ones when no α won).
    alpha: the chosen α, or None when the original model was kept.
    sweep: accuracy per α and of the original model on the noisy validation split
      (``sweep.splits["val"]``) and on every ``eval_splits`` entry.
    trusted_indices: indices into the training set of the trusted samples.
    layers: per-layer summary of the statistics (kind, d, rows, effective rank).
    timings: seconds per phase ("scores", "stats", "sweep", "project" (tuning
      included), "total").
    decomposition: the per-layer bases the sweep used (`sap_jax.apply_alpha` turns it
      into the model at any other α, with no new statistics or eigendecompositions).
    tuning: with ``tune="per_layer"``, the `sap_jax.TuneResult` (per-layer α, the
      cross-validation's verdict); ``variables`` is then the model at ``tuning.alpha``.
      None without tuning, or when no grid α beat the original model (nothing to
      start from).
    skipped: every layer with a kernel that SAP left alone, "/"-joined path → reason
      ("excluded by pattern …", "layer type … is not supported", "never called in the
      forward"; `sap_jax.kernels.skipped_kernels`).
    repeated: the layers called more than once per forward (`sap_jax.stats.calls.
      RepeatedLayer`: name, calls, rows per call, and ``counted``: the call whose
      inputs the statistics count as ``calls`` chose it, or None: every call summed).
  """

  variables: dict[str, Any]
  alpha: float | None
  sweep: SweepResult
  trusted_indices: np.ndarray
  layers: dict[str, dict[str, Any]]
  timings: dict[str, float]
  decomposition: Decomposition
  tuning: TuneResult | None = None
  skipped: dict[str, str] = {}
  repeated: tuple = ()


def _block(tree):
  return jax.block_until_ready(tree)


def layer_summary(stats, decomposition: Decomposition) -> dict[str, dict[str, Any]]:
  """`stats_summary` of the corrected layers plus each one's ``method``; a solve layer
  (no spectrum computed) has ``effective_rank`` and ``top_energy`` None."""
  methods = decomposition.methods
  out = stats_summary(stats, decomposition.spectra, missing=False)
  for path in stats:
    out[path_name(path)]["method"] = methods[path]
  return out


def _run_sap_on_sources(apply_fn, variables, data, *, score, **options) -> SAPResult:
  """`run_sap` of sources (`sap_jax.source_pipeline.run_sap`)."""
  from sap_jax import source_pipeline

  x_train, y_train, x_val, y_val = data
  no_separate_labels(y_train, "y_train")
  no_separate_labels(y_val, "y_val")
  if not is_source(x_val):
    raise ValueError(
      "x_train is a source, so x_val must be one too (wrap arrays with "
      "sap_jax.data.sources.ArraySource(x, y))."
    )
  return source_pipeline.run_sap(apply_fn, variables, x_train, x_val, score=score, **options)


def run_sap(
  apply_fn: ApplyFn,
  variables: Mapping[str, Any],
  x_train: Any,
  y_train: Any,
  x_val: Any,
  y_val: Any,
  *,
  n_trusted: int = 1000,
  alphas: Sequence[float] = DEFAULT_ALPHAS,
  score: str = "loss",
  class_balanced: bool = False,
  exclude: Sequence[str] = (),
  layer_range: tuple[int | None, int | None] | None = None,
  batch_size: int = 256,
  rows_per_batch: int | None = None,
  seed: int = 0,
  eval_splits: Mapping[str, tuple[Any, Any]] | None = None,
  trusted: Sequence[int] | None = None,
  progress: Callable[[str, int, int], None] | None = None,
  tune: str | None = None,
  tune_options: Mapping[str, Any] | None = None,
  method: str = slv.AUTO,
  calls: str | Mapping[Any, int] = ALL_CALLS,
  mesh: Mesh | None = None,
) -> SAPResult:
  """Runs SAP end to end without knowing which labels are wrong.

  1. score every training sample (cross-entropy, or input curvature) and keep the
     ``n_trusted`` lowest as the trusted set;
  2. stream each layer's input statistics on the trusted inputs;
  3. score every α in ``alphas`` on the validation split (one decomposition per
     layer, then one projected evaluation per α) and keep the best, or the original
     model if no α beats it;
  4. optionally (``tune="per_layer"``) learn one α per layer from the chosen α on
     the same validation split (`sap_jax.tune_alpha`, guarded by K-fold early
     stopping; same bases);
  5. return the corrected variables.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the trained (noisy) model's variables.
    x_train, y_train: training inputs and their (noisy) labels. A labelled source
      (`sap_jax.data.sources`; then ``y_train`` and ``y_val`` are None, ``x_val`` and
      every ``eval_splits`` value are sources too): every phase streams through the
      feeder (`sap_jax.source_pipeline.run_sap`: the trusted set by a streaming top-k of the
      losses, each split read once for the whole α grid). Host arrays, or global
      arrays sharded over a mesh's data axis (`sap_jax.sharding`): then every step
      runs where the data is (per-sample losses, statistics on the trusted samples
      gathered in place, the sweep's evaluations); only the N scores, the labels, the
      counts and α cross to the host, and the corrected variables are replicated.
    x_val, y_val: validation split used to choose α (honest protocol: noisy labels).
    n_trusted: size of the trusted set (paper: 1000).
    alphas: α grid.
    score: "loss" (paper), "curvature" or "curvature_published" (the published code's
      estimator and its ``n_trusted // K + 1`` per class; `sap_jax.trusted.trusted_set`).
    class_balanced: pick ``n_trusted // K`` per class.
    exclude, layer_range: layers to leave alone (see `select_layers`).
    batch_size: samples per forward pass.
    rows_per_batch: optional row budget per layer and batch.
    seed: seed for curvature probes and row subsampling.
    eval_splits: further name → ``(x, y)`` splits scored at every α in the same pass
      (e.g. clean validation labels for the oracle α, the test set for the α curve);
      they never influence the choice. Read them from ``result.sweep.splits``.
    trusted: the trusted set's indices into the training set, chosen by the caller
      (e.g. the published code's oracle, `sap_jax.trusted.trusted_set` on the clean
      labels); skips step 1 (``score``, ``class_balanced`` and ``n_trusted`` unused).
    progress: optional ``progress(phase, done, total)`` for a progress display, called at
      the start (done 0) and end (done = total) of each phase ("trusted set",
      "statistics", "decomposition") and, in the "α sweep", before each α and after the
      last; None (default) reports nothing. It has no effect on the results.
    tune: None, or "per_layer" to learn per-layer α after the sweep (on sharded
      inputs the validation split is gathered to the host for the tuning).
    tune_options: keyword arguments of `sap_jax.tune_alpha` (``folds``, ``steps``,
      ``learning_rate``, ``penalty``); its ``seed`` is ``seed``.
    method: how each layer is decomposed (`sap_jax.decompose`): "auto" (default: eigh
      below `sap_jax.solve.AUTO_MIN_WIDTH` inputs, above it the cost model's choice for
      ``len(alphas)`` α values), "eigh" (every layer: spectra of every layer in
      ``result.layers`` and ``result.decomposition``) or "solve".
    calls: for a layer called more than once per forward (``result.repeated``), which
      call's inputs count: "all" (default: every call's rows summed, with a warning) or
      a dict layer → call number, 0-based in forward order, e.g. ``{"head": 1}`` for a
      head applied to the tokens and then to the pooled vector (the layer keyed by its
      "/"-joined name or its path tuple). Checked before any work by a shape-only
      trace: a layer the forward does not call, a layer called once, a call number it
      does not have are refused.
    mesh: the devices that read host arrays or sources (a mesh with a data axis,
      `sap_jax.sharding.data_mesh`): every phase runs data-parallel over it, each process
      reading its own rows of every batch, the last batch padded and masked, so no split
      need divide the devices and the results equal one device's. Default one local
      device; global arrays are read on their own mesh (another ``mesh`` is refused).

  Returns:
    A `SAPResult`.

  Raises:
    ValueError: bad inputs or options, before any work; with several processes
      (`jax.distributed`), also inputs that differ between processes (every option,
      the variables and the global shapes of the data must agree;
      `sap_jax.multihost.check_same_across_processes`), raised on every process.
  """
  if is_source(x_train):
    return _run_sap_on_sources(
      apply_fn,
      variables,
      (x_train, y_train, x_val, y_val),
      n_trusted=n_trusted,
      alphas=alphas,
      score=score,
      class_balanced=class_balanced,
      exclude=exclude,
      layer_range=layer_range,
      batch_size=batch_size,
      rows_per_batch=rows_per_batch,
      seed=seed,
      eval_splits=eval_splits,
      trusted=trusted,
      progress=progress,
      tune=tune,
      tune_options=tune_options,
      method=method,
      calls=calls,
      mesh=mesh,
    )
  # lists, tuples, memmaps, other array-likes: one array from here on (a jax.Array stays)
  x_train = as_array(x_train, "x_train")
  multihost.check_same_across_processes(
    {
      "variables": variables,
      "x_train": x_train,
      "y_train": y_train,
      "x_val": x_val,
      "y_val": y_val,
      "eval_splits": eval_splits,
      "n_trusted": n_trusted,
      "alphas": alphas,
      "score": score,
      "class_balanced": class_balanced,
      "exclude": exclude,
      "layer_range": layer_range,
      "batch_size": batch_size,
      "rows_per_batch": rows_per_batch,
      "seed": seed,
      "trusted": trusted,
      "tune": tune,
      "tune_options": tune_options,
      "method": method,
      "calls": calls,
    },
    "run_sap",
  )
  # Every argument is checked before the first forward (scores, statistics, sweep).
  mesh = None if mesh is None else checked_mesh(mesh)  # None: one device, or the data's
  check_count(batch_size, "batch_size")
  check_count(rows_per_batch, "rows_per_batch", optional=True)
  check_seed(seed)
  exclude, layer_range = exclude_patterns(exclude), check_layer_range(layer_range)
  slv.check_method(method)
  n_train = sample_count(x_train, "x_train")
  if trusted is None:
    if score not in SCORES:
      raise ValueError(f"Unknown score {score!r}; choose one of {SCORES}.")
    n_trusted = check_n_trusted(n_trusted, n_train)
  else:
    trusted = check_trusted_indices(trusted, n_train)
  alphas_np, splits = checked_sweep_splits(apply_fn, variables, alphas, x_val, y_val, eval_splits)
  tune_options = check_tune_request(tune, tune_options, len(splits["val"][0]))
  if trusted is not None:  # otherwise `trusted_set` checks them before scoring
    x_train, y_train = check_labelled(
      apply_fn, variables, x_train, shd.to_host(y_train), "x_train/y_train"
    )
  found = shd.common_data_axis(x_train, y_train, x_val, y_val)
  if found is not None and mesh is not None and mesh != found[0]:
    raise ValueError(
      "the data are global arrays sharded over another mesh than mesh=; global arrays are "
      "read on their own mesh: pass mesh=None, or host arrays."
    )
  if found is not None:  # global arrays over a mesh: the data stays where it is
    variables = shd.replicate(variables, found[0])
    y_train = shd.to_host(y_train)  # labels are small; the trusted set needs them on the host
  elif mesh is not None:  # host arrays read over a mesh: each process its own rows
    variables = shd.replicate(variables, mesh)
  spread = found  # the devices the eigh layers are spread over (None: this one)
  if found is None and mesh is not None and shd.num_shards(mesh) > 1:
    spread = (mesh, shd.DATA_AXIS)
  repeated = layer_check(
    apply_fn,
    variables,
    input_shape(x_train),
    min(batch_size, n_train),
    exclude=exclude,
    layer_range=layer_range,
    calls=calls,
  )
  report = progress or (lambda phase, done, total: None)
  t0 = time.perf_counter()
  report("trusted set", 0, 1)
  if trusted is None:
    trusted = tr.trusted_set(
      apply_fn,
      variables,
      x_train,
      y_train,
      n_trusted,
      score=score,
      class_balanced=class_balanced,
      batch_size=batch_size,
      seed=seed,
      mesh=mesh,
    )
  trusted = np.asarray(trusted, np.int64)
  t1 = time.perf_counter()
  report("trusted set", 1, 1)
  report("statistics", 0, 1)
  batches, budget = trusted_stats_batches(x_train, trusted, batch_size, rows_per_batch, mesh)
  stats = activation_stats(
    apply_fn, variables, batches, rows_per_batch=budget, seed=seed, calls=calls
  )
  stats = _block(select_layers(stats, exclude=exclude, layer_range=layer_range))
  t2 = time.perf_counter()
  report("statistics", 1, 1)
  report("decomposition", 0, 1)
  # over a mesh, each eigh layer's eigh on one device, the bases then shared
  decomposition = decompose(variables, stats, method=method, n_alphas=len(alphas_np), mesh=spread)
  report("decomposition", 1, 1)
  sweep = sweep_checked(
    apply_fn,
    variables,
    decomposition,
    alphas_np,
    splits,
    batch_size=max(batch_size, 512),
    progress=None if progress is None else lambda done, total: progress("α sweep", done, total),
    mesh=mesh,
  )
  t3 = time.perf_counter()
  tuning = None
  if sweep.best_alpha is None:
    corrected = dict(variables)
  elif tune == "per_layer":
    # The K-fold split of the (small) validation split indexes it on the host: a global
    # array is all-gathered for the tuning only (`sharding.to_host`, every process).
    tuning = tune_alpha(
      apply_fn,
      variables,
      decomposition,
      shd.to_host(x_val),  # a global array all-gathered; a host array as it is
      shd.to_host(y_val),
      sweep.best_alpha,
      seed=seed,
      **tune_options,
    )
    corrected = _block(apply_alpha(variables, decomposition, tuning.alpha))
  else:  # the very model the sweep scored: same bases, same compiled projection
    corrected = _block(apply_alpha(variables, decomposition, sweep.best_alpha))
  t4 = time.perf_counter()
  return SAPResult(
    variables=corrected,
    alpha=sweep.best_alpha,
    sweep=sweep,
    trusted_indices=trusted,
    layers=layer_summary(stats, decomposition),
    timings={
      "scores": t1 - t0,
      "stats": t2 - t1,
      "sweep": t3 - t2,
      "project": t4 - t3,
      "total": t4 - t0,
    },
    decomposition=decomposition,
    tuning=tuning,
    skipped=skipped_kernels(
      apply_fn,
      variables,
      np.zeros((1, *x_train.shape[1:]), x_train.dtype),  # shapes only
      stats,
      exclude=exclude,
      layer_range=layer_range,
    ),
    repeated=repeated,
  )
