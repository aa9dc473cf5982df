"""The feeder: any source → device batches on a mesh. The only place that knows where
samples live and how they reach the devices.

Three kinds of input, one kind of batch (`Batch`): a random-access source (`feed`), host
arrays and global arrays sharded over a mesh's data axis (`feed_arrays`: host batches
sliced directly, global ones cut on their devices). `as_input`, `labels_on_host` and
`mesh_of` say where an array is read and which mesh its batches live on, so no phase asks
what kind of array it was given.

``feed(source, batch_size)`` reads a source (`sap_jax.data.sources`) in *stream order*
(``indices``, default ``0 … N−1``) and yields `Batch`es of global arrays sharded over a
mesh's data axis (a one-device mesh by default), so the same jitted step serves one device
and a pod:

* every global batch has the same shape, ``B`` samples (``batch_size`` rounded up to a
  multiple of the devices, or fewer for a short stream); the last one is padded (with
  each process's first sample) and masked (``Batch.mask``), so N need not divide anything and no
  split is cut;
* each process reads only its own part of every batch: with P processes, process p reads
  stream positions ``b·B + p·B/P … b·B + (p+1)·B/P − 1`` of batch b, and
  `jax.make_array_from_process_local_data` joins the parts into one global array;
* reading, decoding and the per-sample transform run in grain (threads, or worker
  processes with ``workers > 0``), with a bounded prefetch that overlaps reading with the
  device's compute; at most ``prefetch`` batches are held besides the one in use;
* bad records fail with the sample's index: a missing image or label, a label outside
  ``[0, num_classes)``, a non-finite input, an input of another shape than the first, and a
  source whose length changed during the pass.

A per-sample random transform (augmentation) gets ``rng = sample_rng(seed, epoch, index)``,
so what a sample looks like depends on the seed, the epoch and its index only, never on
the batching, the worker count or the process count.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sap_jax import sharding as shd
from sap_jax.data.sources import IMAGE, INDEX, LABEL, check_record, source_length

MASK = "mask"

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


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


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """The generator of one sample's transform (augmentation).

  Args:
    seed: Run seed (>= 0).
    epoch: Epoch number (>= 0).
    index: The sample's index in its source (>= 0), not its position in a batch.

  Returns:
    A PCG64 generator seeded by ``SeedSequence([seed, epoch, index])``: equal triples
    give equal draws, and any change of one number gives independent ones.
  """
  return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))


def default_mesh() -> Mesh:
  """A one-device mesh over this process's first device (the default of `feed`)."""
  return shd.data_mesh(jax.local_devices()[:1])


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


class _Reader:
  """grain's random-access view of this process's stream positions: element i is the
  record at local position i, with its mask; positions past the stream read this
  process's first sample again (masked)."""

  def __init__(self, source, stream, positions, labelled, transform, seed, epoch, what):
    self.source, self.stream, self.positions = source, stream, positions
    self.labelled, self.transform, self.seed, self.epoch = labelled, transform, seed, epoch
    self.what = what
    # padding repeats this process's first sample (it reads no other process's samples)
    self.pad = int(positions[0]) if int(positions[0]) < len(stream) else 0

  def __len__(self) -> int:
    return len(self.positions)

  def __getitem__(self, i: int) -> dict[str, Any]:
    pos = int(self.positions[i])
    real = pos < len(self.stream)
    index = int(self.stream[pos if real else self.pad])
    try:
      record = self.source[index]
    except (IndexError, KeyError) as err:
      raise ValueError(
        f"{self.what}[{index}] cannot be read ({type(err).__name__}: {err}); the source "
        f"has {len(self.source)} samples."
      ) from None
    check_record(record, index, labelled=self.labelled, what=self.what)
    image = np.asarray(record[IMAGE], np.float32)
    if self.transform is not None:
      image = np.asarray(
        self.transform(image, sample_rng(self.seed, self.epoch, index)), np.float32
      )
    out = {IMAGE: image, INDEX: np.int32(index), MASK: np.bool_(real)}
    if self.labelled:
      out[LABEL] = _label(record[LABEL], index, self.what)
    return out


def _label(value: Any, index: int, what: str) -> np.int32:
  label = np.asarray(value)
  if label.shape != () or not (np.issubdtype(label.dtype, np.integer) or label.dtype == bool):
    raise ValueError(
      f"{what}[{index}]: the label {value!r} is not one integer class index; store labels "
      "as ints in [0, K)."
    )
  return np.int32(label)


