"""Synthetic label noise: symmetric, asymmetric (class-map / transition) and hierarchical.

Every function takes clean integer labels and returns ``(noisy_labels, mask)`` where
``noisy_labels`` is int32 and ``mask`` is a bool array with ``mask == (noisy != clean)``
exactly. Randomness comes only from ``np.random.default_rng(seed)``, so the same inputs and
seed always give the same output. Counts are exact, not Bernoulli: a rate η flips exactly
``round(η · N)`` samples (Python's ``round``, halves to even).

Noise models (η = rate):

* symmetric: ``round(η·N)`` samples, chosen uniformly without replacement, each get a
  uniformly random *other* class (the paper's symmetric noise, published code's
  ``get_mislabeled_dataset``).
* asymmetric, class map: for every source class ``s`` of the map, exactly ``round(η·n_s)`` of
  its samples are relabelled to ``class_map[s]`` (Patrini et al. 2017). Samples are chosen by
  their *clean* label, so swaps such as cat↔dog act on disjoint sets.
* asymmetric, transition matrix ``T`` (row-stochastic, ``T[i, j] = P(noisy=j | clean=i)``):
  every label is resampled from its row.
* hierarchical: ``round(η·N)`` samples flip to a uniformly random *other* fine class of the
  same coarse class (superclass), the fine→coarse relation read from paired label arrays.
* human: real annotator labels (CIFAR-N); these come with the data set and are applied by
  :func:`sap_jax.data.make_splits`, not here.

The data sets' standard class maps live in :mod:`sap_jax.noise_maps` (its public names are
importable from here too), the argument checks in :mod:`sap_jax.noise_checks`, the
setting of a run, :class:`NoiseSpec`, in :mod:`sap_jax.noise_spec` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sap_jax import noise_checks as checks
from sap_jax.noise_maps import (
  CIFAR10_ASYMMETRIC_MAP,
  MNIST_ASYMMETRIC_MAP,
  cifar100_asymmetric_map,
  fine_to_coarse,
  known_class_map,
  superclass_members,
)
from sap_jax.noise_spec import HUMAN_VARIANTS, NOISE_KINDS, NoiseSpec

__all__ = [
  "CIFAR10_ASYMMETRIC_MAP",
  "HUMAN_VARIANTS",
  "MNIST_ASYMMETRIC_MAP",
  "NOISE_KINDS",
  "NoiseSpec",
  "apply_noise",
  "asymmetric",
  "cifar100_asymmetric_map",
  "hierarchical",
  "known_class_map",
  "majority_lost",
  "symmetric",
]


def _flip_count(rate: float, n: int) -> int:
  return int(round(rate * n))


def _result(clean: np.ndarray, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  noisy = noisy.astype(np.int32)
  return noisy, noisy != clean


def _as_spec(spec: NoiseSpec | str) -> NoiseSpec:
  return NoiseSpec.parse(spec)


def symmetric(
  labels: np.ndarray, num_classes: int, rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Symmetric noise: ``round(rate·N)`` samples get a uniformly random *other* class.

  The flipped samples are drawn uniformly without replacement; each gets
  ``(y + k) mod C`` with ``k ~ U{1, …, C-1}``, i.e. a class uniform over the C-1 wrong
  ones, so a chosen label never stays the same.

  Args:
    labels: Clean labels, int array of shape (N,), values in [0, num_classes).
    num_classes: Number of classes C >= 2.
    rate: Fraction of samples to flip, in [0, 1).
    seed: Non-negative int seed.

  Returns:
    ``(noisy, mask)``: int32 (N,) labels and bool (N,) mask of the flipped samples.
  """
  num_classes = checks.check_num_classes(num_classes)
  clean = checks.check_labels(labels, num_classes)
  rate = checks.check_rate(rate)
  rng = np.random.default_rng(checks.check_seed(seed))
  n_flip = _flip_count(rate, clean.size)
  idx = rng.choice(clean.size, size=n_flip, replace=False)
  offset = rng.integers(1, num_classes, size=n_flip)
  noisy = clean.copy()
  noisy[idx] = (clean[idx] + offset) % num_classes
  return _result(clean, noisy)


