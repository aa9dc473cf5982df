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
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

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
  "symmetric",
]

NOISE_KINDS = ("none", "symmetric", "asymmetric", "hierarchical", "human")
"""The values `NoiseSpec.kind` may take."""

HUMAN_VARIANTS = ("aggre", "worse", "random1", "random2", "random3", "noisy100")
"""CIFAR-N label sets: CIFAR-10N aggre/worse/random1..3, CIFAR-100N noisy100."""

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

_TRANSITION_ATOL = 1e-6


# --------------------------------------------------------------------------------------
# Validation helpers (each raises before any work is done).
# --------------------------------------------------------------------------------------


def _check_rate(rate: Any) -> float:
  if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
    raise ValueError(
      f"rate must be a float in [0, 1), got {rate!r} ({type(rate).__name__}); "
      "pass the fraction of labels to corrupt, e.g. rate=0.25."
    )
  rate = float(rate)
  if not (0.0 <= rate < 1.0) or math.isnan(rate):
    raise ValueError(
      f"rate must be in [0, 1), got {rate}; write the noise rate as a fraction, e.g. 0.25 for 25 %."
    )
  return rate


def _check_num_classes(num_classes: Any) -> int:
  if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
    raise ValueError(
      f"num_classes must be an int >= 2, got {num_classes!r}; pass the number of "
      "classes of the data set (e.g. dataset.num_classes)."
    )
  if num_classes < 2:
    raise ValueError(
      f"num_classes must be >= 2 to corrupt labels, got {num_classes}; label noise "
      "needs at least two classes to flip between."
    )
  return int(num_classes)


def _check_seed(seed: Any) -> int:
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}; pass e.g. seed=0.")
  return int(seed)


def _check_labels(labels: Any, num_classes: int | None, what: str = "labels") -> np.ndarray:
  """Returns `labels` as a 1-D int64 array after checking dtype, shape and range."""
  arr = np.asarray(labels)
  if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(
      f"{what} must be an integer array, got dtype {arr.dtype}; convert with "
      f"np.asarray({what}).astype(np.int32)."
    )
  if arr.ndim != 1:
    raise ValueError(
      f"{what} must be 1-D (one class index per sample), got shape {arr.shape}; "
      "pass integer class indices, not one-hot vectors (use argmax(-1) first)."
    )
  if arr.size == 0:
    raise ValueError(f"{what} is empty; pass at least one label.")
  lo, hi = int(arr.min()), int(arr.max())
  if lo < 0 or (num_classes is not None and hi >= num_classes):
    bound = f"[0, {num_classes})" if num_classes is not None else "[0, inf)"
    raise ValueError(
      f"{what} must lie in {bound}, found values in [{lo}, {hi}]; check num_classes "
      "or remap the labels to 0..num_classes-1."
    )
  return arr.astype(np.int64)


