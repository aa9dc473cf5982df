"""The feeder: any source → fixed-shape device batches, padded and masked, in stream order."""

import numpy as np
import pytest

from sap_jax.data.feeder import batch_layout, feed, feed_arrays, sample_rng
from sap_jax.data.sources import ArraySource
from tests.child_processes import run_devices_child


def _source(n=23, shape=(3,), k=4, seed=0):
  rng = np.random.default_rng(seed)
  return ArraySource(rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, k, n))


def _gather(batches):
  xs, ys, ms, ids = [], [], [], []
  for b in batches:
    xs.append(np.asarray(b.x))
    ys.append(np.asarray(b.y))
    ms.append(np.asarray(b.mask))
    ids.append(np.asarray(b.index))
  return xs, ys, ms, ids


def test_batches_cover_the_stream_once_with_a_masked_padded_tail():
  src = _source(23)
  batches = list(feed(src, 10))
  xs, ys, ms, ids = _gather(batches)
  assert [x.shape for x in xs] == [(10, 3)] * 3  # one shape: one compilation
  assert [b.real for b in batches] == [10, 10, 3]
  assert [b.start for b in batches] == [0, 10, 20]
  mask = np.concatenate(ms)
  np.testing.assert_array_equal(mask, np.arange(30) < 23)
  index = np.concatenate(ids)
  np.testing.assert_array_equal(index[:23], np.arange(23))
  np.testing.assert_array_equal(index[23:], 0)  # padding repeats the stream's first sample
  np.testing.assert_array_equal(np.concatenate(xs)[:23], src.x)
  np.testing.assert_array_equal(np.concatenate(ys)[:23], src.y)


def test_indices_give_the_stream_order():
  src = _source(23)
  order = np.array([5, 2, 22, 0, 9])
  (b,) = feed(src, 8, indices=order)
  assert b.x.shape == (5, 3) and b.real == 5  # a short stream: one batch of its length
  np.testing.assert_array_equal(np.asarray(b.index), order)
  np.testing.assert_array_equal(np.asarray(b.x), src.x[order])


def test_batch_layout_rounds_to_the_devices():
  class Mesh8:
    shape = {"data": 8}

  assert batch_layout(100, 10, Mesh8()) == (16, 7)
  assert batch_layout(5, 64, Mesh8()) == (8, 1)


def test_transform_depends_on_seed_epoch_and_index_only():
  src = _source(11)

  def noisy(image, rng):
    return image + rng.normal(size=image.shape).astype(np.float32)

  def run(batch_size, epoch):
    xs, *_ = _gather(feed(src, batch_size, transform=noisy, seed=3, epoch=epoch))
    return np.concatenate(xs)[:11]

  np.testing.assert_array_equal(run(4, 0), run(11, 0))  # not the batching
  assert not np.allclose(run(4, 0), run(4, 1))  # the epoch
  want = src.x[7] + sample_rng(3, 0, 7).normal(size=3).astype(np.float32)
  np.testing.assert_array_equal(run(4, 0)[7], want)


def test_worker_processes_read_the_same_batches():
  src = _source(37)
  plain = _gather(feed(src, 8))
  workers = _gather(feed(src, 8, workers=2))
  for a, b in zip(plain, workers):
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))


class _Records:
  def __init__(self, records):
    self.records = records

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]


def _rec(image=(0.0, 0.0), label=0):
  return {"image": np.asarray(image, np.float32), "label": label}


@pytest.mark.parametrize(
  "records, kw, message",
  [
    ([_rec(), _rec(label=7)], {"num_classes": 3}, r"source\[1\]: label 7 is outside \[0, 3\)"),
    ([_rec(), _rec(label=-1)], {}, r"source\[1\]: label -1 is outside"),
    ([_rec(), _rec((0.0, np.nan))], {}, r"source\[1\] holds NaN or Inf"),
    ([_rec(), _rec((0.0, 1.0, 2.0))], {}, r"source\[1\] has an input of shape \(3,\)"),
    ([_rec(), {"image": np.zeros(2)}], {}, r"source\[1\] has no 'label'"),
    ([_rec(), {"label": 1}], {}, r"source\[1\] has no 'image'"),
    ([_rec(), _rec(label=1.5)], {}, r"source\[1\]: the label 1.5 is not one integer"),
    ([_rec(), (1, 2)], {}, r"source\[1\] is a tuple, not a record"),
  ],
)
def test_bad_records_are_named_by_index(records, kw, message):
  with pytest.raises(ValueError, match=message):
    list(feed(_Records(records), 2, **kw))


def test_a_source_that_changes_length_is_refused():
  records = [_rec() for _ in range(4)]
  src = _Records(records)
  with pytest.raises(ValueError, match=r"changed length during the pass \(4 → 6"):
    for _ in feed(src, 2):
      records.append(_rec())


@pytest.mark.parametrize(
  "kw, message",
  [
    ({"indices": np.array([0, 9])}, r"indices must lie in \[0, 4\)"),
    ({"indices": np.array([], int)}, "non-empty 1-D integer"),
    ({"workers": -1}, "need workers ≥ 0"),
  ],
)
def test_bad_arguments_are_refused_before_any_read(kw, message):
  reads = []

  class Counting(_Records):
    def __getitem__(self, i):
      reads.append(i)
      return super().__getitem__(i)

  with pytest.raises(ValueError, match=message):
    feed(Counting([_rec() for _ in range(4)]), 2, **kw)
  assert reads == []


@pytest.fixture(scope="module")
def eight_devices():
  return run_devices_child(["tests.feeder_child"], devices=8)


def test_eight_devices_pad_mask_and_equal_one_device(eight_devices):
  assert "feeder child: ok" in eight_devices.stdout, eight_devices.stdout[-2000:]


def test_global_arrays_feed_their_host_batches_and_every_phase_equals_one_device(eight_devices):
  """tests/feeder_child.py `global_arrays`: the feeder over a global array yields the
  batches (values, masks, indices) of its host copy; evaluate, predict_logits,
  per_example_loss, fit_fraction and every trusted score on 40 samples over 8 devices
  and 45 over 5 (batches that divide neither) equal one device's."""
  assert "global arrays: ok" in eight_devices.stdout, eight_devices.stdout[-2000:]


def test_host_arrays_over_a_mesh_run_every_phase_as_one_device(eight_devices):
  """tests/feeder_child.py `host_arrays_on_a_mesh`: host arrays of 45 samples with
  ``mesh=`` (8 devices, nothing cut): evaluate, predict_logits, fit_fraction, the three
  trusted scores, `run_sap` (trusted set, α, both splits' sweeps, corrected variables,
  layer rows) and training with validation equal one device's."""
  assert "host arrays on a mesh: ok" in eight_devices.stdout, eight_devices.stdout[-2000:]


@pytest.mark.parametrize("indices", [None, np.array([5, 2, 22, 0, 9, 7, 7])])
def test_host_arrays_feed_the_batches_of_their_source(indices):
  src = _source(23)
  got = _gather(feed_arrays(src.x, src.y, 10, indices=indices))
  want = _gather(feed(src, 10, indices=indices))
  for a, b in zip(got, want):
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
