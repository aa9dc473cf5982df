"""`run_sap` on data sources: SAP's recipe with every phase streamed through the feeder.

The trusted set by a streaming top-k of the scores (`sap_jax.streaming.trusted_indices`),
the statistics on the trusted samples read by index (`sap_jax.streaming.stats_batches`),
each split read once for the whole α grid (`sap_jax.streaming.score_alphas`).
`sap_jax.run_sap` comes here when given a source.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from sap_jax import sharding as shd
from sap_jax import solve as slv
from sap_jax.arg_checks import (
  check_alpha_grid,
  check_count,
  check_eval_splits,
  check_layer_range,
  check_n_trusted,
  check_seed,
  check_trusted_indices,
  layer_check,
)
from sap_jax.data.feed_layout import checked_mesh, row_budget
from sap_jax.data.sources import check_length, first_input, input_shape, is_source, source_length
from sap_jax.layers import exclude_patterns
from sap_jax.sample_scores import SCORES
from sap_jax.stats.calls import ALL_CALLS
from sap_jax.streaming import score_alphas, stats_batches, trusted_indices
from sap_jax.tuning import check_tune_request, tune_alpha
from sap_jax.types import ApplyFn


def run_sap(
  apply_fn: ApplyFn,
  variables: Mapping[str, Any],
  train: Any,
  val: Any,
  *,
  n_trusted: int = 1000,
  alphas: Sequence[float] | None = None,
  score: str = "loss",
  class_balanced: bool = False,
  exclude: Sequence[str] = (),
  layer_range: tuple[int | None, int | None] | None = None,
  batch_size: int = 256,
  rows_per_batch: int | None = None,
  seed: int = 0,
  eval_splits: Mapping[str, Any] | None = None,
  trusted: Sequence[int] | None = None,
  progress: Callable[[str, int, int], None] | None = None,
  method: str = slv.AUTO,
  mesh: Mesh | None = None,
  workers: int = 0,
  alpha_chunk: int | None = None,
  calls: Any = ALL_CALLS,
  tune: str | None = None,
  tune_options: Mapping[str, Any] | None = None,
):
  """`sap_jax.run_sap` on sources: the trusted set by a streaming top-k of the scores,
  the statistics on the trusted samples read by index, every split read once for the
  whole α grid. Returns a `sap_jax.pipeline.SAPResult`.

  Args:
    train: the labelled training source (noisy labels).
    val: the labelled source that chooses α (the noisy validation split).
    eval_splits: further name → source splits scored at every α in the same pass.
    mesh: the devices (default one local device); each process reads its own part.
    workers: grain worker processes per phase.
    alpha_chunk: see `score_alphas`.
    tune, tune_options: as `sap_jax.run_sap`; "per_layer" learns one α per layer on the
      ``val`` source (`sap_jax.tune_alpha` over a source: every fold a `Subset` read by
      index, never held), from the grid's best α.
    Others: as `sap_jax.run_sap`.
  """
  from sap_jax.decomposition import apply_alpha, decompose
  from sap_jax.kernels import skipped_kernels
  from sap_jax.layers import select_layers
  from sap_jax.pipeline import SAPResult, layer_summary
  from sap_jax.stats import activation_stats
  from sap_jax.sweep import CHOICE_SPLIT, DEFAULT_ALPHAS, SweepResult, choose_alpha

  # Every argument is checked before the first forward (scores, statistics, sweep).
  alphas = check_alpha_grid(DEFAULT_ALPHAS if alphas is None else alphas)
  slv.check_method(method)
  check_count(batch_size, "batch_size")
  check_count(rows_per_batch, "rows_per_batch", optional=True)
  check_seed(seed)
  exclude, layer_range = exclude_patterns(exclude), check_layer_range(layer_range)
  if trusted is None and score not in SCORES:
    raise ValueError(f"Unknown score {score!r}; choose one of {SCORES}.")
  splits = {CHOICE_SPLIT: val, **check_eval_splits(eval_splits, sources=True)}
  n_train = source_length(train, "train")
  for name, src in splits.items():
    if not is_source(src):
      raise ValueError(
        f"split {name!r}: with source data every eval split is a source too (wrap arrays "
        "with sap_jax.data.sources.ArraySource(x, y))."
      )
    source_length(src, f"split {name!r}")
  if trusted is None:
    n_trusted = check_n_trusted(n_trusted, n_train)
  else:
    trusted = check_trusted_indices(trusted, n_train)
  tune_options = check_tune_request(tune, tune_options, source_length(val, "val"))
  mesh = checked_mesh(mesh)
  variables = shd.replicate(dict(variables), mesh)
  repeated = layer_check(
    apply_fn,
    variables,
    input_shape(train),
    min(batch_size, n_train),
    exclude=exclude,
    layer_range=layer_range,
    calls=calls,
  )
  report = progress or (lambda phase, done, total: None)
  t0 = time.perf_counter()
  report("trusted set", 0, 1)
  if trusted is None:
    trusted = trusted_indices(
      apply_fn,
      variables,
      train,
      n_trusted,
      score=score,
      seed=seed,
      class_balanced=class_balanced,
      batch_size=batch_size,
      mesh=mesh,
      workers=workers,
    )
  trusted = np.asarray(trusted, np.int64)
  t1 = time.perf_counter()
  report("trusted set", 1, 1)
  report("statistics", 0, 1)
  check_length(train, n_train, "train")  # the trusted indices point into this source
  batches = stats_batches(train, trusted, batch_size, mesh=mesh, workers=workers)
  budget = row_budget(rows_per_batch, batch_size, shd.num_shards(mesh))
  stats = activation_stats(
    apply_fn, variables, batches, rows_per_batch=budget, seed=seed, calls=calls
  )
  stats = jax.block_until_ready(select_layers(stats, exclude=exclude, layer_range=layer_range))
  t2 = time.perf_counter()
  report("statistics", 1, 1)
  report("decomposition", 0, 1)
  found = None if shd.num_shards(mesh) == 1 else (mesh, shd.DATA_AXIS)
  decomposition = decompose(variables, stats, method=method, n_alphas=len(alphas), mesh=found)
  report("decomposition", 1, 1)
  report("α sweep", 0, len(alphas))
  scores = score_alphas(
    apply_fn,
    variables,
    decomposition,
    alphas,
    splits,
    batch_size=max(batch_size, 512),
    mesh=mesh,
    workers=workers,
    alpha_chunk=alpha_chunk,
  )
  report("α sweep", len(alphas), len(alphas))
  choice = scores[CHOICE_SPLIT]
  best_alpha, best_acc = choose_alpha(alphas, choice.accuracies, choice.baseline)
  sweep = SweepResult(
    alphas, choice.accuracies, float(choice.baseline), best_alpha, best_acc, scores
  )
  t3 = time.perf_counter()
  tuning = None
  if best_alpha is None:
    corrected = dict(variables)
  elif tune == "per_layer":
    tuning = tune_alpha(
      apply_fn,
      variables,
      decomposition,
      val,
      None,
      best_alpha,
      seed=seed,
      batch_size=max(batch_size, 512),
      **tune_options,
    )
    corrected = jax.block_until_ready(apply_alpha(variables, decomposition, tuning.alpha))
  else:
    corrected = jax.block_until_ready(apply_alpha(variables, decomposition, best_alpha))
  t4 = time.perf_counter()
  return SAPResult(
    variables=corrected,
    alpha=best_alpha,
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
      first_input(train, "train"),
      stats,
      exclude=exclude,
      layer_range=layer_range,
    ),
    repeated=repeated,
  )
