"""The feeder's half for arrays in memory: host arrays and global arrays → device batches.

The feeder is the only place that knows where samples live and how they reach the
devices; `sap_jax.data.feeder` is its half for sources (`feed`), this module its half for
arrays: host arrays (each process slicing its own rows) and global arrays sharded over a
mesh's data axis (cut on their devices), as the same `sap_jax.data.feed_layout.Batch`es
`feed` yields. It owns `feed_arrays`, where an array is read (`as_input`), labels as every
process reads them (`labels_on_host`), the mesh of an array's batches (`mesh_of`), and the
batches of `sap_jax.activation_stats` and `sap_jax.batched` (`stats_batch`, `split`,
`trusted_stats_batches`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sap_jax import sharding as shd
from sap_jax.data.feed_layout import (
  Batch,
  batch_layout,
  checked_mesh,
  checked_stream,
  global_array,
  local_rows,
  row_budget,
)


def as_input(x: Any) -> np.ndarray | jax.Array:
  """``x`` where the feeder reads it: a global array sharded over a mesh's data axis
  stays on its devices (`sap_jax.sharding.data_axis_of`), anything else becomes a host
  array (a jax array on one device included)."""
  return x if shd.is_global(x) else np.asarray(x)


def labels_on_host(y: Any) -> Any:
  """Labels as every process can read them: a jax array (a global one all-gathered,
  `sap_jax.sharding.to_host`) becomes a host array; anything else (None, a list, a host
  array) is left for the label checks (`sap_jax.input_checks.check_labels`)."""
  return shd.to_host(y) if isinstance(y, jax.Array) else y


def mesh_of(x: Any, mesh: Mesh | None = None) -> Mesh:
  """The mesh `feed_arrays` puts the batches of ``x`` on: a global array's own; else
  ``mesh``, by default `default_mesh` (one local device)."""
  found = shd.data_axis_of(x)
  if found is not None:
    return found[0]
  return checked_mesh(mesh)


def feed_arrays(
  x: Any,
  y: Any = None,
  batch_size: int = 1024,
  *,
  mesh: Mesh | None = None,
  indices: Any = None,
  what: str = "x",
) -> Iterator[Batch]:
  """The batches of in-memory arrays in stream order: what `feed` gives for a source.

  * Host arrays (or a jax array on one device): each process slices its own rows of every
    batch directly from the arrays (no per-sample reads) and puts them on ``mesh``
    (default one local device); every process holds the whole arrays. On a one-device
    mesh the batches stay host arrays, which the jitted step receiving them puts on that
    device as it runs (the fast path: no separate transfer per field).
  * A global array sharded over a mesh's data axis: every batch is cut on its devices by
    one jitted gather whose output is sharded over the same axis (each device receives
    its share of the batch; no sample passes through a host), on the array's own mesh.

  The layout is `feed`'s: batches of ``B`` samples (``batch_size`` rounded up to a
  multiple of the devices), the last one padded with the stream's first sample (each
  process's first, for host arrays read by several processes) and masked, so N need not
  divide anything. The arrays are taken as checked (`sap_jax.input_checks`): their values
  are neither checked again nor cast.

  Args:
    x: ``(N, ...)`` inputs: a host array or a global array.
    y: ``(N,)`` labels (a host array, or a global array sharded like ``x``), or None.
    batch_size: samples per global batch.
    mesh: the mesh of host arrays' batches; a global array's batches live on its own.
    indices: the stream, as in `feed` (default every sample in order).
    what: the arrays' name in errors.

  Yields:
    `Batch`es; every one has the same shape.

  Raises:
    ValueError: bad indices, mismatched lengths, or a ``mesh`` other than a global
      array's own, before any batch.
  """
  x = as_input(x)
  found = shd.data_axis_of(x)
  if found is not None and mesh is not None and mesh != found[0]:
    raise ValueError(
      f"{what} is sharded over another mesh than the one given; a global array is read on "
      "its own mesh (pass mesh=None)."
    )
  mesh, axis = found if found is not None else (mesh_of(x, mesh), shd.DATA_AXIS)
  if y is not None:
    y = y if shd.data_axis_of(y) == found and found is not None else labels_on_host(y)
    y = as_input(y)
    if y.shape[:1] != x.shape[:1]:
      raise ValueError(f"{what}: {x.shape[0]} inputs but {y.shape[0]} labels.")
  stream = checked_stream(indices, x.shape[0], what)
  size, num_batches = batch_layout(len(stream), batch_size, mesh, axis)
  if found is not None:
    return _device_batches(x, y, stream, size, num_batches, mesh, axis)
  return _host_batches(x, y, stream, indices is None, size, num_batches, mesh)


def _host_batches(x, y, stream, consecutive, size, num_batches, mesh):
  rows = local_rows(size, mesh)
  contiguous = consecutive and bool(np.all(np.diff(rows) == 1))
  n = len(stream)
  pad = int(stream[rows[0]]) if rows[0] < n else int(stream[0])  # this process's first
  local = shd.num_shards(mesh) == 1  # host batches: the jitted step puts them on the device
  for b in range(num_batches):
    start = b * size
    positions = start + rows
    real = positions < n
    index = np.where(real, stream[np.minimum(positions, n - 1)], pad).astype(np.int32)
    if contiguous:  # slices, and the padding of the last batch
      lo, hi = int(positions[0]), min(int(positions[-1]) + 1, n)
      parts = [x[lo:hi]], [None if y is None else y[lo:hi]]
      if hi - lo < len(rows):
        parts[0].append(np.repeat(x[pad : pad + 1], len(rows) - (hi - lo), axis=0))
        parts[1].append(None if y is None else np.repeat(y[pad : pad + 1], len(rows) - (hi - lo)))
      xb = parts[0][0] if len(parts[0]) == 1 else np.concatenate(parts[0])
      yb = None if y is None else np.concatenate(parts[1]) if len(parts[1]) > 1 else parts[1][0]
    else:
      xb, yb = x[index], None if y is None else y[index]
    put = _as_host if local else functools.partial(global_array, mesh=mesh)
    yield Batch(
      x=put(xb),
      y=None if y is None else put(np.asarray(yb)),
      mask=put(real),
      index=put(index),
      start=start,
      real=min(size, n - start),
    )


def stats_batch(batch: Batch, mesh: Mesh) -> np.ndarray | shd.LocalBatch:
  """One feeder batch as a batch of `sap_jax.activation_stats`: its real samples as a host
  array on one device (the statistics pad and mask a short batch themselves), a
  `sap_jax.sharding.LocalBatch` over a mesh of several (each shard's first stream
  position and its count of real samples)."""
  shards = shd.num_shards(mesh)
  if shards == 1:
    return np.asarray(batch.x)[: batch.real]
  per = batch.x.shape[0] // shards
  first = batch.start + per * np.arange(shards)
  valid = np.clip(batch.start + batch.real - first, 0, per)
  return shd.LocalBatch(
    batch.x,
    shd.shard_starts(first, mesh),
    None if valid.min() == per else shd.shard_starts(valid, mesh),
  )


def split(x: Any, batch_size: int) -> list[Any]:
  """``x`` cut into consecutive batches of ``batch_size`` (`sap_jax.batched`): slices of
  a host array or any sequence (the last may be short); the `stats_batch`es of the
  feeder's batches of a global array sharded over a mesh's data axis (cut on its
  devices)."""
  if not shd.is_global(x):
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
  mesh = mesh_of(x)
  return [stats_batch(b, mesh) for b in feed_arrays(x, None, batch_size)]


def _as_host(part: np.ndarray) -> np.ndarray:
  return part


def _device_batches(x, y, stream, size, num_batches, mesh, axis):
  n = len(stream)
  for b in range(num_batches):
    start = b * size
    positions = start + np.arange(size)
    real = positions < n
    index = np.where(real, stream[np.minimum(positions, n - 1)], stream[0]).astype(np.int32)
    xb = _take(x, index, shd.batch_sharding(mesh, x.ndim, axis))
    if y is None:
      yb = None
    elif isinstance(y, jax.Array):  # sharded like x (`feed_arrays`)
      yb = _take(y, index, shd.batch_sharding(mesh, 1, axis))
    else:
      yb = _placed(y[index], mesh, axis)
    yield Batch(
      x=xb,
      y=yb,
      mask=_placed(real, mesh, axis),
      index=_placed(index, mesh, axis),
      start=start,
      real=min(size, n - start),
    )


def _placed(host: np.ndarray, mesh: Mesh, axis: str) -> jax.Array:
  """A host array every process holds whole, sharded over ``axis`` (each process builds
  its own devices' shards)."""
  sharding = shd.batch_sharding(mesh, host.ndim, axis)
  return jax.make_array_from_callback(host.shape, sharding, host.__getitem__)


@functools.partial(jax.jit, static_argnums=2)
def _take(x, index, out_sharding):
  return jax.lax.with_sharding_constraint(jnp.take(x, index, axis=0), out_sharding)


def trusted_stats_batches(
  x: Any,
  trusted: np.ndarray,
  batch_size: int,
  rows_per_batch: int | None,
  mesh: Mesh | None = None,
) -> tuple[list[Any], float | None]:
  """The samples ``trusted`` of ``x``, in that order, as the batches of
  `sap_jax.activation_stats`, and the row budget that keeps the rows one device would keep.

  * Host arrays on one device: slices of the trusted samples (the last one short).
  * Host arrays over a mesh of several devices: the feeder's batches (`stats_batch`: each
    process puts its own rows of every batch on its devices, the last batch padded and
    masked).
  * A global array sharded over a mesh's data axis: one sharded gather
    (`sap_jax.sharding.gather_rows`): each device receives its share of the trusted samples
    (only those move, once), padded to whole batches of b = ⌈batch_size / shards⌉ per
    device and masked (`sap_jax.sharding.LocalBatch.valid`), so one compilation serves
    all; a sample keeps its place in the trusted order as its global index.

  The budget: `sap_jax.data.feed_layout.row_budget`.
  """
  trusted = np.asarray(trusted)
  found = shd.data_axis_of(x)
  mesh, axis = found if found is not None else (mesh_of(x, mesh), shd.DATA_AXIS)
  shards = shd.num_shards(mesh, axis)
  budget = row_budget(rows_per_batch, batch_size, shards)
  if found is None and shards == 1:
    return split(np.asarray(x)[trusted], batch_size), budget
  if found is None:
    feed = feed_arrays(x, None, batch_size, mesh=mesh, indices=trusted)
    return [stats_batch(b, mesh) for b in feed], budget
  size = -(-batch_size // shards) * shards
  n = len(trusted)
  padded = -(-n // size) * size
  index = np.concatenate([trusted, np.full(padded - n, trusted[0], trusted.dtype)])
  gathered = shd.gather_rows(x, index)
  return list(shd.local_batches(gathered, size, n_valid=n)), budget
