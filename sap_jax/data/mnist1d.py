"""MNIST-1D (Greydanus 2020): 1-D digit signals generated locally by the `mnist1d` package.

Only ``mnist1d.data.make_dataset`` is called: it synthesises the data from templates and
never touches the network (``mnist1d.data.get_dataset`` would download a pickle; it is not
used). Generation takes a few seconds for the default 5000 samples, so results are cached
in-process, and on disk under ``root`` when one is given.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random

import numpy as np

from sap_jax.data.base import Dataset, check_int

DEFAULT_NUM_SAMPLES = 5000
"""mnist1d's default: 4000 train + 1000 test (train_split 0.8)."""

DEFAULT_DATA_SEED = 42
"""mnist1d's default generation seed; fixed so the data set is identical across runs."""


@contextlib.contextmanager
def _preserve_global_rng():
  """mnist1d seeds the global `random` and `np.random` states; undo that side effect."""
  np_state, py_state = np.random.get_state(), random.getstate()
  try:
    yield
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)


@functools.lru_cache(maxsize=4)
def _generate(num_samples: int, data_seed: int) -> tuple[np.ndarray, ...]:
  from mnist1d.data import get_dataset_args, make_dataset

  args = get_dataset_args()
  args.num_samples = num_samples
  args.seed = data_seed
  with _preserve_global_rng():
    data = make_dataset(args)
  length = args.final_seq_length
  x_tr = np.asarray(data["x"], np.float32).reshape(-1, length, 1)
  x_te = np.asarray(data["x_test"], np.float32).reshape(-1, length, 1)
  y_tr = np.asarray(data["y"], np.int32)
  y_te = np.asarray(data["y_test"], np.int32)
  for a in (x_tr, x_te, y_tr, y_te):
    a.setflags(write=False)
  return x_tr, y_tr, x_te, y_te


def _cached_on_disk(root: str, num_samples: int, data_seed: int) -> tuple[np.ndarray, ...]:
  path = os.path.join(root, f"mnist1d_n{num_samples}_seed{data_seed}.npz")
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as f:
      return f["x_train"], f["y_train"], f["x_test"], f["y_test"]
  arrays = _generate(num_samples, data_seed)
  os.makedirs(root, exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **dict(zip(("x_train", "y_train", "x_test", "y_test"), arrays)))
  os.replace(tmp, path)
  return arrays


def load_mnist1d(
  *,
  root=None,
  seed: int = 0,
  num_samples: int = DEFAULT_NUM_SAMPLES,
  data_seed: int = DEFAULT_DATA_SEED,
) -> Dataset:
  """Generates MNIST-1D: float32 signals of shape N×40×1 (length × channels).

  Args:
    root: Optional folder; the generated arrays are cached there as an .npz.
    seed: Unused: the data are fixed by ``data_seed`` so they match across runs.
    num_samples: Total samples, a multiple of 10 and >= 20; 80 % train, 20 % test.
    data_seed: mnist1d's generation seed (its default 42).

  Returns:
    A Dataset named "mnist1d" with 10 classes "0".."9"; signals are standardised by the
    generator (zero mean, unit std over the whole set).
  """
  del seed
  num_samples = check_int(num_samples, "num_samples", minimum=20)
  if num_samples % 10:
    raise ValueError(
      f"num_samples must be a multiple of 10 (mnist1d makes num_samples // 10 per "
      f"class), got {num_samples}; use e.g. {num_samples - num_samples % 10 or 20}."
    )
  data_seed = check_int(data_seed, "data_seed", minimum=0)
  if root is not None:
    arrays = _cached_on_disk(os.fspath(root), num_samples, data_seed)
  else:
    arrays = _generate(num_samples, data_seed)
  x_tr, y_tr, x_te, y_te = (np.array(a) for a in arrays)
  return Dataset(
    name="mnist1d",
    x_train=x_tr,
    y_train=y_tr,
    x_test=x_te,
    y_test=y_te,
    class_names=tuple(str(d) for d in range(10)),
  )