def asymmetric(
  labels: np.ndarray,
  num_classes: int,
  rate: float,
  seed: int,
  *,
  class_map: Mapping[int, int] | None = None,
  transition: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Class-dependent noise from a class map or a transition matrix.

  With ``class_map``, for every source class ``s`` exactly ``round(rate·n_s)`` of its
  samples (chosen by clean label, uniformly without replacement) become ``class_map[s]``;
  classes not in the map are untouched. With ``transition``, every label ``y`` is
  resampled from row ``T[y]`` (then ``rate`` must be 0, the matrix sets the rates).

  Args:
    labels: Clean labels, int array of shape (N,), values in [0, num_classes).
    num_classes: Number of classes C >= 2.
    rate: Flip fraction per source class, in [0, 1); 0.0 when ``transition`` is given.
    seed: Non-negative int seed.
    class_map: Source class -> target class (no class to itself).
    transition: Row-stochastic C x C matrix, ``T[i, j] = P(noisy=j | clean=i)``.

  Returns:
    ``(noisy, mask)``: int32 (N,) labels and bool (N,) mask, ``mask == (noisy != labels)``.
  """
  num_classes = checks.check_num_classes(num_classes)
  clean = checks.check_labels(labels, num_classes)
  rate = checks.check_rate(rate)
  seed = checks.check_seed(seed)
  if (class_map is None) == (transition is None):
    raise ValueError(
      "asymmetric noise needs exactly one of class_map= (source -> target dict) or "
      "transition= (C x C row-stochastic matrix); for a known data set get the map "
      "with known_class_map(name)."
    )
  rng = np.random.default_rng(seed)
  noisy = clean.copy()
  if class_map is not None:
    cmap = checks.check_class_map(class_map, num_classes)
    for src in sorted(cmap):
      members = np.flatnonzero(clean == src)
      chosen = rng.choice(members, size=_flip_count(rate, members.size), replace=False)
      noisy[chosen] = cmap[src]
    return _result(clean, noisy)
  t = checks.check_transition(transition, num_classes)
  if rate != 0.0:
    raise ValueError(
      f"rate={rate} given together with a transition matrix; the matrix already sets "
      "the flip probabilities, so pass rate=0.0."
    )
  t = t / t.sum(axis=1, keepdims=True)
  for c in range(num_classes):
    members = np.flatnonzero(clean == c)
    if members.size:
      noisy[members] = rng.choice(num_classes, size=members.size, p=t[c])
  return _result(clean, noisy)


def hierarchical(
  labels: np.ndarray, coarse_labels: np.ndarray, rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Hierarchical noise: flips stay inside the superclass.

  Exactly ``round(rate·N)`` samples, chosen uniformly without replacement, get a
  uniformly random *other* fine class of their own coarse class. The fine→coarse relation
  is read from the paired arrays; a coarse class with a single fine class makes a flip
  impossible, and raises (rather than silently flipping fewer samples).

  Args:
    labels: Clean fine labels, non-negative int array of shape (N,).
    coarse_labels: Coarse (superclass) label of each sample, int array of shape (N,).
    rate: Fraction of samples to flip, in [0, 1).
    seed: Non-negative int seed.

  Returns:
    ``(noisy, mask)``: int32 (N,) fine labels and bool (N,) mask of the flipped samples.
  """
  fine, coarse = checks.check_paired_labels(labels, coarse_labels)
  rate = checks.check_rate(rate)
  seed = checks.check_seed(seed)
  members = superclass_members(fine_to_coarse(fine, coarse))
  rng = np.random.default_rng(seed)
  idx = np.sort(rng.choice(fine.size, size=_flip_count(rate, fine.size), replace=False))
  noisy = fine.copy()
  for c in sorted(members):
    siblings = np.asarray(members[c])
    sel = idx[coarse[idx] == c]
    if sel.size == 0:
      continue
    pos = np.searchsorted(siblings, fine[sel])
    offset = rng.integers(1, siblings.size, size=sel.size)
    noisy[sel] = siblings[(pos + offset) % siblings.size]
  return _result(fine, noisy)


def majority_lost(
  spec: NoiseSpec | str,
  num_classes: int,
  *,
  labels: np.ndarray | None = None,
  coarse_labels: np.ndarray | None = None,
) -> str | None:
  """Why ``spec`` leaves some class's true label no longer the most frequent label among
  its own samples (in expectation), or None when every class keeps its majority.

  Past that point no learner, SAP included, can tell the true class from the labels: the
  noise is no longer noise but a relabelling. The rule, per kind: symmetric with C classes,
  ``rate >= (C-1)/C``; asymmetric with a class map, ``rate >= 0.5``; with a transition
  matrix, a row whose diagonal is not above every other entry; hierarchical, ``rate >=
  (k-1)/k`` for the smallest superclass of k fine classes (read from ``labels`` and
  ``coarse_labels``; None without them); none and human noise, never.

  Args:
    spec: A NoiseSpec or its text form.
    num_classes: Number of classes C >= 2.
    labels: Clean fine labels paired with ``coarse_labels``, for "hierarchical".
    coarse_labels: Superclass label per sample, for "hierarchical".

  Returns:
    One sentence naming the spec and the limit it crosses, or None.
  """
  spec = _as_spec(spec)
  num_classes = checks.check_num_classes(num_classes)
  if spec.kind in ("none", "human"):
    return None
  if spec.transition is not None:
    t = spec.transition
    off = np.where(np.eye(t.shape[0], dtype=bool), -np.inf, t).max(axis=1)
    bad = np.flatnonzero(np.diag(t) <= off)
    if not bad.size:
      return None
    return (
      f"the transition matrix gives classes {bad.tolist()} their own label no more often "
      "than another one (T[c, c] <= max T[c, j])"
    )
  if spec.kind == "symmetric":
    k, group = num_classes, f"{num_classes} classes"
  elif spec.kind == "asymmetric":
    k, group = 2, "each mapped class flips to one other"
  else:
    if labels is None or coarse_labels is None:
      return None
    fine, coarse = checks.check_paired_labels(labels, coarse_labels)
    members = superclass_members(fine_to_coarse(fine, coarse))
    k = min(len(m) for m in members.values())
    group = f"the smallest superclass has {k} fine classes"
  limit = (k - 1) / k
  if spec.rate < limit:
    return None
  return (
    f"{spec} leaves a class only {100 * (1 - spec.rate):.0f}% of its own labels, no more than "
    f"another class gets ({group}): the noise rate must be below {limit:.3g}"
  )


# --------------------------------------------------------------------------------------
# Dispatch.
# --------------------------------------------------------------------------------------


def apply_noise(
  spec: NoiseSpec | str,
  labels: np.ndarray,
  num_classes: int,
  seed: int,
  *,
  coarse_labels: np.ndarray | None = None,
  dataset_name: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Applies the noise described by ``spec`` to clean labels.

  Args:
    spec: A NoiseSpec or its text form ("symmetric:0.25", ...).
    labels: Clean labels, int array of shape (N,), values in [0, num_classes).
    num_classes: Number of classes C >= 2.
    seed: Non-negative int seed.
    coarse_labels: Superclass label per sample; needed for "hierarchical", and for
      "asymmetric" on CIFAR-100 without an explicit map.
    dataset_name: Selects the known asymmetric map when the spec carries none.

  Returns:
    ``(noisy, mask)``: int32 (N,) labels and bool (N,) mask, ``mask == (noisy != labels)``.
    For "none", a copy of the labels and an all-False mask.

  Raises:
    ValueError: on invalid inputs, for "asymmetric" with no map available, for
      "hierarchical" without coarse labels, and for "human" (use make_splits).
  """
  spec = _as_spec(spec)
  num_classes = checks.check_num_classes(num_classes)
  clean = checks.check_labels(labels, num_classes)
  seed = checks.check_seed(seed)
  if spec.kind == "none":
    return _result(clean, clean.copy())
  if spec.kind == "symmetric":
    return symmetric(clean, num_classes, spec.rate, seed)
  if spec.kind == "asymmetric":
    if spec.transition is not None:
      return asymmetric(clean, num_classes, 0.0, seed, transition=spec.transition)
    cmap = spec.class_map
    if cmap is None:
      if dataset_name is None:
        raise ValueError(
          "asymmetric noise needs a class map: pass dataset_name= (one with a "
          "standard map, see known_class_map) or put class_map=/transition= in "
          "the NoiseSpec."
        )
      cmap = known_class_map(dataset_name, fine=clean, coarse=coarse_labels)
    return asymmetric(clean, num_classes, spec.rate, seed, class_map=cmap)
  if spec.kind == "hierarchical":
    if coarse_labels is None:
      raise ValueError(
        "hierarchical noise needs coarse_labels= (the superclass of each sample); "
        "use a data set with coarse labels (cifar100, tfds:cifar100, an npz with "
        "coarse_train) and pass dataset.coarse_train."
      )
    return hierarchical(clean, coarse_labels, spec.rate, seed)
  raise ValueError(
    f"human noise ({spec}) is not synthetic: its labels come with the data set "
    "(dataset.noisy_label_sets); load cifar10n/cifar100n and call "
    "sap_jax.data.make_splits(dataset, noise='human:<variant>')."
  )
