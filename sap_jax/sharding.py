"""Meshes and sharded global arrays: the plumbing for running SAP over many devices and hosts.

A data set that does not fit one device is a global `jax.Array` whose leading (sample)
axis is sharded over a mesh's *data axis*; each process holds only its part
(`from_process_local`, which wraps `jax.make_array_from_process_local_data`). JAX's own
multi-controller runtime (`jax.distributed.initialize`) joins the processes; nothing here
manages processes.

* `data_mesh`: a 1-D mesh over all (global) devices, its axis named `DATA_AXIS`.
* `shard_batch` / `from_process_local`: a host array, or each process's part, as a global
  array sharded over the data axis (an error naming the fix when the mesh does not divide
  the samples).
* `data_axis_of`: the ``(mesh, axis)`` a global array is sharded over, None for a host or
  single-device array, an error for one whose leading axis is not the sharded one.
* `local_batches`: consecutive batches that each device cuts from its *own* samples (no
  data crosses devices), with the global index of each shard's first sample, so that the
  row budget (`sap_jax.stats.rows.budget_rows`) keeps the rows one process would keep.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
"""The name of the mesh axis the samples are sharded over."""


def data_mesh(devices: Any = None, axis: str = DATA_AXIS) -> Mesh:
  """A 1-D mesh over ``devices`` (default: every device of every process).

  Args:
    devices: a sequence of devices, or None for `jax.devices()`.
    axis: the axis name.
  """
  devs = np.asarray(jax.devices() if devices is None else list(devices))
  if devs.size == 0:
    raise ValueError("data_mesh: no devices given; pass at least one (e.g. jax.devices()).")
  return Mesh(devs.reshape(-1), (axis,))


def num_shards(mesh: Mesh, axis: str = DATA_AXIS) -> int:
  """How many shards the data axis cuts the samples into."""
  if axis not in mesh.shape:
    raise ValueError(f"The mesh has axes {tuple(mesh.shape)}, no {axis!r} axis to shard over.")
  return int(mesh.shape[axis])


def check_divides(n: int, mesh: Mesh, axis: str = DATA_AXIS, what: str = "batch") -> int:
  """``n`` / shards; a ValueError naming the fix when the mesh's data axis does not divide n."""
  shards = num_shards(mesh, axis)
  if n % shards:
    raise ValueError(
      f"{what}: {n} samples cannot be split evenly over the {shards} devices of the mesh's "
      f"{axis!r} axis; use a multiple of {shards} samples (drop or pad the remainder), or a "
      "mesh whose data axis divides it."
    )
  return n // shards


