"""Any classification data set exported to a single ``.npz`` file."""

from __future__ import annotations

import os
import warnings
import zipfile

import numpy as np

from sap_jax.data.base import (
  Dataset,
  as_int32_labels,
  check_int,
  num_classes_of,
  require_root,
  uint8_to_unit,
)

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_KEYS = ("class_names", "coarse_train", "coarse_test", "coarse_names")

INTEGER_INPUT_RULE = (
  "integer inputs in an .npz are converted at load time, with a warning: uint8 as 8-bit "
  "images (float32 / 255, as the CIFAR and image-folder loaders do), any other integer "
  "type as stored (float32, values unchanged); store float32 to choose the scale yourself"
)
"""How `load_npz` treats integer inputs (the library's array API refuses them)."""


def _get(f, key: str) -> np.ndarray:
  """``f[key]``; an object array (it would need pickle, which can run code) is refused."""
  try:
    return f[key]
  except ValueError as err:
    if "allow_pickle" not in str(err):
      raise
    raise ValueError(
      f"{key} in the npz holds Python objects (an object array); sap_jax reads .npz files "
      "without pickle, which could run code from the file: store plain numeric arrays "
      "(and class names as np.array(names, dtype=str))."
    ) from None


def _read_x(f, key: str) -> np.ndarray:
  x = _get(f, key)
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise ValueError(f"{key} in the npz has dtype {x.dtype}; store numeric inputs (float or int).")
  if x.ndim < 2:
    raise ValueError(
      f"{key} in the npz has shape {x.shape}; store inputs as (N, ...) with a feature "
      "axis, e.g. x[:, None] for scalar features."
    )
  if np.issubdtype(x.dtype, np.integer):
    how = "/ 255 (8-bit images)" if x.dtype == np.uint8 else "as stored (values unchanged)"
    warnings.warn(
      f"{key} in the npz has dtype {x.dtype}: converted to float32 {how}; store float32 "
      "to choose the scale yourself (rule: sap_jax.data.npz.INTEGER_INPUT_RULE).",
      UserWarning,
      stacklevel=3,
    )
    return uint8_to_unit(x) if x.dtype == np.uint8 else x.astype(np.float32)
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{key} in the npz contains NaN or inf; clean the inputs first.")
  return x


def _names(f, key: str) -> tuple[str, ...] | None:
  if key not in f:
    return None
  names = _get(f, key)
  if names.ndim != 1:
    raise ValueError(f"{key} in the npz must be a 1-D array of strings, got {names.shape}.")
  return tuple(str(n) for n in names)


def load_npz(
  *, root=None, seed: int = 0, dataset_name: str = "npz", num_classes: int | None = None
) -> Dataset:
  """Loads ``root`` = path of an .npz with x_train, y_train, x_test, y_test.

  Optional keys: class_names (1-D strings), coarse_train and coarse_test (superclass
  labels), coarse_names. Labels must be integer class indices. The file is read with
  ``allow_pickle=False`` (a pickle can run code).

  Inputs are cast to float32: floating ones as stored (no rescaling), integer ones by
  `INTEGER_INPUT_RULE` (uint8 ÷ 255, with a warning).

  The number of classes C is ``len(class_names)``, else ``num_classes``, else the
  largest label + 1; in that last case every class 0..C-1 must have a sample in the
  train or test split, so one stray label (a 1000 among classes 0–9) is refused
  instead of making a 1001-class data set.

  Args:
    root: Path to the .npz file.
    seed: Unused.
    dataset_name: Name of the returned Dataset; name it after the source (e.g. "cifar10") to
      get that data set's known asymmetric noise map.
    num_classes: C, when it is not ``len(class_names)`` nor the largest label + 1 with
      every class present (classes without samples are then allowed).

  Returns:
    The Dataset. Without class_names, classes are "0".."C-1".

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: not an .npz archive, missing keys, object arrays, bad shapes or dtypes,
      labels out of range, or classes without a sample (unless num_classes is given).
  """
  del seed
  path = require_root(root, "npz", "'path/to/data.npz'")
  if not isinstance(dataset_name, str) or not dataset_name:
    raise ValueError(f"dataset_name must be a non-empty string, got {dataset_name!r}.")
  if num_classes is not None:
    num_classes = check_int(num_classes, "num_classes", minimum=2)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"npz file {path!r} not found; pass root= the path of an .npz written with "
      "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
    )
  if not zipfile.is_zipfile(path):
    raise ValueError(
      f"{path!r} is not an .npz archive (a zip of arrays); write one with "
      "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
    )
  try:
    f = np.load(path, allow_pickle=False)
  except (OSError, ValueError, zipfile.BadZipFile) as err:
    raise ValueError(
      f"cannot read {path!r} as an .npz archive ({err}); write it again with np.savez."
    ) from None
  with f:
    missing = [k for k in REQUIRED_KEYS if k not in f]
    if missing:
      raise ValueError(
        f"{path!r} lacks keys {missing} (has {sorted(f.files)}); save it with "
        f"np.savez(path, {', '.join(k + '=...' for k in REQUIRED_KEYS)})."
      )
    x_tr, x_te = _read_x(f, "x_train"), _read_x(f, "x_test")
    y_tr = as_int32_labels(_get(f, "y_train"), "y_train")
    y_te = as_int32_labels(_get(f, "y_test"), "y_test")
    class_names = _names(f, "class_names")
    coarse_names = _names(f, "coarse_names")
    coarse = [
      as_int32_labels(_get(f, k), k) if k in f else None for k in ("coarse_train", "coarse_test")
    ]
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
  c = num_classes_of([y_tr, y_te], class_names, num_classes, where="the npz")
  if class_names is None:
    class_names = tuple(str(k) for k in range(max(c, 2)))
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
