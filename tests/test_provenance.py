"""Tests for sap_jax.provenance: content fingerprints of data sets."""

import hashlib

import numpy as np
import pytest

from sap_jax import provenance
from sap_jax.data import Dataset


def _dataset(**changes):
  rng = np.random.default_rng(0)
  arrays = {
    "x_train": rng.normal(size=(6, 2)).astype(np.float32),
    "y_train": np.array([0, 1, 0, 1, 0, 1], np.int32),
    "x_test": rng.normal(size=(4, 2)).astype(np.float32),
    "y_test": np.array([1, 0, 1, 0], np.int32),
  }
  arrays.update(changes)
  return Dataset(name="toy", class_names=("a", "b"), **arrays)


def test_array_digest_is_sha256_of_dtype_shape_and_bytes():
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  want = hashlib.sha256(b"<f4|[2, 3]|" + a.tobytes()).hexdigest()
  assert provenance.array_digest(a) == f"sha256:{want}"
  assert provenance.array_digest(np.asfortranarray(a)) == provenance.array_digest(a)
  assert provenance.array_digest(a.reshape(3, 2)) != provenance.array_digest(a)
  assert provenance.array_digest(a.view(np.int32)) != provenance.array_digest(a)


def test_fingerprint_names_the_array_that_changed():
  base = _dataset()
  recorded = provenance.data_fingerprint(base)
  assert set(recorded) == {"x_train", "y_train", "x_test", "y_test"}
  assert provenance.changed_arrays(recorded, provenance.data_fingerprint(_dataset())) == []
  x_test = base.x_test.copy()
  x_test[0, 0] = np.nextafter(x_test[0, 0], np.float32(np.inf))  # one ulp
  y_train = base.y_train.copy()
  y_train[0] = 1
  changed = _dataset(x_test=x_test, y_train=y_train)
  names = provenance.changed_arrays(recorded, provenance.data_fingerprint(changed))
  assert names == ["y_train", "x_test"]
  assert provenance.describe_changes(names) == "train split (labels), test split (inputs)"


def test_human_label_sets_are_part_of_the_fingerprint():
  sets = {"worse": np.array([1, 1, 0, 1, 0, 1], np.int32)}
  with_sets = provenance.data_fingerprint(_dataset(noisy_label_sets=sets))
  other = {"worse": np.array([0, 1, 0, 1, 0, 1], np.int32)}
  names = provenance.changed_arrays(
    with_sets, provenance.data_fingerprint(_dataset(noisy_label_sets=other))
  )
  assert names == ["noisy_label_sets"]
  assert provenance.changed_arrays(with_sets, provenance.data_fingerprint(_dataset())) == [
    "noisy_label_sets"
  ]


def test_data_changed_is_a_value_error():
  with pytest.raises(ValueError):
    raise provenance.DataChanged("x")


# ------------------------------------------------------------------ global_digest


def _slow_lane_sums(words: np.ndarray) -> list[int]:
  """The definition of `global_digest`'s four sums, element by element in Python."""

  def fmix(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)

  sums = []
  for seed in (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344):
    total = 0
    for index in np.ndindex(words.shape):
      h = seed
      for coordinate in index:
        h = fmix(h ^ coordinate)
      total = (total + fmix(h ^ int(words[index]))) & 0xFFFFFFFF
    sums.append(total)
  return sums


def _slow_digest(a: np.ndarray) -> str:
  words = np.asarray(a).reshape(-1).view("<u4").reshape(*a.shape, a.dtype.itemsize // 4)
  lanes = "".join(f"{s:08x}" for s in _slow_lane_sums(words))
  h = hashlib.sha256(f"{a.dtype.name}|{list(a.shape)}|{lanes}".encode()).hexdigest()
  return f"sum128:{h[:32]}"


def test_global_digest_is_its_definition():
  rng = np.random.default_rng(0)
  for a in (rng.normal(size=(3, 4)).astype(np.float32), np.arange(5, dtype=np.int32)):
    assert provenance.global_digest(a) == _slow_digest(a)
  f64 = rng.normal(size=(2, 3))  # two words per element, read on the host (no float32)
  assert provenance.global_digest(f64) == _slow_digest(f64)


@pytest.mark.parametrize(
  "dtype", ["float32", "bfloat16", "float16", "int8", "uint8", "bool", "int32"]
)
def test_global_digest_is_the_same_for_numpy_and_jax_and_sees_every_change(dtype):
  import jax.numpy as jnp

  rng = np.random.default_rng(1)
  a = (rng.normal(size=(4, 6)) * 3).astype(jnp.dtype(dtype))
  digest = provenance.global_digest(a)
  assert provenance.global_digest(jnp.asarray(a)) == digest
  assert provenance.global_digest(a.reshape(6, 4)) != digest  # shape
  b = a.copy()
  b[1, 2] = b[3, 4] if b[1, 2] != b[3, 4] else ~b[1, 2] if dtype == "bool" else b[1, 2] + 1
  assert provenance.global_digest(b) != digest  # one element
  swapped = a.copy()
  swapped[[0, 2]] = swapped[[2, 0]]
  if not np.array_equal(swapped, a):
    assert provenance.global_digest(swapped) != digest  # same values, other places


def test_global_digest_of_a_scalar_and_of_complex_values():
  import jax.numpy as jnp

  s = np.array(7, np.int32)
  assert provenance.global_digest(s) == provenance.global_digest(jnp.asarray(s))
  assert provenance.global_digest(s) != provenance.global_digest(s.reshape(1))
  c = (np.arange(3) + 1j * np.arange(3)[::-1]).astype(np.complex64)
  assert provenance.global_digest(c) == provenance.global_digest(jnp.asarray(c))
  assert provenance.global_digest(c) != provenance.global_digest(np.conj(c))