def _stack(what: str):
  def stack(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    shape = records[0][IMAGE].shape
    for r in records:
      if r[IMAGE].shape != shape:
        raise ValueError(
          f"{what}[{int(r[INDEX])}] has an input of shape {r[IMAGE].shape}, sample "
          f"{int(records[0][INDEX])} one of {shape}; the model needs one input shape "
          "(resize the images, e.g. FolderSource(image_size=...))."
        )
    return {k: np.stack([r[k] for r in records]) for k in records[0]}

  return stack


def local_rows(size: int, mesh: Mesh, axis: str = shd.DATA_AXIS) -> np.ndarray:
  """The rows of a global batch of ``size`` samples that this process's devices of
  ``mesh`` hold (this process reads those stream positions of every batch)."""
  sharding = shd.batch_sharding(mesh, 1, axis)
  index_map = sharding.addressable_devices_indices_map((size,))
  rows = sorted({s[0].indices(size)[:2] for s in index_map.values()})
  return np.concatenate([np.arange(lo, hi) for lo, hi in rows])


def feed(
  source: Any,
  batch_size: int,
  *,
  mesh: Mesh | None = None,
  indices: Any = None,
  labelled: bool = True,
  num_classes: int | None = None,
  transform: Transform | None = None,
  seed: int = 0,
  epoch: int = 0,
  workers: int = 0,
  threads: int = 1,
  prefetch: int = 2,
  what: str = "source",
) -> Iterator[Batch]:
  """The batches of ``source`` in stream order, as global arrays on ``mesh``.

  Args:
    source: a random-access source (`sap_jax.data.sources`).
    batch_size: samples per global batch (rounded up to a multiple of the devices).
    mesh: the mesh whose data axis splits each batch; default: one local device.
    indices: the stream: source indices in reading order (a subset, a permutation);
      default every sample in order.
    labelled: read labels (records must have one).
    num_classes: refuse labels outside ``[0, num_classes)``, naming the sample.
    transform: per-sample ``transform(image, rng) -> image`` (augmentation).
    seed, epoch: the transform's randomness (`sample_rng`).
    workers: grain worker processes that read and transform (0: in this process).
    threads: reading threads per process (0 workers) or per worker.
    prefetch: batches read ahead of the one in use.
    what: the source's name in errors.

  Yields:
    `Batch`es; every one has the same shape.

  Raises:
    TypeError, ValueError: a bad source or record (before the batch that holds it is
      used), a bad argument before any read.
  """
  n_source = source_length(source, what)
  mesh = default_mesh() if mesh is None else mesh
  stream = _stream(indices, n_source, what)
  if workers < 0 or threads < 1 or prefetch < 0:
    raise ValueError(
      f"feed: need workers ≥ 0, threads ≥ 1 and prefetch ≥ 0, got {workers}, {threads}, {prefetch}."
    )
  size, num_batches = batch_layout(len(stream), batch_size, mesh)
  rows = local_rows(size, mesh)
  positions = (np.arange(num_batches)[:, None] * size + rows).reshape(-1)
  local = len(positions) // num_batches
  return _batches(
    source, stream, positions, local, size, num_batches, mesh, labelled, num_classes,
    transform, seed, epoch, workers, threads, prefetch, what, n_source,
  )  # fmt: skip


def _stream(indices: Any, n: int, what: str) -> np.ndarray:
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


def _batches(
  source, stream, positions, local, size, num_batches, mesh, labelled, num_classes,
  transform, seed, epoch, workers, threads, prefetch, what, n_source,
):  # fmt: skip
  import grain

  reader = _Reader(source, stream, positions, labelled, transform, seed, epoch, what)
  ds = grain.MapDataset.source(reader).batch(local, batch_fn=_stack(what))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
  if workers:
    _absl_flags_ready()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  n = len(stream)
  iterator = iter(it)
  try:
    for b, part in enumerate(iterator):
      _check_part(part, num_classes, what)
      start = b * size
      yield Batch(
        x=_global(part[IMAGE], mesh),
        y=_global(part[LABEL], mesh) if labelled else None,
        mask=_global(part[MASK], mesh),
        index=_global(part[INDEX], mesh),
        start=start,
        real=min(size, n - start),
      )
  finally:  # worker processes and their shared memory end with the pass (or its error)
    close = getattr(iterator, "close", None)
    if close is not None:
      close()
  if len(source) != n_source:
    raise ValueError(
      f"{what} changed length during the pass ({n_source} → {len(source)} samples); a "
      "source must not change while it is read."
    )


def _absl_flags_ready() -> None:
  """grain's worker processes read absl flags, which a program that never ran
  ``absl.app`` has not parsed: their defaults then stand (as absl's own app would)."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _check_part(part: dict[str, np.ndarray], num_classes: int | None, what: str) -> None:
  x = part[IMAGE]
  bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
  if bad.any():
    raise ValueError(
      f"{what}[{int(part[INDEX][np.argmax(bad)])}] holds NaN or Inf; clean or drop that sample."
    )
  if LABEL in part:
    y = part[LABEL]
    top = np.inf if num_classes is None else num_classes
    out = (y < 0) | (y >= top)
    if out.any():
      i = int(np.argmax(out))
      raise ValueError(
        f"{what}[{int(part[INDEX][i])}]: label {int(y[i])} is outside [0, {num_classes}) "
        f"for a model of {num_classes} outputs; remap the labels to 0..K-1."
      )


def _global(local: np.ndarray, mesh: Mesh, axis: str = shd.DATA_AXIS) -> jax.Array:
  sharding = shd.batch_sharding(mesh, local.ndim, axis)
  return jax.make_array_from_process_local_data(sharding, local)


# --- arrays in memory ----------------------------------------------------------------------


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
  return default_mesh() if mesh is None else mesh


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
  stream = _stream(indices, x.shape[0], what)
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
    put = _as_host if local else functools.partial(_global, mesh=mesh)
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
