"""sap_jax.batching: padded batches, plain batches and the epoch shuffle."""

import numpy as np
import pytest

from sap_jax.batching import batched, epoch_batches, padded_batches


def test_epoch_batches_drop_or_fill_the_last_batch():
  perm = np.random.default_rng(0).permutation(10)
  full = epoch_batches(np.random.default_rng(0), 10, 4, drop_last=True)
  np.testing.assert_array_equal(full, perm[:8].reshape(2, 4))
  filled = epoch_batches(np.random.default_rng(0), 10, 4)
  np.testing.assert_array_equal(filled, np.concatenate([perm, perm[:2]]).reshape(3, 4))
  # One permutation per call: consecutive epochs differ; bs is clipped to n.
  rng = np.random.default_rng(1)
  assert not np.array_equal(epoch_batches(rng, 10, 10), epoch_batches(rng, 10, 10))
  assert epoch_batches(rng, 3, 8).shape == (1, 3)
  with pytest.raises(ValueError, match="batch_size"):
    epoch_batches(rng, 3, 0)


def test_epoch_batches_advance_the_generator_by_one_permutation_in_both_modes():
  for drop_last in (False, True):
    rng, ref = np.random.default_rng(5), np.random.default_rng(5)
    got = epoch_batches(rng, 10, 3, drop_last=drop_last)
    perm = ref.permutation(10)
    if drop_last:  # ⌊10 / 3⌋ full batches of the permutation's first 9 indices
      np.testing.assert_array_equal(got, perm[:9].reshape(3, 3))
    else:  # ⌈10 / 3⌉ batches, the last filled up from the permutation's start
      np.testing.assert_array_equal(got, np.concatenate([perm, perm[:2]]).reshape(4, 3))
      assert set(got.ravel().tolist()) == set(range(10))
    assert np.issubdtype(got.dtype, np.integer)
    # The next epoch draws from where this one left the generator.
    np.testing.assert_array_equal(rng.permutation(10), ref.permutation(10))
    assert epoch_batches(rng, 0, 4, drop_last=drop_last).shape[0] == 0  # no rows for n = 0


def test_padded_batches_pad_the_last_batch_with_the_first_sample():
  x = np.arange(14, dtype=np.float32).reshape(7, 2)
  y = np.arange(7, dtype=np.int32) + 10
  out = list(padded_batches(x, y, batch_size=3))
  assert [real for _, real in out] == [3, 3, 1]
  for (xb, yb), _ in out:
    assert xb.shape == (3, 2) and yb.shape == (3,)
    assert xb.dtype == np.float32 and yb.dtype == np.int32
  np.testing.assert_array_equal(out[0][0][0], x[:3])
  np.testing.assert_array_equal(out[1][0][1], y[3:6])
  np.testing.assert_array_equal(out[2][0][0], x[[6, 0, 0]])
  np.testing.assert_array_equal(out[2][0][1], [16, 10, 10])
  # batch_size >= N: one batch of all N samples, nothing padded.
  ((xb,), real) = next(padded_batches(x, batch_size=100))
  assert real == 7
  np.testing.assert_array_equal(xb, x)
  assert len(list(padded_batches(x, batch_size=7))) == 1


@pytest.mark.parametrize(
  "arrays, batch_size, match",
  [
    ((np.zeros(3),), 0, "batch_size must be ≥ 1, got 0"),
    ((), 2, "at least one array"),
    ((np.zeros(3), np.zeros(2)), 2, r"different lengths: \[3, 2\]"),
    ((np.zeros(0),), 2, "empty arrays"),
  ],
)
def test_padded_batches_errors(arrays, batch_size, match):
  with pytest.raises(ValueError, match=match):
    list(padded_batches(*arrays, batch_size=batch_size))


def test_batched_cuts_consecutive_batches_with_a_short_last_one():
  x = np.arange(7)
  got = batched(x, 3)
  assert [b.tolist() for b in got] == [[0, 1, 2], [3, 4, 5], [6]]
  assert [b.tolist() for b in batched(x, 7)] == [list(range(7))]
  assert [b.tolist() for b in batched(x, 100)] == [list(range(7))]
  assert batched(x[:0], 3) == []
  assert batched(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]
  with pytest.raises(ValueError, match="batch_size must be ≥ 1, got 0"):
    batched(x, 0)