def _check_class_map(class_map: Any, num_classes: int | None) -> dict[int, int]:
  if not isinstance(class_map, Mapping):
    raise ValueError(
      f"class_map must be a mapping source_class -> target_class, got "
      f"{type(class_map).__name__}; pass e.g. class_map={{3: 5, 5: 3}}."
    )
  if not class_map:
    raise ValueError(
      "class_map is empty, so asymmetric noise would change nothing; give at least "
      "one source -> target pair, e.g. class_map={3: 5}."
    )
  out: dict[int, int] = {}
  for src, dst in class_map.items():
    for value in (src, dst):
      if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
          f"class_map entries must be ints, got {src!r} -> {dst!r}; use class indices, not names."
        )
      if value < 0 or (num_classes is not None and value >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise ValueError(
          f"class_map entry {src} -> {dst} is outside the class range {bound}; "
          "use class indices of this data set."
        )
    if int(src) == int(dst):
      raise ValueError(
        f"class_map maps class {src} to itself, which is not noise; remove the entry {src}: {dst}."
      )
    out[int(src)] = int(dst)
  return out


def _check_transition(transition: Any, num_classes: int | None) -> np.ndarray:
  t = np.asarray(transition, dtype=np.float64)
  if t.ndim != 2 or t.shape[0] != t.shape[1]:
    raise ValueError(
      f"transition must be a square C x C matrix, got shape {t.shape}; entry [i, j] "
      "is P(noisy label = j | clean label = i)."
    )
  if num_classes is not None and t.shape[0] != num_classes:
    raise ValueError(
      f"transition has shape {t.shape} but num_classes={num_classes}; pass a "
      f"{num_classes} x {num_classes} matrix."
    )
  if not np.all(np.isfinite(t)) or np.any(t < 0):
    raise ValueError(
      "transition must contain finite, non-negative probabilities; fix the negative "
      "or non-finite entries."
    )
  row_sums = t.sum(axis=1)
  bad = np.flatnonzero(np.abs(row_sums - 1.0) > _TRANSITION_ATOL)
  if bad.size:
    raise ValueError(
      f"transition must be row-stochastic (every row sums to 1), rows {bad.tolist()} "
      f"sum to {row_sums[bad].round(6).tolist()}; normalise with T / T.sum(1, "
      "keepdims=True)."
    )
  return t


def _flip_count(rate: float, n: int) -> int:
  return int(round(rate * n))


def _fine_to_coarse(fine: np.ndarray, coarse: np.ndarray) -> dict[int, int]:
  """Reads the fine→coarse relation from paired label arrays; checks it is a function."""
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


def _superclass_members(fine_to_coarse: Mapping[int, int]) -> dict[int, list[int]]:
  """coarse class -> sorted fine classes, checking every superclass has >= 2 members."""
  members: dict[int, list[int]] = {}
  for f, c in sorted(fine_to_coarse.items()):
    members.setdefault(c, []).append(f)
  singletons = sorted(c for c, fs in members.items() if len(fs) < 2)
  if singletons:
    raise ValueError(
      f"coarse classes {singletons[:10]} contain a single fine class, so their "
      "samples cannot flip within their superclass; merge those superclasses or use "
      "symmetric/asymmetric noise instead."
    )
  return members


def _pair_with_coarse(labels: Any, coarse_labels: Any) -> tuple[np.ndarray, np.ndarray]:
  fine = _check_labels(labels, None, "labels")
  if coarse_labels is None:
    raise ValueError(
      "coarse_labels is None but this noise needs superclass labels; pass the coarse "
      "labels paired with the fine ones (e.g. dataset.coarse_train for cifar100)."
    )
  coarse = _check_labels(coarse_labels, None, "coarse_labels")
  if coarse.shape != fine.shape:
    raise ValueError(
      f"coarse_labels has shape {coarse.shape} but labels has shape {fine.shape}; "
      "pass one coarse label per sample, in the same order."
    )
  return fine, coarse


def _result(clean: np.ndarray, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  noisy = noisy.astype(np.int32)
  return noisy, noisy != clean


# --------------------------------------------------------------------------------------
# NoiseSpec.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class NoiseSpec:
  """What label noise to apply; parsed from text for CLIs and configs.

  Text forms (``str(spec)`` gives them back, ``NoiseSpec.parse`` reads them):
  ``"none"``, ``"symmetric:0.25"``, ``"asymmetric:0.1"`` (the data set's known class map),
  ``"asymmetric:0.1:3>5,5>3"`` (an explicit class map), ``"hierarchical:0.25"``,
  ``"human:worse"``. A spec holding a transition matrix has no text form that parses.

  Attributes:
    kind: One of :data:`NOISE_KINDS`.
    rate: Fraction of labels to corrupt, in [0, 1). Must be 0 for "none" and "human",
      and for "asymmetric" with a ``transition`` (the matrix sets the flip probabilities).
    class_map: For "asymmetric": source class -> target class. ``None`` means the data
      set's known map (see :func:`known_class_map`).
    transition: For "asymmetric": row-stochastic C x C matrix, ``T[i, j] = P(noisy=j |
      clean=i)``; exclusive with ``class_map``.
    variant: For "human": which CIFAR-N label set, one of :data:`HUMAN_VARIANTS`.
  """

  kind: str
  rate: float = 0.0
  class_map: Mapping[int, int] | None = None
  transition: np.ndarray | None = None
  variant: str | None = None

  def __post_init__(self):
    if self.kind not in NOISE_KINDS:
      raise ValueError(f"unknown noise kind {self.kind!r}; use one of {', '.join(NOISE_KINDS)}.")
    rate = _check_rate(self.rate)
    object.__setattr__(self, "rate", rate)
    if self.kind in ("none", "human") and rate != 0.0:
      raise ValueError(
        f"noise kind {self.kind!r} takes no rate, got rate={rate}; leave rate at 0.0 "
        "(use 'symmetric:<rate>' for random flips)."
      )
    if self.kind != "asymmetric" and (self.class_map is not None or self.transition is not None):
      raise ValueError(
        f"class_map/transition only apply to kind='asymmetric', got kind="
        f"{self.kind!r}; drop them or use kind='asymmetric'."
      )
    if self.class_map is not None and self.transition is not None:
      raise ValueError(
        "give either class_map or transition for asymmetric noise, not both; a class "
        "map with rate r equals a transition matrix with T[s, s] = 1 - r, "
        "T[s, class_map[s]] = r."
      )
    if self.class_map is not None:
      cmap = dict(sorted(_check_class_map(self.class_map, None).items()))
      object.__setattr__(self, "class_map", cmap)  # a private copy (dicts pickle)
    if self.transition is not None:
      if rate != 0.0:
        raise ValueError(
          f"rate={rate} given together with a transition matrix; the matrix "
          "already sets the flip probabilities (1 - T[c, c] per class), so leave "
          "rate at 0.0."
        )
      t = _check_transition(self.transition, None).copy()
      t.setflags(write=False)
      object.__setattr__(self, "transition", t)
    if self.kind == "human":
      if self.variant not in HUMAN_VARIANTS:
        raise ValueError(
          f"human noise needs variant= one of {', '.join(HUMAN_VARIANTS)}, got "
          f"{self.variant!r}; e.g. NoiseSpec('human', variant='worse') or "
          "'human:worse'."
        )
    elif self.variant is not None:
      raise ValueError(
        f"variant={self.variant!r} only applies to kind='human', got kind="
        f"{self.kind!r}; drop variant."
      )

  @classmethod
  def parse(cls, text: "str | NoiseSpec") -> "NoiseSpec":
    """Parses ``"kind[:rate|:variant][:src>dst,...]"``; a NoiseSpec passes through.

    Args:
      text: e.g. ``"none"``, ``"symmetric:0.25"``, ``"asymmetric:0.1"``,
        ``"asymmetric:0.2:9>1,2>0"``, ``"hierarchical:0.25"``, ``"human:worse"``.

    Returns:
      The validated NoiseSpec.

    Raises:
      ValueError: if the text is malformed; the message shows the accepted forms.
    """
    if isinstance(text, NoiseSpec):
      return text
    if not isinstance(text, str):
      raise ValueError(
        f"noise spec must be a string such as 'symmetric:0.25', got {type(text).__name__}."
      )
    forms = (
      "'none', 'symmetric:0.25', 'asymmetric:0.1', 'asymmetric:0.1:3>5,5>3', "
      "'hierarchical:0.25', 'human:worse'"
    )
    parts = [p.strip() for p in text.strip().split(":")]
    kind = parts[0].lower()
    if kind not in NOISE_KINDS:
      raise ValueError(
        f"cannot parse noise spec {text!r}: unknown kind {parts[0]!r}; use one of {forms}."
      )
    if kind == "none":
      if len(parts) != 1:
        raise ValueError(f"noise spec 'none' takes no arguments, got {text!r}; write 'none'.")
      return cls("none")
    if kind == "human":
      if len(parts) != 2 or not parts[1]:
        raise ValueError(
          f"cannot parse {text!r}: write 'human:<variant>' with variant one of "
          f"{', '.join(HUMAN_VARIANTS)}, e.g. 'human:worse'."
        )
      return cls("human", variant=parts[1].lower())
    max_parts = 3 if kind == "asymmetric" else 2
    if len(parts) < 2 or len(parts) > max_parts or not parts[1]:
      raise ValueError(
        f"cannot parse noise spec {text!r}: write '{kind}:<rate>' with the rate a "
        f"fraction in [0, 1); accepted forms: {forms}."
      )
    try:
      rate = float(parts[1])
    except ValueError:
      raise ValueError(
        f"cannot parse the rate {parts[1]!r} in {text!r}; write a fraction in [0, 1), "
        f"e.g. '{kind}:0.25'."
      ) from None
    class_map = None
    if len(parts) == 3:
      class_map = {}
      for pair in parts[2].split(","):
        m = re.fullmatch(r"\s*(\d+)\s*>\s*(\d+)\s*", pair)
        if m is None:
          raise ValueError(
            f"cannot parse class-map entry {pair!r} in {text!r}; write "
            "'src>dst' pairs separated by commas, e.g. 'asymmetric:0.2:3>5,5>3'."
          )
        class_map[int(m.group(1))] = int(m.group(2))
    return cls(kind, rate=rate, class_map=class_map)

  def __str__(self) -> str:
    if self.kind == "none":
      return "none"
    if self.kind == "human":
      return f"human:{self.variant}"
    if self.transition is not None:
      c = self.transition.shape[0]
      return f"asymmetric:transition[{c}x{c}]"
    text = f"{self.kind}:{self.rate!r}"
    if self.class_map is not None:
      text += ":" + ",".join(f"{s}>{d}" for s, d in self.class_map.items())
    return text

  def _key(self):
    t = None if self.transition is None else (self.transition.shape, self.transition.tobytes())
    cmap = None if self.class_map is None else tuple(self.class_map.items())
    return (self.kind, self.rate, cmap, t, self.variant)

  def __eq__(self, other):
    if not isinstance(other, NoiseSpec):
      return NotImplemented
    return self._key() == other._key()

  def __hash__(self):
    return hash(self._key())


def _as_spec(spec: "NoiseSpec | str") -> NoiseSpec:
  return NoiseSpec.parse(spec)


# --------------------------------------------------------------------------------------
# Noise models.
# --------------------------------------------------------------------------------------


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
  num_classes = _check_num_classes(num_classes)
  clean = _check_labels(labels, num_classes)
  rate = _check_rate(rate)
  rng = np.random.default_rng(_check_seed(seed))
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
  num_classes = _check_num_classes(num_classes)
  clean = _check_labels(labels, num_classes)
  rate = _check_rate(rate)
  seed = _check_seed(seed)
  if (class_map is None) == (transition is None):
    raise ValueError(
      "asymmetric noise needs exactly one of class_map= (source -> target dict) or "
      "transition= (C x C row-stochastic matrix); for a known data set get the map "
      "with known_class_map(name)."
    )
  rng = np.random.default_rng(seed)
  noisy = clean.copy()
  if class_map is not None:
    cmap = _check_class_map(class_map, num_classes)
    for src in sorted(cmap):
      members = np.flatnonzero(clean == src)
      chosen = rng.choice(members, size=_flip_count(rate, members.size), replace=False)
      noisy[chosen] = cmap[src]
    return _result(clean, noisy)
  t = _check_transition(transition, num_classes)
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
  fine, coarse = _pair_with_coarse(labels, coarse_labels)
  rate = _check_rate(rate)
  seed = _check_seed(seed)
  members = _superclass_members(_fine_to_coarse(fine, coarse))
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


# --------------------------------------------------------------------------------------
# Known class maps.
# --------------------------------------------------------------------------------------


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
  fine, coarse = _pair_with_coarse(fine_labels, coarse_labels)
  members = _superclass_members(_fine_to_coarse(fine, coarse))
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
  num_classes = _check_num_classes(num_classes)
  clean = _check_labels(labels, num_classes)
  seed = _check_seed(seed)
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
