"""scikit-learn's 8×8 handwritten digits (1797 images, bundled, no download)."""

from __future__ import annotations

import functools

import numpy as np

from sap_jax.data.base import Dataset

NUM_TEST = 497
"""Size of the fixed, stratified test split (train keeps 1300)."""

_SPLIT_SEED = 0  # Fixed on purpose: the test set must not change with the experiment seed.


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits as sk_load_digits
  from sklearn.model_selection import train_test_split

  bunch = sk_load_digits()
  x = (bunch.data.astype(np.float32) / np.float32(16.0)).reshape(-1, 8, 8, 1)
  y = bunch.target.astype(np.int32)
  x_tr, x_te, y_tr, y_te = train_test_split(
    x, y, test_size=NUM_TEST, stratify=y, random_state=_SPLIT_SEED
  )
  return x_tr, y_tr, x_te, y_te


def load_digits(*, root=None, seed: int = 0) -> Dataset:
  """Loads the digits data set, 8×8×1 float32 pixels in [0, 1] (raw values / 16).

  The 1300/497 train/test split is stratified and fixed: it does not depend on ``seed``,
  so test accuracy is comparable across runs. ``root`` and ``seed`` are unused (the data
  ships with scikit-learn).

  Returns:
    A Dataset named "digits" with 10 classes "0".."9".
  """
  del root, seed
  x_tr, y_tr, x_te, y_te = _digits_arrays()
  return Dataset(
    name="digits",
    x_train=x_tr.copy(),
    y_train=y_tr.copy(),
    x_test=x_te.copy(),
    y_test=y_te.copy(),
    class_names=tuple(str(d) for d in range(10)),
  )
