"""Activation statistics of batches sharded over a mesh (an internal module).

Each device adds its shard's rows to per-device partial sums (`shard_accumulate`, under
`jax.shard_map`, no collective per batch); the partials are summed over the devices once
at the end (`combine_shards`, one all-reduce per run). `sap_jax.stats.collect.activation_stats`
takes this path when its batches are global arrays sharded along a mesh axis (or
`sap_jax.sharding.LocalBatch`es).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sap_jax import sharding as shd
from sap_jax.hashable import hashable
from sap_jax.input_checks import check_inputs
from sap_jax.stats.accumulate import (
  STATIC,
  LayerStats,
  NotBatchMajor,
  Ordered,
  batch_stats,
)
from sap_jax.types import ApplyFn


def _shard_step(
  acc, variables, x, key, starts, valid, *, apply_fn, rows_per_batch, dtype, mesh, axis, calls=()
):
  def body(acc, variables, x, key, starts, valid):
    prev = jax.tree_util.tree_map(lambda a: a[0], acc)
    real = None if valid is None else valid[0]
    new = batch_stats(
      apply_fn, variables, x, key, rows_per_batch, dtype, prev, real, starts[0], calls
    )
    if new.paths != prev.paths:
      raise ValueError(
        f"The model called layers {list(new.paths)} on this batch but "
        f"{list(prev.paths)} on the first one; statistics need the same layers in every batch."
      )
    return jax.tree_util.tree_map(lambda a: a[None], new)

  specs = (P(axis), P(), P(axis), P(), P(axis), P(axis))
  return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P(axis))(
    acc, variables, x, key, starts, valid
  )


_SHARD_STATIC = (*STATIC, "mesh", "axis")
shard_accumulate = jax.jit(_shard_step, static_argnames=_SHARD_STATIC, donate_argnums=0)


def _combine(acc: Ordered, *, mesh: Mesh, axis: str) -> Ordered:
  def body(acc):
    grams = [jax.lax.psum(s.gram[0], axis) for s in acc.stats]
    counts = jax.lax.psum(jnp.stack([s.count[0] for s in acc.stats]), axis)
    stats = tuple(
      LayerStats(gram=g, count=counts[i], layout=s.layout)
      for i, (g, s) in enumerate(zip(grams, acc.stats))
    )
    return Ordered(stats, acc.paths)

  return jax.shard_map(body, mesh=mesh, in_specs=P(axis), out_specs=P())(acc)


combine_shards = jax.jit(_combine, static_argnames=("mesh", "axis"))


def _shard_zeros(shapes: Ordered, shards: int, mesh: Mesh, axis: str) -> Ordered:
  """Zero partial sums, (shards, ...) per leaf, sharded over the data axis."""
  sharding = NamedSharding(mesh, P(axis))
  make = jax.jit(
    lambda: jax.tree_util.tree_map(lambda s: jnp.zeros((shards, *s.shape), s.dtype), shapes),
    out_shardings=sharding,
  )
  return make()


def _shard_shapes(apply_fn, variables, local, key, budget, dtype, calls=()) -> Ordered:
  """Shapes of one shard's statistics for a shard batch like ``local`` (nothing runs)."""
  return jax.eval_shape(
    lambda v, xl, k: batch_stats(apply_fn, v, xl, k, budget, dtype, calls=calls),
    variables,
    local,
    key,
  )


def _shard_plan(first: Any, rows_per_batch: int | None):
  """(mesh, axis, shards, per-shard row budget) for sharded batches like ``first``."""
  mesh, axis = shd.data_axis_of(first)
  shards = shd.num_shards(mesh, axis)
  # Each shard sees 1/shards of a full batch's rows: a budget of rows_per_batch / shards
  # keeps every row with the same probability rows_per_batch / n as one device would.
  if rows_per_batch is None or shards == 1:
    budget = rows_per_batch
  elif rows_per_batch % shards == 0:
    budget = rows_per_batch // shards
  else:
    budget = rows_per_batch / shards
  return mesh, axis, shards, budget


