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
