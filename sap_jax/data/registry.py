"""`load_dataset(name)`: one entry point over every data source."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable

from sap_jax.data.base import Dataset
from sap_jax.data.cifar import load_cifar10, load_cifar10n, load_cifar100, load_cifar100n
from sap_jax.data.digits import load_digits
from sap_jax.data.folder import load_folder
from sap_jax.data.mnist1d import load_mnist1d
from sap_jax.data.npz import load_npz
from sap_jax.data.spiral import load_spiral
from sap_jax.data.tfds import load_tfds

_TFDS_PREFIX = "tfds:"

_LOADERS: dict[str, Callable[..., Dataset]] = {
  "digits": load_digits,
  "mnist1d": load_mnist1d,
  "spiral": load_spiral,
  "npz": load_npz,
  "cifar10": load_cifar10,
  "cifar100": load_cifar100,
  "cifar10n": load_cifar10n,
  "cifar100n": load_cifar100n,
  "folder": load_folder,
}


def known_datasets() -> tuple[str, ...]:
  """Names accepted by `load_dataset`; "tfds:<name>" stands for any prepared TFDS set."""
  return (*_LOADERS, _TFDS_PREFIX + "<name>")


def _options_of(loader: Callable[..., Dataset]) -> list[str]:
  params = inspect.signature(loader).parameters.values()
  return [
    p.name
    for p in params
    if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("root", "seed")
  ]


def load_dataset(name: str, *, root=None, seed: int = 0, **options) -> Dataset:
  """Loads a data set by name.

  Args:
    name: One of `known_datasets()`: "digits", "mnist1d", "spiral", "npz", "cifar10",
      "cifar100", "cifar10n", "cifar100n", "folder", or "tfds:<tfds name>".
    root: Where the files are (a folder, or the .npz path for "npz"; the TFDS data_dir
      for "tfds:"). Unused by digits and spiral; mnist1d caches there when given.
    seed: Seed of generated data sets (spiral). Digits, mnist1d and the file-based sets
      are fixed, so their test sets are identical across runs.
    **options: Source-specific options, e.g. ``num_samples`` (mnist1d), ``n_per_class``
      and ``noise`` (spiral), ``image_size`` (folder), ``label_key`` (tfds),
      ``dataset_name`` (npz, folder). Unknown options raise.

  Returns:
    The Dataset.

  Raises:
    ValueError: for an unknown name or option, or invalid inputs.
    FileNotFoundError: when the source's files are missing.
  """
  if not isinstance(name, str):
    raise ValueError(f"data set name must be a string, got {type(name).__name__}.")
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
  key = name.strip().lower()
  if key.startswith(_TFDS_PREFIX):
    loader, args = load_tfds, (name.strip()[len(_TFDS_PREFIX) :].strip(),)
  elif key in _LOADERS:
    loader, args = _LOADERS[key], ()
  else:
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(known_datasets())}.")
  allowed = _options_of(loader)
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(
      f"data set {name!r} takes no option(s) {unknown}; its options are {allowed or 'none'}."
    )
  return loader(*args, root=root, seed=int(seed), **options)
