"""The standard class maps of asymmetric label noise, and superclass relations.

* fixed maps: CIFAR-10 (Patrini et al. 2017) and MNIST-style digits;
* CIFAR-100: each fine class → the next fine class of its superclass, read from the
  paired fine/coarse labels;
* :func:`known_class_map`: the map of a data set by name;
* :func:`fine_to_coarse` / :func:`superclass_members`: the superclass relation that
  hierarchical noise flips within.

Every public name is importable from :mod:`sap_jax.noise` too.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import numpy as np

from sap_jax import noise_checks as checks

__all__ = [
  "CIFAR10_ASYMMETRIC_MAP",
  "MNIST_ASYMMETRIC_MAP",
  "cifar100_asymmetric_map",
  "fine_to_coarse",
  "known_class_map",
  "superclass_members",
]

CIFAR10_ASYMMETRIC_MAP: Mapping[int, int] = types.MappingProxyType({9: 1, 2: 0, 4: 7, 3: 5, 5: 3})
"""CIFAR-10 asymmetric noise (Patrini et al. 2017): truck→automobile, bird→airplane,
deer→horse, cat↔dog."""

MNIST_ASYMMETRIC_MAP: Mapping[int, int] = types.MappingProxyType({2: 7, 3: 8, 5: 6, 6: 5, 7: 1})
"""MNIST asymmetric noise (Patrini et al. 2017; Han et al. 2018): 2→7, 3→8, 5↔6, 7→1.
Used for every digit data set here (digits, mnist1d)."""

# Data-set names (after normalisation by `_canonical_name`) with a fixed asymmetric map.
_FIXED_MAPS = {
  "cifar10": CIFAR10_ASYMMETRIC_MAP,
  "cifar10n": CIFAR10_ASYMMETRIC_MAP,
  "digits": MNIST_ASYMMETRIC_MAP,
  "mnist1d": MNIST_ASYMMETRIC_MAP,
  "mnist": MNIST_ASYMMETRIC_MAP,
}
# Data-set names whose map is derived from the fine/coarse labels.
_SUPERCLASS_MAPS = ("cifar100", "cifar100n")


def fine_to_coarse(fine: np.ndarray, coarse: np.ndarray) -> dict[int, int]:
  """The fine→coarse relation read from paired label arrays, checked to be a function.

  Args:
    fine: Fine label of each sample, int array of shape (N,).
    coarse: Coarse label of each sample, int array of shape (N,), paired with ``fine``.

  Returns:
    Dict fine class -> its coarse class.

  Raises:
    ValueError: a fine class appears with more than one coarse class.
  """
  pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)
  fine_ids, counts = np.unique(pairs[:, 0], return_counts=True)
  ambiguous = fine_ids[counts > 1]
  if ambiguous.size:
    raise ValueError(
      f"fine classes {ambiguous.tolist()[:10]} appear with more than one coarse "
      "class; pass coarse labels paired sample-by-sample with the fine labels (each "
      "fine class must belong to exactly one superclass)."
    )
  return {int(f): int(c) for f, c in pairs}


def superclass_members(relation: Mapping[int, int]) -> dict[int, list[int]]:
  """The fine classes of each superclass.

  Args:
    relation: fine class -> coarse class (see :func:`fine_to_coarse`).

  Returns:
    Dict coarse class -> its fine classes, sorted.

  Raises:
    ValueError: a superclass has a single fine class (nothing to flip to).
  """
  members: dict[int, list[int]] = {}
  for f, c in sorted(relation.items()):
    members.setdefault(c, []).append(f)
  singletons = sorted(c for c, fs in members.items() if len(fs) < 2)
  if singletons:
    raise ValueError(
      f"coarse classes {singletons[:10]} contain a single fine class, so their "
      "samples cannot flip within their superclass; merge those superclasses or use "
      "symmetric/asymmetric noise instead."
    )
  return members


def cifar100_asymmetric_map(fine_labels: np.ndarray, coarse_labels: np.ndarray) -> dict[int, int]:
  """CIFAR-100 asymmetric map: each fine class → the next fine class of its superclass.

  Superclass membership is read from the paired label arrays (not index blocks of 5:
  CIFAR-100's fine indices are alphabetical, not grouped by superclass). Within a
  superclass the fine classes are sorted and mapped cyclically, last → first.

  Args:
    fine_labels: Fine label of each sample, int array of shape (N,).
    coarse_labels: Coarse label of each sample, int array of shape (N,).

  Returns:
    Dict fine class -> fine class, covering every fine class present in ``fine_labels``.
  """
  fine, coarse = checks.check_paired_labels(fine_labels, coarse_labels)
  members = superclass_members(fine_to_coarse(fine, coarse))
  cmap: dict[int, int] = {}
  for fs in members.values():
    for i, f in enumerate(fs):
      cmap[f] = fs[(i + 1) % len(fs)]
  return dict(sorted(cmap.items()))


def _canonical_name(name: str) -> str:
  name = name.strip().lower()
  if name.startswith("tfds:"):
    name = name[len("tfds:") :]
  name = name.split("/")[0]  # tfds config/version suffixes
  return name.replace("_", "").replace("-", "")


def known_class_map(
  dataset_name: str,
  fine: np.ndarray | None = None,
  coarse: np.ndarray | None = None,
) -> dict[int, int]:
  """The standard asymmetric-noise class map of a data set.

  Args:
    dataset_name: "cifar10", "cifar10n", "digits", "mnist1d", "mnist", "cifar100",
      "cifar100n" (TFDS spellings such as "tfds:cifar10_n" are accepted too).
    fine: For CIFAR-100: the fine training labels.
    coarse: For CIFAR-100: the coarse training labels, paired with ``fine``.

  Returns:
    A new dict source class -> target class.

  Raises:
    ValueError: for a data set without a standard map, or CIFAR-100 without labels.
  """
  if not isinstance(dataset_name, str):
    raise ValueError(f"dataset_name must be a string, got {type(dataset_name).__name__}.")
  key = _canonical_name(dataset_name)
  if key in _FIXED_MAPS:
    return dict(_FIXED_MAPS[key])
  if key in _SUPERCLASS_MAPS:
    if fine is None or coarse is None:
      raise ValueError(
        f"the {dataset_name} asymmetric map is derived from the superclasses; pass "
        "fine=dataset.y_train and coarse=dataset.coarse_train."
      )
    return cifar100_asymmetric_map(fine, coarse)
  known = ", ".join(sorted({*_FIXED_MAPS, *_SUPERCLASS_MAPS}))
  raise ValueError(
    f"no standard asymmetric class map for data set {dataset_name!r} (maps exist for: "
    f"{known}); give one explicitly with NoiseSpec('asymmetric', rate, class_map="
    "{src: dst, ...}) or transition=<C x C matrix>, or text 'asymmetric:0.2:3>5,5>3'."
  )
