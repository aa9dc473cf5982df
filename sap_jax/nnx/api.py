"""SAP on Flax NNX models: the Linen API's functions, taking an ``nnx.Module``.

Each function turns the model into the core's ``(apply_fn, variables)`` pair
(`sap_jax.nnx.functional.functional`) and calls the Linen function of the same name,
so statistics, decompositions, α sweeps and trusted sets are the very same code and
numbers. Models come back as copies (`to_model`); the user's model and its state are
never modified, and eval mode is set on the library's own copy only.

Many devices: every function that takes data takes, as the Linen one does, host arrays
or global arrays sharded over a mesh's data axis (`sap_jax.sharding.shard_batch`,
`from_process_local`, or batches from `sap_jax.sharding.local_batches`); the work then
runs where the samples are, only small things (per-sample scores, labels, counts, α)
cross to the host, and the results equal one process's with all the data. The model's
arrays (its RNG streams too) are replicated over the mesh for the run; the models
returned from a run on sharded data hold replicated arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sap_jax import decomposition as dcm
from sap_jax import evaluation, pipeline
from sap_jax import projection as proj
from sap_jax import sample_scores as scs
from sap_jax import solve as slv
from sap_jax import sweep as sw
from sap_jax.correction import correct as _correct
from sap_jax.data.sources import input_shape
from sap_jax.nnx.functional import functional, to_model
from sap_jax.nnx.layers import skipped
from sap_jax.stats import LayerStats
from sap_jax.stats import activation_stats as _activation_stats
from sap_jax.stats.calls import ALL_CALLS
from sap_jax.types import Path


def activation_stats(
  model: nnx.Module,
  batches: Iterable[Any],
  *,
  rows_per_batch: int | None = None,
  seed: int = 0,
  dtype=jnp.float32,
  calls: Any = ALL_CALLS,
) -> dict[Path, LayerStats]:
  """`sap_jax.activation_stats` of an NNX model, keyed by each layer's graph path.

  ``batches``: host arrays, or global arrays sharded over a mesh's data axis (e.g.
  `sap_jax.sharding.local_batches`): each device then accumulates its own partial
  statistics, combined once per run.

  Covered: ``nnx.Linear``, ``nnx.LinearGeneral`` (so ``nnx.MultiHeadAttention``'s
  projections), ``nnx.Conv`` (every padding mode, strides, dilations, groups). A path
  is a tuple of attribute names and ``nnx.List`` / ``nnx.Sequential`` indices, e.g.
  ``("layers", 0)``. ``calls``: which call of a layer called more than once per forward
  counts ("all", or e.g. ``{"head": 1}`` or ``{("layers", 0): 1}``; see
  `sap_jax.activation_stats`).
  """
  apply_fn, variables = functional(model)
  return _activation_stats(
    apply_fn,
    variables,
    batches,
    rows_per_batch=rows_per_batch,
    seed=seed,
    dtype=dtype,
    calls=calls,
  )


def decompose(
  model: nnx.Module,
  stats: Mapping[Path, LayerStats],
  *,
  consume: bool = False,
  method: str = slv.AUTO,
  n_alphas: int = 1,
) -> dcm.Decomposition:
  """`sap_jax.decompose` of an NNX model's statistics (the α-independent part)."""
  return dcm.decompose(
    functional(model)[1], stats, consume=consume, method=method, n_alphas=n_alphas
  )


def apply_alpha(model: nnx.Module, decomposition: dcm.Decomposition, alpha: Any) -> nnx.Module:
  """A corrected copy of ``model`` at ``alpha`` (scalar or ``{path: α}``)."""
  _, variables = functional(model)
  return to_model(model, dcm.apply_alpha(variables, decomposition, alpha))


def project(model: nnx.Module, projections: Mapping[Path, proj.Projection]) -> nnx.Module:
  """A copy of ``model`` with every projected layer's kernel K replaced by P·K.

  Args:
    model: the NNX model (not modified).
    projections: path → `sap_jax.Projection`, e.g. ``sap_jax.projections(stats, α)``.
  """
  _, variables = functional(model)
  return to_model(model, proj.project_params(variables, projections))


def evaluate(model: nnx.Module, x: Any, y: Any, batch_size: int = 1024) -> dict[str, float]:
  """`sap_jax.evaluate` (accuracy and mean cross-entropy) of an NNX model in eval mode;
  ``x``, ``y`` host arrays or global arrays sharded over a mesh's data axis."""
  return evaluation.evaluate(*functional(model), x, y, batch_size=batch_size)


def per_example_loss(model: nnx.Module, x: Any, y: Any, *, batch_size: int = 512) -> np.ndarray:
  """`sap_jax.per_example_loss` of an NNX model in eval mode; ``x``, ``y`` host arrays
  or global arrays sharded over a mesh's data axis (only the N losses cross to the host)."""
  return scs.per_example_loss(*functional(model), x, y, batch_size=batch_size)