def batch_sharding(mesh: Mesh, ndim: int, axis: str = DATA_AXIS) -> NamedSharding:
  """The sharding of an ``ndim``-D array whose leading axis is split over ``axis``."""
  return NamedSharding(mesh, P(axis, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of an array every device of ``mesh`` holds whole."""
  return NamedSharding(mesh, P())


def shard_batch(x: Any, mesh: Mesh, axis: str = DATA_AXIS) -> jax.Array:
  """A host array (one process holding all of it) as a global array sharded over ``axis``.

  With several processes, each holding only its part, use `from_process_local`.
  """
  x = np.asarray(x)
  if x.ndim == 0:
    raise ValueError("shard_batch: got a scalar; pass an (N, ...) array of samples.")
  check_divides(len(x), mesh, axis, "shard_batch")
  # Each process builds its own devices' shards from its copy (any number of processes).
  return jax.make_array_from_callback(x.shape, batch_sharding(mesh, x.ndim, axis), x.__getitem__)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Every leaf of ``tree`` held whole by every device of ``mesh`` (model variables).

  A leaf already replicated on ``mesh`` stays; a host or process-local leaf is built on
  each process from its own copy (which every process must hold alike).
  """
  sharding = replicated(mesh)

  def one(leaf):
    if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
      return leaf
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      # a typed PRNG key (e.g. an NNX model's RNG stream) travels as its key data
      impl = jax.random.key_impl(leaf)
      return jax.random.wrap_key_data(one(jax.random.key_data(leaf)), impl=impl)
    if isinstance(leaf, jax.Array) and (
      sharding.is_fully_addressable or not leaf.is_fully_addressable
    ):
      return jax.device_put(leaf, sharding)  # device to device, not through a host
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, host.__getitem__)

  return jax.tree_util.tree_map(one, tree)


@functools.partial(jax.jit, static_argnums=1)
def _replicated_copy(x, sharding):
  return jax.lax.with_sharding_constraint(x, sharding)


def to_host(x: Any) -> np.ndarray:
  """``x`` as a host numpy array on every process. A sharded global array is first
  all-gathered on its mesh (for the small things that cross to the host: per-sample
  scores, labels, counts), so this works with several processes too."""
  found = data_axis_of(x) if isinstance(x, jax.Array) else None
  if found is not None:
    x = _replicated_copy(x, replicated(found[0]))
  return np.asarray(x)


def from_process_local(x_local: Any, mesh: Mesh, axis: str = DATA_AXIS) -> jax.Array:
  """The global array made of every process's ``x_local`` (in process order), sharded over
  ``axis`` (`jax.make_array_from_process_local_data`).

  Each process passes its own consecutive part; the parts must have the same shape, and
  each must split evenly over the process's devices on the data axis.
  """
  x_local = np.asarray(x_local)
  if x_local.ndim == 0:
    raise ValueError("from_process_local: got a scalar; pass an (n, ...) array of samples.")
  local_devices = num_shards(mesh, axis) // jax.process_count()
  if local_devices and len(x_local) % local_devices:
    raise ValueError(
      f"from_process_local: this process's {len(x_local)} samples cannot be split evenly "
      f"over its {local_devices} devices; pass a multiple of {local_devices}."
    )
  sharding = batch_sharding(mesh, x_local.ndim, axis)
  return jax.make_array_from_process_local_data(sharding, x_local)


def data_axis_of(x: Any) -> tuple[Mesh, str] | None:
  """``(mesh, axis)`` of a global array sharded over its leading axis; None otherwise.

  None: a host array, a single-device array, or a fully replicated one (which every
  device holds whole, so it is used as a host array would be).

  Raises:
    ValueError: a sharded array whose leading axis is not the (only) sharded axis: its
      samples are not split over the data axis, so no device holds whole samples.
  """
  if not isinstance(x, jax.Array):
    return None
  sharding = x.sharding
  if sharding.is_fully_replicated or len(sharding.device_set) == 1:
    return None
  if not isinstance(sharding, NamedSharding):
    raise ValueError(
      f"A global array sharded by {type(sharding).__name__}: SAP needs a NamedSharding over "
      "a mesh whose data axis splits the leading (sample) axis; use "
      "sap_jax.sharding.shard_batch or from_process_local."
    )
  spec = tuple(sharding.spec) + (None,) * (x.ndim - len(tuple(sharding.spec)))
  lead, rest = spec[0] if spec else None, spec[1:]
  if lead is None or any(s is not None for s in rest) or not isinstance(lead, str):
    raise ValueError(
      f"A global array of shape {x.shape} sharded as {sharding.spec}: SAP needs the leading "
      "axis to be the samples, split over one mesh axis, and the other axes whole, i.e. "
      "PartitionSpec('data', None, ...); reshard it (jax.device_put with "
      "sap_jax.sharding.batch_sharding(mesh, x.ndim)) or move the sample axis first."
    )
  return sharding.mesh, lead


def is_global(x: Any) -> bool:
  """Whether ``x`` is a global array sharded over its leading (sample) axis."""
  return data_axis_of(x) is not None


def common_data_axis(*arrays: Any) -> tuple[Mesh, str] | None:
  """The ``(mesh, axis)`` every sharded array among ``arrays`` shares; None if none is.

  Raises:
    ValueError: two arrays sharded over different meshes or axes.
  """
  found = None
  for a in arrays:
    got = data_axis_of(a)
    if got is None:
      continue
    if found is not None and got != found:
      raise ValueError(
        f"Arrays sharded over different meshes or axes ({found[1]!r} on {found[0].shape} vs "
        f"{got[1]!r} on {got[0].shape}); shard them all with the same mesh."
      )
    found = got
  return found


class LocalBatch(NamedTuple):
  """One batch of `local_batches`: a global array and where its shards start.

  Attributes:
    x: the batch, sharded over the data axis (shard d holds device d's samples).
    starts: (shards,) int32 global sample index of each shard's first sample, sharded
      like ``x`` (shard d holds its own start).
    valid: None (every sample counts), or (shards,) int32, sharded like ``starts``: how
      many of each shard's samples (its first ones) count; the others pad the batch to
      the shape of the others.
  """

  x: jax.Array
  starts: jax.Array
  valid: jax.Array | None = None


def shard_starts(starts: Any, mesh: Mesh, axis: str = DATA_AXIS) -> jax.Array:
  """A (shards,) int32 vector of per-shard values, sharded over ``axis`` (any process count:
  each process builds its own devices' entries)."""
  starts = np.asarray(starts, np.int32)
  sharding = batch_sharding(mesh, 1, axis)
  return jax.make_array_from_callback(starts.shape, sharding, lambda index: starts[index])


def _local_slice(
  x: jax.Array, start: int, size: int, mesh: Mesh, axis: str, total: int | None = None
) -> jax.Array:
  return _local_slice_jit(x, start, size, mesh, axis, size if total is None else total)


def _slice_body(start: int, size: int, total: int):
  def body(xl):
    part = jax.lax.slice_in_dim(xl, start, start + size, axis=0)
    if total == size:
      return part
    # padded to ``total`` with the shard's first sample (a real input), masked by callers
    return jnp.concatenate([part, jnp.broadcast_to(xl[:1], (total - size, *xl.shape[1:]))])

  return body


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _local_slice_jit(x, start, size, mesh, axis, total):
  spec = P(axis, *([None] * (x.ndim - 1)))
  body = _slice_body(start, size, total)
  return jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec)(x)


