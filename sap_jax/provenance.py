"""Data provenance: a content fingerprint of the data a model was trained on.

The fingerprint of a `Dataset` is the SHA-256 of each of its arrays as loaded (dtype,
shape and bytes in C order; not of the file path), keyed by array name: ``x_train``,
``y_train``, ``x_test``, ``y_test`` and, for data sets with human label sets (CIFAR-N),
``noisy_label_sets``. `sap-jax train` records it in the checkpoint's metadata with the
data root made absolute; `sap-jax correct` and `evaluate` compare it with the data they
load and refuse data that differ (`DataChanged`, naming the split) unless told to go on.

`global_digest` is the digest of an array that works without gathering it: for a global
`jax.Array` sharded over the devices of several processes it is computed where the data
are (each device sums over its own elements, then one all-reduce of four 32-bit words), and
it is the same for every sharding of the same values, and for the same values held as a
numpy array. Checkpoints saved by several processes record it (`sap_jax.checkpoint`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "ALGORITHM",
  "DataChanged",
  "array_digest",
  "changed_arrays",
  "data_fingerprint",
  "describe_changes",
  "global_digest",
]

ALGORITHM = "sha256"
_SPLITS = {
  "x_train": "train split (inputs)",
  "y_train": "train split (labels)",
  "x_test": "test split (inputs)",
  "y_test": "test split (labels)",
  "noisy_label_sets": "human label sets",
}


class DataChanged(ValueError):
  """The data differ from the data a checkpoint was trained on."""


def array_digest(value: Any) -> str:
  """``"sha256:<hex>"`` of an array's dtype, shape and bytes in C order."""
  a = np.ascontiguousarray(np.asarray(value))
  h = hashlib.sha256(f"{a.dtype.str}|{list(a.shape)}|".encode())
  h.update(a.reshape(-1).view(np.uint8).data)
  return f"{ALGORITHM}:{h.hexdigest()}"


SUM_ALGORITHM = "sum128"
_SEEDS = (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)  # four lanes: 128 bits
_M1, _M2 = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35)


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 that mixes every bit."""
  h = h ^ (h >> 16)
  h = h * _M1
  h = h ^ (h >> 13)
  h = h * _M2
  return h ^ (h >> 16)


def _lane_sums(words: jax.Array) -> jax.Array:
  """``(4,)`` uint32: per lane, the sum mod 2**32 over every word of
  ``fmix(position_hash ^ word)``, the position hash chained over the coordinates."""
  sums = []
  for seed in _SEEDS:
    h = jnp.full(words.shape, np.uint32(seed), jnp.uint32)
    for axis in range(words.ndim):
      h = _fmix32(h ^ jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis))
    sums.append(jnp.sum(_fmix32(h ^ words), dtype=jnp.uint32))
  return jnp.stack(sums)


def _device_words(x: jax.Array) -> jax.Array:
  """An array's bits as uint32 words, shape ``(*x.shape, words per element)``."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)[..., None]
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    parts = _device_words(jnp.stack([x.real, x.imag], -1))  # memory order: re, im
    return parts.reshape(*x.shape, -1)
  size = np.dtype(x.dtype).itemsize
  if size < 4:
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * size}")).astype(jnp.uint32)[
      ..., None
    ]
  words = jax.lax.bitcast_convert_type(x, jnp.uint32)
  return words[..., None] if size == 4 else words


def _host_words(a: np.ndarray) -> np.ndarray:
  """`_device_words` of a host array, computed on the host (no float64 → float32)."""
  a = np.asarray(a, order="C")  # (np.ascontiguousarray makes a 0-d array 1-d)
  flat = a.reshape(-1)
  size = a.dtype.itemsize
  if a.dtype == np.bool_:
    return flat.astype(np.uint32).reshape(*a.shape, 1)
  if size < 4:
    return flat.view(f"<u{size}").astype(np.uint32).reshape(*a.shape, 1)
  return flat.view("<u4").reshape(*a.shape, size // 4)


_jit_lane_sums = jax.jit(_lane_sums)
_jit_device_sums = jax.jit(lambda x: _lane_sums(_device_words(x)))


def global_digest(value: Any) -> str:
  """``"sum128:<hex>"``: a digest of an array's dtype, shape and values that needs no
  gathering and does not depend on how the array is sharded.

  Each element's bits (as 32-bit words) are mixed with a hash of the element's global
  position (MurmurHash3's finaliser chained over the coordinates) and summed modulo 2**32,
  in four lanes with different seeds; the four sums, the dtype and the shape are hashed
  with SHA-256. Integer sums do not depend on the order of the reduction, so a global
  array sharded over any mesh (summed where its shards are, then all-reduced), a replicated
  one and a numpy array with the same values give the same digest. Changing one element
  always changes it; any other damage goes unseen with probability about 2**-128. It
  detects damage, not tampering (it is not a cryptographic hash of the data).

  With several processes, a global array's digest is a collective: every process must
  call it for the same arrays in the same order.
  """
  if isinstance(value, jax.Array):
    sums = _jit_device_sums(value)
    sums = sums.addressable_data(0) if not sums.is_fully_addressable else sums
    dtype, shape = np.dtype(value.dtype), tuple(value.shape)
  else:
    host = np.asarray(value)
    sums = _jit_lane_sums(jnp.asarray(_host_words(host)))
    dtype, shape = host.dtype, tuple(host.shape)
  lanes = "".join(f"{int(s):08x}" for s in np.asarray(sums))
  h = hashlib.sha256(f"{dtype.name}|{list(shape)}|{lanes}".encode())
  return f"{SUM_ALGORITHM}:{h.hexdigest()[:32]}"


def data_fingerprint(dataset: Any) -> dict[str, str]:
  """The fingerprint of a `sap_jax.data.Dataset`: array name → `array_digest` (lazy
  inputs: their source's fingerprint, e.g. an image folder's files, sizes and times)."""
  from sap_jax.data.sources import is_source, source_fingerprint

  def digest(value: Any) -> str:
    return source_fingerprint(value) if is_source(value) else array_digest(value)

  out = {name: digest(getattr(dataset, name)) for name in ("x_train", "y_train")}
  out.update({name: digest(getattr(dataset, name)) for name in ("x_test", "y_test")})
  sets = getattr(dataset, "noisy_label_sets", None) or {}
  if sets:
    h = hashlib.sha256()
    for key in sorted(sets):
      h.update(f"{key}|{array_digest(sets[key])}|".encode())
    out["noisy_label_sets"] = f"{ALGORITHM}:{h.hexdigest()}"
  return out


def changed_arrays(recorded: Mapping[str, str], found: Mapping[str, str]) -> list[str]:
  """The array names whose digest differs (or that one side lacks), in a fixed order.

  Digests of different kinds (``"sha256:"`` of the arrays' bytes against
  ``"files-sha256:"`` of an image folder's files, when one run held the folder in memory
  and the other streamed it) cannot be compared and are not reported."""
  order = {name: i for i, name in enumerate(_SPLITS)}
  names = sorted(set(recorded) | set(found), key=lambda n: (order.get(n, len(order)), n))

  def kind(digest: Any) -> str:
    return str(digest).split(":", 1)[0]

  names = [
    n for n in names if n not in recorded or n not in found or kind(recorded[n]) == kind(found[n])
  ]
  return [n for n in names if recorded.get(n) != found.get(n)]


def describe_changes(names: list[str]) -> str:
  """``"train split (inputs), test split (labels)"`` for ``changed_arrays``' names."""
  return ", ".join(_SPLITS.get(n, n) for n in names)
