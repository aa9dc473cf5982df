"""The feeder's batch and its layout, shared by its two halves.

The feeder is the only place that knows where samples live and how they reach the
devices; it has two halves, `sap_jax.data.feeder` (sources: `feed`) and
`sap_jax.data.array_feeder` (in-memory and global arrays: `feed_arrays`). Both yield the
same `Batch` in the same layout: this module owns that batch, the global batch size and
batch count (`batch_layout`), the rows of each batch this process holds (`local_rows`),
the checked stream of indices (`checked_stream`), a process-local part joined into a
global array (`global_array`) and the default one-device mesh (`default_mesh`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from sap_jax import sharding as shd


class Batch(NamedTuple):
  """One global batch of a stream.

  The arrays are global arrays on the mesh, except the batches `feed_arrays` slices from
  host arrays for a one-device mesh: host arrays, which a jitted step places on that
  device.

  Attributes:
    x: ``(B, ...)`` float32 inputs, sharded over the mesh's data axis.
    y: ``(B,)`` int32 labels sharded alike, or None for an unlabelled stream.
    mask: ``(B,)`` bool, sharded alike: False on the padding of the last batch.
    index: ``(B,)`` int32 source indices, sharded alike (padding: its process's first).
    start: the stream position of the batch's first sample (``b·B``).
    real: how many of the batch's samples are real (not padding), over all processes.
  """

  x: jax.Array
  y: jax.Array | None
  mask: jax.Array
  index: jax.Array
  start: int
  real: int


def default_mesh() -> Mesh:
  """A one-device mesh over this process's first device (the default of `feed`)."""
  return shd.data_mesh(jax.local_devices()[:1])


def checked_mesh(mesh: Any) -> Mesh:
  """``mesh``, or `default_mesh` for None, refused unless it is a `jax.sharding.Mesh` with
  a data axis (`sap_jax.sharding.DATA_AXIS`)."""
  if mesh is None:
    return default_mesh()
  if not isinstance(mesh, Mesh):
    raise ValueError(
      f"mesh must be a jax.sharding.Mesh with a {shd.DATA_AXIS!r} axis (e.g. "
      f"sap_jax.sharding.data_mesh()), or None for one device; got {type(mesh).__name__}."
    )
  if shd.DATA_AXIS not in mesh.shape:
    raise ValueError(
      f"the mesh has axes {tuple(mesh.shape)}, no {shd.DATA_AXIS!r} axis to read the samples "
      "over; make it with sap_jax.sharding.data_mesh()."
    )
  return mesh


def batch_layout(n: int, batch_size: int, mesh: Mesh, axis: str = shd.DATA_AXIS) -> tuple[int, int]:
  """``(B, batches)``: the global batch size of a stream of ``n`` samples on ``mesh``
  (``batch_size`` rounded up to a multiple of the devices of its ``axis``, at most ``n``
  so rounded) and the number of batches."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")
  devices = shd.num_shards(mesh, axis)
  per_device = -(-min(batch_size, n) // devices)
  size = per_device * devices
  return size, -(-n // size)


def row_budget(rows_per_batch: int | None, batch_size: int, shards: int) -> float | None:
  """The row budget of `sap_jax.activation_stats` for the feeder's statistics batches on
  ``shards`` devices: they hold ``batch_size`` rounded up to a multiple of the shards, so
  the budget is rescaled to keep each row with the probability rows_per_batch / (rows of
  ``batch_size`` samples), as one device does."""
  size = -(-batch_size // shards) * shards
  if rows_per_batch is None or size == batch_size:
    return rows_per_batch
  return rows_per_batch * size / batch_size


def local_rows(size: int, mesh: Mesh, axis: str = shd.DATA_AXIS) -> np.ndarray:
  """The rows of a global batch of ``size`` samples that this process's devices of
  ``mesh`` hold (this process reads those stream positions of every batch)."""
  sharding = shd.batch_sharding(mesh, 1, axis)
  index_map = sharding.addressable_devices_indices_map((size,))
  rows = sorted({s[0].indices(size)[:2] for s in index_map.values()})
  return np.concatenate([np.arange(lo, hi) for lo, hi in rows])


def checked_stream(indices: Any, n: int, what: str) -> np.ndarray:
  """The stream (source indices in reading order) after its checks; default ``0 … n−1``."""
  stream = np.arange(n) if indices is None else np.asarray(indices)
  if stream.ndim != 1 or len(stream) == 0 or not np.issubdtype(stream.dtype, np.integer):
    raise ValueError(
      f"{what}: indices must be a non-empty 1-D integer array of source indices, got "
      f"shape {stream.shape} dtype {stream.dtype}."
    )
  if stream.min() < 0 or stream.max() >= n:
    raise ValueError(
      f"{what}: indices must lie in [0, {n}), found [{stream.min()}, {stream.max()}]."
    )
  return stream


def global_array(local: np.ndarray, mesh: Mesh, axis: str = shd.DATA_AXIS) -> jax.Array:
  sharding = shd.batch_sharding(mesh, local.ndim, axis)
  return jax.make_array_from_process_local_data(sharding, local)