def local_batches(
  x: jax.Array, batch_size: int, n_valid: int | None = None, pad: bool = False
) -> Iterator[LocalBatch]:
  """Consecutive batches of a sharded global array, each device cutting its own samples.

  Batch i holds, from every device d, that device's samples i·b … (i+1)·b − 1 (b =
  batch_size / shards), so no sample crosses a device; the last batch is shorter when b
  does not divide a device's share. The batches visit every sample once, in a different
  order from consecutive global batches, which sums (the statistics) do not see; the row
  budget keys rows by global sample index (``starts``), so it keeps the same rows too.

  Args:
    x: a global array sharded over its leading axis (`shard_batch`, `from_process_local`).
    batch_size: samples per batch over all devices, a multiple of the shards.
    n_valid: only the first ``n_valid`` samples of ``x`` (global order) count; the rest
      pad it (`LocalBatch.valid`). None: all of them.
    pad: give the last batch the shape of the others, each device's share padded with
      its first sample and masked (`LocalBatch.valid`): one compilation serves every
      batch, and a row budget treats the last batch as one process treats its padded
      last batch (the same rows).
  """
  found = data_axis_of(x)
  if found is None:
    raise ValueError(
      "local_batches needs a global array sharded over its leading axis; for a host array "
      "use sap_jax.batched."
    )
  mesh, axis = found
  shards = num_shards(mesh, axis)
  per = check_divides(batch_size, mesh, axis, "local_batches batch_size")
  if per < 1:
    raise ValueError(f"local_batches: batch_size must be ≥ 1, got {batch_size}.")
  share = x.shape[0] // shards
  for s in range(0, share, per):
    size = min(per, share - s)
    first = np.arange(shards) * share + s
    total = per if pad else size
    valid = None
    if n_valid is not None:
      valid = shard_starts(np.clip(n_valid - first, 0, size), mesh, axis)
    elif total > size:
      valid = shard_starts(np.full(shards, size), mesh, axis)
    batch = _local_slice(x, s, size, mesh, axis, total)
    yield LocalBatch(batch, shard_starts(first, mesh, axis), valid)


