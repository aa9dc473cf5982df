"""Data provenance: a content fingerprint of the data a model was trained on.

The fingerprint of a `Dataset` is the SHA-256 of each of its arrays as loaded (dtype,
shape and bytes in C order; not of the file path), keyed by array name: ``x_train``,
``y_train``, ``x_test``, ``y_test`` and, for data sets with human label sets (CIFAR-N),
``noisy_label_sets``. `sap-jax train` records it in the checkpoint's metadata with the
data root made absolute; `sap-jax correct` and `evaluate` compare it with the data they
load and refuse data that differ (`DataChanged`, naming the split) unless told to go on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
  "ALGORITHM",
  "DataChanged",
  "array_digest",
  "changed_arrays",
  "data_fingerprint",
  "describe_changes",
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


def data_fingerprint(dataset: Any) -> dict[str, str]:
  """The fingerprint of a `sap_jax.data.Dataset`: array name → `array_digest`."""
  out = {name: array_digest(getattr(dataset, name)) for name in ("x_train", "y_train")}
  out.update({name: array_digest(getattr(dataset, name)) for name in ("x_test", "y_test")})
  sets = getattr(dataset, "noisy_label_sets", None) or {}
  if sets:
    h = hashlib.sha256()
    for key in sorted(sets):
      h.update(f"{key}|{array_digest(sets[key])}|".encode())
    out["noisy_label_sets"] = f"{ALGORITHM}:{h.hexdigest()}"
  return out


def changed_arrays(recorded: Mapping[str, str], found: Mapping[str, str]) -> list[str]:
  """The array names whose digest differs (or that one side lacks), in a fixed order."""
  order = {name: i for i, name in enumerate(_SPLITS)}
  names = sorted(set(recorded) | set(found), key=lambda n: (order.get(n, len(order)), n))
  return [n for n in names if recorded.get(n) != found.get(n)]


def describe_changes(names: list[str]) -> str:
  """``"train split (inputs), test split (labels)"`` for ``changed_arrays``' names."""
  return ", ".join(_SPLITS.get(n, n) for n in names)