def trust_scores(model: nnx.Module, x: Any, y: Any, **kwargs: Any) -> np.ndarray:
  """`sap_jax.trust_scores` (loss or input curvature) of an NNX model in eval mode;
  ``x``, ``y`` host arrays or global arrays sharded over a mesh's data axis (every
  score equals one process's; only the N scores cross to the host)."""
  return scs.trust_scores(*functional(model), x, y, **kwargs)


def sweep_alpha(
  model: nnx.Module,
  stats: Mapping[Path, LayerStats] | dcm.Decomposition,
  alphas: Sequence[float],
  x_val: Any,
  y_val: Any,
  *,
  batch_size: int = 512,
  eval_splits: Mapping[str, tuple[Any, Any]] | None = None,
  method: str = slv.AUTO,
) -> sw.SweepResult:
  """`sap_jax.sweep_alpha` of an NNX model: every α scored, the best chosen. The
  validation split (and ``eval_splits``) may be global arrays sharded over a mesh's
  data axis: each α's evaluation then runs where the samples are."""
  return sw.sweep_alpha(
    *functional(model),
    stats,
    alphas,
    x_val,
    y_val,
    batch_size=batch_size,
    eval_splits=eval_splits,
    method=method,
  )


def correct(model: nnx.Module, x_trusted: Any, alpha: Any, **kwargs: Any) -> nnx.Module:
  """`sap_jax.correct` of an NNX model: a corrected copy (options as there).
  ``x_trusted``: a host array, or a global array sharded over a mesh's data axis."""
  return to_model(model, _correct(*functional(model), x_trusted, alpha, **kwargs))


class NNXSAPResult(NamedTuple):
  """What `run_sap` did, as `sap_jax.SAPResult` with ``model`` for ``variables``.

  Attributes:
    model: the corrected copy of the model, or an unchanged copy when no α won.
    alpha: the chosen α, or None when the original model was kept.
    sweep: accuracy per α and of the original model (`sap_jax.SweepResult`).
    trusted_indices: indices into the training set of the trusted samples.
    layers: per-layer summary of the statistics (kind, d, rows, effective rank), keyed
      by the "/"-joined graph path.
    timings: seconds per phase ("scores", "stats", "sweep", "project", "total").
    decomposition: the per-layer bases the sweep used (`apply_alpha` turns it into the
      model at any other α).
    skipped: every layer with a kernel that SAP left alone, "/"-joined graph path →
      reason ("excluded by pattern …", "layer type … is not supported", "never called
      in the forward").
    tuning: the per-layer α tuning of ``tune="per_layer"`` (see `sap_jax.run_sap`), or
      None.
    repeated: the layers called more than once per forward, with the call that counted
      (`sap_jax.SAPResult.repeated`; chosen by ``calls``).
  """

  model: nnx.Module
  alpha: float | None
  sweep: sw.SweepResult
  trusted_indices: np.ndarray
  layers: dict[str, dict[str, Any]]
  timings: dict[str, float]
  decomposition: dcm.Decomposition
  skipped: dict[str, str] = {}
  tuning: Any = None
  repeated: tuple = ()


def run_sap(
  model: nnx.Module,
  x_train: Any,
  y_train: Any,
  x_val: Any,
  y_val: Any,
  **kwargs: Any,
) -> NNXSAPResult:
  """`sap_jax.run_sap` on an NNX model: trusted set → statistics → α sweep → copy.

  Takes the options of `sap_jax.run_sap` (``n_trusted``, ``alphas``, ``score``,
  ``class_balanced``, ``exclude``, ``layer_range``, ``batch_size``, ``rows_per_batch``,
  ``seed``, ``eval_splits``, ``calls``); ``exclude`` patterns and ``calls`` keys match
  "/"-joined graph paths (``"layers/1"``; ``calls`` takes path tuples too). The data
  may be global arrays sharded over a mesh's data axis, as for `sap_jax.run_sap` (the
  trusted samples selected in place, only the N scores, labels, counts and α on the
  host); the corrected copy then holds replicated arrays.
  """
  apply_fn, variables = functional(model)
  r = pipeline.run_sap(apply_fn, variables, x_train, y_train, x_val, y_val, **kwargs)
  return NNXSAPResult(
    model=to_model(model, r.variables),
    alpha=r.alpha,
    sweep=r.sweep,
    trusted_indices=r.trusted_indices,
    layers=r.layers,
    timings=r.timings,
    decomposition=r.decomposition,
    skipped=skipped(
      model,
      apply_fn,
      variables,
      np.zeros((1, *input_shape(x_train)), np.float32),  # shapes only: no data moves
      r.decomposition.paths,
      exclude=kwargs.get("exclude", ()),
      layer_range=kwargs.get("layer_range"),
    ),
    tuning=getattr(r, "tuning", None),
    repeated=r.repeated,
  )
