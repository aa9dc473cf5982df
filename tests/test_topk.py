"""Streaming top-k: over any batching, exactly the whole-vector selections."""

import numpy as np
import pytest

from sap_jax.topk import LowestK
from sap_jax.trusted import select_per_class, select_trusted


def _stream(scores, labels, k, batch):
  top = LowestK(k)
  for lo in range(0, len(scores), batch):
    sl = slice(lo, lo + batch)
    top.update(scores[sl], np.arange(len(scores))[sl], labels[sl])
  return top


@pytest.mark.parametrize("batch", [1, 7, 64, 500])
@pytest.mark.parametrize("balanced", [False, True])
def test_streamed_selection_equals_the_whole_vector(batch, balanced):
  rng = np.random.default_rng(0)
  n = 300
  # rounded scores: many ties, which both must break by index
  scores = np.round(rng.exponential(size=n), 1)
  labels = rng.choice(4, n, p=[0.55, 0.3, 0.1, 0.05])  # a small class forces the fill-up
  for k in (1, 10, 37, 100, 300):
    top = _stream(scores, labels, k, batch)
    got = top.select(k, class_balanced=balanced)
    want = select_trusted(scores, labels, k, class_balanced=balanced)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("batch", [5, 64])
def test_streamed_per_class_selection_equals_the_whole_vector(batch):
  rng = np.random.default_rng(1)
  scores = np.round(rng.normal(size=200), 1)
  labels = rng.choice(3, 200, p=[0.7, 0.25, 0.05])
  for per_class in (1, 4, 12):
    top = _stream(scores, labels, per_class, batch)
    np.testing.assert_array_equal(
      top.select_per_class(per_class), select_per_class(scores, labels, per_class)
    )


def test_memory_is_k_per_class_not_n():
  rng = np.random.default_rng(2)
  top = LowestK(5)
  for _ in range(100):
    top.update(rng.normal(size=1000), rng.integers(0, 10**6, 1000), rng.integers(0, 3, 1000))
  assert top.seen == 100_000
  assert len(top.overall[0]) == 5
  assert all(len(s) == 5 for s, _ in top.by_class.values())


def test_non_finite_scores_are_named_by_sample():
  top = LowestK(3)
  with pytest.raises(ValueError, match="sample 12 is not finite"):
    top.update([0.1, np.nan], [11, 12], [0, 1])


def test_selecting_more_than_kept_or_seen_is_refused():
  top = LowestK(3)
  top.update([0.1, 0.2], [0, 1], [0, 0])
  with pytest.raises(ValueError, match="choose 1 ≤ n ≤ 2"):
    top.select(3)
