"""Batches of arrays: plain consecutive batches, and fixed-shape (padded) batches so that
one compilation serves all."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from sap_jax.data.array_feeder import split


def padded_batches(
  *arrays: np.ndarray, batch_size: int
) -> Iterator[tuple[tuple[np.ndarray, ...], int]]:
  """Splits equal-length arrays into batches of ``min(batch_size, N)`` samples.

  The ragged last batch is padded by repeating the arrays' first sample (a real
  input: padding never feeds a model values it has not seen), and each batch
  comes with its number of real samples, which callers use to mask or drop the
  padding.

  Args:
    *arrays: arrays with the same first dimension N ≥ 1.
    batch_size: samples per batch, ≥ 1.

  Yields:
    ``(batch arrays, real)`` pairs.

  Raises:
    ValueError: no array, mismatched lengths, empty arrays or batch_size < 1.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")
  if not arrays:
    raise ValueError("padded_batches needs at least one array.")
  n = len(arrays[0])
  if any(len(a) != n for a in arrays):
    raise ValueError(f"arrays of different lengths: {[len(a) for a in arrays]}.")
  if n == 0:
    raise ValueError("padded_batches got empty arrays; pass at least one sample.")
  bs = min(batch_size, n)
  for start in range(0, n, bs):
    real = min(bs, n - start)
    out = []
    for a in arrays:
      b = a[start : start + real]
      if real < bs:
        b = np.concatenate([b, np.repeat(a[:1], bs - real, axis=0)])
      out.append(b)
    yield tuple(out), real


def batched(x: Any, batch_size: int) -> list[Any]:
  """Splits an array along its first axis into consecutive batches (the last may be short).

  A global array sharded over a mesh's data axis (`sap_jax.sharding`) becomes the
  feeder's batches of it (`sap_jax.data.array_feeder.split`: cut on its devices, ``batch_size``
  rounded up to a multiple of the devices, the last one padded and masked), as
  `sap_jax.sharding.LocalBatch`es: what `activation_stats` takes.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")
  return split(x, batch_size)


def epoch_batches(
  rng: np.random.Generator, n: int, batch_size: int, *, drop_last: bool = False
) -> np.ndarray:
  """The index batches of one training epoch, in a fresh random order.

  The one epoch shuffle of the package: each call draws ``rng.permutation(n)`` (one
  draw per epoch, so a generator seeded once gives every epoch its own order) and cuts
  it into batches of ``bs = min(batch_size, n)`` indices, all of one shape (one
  compilation per step function).

  Args:
    rng: the run's data-order generator, advanced by one permutation.
    n: the number of samples.
    batch_size: indices per batch, ≥ 1.
    drop_last: keep only the ``⌊n / bs⌋`` full batches (`sap_jax.train.train_model`;
      every sample is still visited over epochs). Otherwise ``⌈n / bs⌉`` batches, the
      last filled up from the start of the permutation, so every sample is visited
      each epoch (the baselines' continued training).

  Returns:
    int array ``(num_batches, bs)``; no rows for ``n = 0``.

  Raises:
    ValueError: batch_size < 1.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")
  bs = max(1, min(batch_size, n))
  perm = rng.permutation(n)
  if drop_last:
    num = n // bs
    return perm[: num * bs].reshape(num, bs)
  num = -(-n // bs)
  return np.resize(perm, num * bs).reshape(num, bs)
