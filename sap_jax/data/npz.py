"""Any classification data set exported to a single ``.npz`` file."""

from __future__ import annotations

import os

import numpy as np

from sap_jax.data.base import Dataset, as_int32_labels, require_root

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_KEYS = ("class_names", "coarse_train", "coarse_test", "coarse_names")


def _read_x(f, key: str) -> np.ndarray:
  x = f[key]
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise ValueError(f"{key} in the npz has dtype {x.dtype}; store numeric inputs (float or int).")
  if x.ndim < 2:
    raise ValueError(
      f"{key} in the npz has shape {x.shape}; store inputs as (N, ...) with a feature "
      "axis, e.g. x[:, None] for scalar features."
    )
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{key} in the npz contains NaN or inf; clean the inputs first.")
  return x


def _names(f, key: str) -> tuple[str, ...] | None:
  if key not in f:
    return None
  names = f[key]
  if names.ndim != 1:
    raise ValueError(f"{key} in the npz must be a 1-D array of strings, got {names.shape}.")
  return tuple(str(n) for n in names)


def load_npz(*, root=None, seed: int = 0, dataset_name: str = "npz") -> Dataset:
  """Loads ``root`` = path of an .npz with x_train, y_train, x_test, y_test.

  Optional keys: class_names (1-D strings), coarse_train and coarse_test (superclass
  labels), coarse_names. Inputs are cast to float32 as stored (no rescaling); labels must
  be integer class indices. The file is read with ``allow_pickle=False``.

  Args:
    root: Path to the .npz file.
    seed: Unused.
    dataset_name: Name of the returned Dataset; name it after the source (e.g. "cifar10") to
      get that data set's known asymmetric noise map.

  Returns:
    The Dataset. Without class_names, classes are "0".."C-1" with C = max label + 1.

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: on missing keys, bad shapes or dtypes, or labels out of range.
  """
  del seed
  path = require_root(root, "npz", "'path/to/data.npz'")
  if not isinstance(dataset_name, str) or not dataset_name:
    raise ValueError(f"dataset_name must be a non-empty string, got {dataset_name!r}.")
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"npz file {path!r} not found; pass root= the path of an .npz written with "
      "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
    )
  with np.load(path, allow_pickle=False) as f:
    missing = [k for k in REQUIRED_KEYS if k not in f]
    if missing:
      raise ValueError(
        f"{path!r} lacks keys {missing} (has {sorted(f.files)}); save it with "
        f"np.savez(path, {', '.join(k + '=...' for k in REQUIRED_KEYS)})."
      )
    x_tr, x_te = _read_x(f, "x_train"), _read_x(f, "x_test")
    y_tr = as_int32_labels(f["y_train"], "y_train")
    y_te = as_int32_labels(f["y_test"], "y_test")
    class_names = _names(f, "class_names")
    coarse_names = _names(f, "coarse_names")
    coarse = [as_int32_labels(f[k], k) if k in f else None for k in ("coarse_train", "coarse_test")]
  if len(y_tr) != len(x_tr) or len(y_te) != len(x_te):
    raise ValueError(
      f"label counts do not match inputs: x_train {len(x_tr)} vs y_train {len(y_tr)}, "
      f"x_test {len(x_te)} vs y_test {len(y_te)}; store one label per example."
    )
  if x_tr.shape[1:] != x_te.shape[1:]:
    raise ValueError(
      f"x_train examples have shape {x_tr.shape[1:]} but x_test examples "
      f"{x_te.shape[1:]}; train and test inputs must share the per-example shape."
    )
  num_classes = int(max(y_tr.max(initial=0), y_te.max(initial=0))) + 1
  if class_names is None:
    class_names = tuple(str(c) for c in range(max(num_classes, 2)))
  elif num_classes > len(class_names):
    raise ValueError(
      f"labels go up to {num_classes - 1} but class_names has {len(class_names)} "
      "entries; store one name per class."
    )
  return Dataset(
    name=dataset_name,
    x_train=x_tr,
    y_train=y_tr,
    x_test=x_te,
    y_test=y_te,
    class_names=class_names,
    coarse_train=coarse[0],
    coarse_test=coarse[1],
    coarse_names=coarse_names,
  )
