"""The feeder: any source → device batches on a mesh. The only place that knows where
samples live and how they reach the devices (with its other half,
`sap_jax.data.array_feeder`, for arrays in memory).

Three kinds of input, one kind of batch (`Batch`): a random-access source (`feed`), host
arrays and global arrays sharded over a mesh's data axis (`feed_arrays`: host batches
sliced directly, global ones cut on their devices). `as_input`, `labels_on_host` and
`mesh_of` say where an array is read and which mesh its batches live on, so no phase asks
what kind of array it was given.

This module owns the sources' half (`feed`: grain reading, per-sample transforms and their
randomness, record checks); the arrays' half (`feed_arrays`, `as_input`, `labels_on_host`,
`mesh_of`, `split`, `stats_batch`) is `sap_jax.data.array_feeder` and the `Batch` and
layout both share is `sap_jax.data.feed_layout`; this module re-exports their public names.

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

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from jax.sharding import Mesh

from sap_jax.data.array_feeder import (
  as_input,
  feed_arrays,
  labels_on_host,
  mesh_of,
  split,
  stats_batch,
)
from sap_jax.data.feed_layout import (
  Batch,
  batch_layout,
  checked_mesh,
  checked_stream,
  default_mesh,
  global_array,
  local_rows,
)
from sap_jax.data.sources import IMAGE, INDEX, LABEL, check_record, source_length

__all__ = [
  "MASK",
  "Batch",
  "Transform",
  "as_input",
  "batch_layout",
  "default_mesh",
  "feed",
  "feed_arrays",
  "labels_on_host",
  "local_rows",
  "mesh_of",
  "sample_rng",
  "split",
  "stats_batch",
]


MASK = "mask"

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


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
  mesh = checked_mesh(mesh)
  stream = checked_stream(indices, n_source, what)
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
        x=global_array(part[IMAGE], mesh),
        y=global_array(part[LABEL], mesh) if labelled else None,
        mask=global_array(part[MASK], mesh),
        index=global_array(part[INDEX], mesh),
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
