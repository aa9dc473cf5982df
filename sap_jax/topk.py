"""Streaming selection of the lowest scores: the trusted set of a stream in O(k) memory.

`LowestK` keeps, over batches of ``(scores, indices, labels)``, the ``k`` lowest scores
overall and the ``k`` lowest of each class, ordered by score with ties broken by index, so
that `select` and `select_per_class` give exactly what `sap_jax.trusted.select_trusted`
and `sap_jax.trusted.select_per_class` give on the whole score vector, while holding
O(k · classes) entries whatever the number of samples.

Why both buffers suffice: `select_trusted(..., class_balanced=True)` takes the lowest
``n // K`` of each class, then fills up with the lowest-ranked samples not chosen yet.
A fill-up sample has at most n − 1 samples ranked before it (the chosen ones and the
fill-up ones before it), so it is among the n lowest overall.
"""

from __future__ import annotations

import numpy as np


def _merge_lowest(
  keep: tuple[np.ndarray, np.ndarray], scores: np.ndarray, indices: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
  s = np.concatenate([keep[0], scores])
  i = np.concatenate([keep[1], indices])
  order = np.lexsort((i, s))[:k]
  return s[order], i[order]


def _empty() -> tuple[np.ndarray, np.ndarray]:
  return np.zeros(0, np.float64), np.zeros(0, np.int64)


class LowestK:
  """The ``k`` lowest scores of a stream, overall and per class.

  Args:
    k: how many to keep (overall, and of each class).
  """

  def __init__(self, k: int):
    if k < 1:
      raise ValueError(f"k must be ≥ 1, got {k}.")
    self.k = k
    self.seen = 0
    self.overall = _empty()
    self.by_class: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def update(self, scores, indices, labels) -> None:
    """Adds one batch: float scores, int sample indices, int labels (equal lengths).

    Raises:
      ValueError: a non-finite score (named by its sample index).
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    indices = np.asarray(indices, np.int64).reshape(-1)
    labels = np.asarray(labels, np.int64).reshape(-1)
    if not (len(scores) == len(indices) == len(labels)):
      raise ValueError(
        f"scores, indices and labels of different lengths: {len(scores)}, {len(indices)}, "
        f"{len(labels)}."
      )
    bad = ~np.isfinite(scores)
    if bad.any():
      raise ValueError(
        f"the score of sample {int(indices[np.argmax(bad)])} is not finite; the model's "
        "losses are not finite."
      )
    self.seen += len(scores)
    self.overall = _merge_lowest(self.overall, scores, indices, self.k)
    for c in np.unique(labels):
      here = labels == c
      kept = self.by_class.get(int(c), _empty())
      self.by_class[int(c)] = _merge_lowest(kept, scores[here], indices[here], self.k)

  def select(self, n: int, *, class_balanced: bool = False) -> np.ndarray:
    """`sap_jax.trusted.select_trusted` of the stream seen so far (``n ≤ k``)."""
    self._check(n)
    if not class_balanced:
      return self.overall[1][:n].copy()
    share = n // len(self.by_class)
    chosen = {int(i) for _, (_, idx) in self.by_class.items() for i in idx[:share]}
    rest = [int(i) for i in self.overall[1] if int(i) not in chosen]
    chosen.update(rest[: n - len(chosen)])
    return self._ordered(chosen)

  def select_per_class(self, per_class: int) -> np.ndarray:
    """`sap_jax.trusted.select_per_class` of the stream seen so far (``per_class ≤ k``)."""
    if not 1 <= per_class <= self.k:
      raise ValueError(f"per_class must lie in [1, {self.k}], got {per_class}.")
    chosen = {int(i) for _, (_, idx) in self.by_class.items() for i in idx[:per_class]}
    return self._ordered(chosen)

  def num_classes(self) -> int:
    """How many distinct labels the stream held."""
    return len(self.by_class)

  def _ordered(self, chosen: set[int]) -> np.ndarray:
    """``chosen`` sorted by score, ties by index."""
    pool = [self.overall, *self.by_class.values()]
    s = np.concatenate([p[0] for p in pool])
    i = np.concatenate([p[1] for p in pool])
    i, first = np.unique(i, return_index=True)
    s = s[first]
    keep = np.isin(i, np.fromiter(chosen, np.int64, len(chosen)))
    s, i = s[keep], i[keep]
    return i[np.lexsort((i, s))].astype(np.int64)

  def _check(self, n: int) -> None:
    if not 1 <= n <= min(self.k, self.seen):
      raise ValueError(
        f"Cannot select n={n} trusted samples from {self.seen}: choose 1 ≤ n ≤ "
        f"{min(self.k, self.seen)}."
      )