def sample_batches(
  arrays: tuple[jax.Array, ...], batch_size: int
) -> Iterator[tuple[tuple[jax.Array, ...], np.ndarray]]:
  """`local_batches` of several arrays sharded alike (inputs and labels), each batch with
  the global indices of its samples in batch order (a host array), so that per-sample
  results (losses, logits) go back to their samples' places."""
  mesh, axis = common_data_axis(*arrays)
  n = arrays[0].shape[0]
  if any(a.shape[0] != n for a in arrays):
    raise ValueError(f"sample_batches: arrays of {[a.shape[0] for a in arrays]} samples.")
  shards = num_shards(mesh, axis)
  share = n // shards
  per = max(1, -(-batch_size // shards))
  for s in range(0, share, per):
    size = min(per, share - s)
    index = (np.arange(shards)[:, None] * share + s + np.arange(size)).reshape(-1)
    yield tuple(_local_slice(a, s, size, mesh, axis) for a in arrays), index


def gather_rows(x: jax.Array, index: Any) -> jax.Array:
  """``x[index]`` of a sharded global array, sharded over the same data axis (a jitted
  gather: each device receives its share of the chosen samples; nothing goes through the
  host). ``index``: host integer indices, their count a multiple of the shards."""
  mesh, axis = data_axis_of(x)
  index = np.asarray(index, np.int32)
  check_divides(len(index), mesh, axis, "gather_rows index")
  return _gather_jit(x, index, batch_sharding(mesh, x.ndim, axis))


@functools.partial(jax.jit, static_argnums=2)
def _gather_jit(x, index, out_sharding):
  return jax.lax.with_sharding_constraint(jnp.take(x, index, axis=0), out_sharding)


def transfer_hlo(x: jax.Array, index: Any = None) -> str:
  """The compiled HLO text of a transfer of the sharded global array ``x``: with
  ``index``, the program of `gather_rows(x, index)`; without, the all-gather of
  `to_host(x)`. For benchmarks and tests that count the bytes it moves."""
  mesh, axis = data_axis_of(x)
  if index is None:
    return _replicated_copy.lower(x, replicated(mesh)).compile().as_text()
  index = np.asarray(index, np.int32)
  check_divides(len(index), mesh, axis, "transfer_hlo index")
  out = batch_sharding(mesh, x.ndim, axis)
  return _gather_jit.lower(x, index, out).compile().as_text()


_COLLECTIVE = re.compile(
  r"=\s*(\([^=]*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+"
  r"(all-reduce|all-gather|collective-permute|all-to-all|reduce-scatter)(?:-start)?\("
)
_COMMENT = re.compile(r"/\*.*?\*/")
_SHAPE = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2}


class Collective(NamedTuple):
  """One collective of a compiled program: its kind and the shapes it produces."""

  kind: str
  shapes: tuple[tuple[str, tuple[int, ...]], ...]

  @property
  def bytes(self) -> int:
    """Bytes of the shapes the instruction produces on each device: for an all-reduce
    (and all-to-all, collective-permute) what each device contributes; for an all-gather
    the N devices' parts together (each contributes 1/N); for a reduce-scatter 1/N of
    what each contributes."""
    return sum(_BYTES.get(t, 1) * int(np.prod(s)) for t, s in self.shapes)


def collectives(hlo_text: str) -> list[Collective]:
  """The cross-device collectives of a compiled program's HLO text
  (``jitted.lower(...).compile().as_text()``), in program order; a combined (tuple)
  collective is one entry with several operand shapes."""
  out = []
  hlo_text = _COMMENT.sub("", hlo_text)  # long tuples carry /*index=5*/ markers
  for m in _COLLECTIVE.finditer(hlo_text):
    shapes = tuple(
      (t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in _SHAPE.findall(m.group(1))
    )
    out.append(Collective(m.group(2), shapes))
  return out