def sharded_activation_stats(
  apply_fn, variables, batches, *, rows_per_batch, seed, dtype, calls=()
):
  """`activation_stats` over batches that are global arrays sharded over a data axis
  (or `sap_jax.sharding.LocalBatch`es); returns the combined (replicated) `Ordered`.
  ``calls``: the chosen calls (`sap_jax.stats.observe.CallChoice`)."""
  plan = None
  acc = None
  first_dtype = None
  offset = 0  # global index of the batch's first sample (consecutive global batches)
  for item in batches:
    x, starts, valid = item if isinstance(item, shd.LocalBatch) else (item, None, None)
    if not isinstance(x, jax.Array):
      raise ValueError(
        "activation_stats: a host batch after sharded ones; pass every batch as a global "
        "array over the same mesh (sap_jax.sharding.shard_batch), or all as host arrays."
      )
    if plan is None or x.dtype != first_dtype:
      # The full check (dtype, NaN/Inf: a pass over the batch and a host sync) for the
      # first batch; later batches of its dtype skip it, so a run syncs the host once:
      # a NaN or Inf in them still reaches a Gram matrix, refused at the end.
      x = check_inputs(x, f"activation_stats batch at sample {offset}")
      first_dtype = x.dtype if plan is None else first_dtype
    if plan is None:
      plan = _shard_plan(x, rows_per_batch)
      mesh, axis, shards, budget = plan
      variables = shd.replicate(variables, mesh)
      static = dict(
        apply_fn=hashable(apply_fn),
        rows_per_batch=budget,
        dtype=jnp.dtype(dtype),
        calls=calls,
        mesh=mesh,
        axis=axis,
      )
      key = np.asarray(jax.random.key_data(jax.random.PRNGKey(seed)))
    if shd.data_axis_of(x) != (mesh, axis):
      raise ValueError(
        f"activation_stats batch at sample {offset}: sharded differently from the first "
        f"batch (mesh axis {axis!r} of {shards} devices); shard every batch the same way."
      )
    per = shd.check_divides(x.shape[0], mesh, axis, f"activation_stats batch at sample {offset}")
    if starts is None:
      starts = shd.shard_starts(offset + per * np.arange(shards), mesh, axis)
    if acc is None:
      local = jax.ShapeDtypeStruct((per, *x.shape[1:]), x.dtype)
      acc = _shard_zeros(
        _shard_shapes(apply_fn, variables, local, key, budget, dtype, calls), shards, mesh, axis
      )
    if valid is not None:
      _check_batch_major(apply_fn, variables, local, key, budget, dtype, calls)
    acc = shard_accumulate(acc, variables, x, key, starts, valid, **static)
    offset += x.shape[0]
  if acc is None:
    return None
  return combine_shards(acc, mesh=mesh, axis=axis)


def _check_batch_major(apply_fn, variables, local, key, budget, dtype, calls=()) -> None:
  try:
    jax.eval_shape(
      lambda v, xl, k: batch_stats(
        apply_fn, v, xl, k, budget, dtype, real=jnp.int32(1), calls=calls
      ),
      variables,
      local,
      key,
    )
  except NotBatchMajor as err:
    raise ValueError(
      f"Layer {err} does not see the batch on its first axis, so a padded sharded batch "
      "(LocalBatch.valid) cannot mask its padding; pass batches whose every sample counts."
    ) from None


def sharded_stats_hlo(
  apply_fn: ApplyFn,
  variables: Any,
  batch: jax.Array,
  *,
  rows_per_batch: int | None = None,
  dtype=jnp.float32,
) -> dict[str, str]:
  """The compiled HLO text of the two programs `activation_stats` runs on sharded batches
  like ``batch``: ``"step"`` (one batch added to the per-device partial sums, run once
  per batch) and ``"combine"`` (the partials summed over the devices, once per run). For
  tests and benchmarks that count collectives and the bytes they move."""
  mesh, axis, shards, budget = _shard_plan(batch, rows_per_batch)
  variables = shd.replicate(variables, mesh)
  per = shd.check_divides(batch.shape[0], mesh, axis)
  key = np.asarray(jax.random.key_data(jax.random.PRNGKey(0)))
  local = jax.ShapeDtypeStruct((per, *batch.shape[1:]), batch.dtype)
  acc = _shard_zeros(
    _shard_shapes(apply_fn, variables, local, key, budget, dtype), shards, mesh, axis
  )
  starts = shd.shard_starts(per * np.arange(shards), mesh, axis)
  static = dict(
    apply_fn=hashable(apply_fn), rows_per_batch=budget, dtype=jnp.dtype(dtype), calls=()
  )
  step = shard_accumulate.lower(
    acc, variables, batch, key, starts, None, **static, mesh=mesh, axis=axis
  )
  combine = combine_shards.lower(acc, mesh=mesh, axis=axis)
  return {"step": step.compile().as_text(), "combine": combine.compile().as_text()}
