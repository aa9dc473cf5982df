"""Random-access sources: the record format, lazy image folders, adapters."""

import jax.numpy as jnp
import numpy as np
import pytest

from sap_jax.data.folder import load_folder
from sap_jax.data.sources import (
  ArraySource,
  FolderSource,
  RecordSource,
  is_source,
  source_length,
)
from tests.fake_data import write_image_folder


def test_array_source_records():
  x = np.arange(12, dtype=np.float32).reshape(4, 3)
  src = ArraySource(x, np.array([1, 0, 2, 1]))
  assert len(src) == 4
  rec = src[2]
  np.testing.assert_array_equal(rec["image"], x[2])
  assert rec["label"] == 2 and rec["index"] == 2
  assert "label" not in ArraySource(x)[0]


def test_what_counts_as_a_source():
  assert is_source(ArraySource(np.zeros((2, 1))))
  assert not is_source(np.zeros((2, 1)))
  assert not is_source([np.zeros(1)])
  assert not is_source({"image": 1})
  # the rule, explicit: lists and tuples are always array-likes, never sources
  assert not is_source([0.1, 0.2, 0.3])  # a list of numbers
  assert not is_source(((0.1, 0.2), (0.3, 0.4)))  # a tuple of samples
  assert not is_source([{"image": np.zeros(1), "label": 0}])  # a list of records, too
  assert not is_source("data.npz") and not is_source(b"xy")
  assert not is_source(jnp.zeros((2, 1)))

  class Records:  # any other object with __len__ and __getitem__ is one
    def __len__(self):
      return 1

    def __getitem__(self, i):
      return {"image": np.zeros(1), "label": 0}

  assert is_source(Records())
  with pytest.raises(TypeError, match="wrap arrays with sap_jax.data.sources.ArraySource"):
    source_length(np.zeros((3, 1)))


def test_folder_source_decodes_as_the_in_memory_loader(tmp_path):
  root = write_image_folder(tmp_path, per_class=5, size=20)
  ds = load_folder(root=root, image_size=16)
  train = FolderSource(root, "train", image_size=16)
  test = FolderSource(root, "test", image_size=16, classes=train.classes)
  assert train.classes == ds.class_names
  assert len(train) == len(ds.x_train) and len(test) == len(ds.x_test)
  for i in (0, 7, len(train) - 1):
    rec = train[i]
    np.testing.assert_array_equal(rec["image"], ds.x_train[i])
    assert rec["label"] == ds.y_train[i] and rec["index"] == i
  np.testing.assert_array_equal(test[3]["image"], ds.x_test[3])


def test_folder_source_reads_nothing_until_asked(tmp_path, monkeypatch):
  root = write_image_folder(tmp_path, per_class=3, size=8)
  import sap_jax.data.folder as folder

  calls = []
  real = folder.read_image
  monkeypatch.setattr(folder, "read_image", lambda p, s: calls.append(p) or real(p, s))
  src = FolderSource(root, "train", image_size=8)
  assert calls == []
  src[4]
  assert calls == [src.paths[4]]


def test_folder_source_names_a_broken_file_and_its_index(tmp_path):
  root = write_image_folder(tmp_path, per_class=3, size=8)
  src = FolderSource(root, "train", image_size=8)
  with open(src.paths[2], "wb") as f:
    f.write(b"not an image")
  src[1]  # the others still read
  with pytest.raises(ValueError, match=r"sample 2: cannot read image .*0?2?\.png"):
    src[2]


def test_folder_source_refuses_foreign_classes_and_missing_split(tmp_path):
  root = write_image_folder(tmp_path, per_class=2, size=8)
  with pytest.raises(FileNotFoundError, match="no folder"):
    FolderSource(root, "val")
  with pytest.raises(ValueError, match=r"class folders \['shirt'\] that are not among"):
    FolderSource(root, "test", classes=("coat", "dress"))


def test_folder_source_lists_empty_classes(tmp_path):
  root = write_image_folder(tmp_path, per_class=2, size=8)
  (tmp_path / "train" / "zzz").mkdir()
  src = FolderSource(root, "train", image_size=8)
  assert src.empty_classes() == ["zzz"]


def test_record_source_adapts_keys_and_pixels():
  raw = [{"img": np.full((2, 2, 3), 255, np.uint8), "y": np.int64(3)}]
  src = RecordSource(raw, image_key="img", label_key="y")
  rec = src[0]
  assert rec["image"].dtype == np.float32 and rec["image"].max() == 1.0
  assert rec["label"] == 3
  with pytest.raises(ValueError, match="record 0 has no 'image'"):
    RecordSource(raw)[0]
  with pytest.raises(ValueError, match="record 0 has no label 'label'"):
    RecordSource(raw, image_key="img")[0]


def test_subset_views_with_other_labels():
  from sap_jax.data.sources import Subset

  x = np.arange(10, dtype=np.float32).reshape(5, 2)
  src = ArraySource(x, np.array([0, 1, 2, 0, 1]))
  view = Subset(src, [4, 0, 2], labels=[9, 8, 7])
  assert len(view) == 3
  rec = view[0]
  np.testing.assert_array_equal(rec["image"], x[4])
  assert rec["label"] == 9 and rec["index"] == 0  # its place in the view
  assert Subset(src, [3])[0]["label"] == 0  # the source's label when none given
  assert view.fingerprint() != Subset(src, [4, 0, 2], labels=[9, 8, 6]).fingerprint()
  with pytest.raises(ValueError, match=r"indices must be 1-D positions in \[0, 5\)"):
    Subset(src, [5])
  with pytest.raises(ValueError, match="give one each"):
    Subset(src, [1, 2], labels=[1])


def test_lazy_folder_splits_equal_the_in_memory_splits(tmp_path):
  from sap_jax.data import make_splits

  root = write_image_folder(tmp_path, per_class=6, size=10)
  arrays = make_splits(load_folder(root=root, image_size=8), noise="symmetric:0.3", seed=1)
  lazy = make_splits(load_folder(root=root, image_size=8, lazy=True), noise="symmetric:0.3", seed=1)
  assert lazy.streamed and not arrays.streamed
  for name in ("train", "train_clean", "val", "val_clean", "test"):
    x, y = arrays.labelled(name)
    src, none = lazy.labelled(name)
    assert none is None and len(src) == len(x)
    for i in range(len(src)):
      np.testing.assert_array_equal(src[i]["image"], x[i])
      assert src[i]["label"] == y[i]
  src, _ = lazy.corrupted()
  x, y = arrays.corrupted()
  assert [src[i]["label"] for i in range(len(src))] == y.tolist()
