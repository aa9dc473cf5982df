"""Tests for sap_jax.data: loaders on real-format files written here, and make_splits."""

import io
import os
import pickle
import random
import socket
import sys
import tarfile
import types

import numpy as np
import pytest
from PIL import Image

from sap_jax.data import Dataset, NoisySplits, known_datasets, load_dataset, make_splits
from sap_jax.data import cifar as cifar_mod
from sap_jax.data.base import IMAGENET_MEAN, IMAGENET_STD
from sap_jax.noise import CIFAR10_ASYMMETRIC_MAP, NoiseSpec
from tests.fake_data import CIFAR10_NAMES

# ------------------------------------------------------------------ CIFAR file writers

PER_BATCH = 4  # images per CIFAR-10 batch -> 20 train, 4 test


def _planted_image():
  """A 32×32×3 uint8 image whose every (h, w, c) value is distinct mod 256 per channel."""
  h, w, c = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
  return ((h * 7 + w * 3 + c * 85) % 256).astype(np.uint8)


def _chw_rows(images_hwc):
  return images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), -1)


def _add_pickle(tar, name, obj):
  payload = pickle.dumps(obj, protocol=2)
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def _cifar10_members(rng):
  members, train_labels = {}, []
  for i in range(1, 6):
    images = rng.integers(0, 256, size=(PER_BATCH, 32, 32, 3), dtype=np.uint8)
    if i == 1:
      images[0] = _planted_image()
    labels = [int(v) for v in rng.integers(0, 10, size=PER_BATCH)]
    train_labels += labels
    members[f"data_batch_{i}"] = {
      b"batch_label": f"training batch {i} of 5".encode(),
      b"labels": labels,
      b"data": _chw_rows(images),
      b"filenames": [f"img{i}_{j}.png".encode() for j in range(PER_BATCH)],
    }
  test = rng.integers(0, 256, size=(PER_BATCH, 32, 32, 3), dtype=np.uint8)
  members["test_batch"] = {
    b"labels": [int(v) for v in rng.integers(0, 10, size=PER_BATCH)],
    b"data": _chw_rows(test),
  }
  members["batches.meta"] = {
    b"label_names": [n.encode() for n in CIFAR10_NAMES],
    b"num_cases_per_batch": PER_BATCH,
  }
  return members, np.asarray(train_labels)


def _write_tar(path, folder, members):
  with tarfile.open(path, "w:gz") as tar:
    for name, obj in members.items():
      _add_pickle(tar, f"{folder}/{name}", obj)


def _write_folder(path, members):
  os.makedirs(path)
  for name, obj in members.items():
    with open(os.path.join(path, name), "wb") as f:
      pickle.dump(obj, f, protocol=2)


@pytest.fixture(scope="module")
def data_cifar10_dir(tmp_path_factory):
  """Folder with cifar-10-python.tar.gz (20 train / 4 test images); returns (dir, labels)."""
  root = tmp_path_factory.mktemp("cifar10")
  members, labels = _cifar10_members(np.random.default_rng(0))
  _write_tar(root / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
  return root, members, labels


@pytest.fixture(scope="module")
def data_cifar100_dir(tmp_path_factory):
  """Folder with cifar-100-python.tar.gz, fine + coarse labels."""
  root = tmp_path_factory.mktemp("cifar100")
  rng = np.random.default_rng(1)
  fine_to_coarse = rng.permutation(np.repeat(np.arange(20), 5))

  def split(n):
    fine = rng.integers(0, 100, size=n)
    return {
      b"fine_labels": [int(v) for v in fine],
      b"coarse_labels": [int(v) for v in fine_to_coarse[fine]],
      b"data": _chw_rows(rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)),
    }

  members = {
    "train": split(30),
    "test": split(6),
    "meta": {
      b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
      b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    },
  }
  _write_tar(root / "cifar-100-python.tar.gz", "cifar-100-python", members)
  return root, members, fine_to_coarse


def _cifar10n_dict(clean, rng):
  out = {"clean_label": clean.copy()}
  for key in ("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3"):
    out[key] = np.where(rng.random(clean.size) < 0.4, rng.integers(0, 10, clean.size), clean)
  return out


# ------------------------------------------------------------------ generated sets


def test_digits_shapes_ranges_and_fixed_test_split():
  ds = load_dataset("digits")
  assert ds.name == "digits"
  assert ds.x_train.shape == (1300, 8, 8, 1) and ds.x_test.shape == (497, 8, 8, 1)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  assert ds.input_shape == (8, 8, 1) and ds.num_classes == 10
  assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
  assert set(np.unique(ds.y_train)) == set(range(10)) == set(np.unique(ds.y_test))
  # Stratified: every class has ~497/1797 of its samples in the test split.
  all_counts = np.bincount(ds.y_train, minlength=10) + np.bincount(ds.y_test, minlength=10)
  assert np.all(np.abs(np.bincount(ds.y_test) - all_counts * 497 / 1797) <= 1)
  other = load_dataset("digits", seed=123)
  np.testing.assert_array_equal(ds.x_test, other.x_test)
  np.testing.assert_array_equal(ds.y_test, other.y_test)
  np.testing.assert_array_equal(ds.y_train, other.y_train)


def test_digits_returns_independent_copies():
  a = load_dataset("digits")
  a.x_train[0] = 5.0
  assert load_dataset("digits").x_train.max() == 1.0


def test_mnist1d_small_shapes_and_determinism():
  ds = load_dataset("mnist1d", num_samples=500)
  assert ds.x_train.shape == (400, 40, 1) and ds.x_test.shape == (100, 40, 1)
  assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int32
  assert ds.y_train.min() == 0 and ds.y_train.max() == 9
  assert np.isfinite(ds.x_train).all() and abs(float(ds.x_train.std()) - 1.0) < 0.1
  again = load_dataset("mnist1d", num_samples=500, seed=99)
  np.testing.assert_array_equal(ds.x_train, again.x_train)
  np.testing.assert_array_equal(ds.y_test, again.y_test)


def test_mnist1d_default_size():
  ds = load_dataset("mnist1d")
  assert ds.x_train.shape == (4000, 40, 1) and ds.x_test.shape == (1000, 40, 1)
  assert np.all(np.bincount(np.concatenate([ds.y_train, ds.y_test])) == 500)


def test_mnist1d_no_network_and_no_global_rng_side_effects(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("mnist1d loader touched the network")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  np.random.seed(1234)
  random.seed(1234)
  expected_np, expected_py = np.random.random(), random.random()
  np.random.seed(1234)
  random.seed(1234)
  ds = load_dataset("mnist1d", num_samples=100, data_seed=7)  # uncached: really generates
  assert ds.x_train.shape == (80, 40, 1)
  assert np.random.random() == expected_np and random.random() == expected_py


def test_mnist1d_disk_cache(tmp_path):
  ds = load_dataset("mnist1d", root=tmp_path, num_samples=500)
  assert (tmp_path / "mnist1d_n500_seed42.npz").exists()
  again = load_dataset("mnist1d", root=tmp_path, num_samples=500)
  np.testing.assert_array_equal(ds.x_train, again.x_train)
  np.testing.assert_array_equal(ds.x_train, load_dataset("mnist1d", num_samples=500).x_train)


def test_mnist1d_bad_num_samples():
  with pytest.raises(ValueError, match="multiple of 10"):
    load_dataset("mnist1d", num_samples=55)
  with pytest.raises(ValueError, match="num_samples must be an int >= 20"):
    load_dataset("mnist1d", num_samples=10)


def test_spiral_shapes_standardised_balanced_and_seeded():
  ds = load_dataset("spiral", seed=3)
  assert ds.x_train.shape == (500, 2) and ds.x_test.shape == (500, 2)
  assert ds.x_train.dtype == np.float32 and ds.num_classes == 2
  np.testing.assert_allclose(ds.x_train.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(ds.x_train.std(0), 1.0, atol=1e-4)
  assert np.all(np.bincount(ds.y_train) == 250) and np.all(np.bincount(ds.y_test) == 250)
  assert np.abs(ds.x_test).max() < 5
  same = load_dataset("spiral", seed=3)
  np.testing.assert_array_equal(ds.x_train, same.x_train)
  assert not np.allclose(ds.x_train, load_dataset("spiral", seed=4).x_train)
  # Independent streams: the test size does not change the training draw.
  small_test = load_dataset("spiral", seed=3, n_test_per_class=10)
  np.testing.assert_array_equal(ds.x_train, small_test.x_train)
  assert small_test.x_test.shape == (20, 2)
  # Train and test are different draws.
  assert not np.allclose(np.sort(ds.x_train, 0), np.sort(ds.x_test, 0))


def test_spiral_options():
  ds = load_dataset("spiral", n_per_class=10, noise=0.0)
  assert ds.x_train.shape == (20, 2)
  with pytest.raises(ValueError, match="noise must be a float >= 0"):
    load_dataset("spiral", noise=-1.0)
  with pytest.raises(ValueError, match="n_per_class must be an int >= 1"):
    load_dataset("spiral", n_per_class=0)


# ------------------------------------------------------------------ npz


def _write_npz(path, **overrides):
  rng = np.random.default_rng(0)
  arrays = dict(
    x_train=rng.normal(size=(12, 3, 2)),
    y_train=np.arange(12) % 3,
    x_test=rng.normal(size=(6, 3, 2)),
    y_test=np.arange(6) % 3,
    class_names=np.array(["a", "b", "c"]),
  )
  arrays.update(overrides)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  np.savez(path, **arrays)
  return arrays


def test_npz_round_trip(tmp_path):
  path = tmp_path / "d.npz"
  arrays = _write_npz(path, coarse_train=np.arange(12) % 2, coarse_test=np.arange(6) % 2)
  ds = load_dataset("npz", root=path, dataset_name="mine")
  assert ds.name == "mine" and ds.class_names == ("a", "b", "c")
  assert ds.x_train.dtype == np.float32 and ds.input_shape == (3, 2)
  np.testing.assert_allclose(ds.x_train, arrays["x_train"].astype(np.float32))
  np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
  np.testing.assert_array_equal(ds.coarse_train, np.arange(12) % 2)
  unnamed = tmp_path / "u.npz"
  _write_npz(unnamed, class_names=None)
  assert load_dataset("npz", root=unnamed).class_names == ("0", "1", "2")


@pytest.mark.parametrize(
  "overrides,match",
  [
    (dict(y_test=None), r"lacks keys \['y_test'\]"),
    (dict(y_train=np.arange(11) % 3), "label counts do not match"),
    (dict(y_train=np.arange(12) % 5), "class_names has 3 entries"),
    (dict(y_train=(np.arange(12) % 3).astype(float)), "integer class indices"),
    (dict(y_train=np.arange(12) % 3 - 1), "negative labels"),
    (dict(x_test=np.zeros((6, 4, 2))), "share the per-example shape"),
    (dict(x_train=np.full((12, 3, 2), np.nan)), "NaN or inf"),
    (dict(x_train=np.zeros(12)), r"store inputs as \(N, ...\)"),
  ],
)
def test_npz_validation(tmp_path, overrides, match):
  path = tmp_path / "bad.npz"
  _write_npz(path, **overrides)
  with pytest.raises(ValueError, match=match):
    load_dataset("npz", root=path)


def test_npz_missing_file_and_root(tmp_path):
  with pytest.raises(FileNotFoundError, match="np.savez"):
    load_dataset("npz", root=tmp_path / "nope.npz")
  with pytest.raises(ValueError, match="pass root="):
    load_dataset("npz")


# ------------------------------------------------------------------ CIFAR


def test_cifar10_from_tar(data_cifar10_dir):
  root, members, labels = data_cifar10_dir
  ds = load_dataset("cifar10", root=root)
  assert ds.name == "cifar10" and ds.class_names == tuple(CIFAR10_NAMES)
  assert ds.x_train.shape == (5 * PER_BATCH, 32, 32, 3) and ds.x_train.dtype == np.float32
  assert ds.x_test.shape == (PER_BATCH, 32, 32, 3)
  np.testing.assert_array_equal(ds.y_train, labels)  # data_batch_1..5 in order
  np.testing.assert_array_equal(ds.y_test, members["test_batch"][b"labels"])
  assert ds.coarse_train is None and not ds.noisy_label_sets
  # CHW -> HWC: undo the standardisation and compare with the planted image.
  pixels = ds.x_train[0] * np.array(cifar_mod.CIFAR10_STD) + np.array(cifar_mod.CIFAR10_MEAN)
  np.testing.assert_allclose(pixels * 255, _planted_image(), atol=1e-3)
  assert ds.x_train[0, 1, 0, 0] != ds.x_train[0, 0, 1, 0]  # rows and columns not mixed up


def test_cifar10_extracted_folder_matches_tar(data_cifar10_dir, tmp_path):
  root, members, _ = data_cifar10_dir
  _write_folder(tmp_path / "cifar-10-batches-py", members)
  from_tar = load_dataset("cifar10", root=root)
  for r in (tmp_path, tmp_path / "cifar-10-batches-py"):
    ds = load_dataset("cifar10", root=r)
    np.testing.assert_array_equal(ds.x_train, from_tar.x_train)
    np.testing.assert_array_equal(ds.y_test, from_tar.y_test)
  direct = load_dataset("cifar10", root=root / "cifar-10-python.tar.gz")
  np.testing.assert_array_equal(direct.x_test, from_tar.x_test)


def test_cifar_missing_and_broken_archives(tmp_path, data_cifar10_dir):
  with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz.*cs.toronto.edu"):
    load_dataset("cifar10", root=tmp_path)
  with pytest.raises(FileNotFoundError, match="cifar-100-python.tar.gz"):
    load_dataset("cifar100", root=tmp_path / "absent")
  _, members, _ = data_cifar10_dir
  partial = {k: v for k, v in members.items() if k != "data_batch_3"}
  _write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", partial)
  with pytest.raises(ValueError, match=r"no member\(s\) cifar-10-batches-py/data_batch_3"):
    load_dataset("cifar10", root=tmp_path)
  truncated = tmp_path / "truncated" / "cifar-10-python.tar.gz"
  truncated.parent.mkdir()
  full = (data_cifar10_dir[0] / "cifar-10-python.tar.gz").read_bytes()
  truncated.write_bytes(full[: len(full) // 2])
  with pytest.raises(ValueError, match="corrupt.*download"):
    load_dataset("cifar10", root=truncated.parent)
  broken = tmp_path / "broken"
  _write_folder(broken, {**members, "test_batch": {b"labels": [1], b"data": np.zeros((1, 5))}})
  with pytest.raises(ValueError, match=r"expected uint8 \(N, 3072\)"):
    load_dataset("cifar10", root=broken)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_lazy_cifar_reads_the_in_memory_floats_bit_for_bit(
  name, data_cifar10_dir, data_cifar100_dir
):
  root = (data_cifar10_dir if name == "cifar10" else data_cifar100_dir)[0]
  eager, lazy = load_dataset(name, root=root), load_dataset(name, root=root, lazy=True)
  for split in ("train", "test"):
    x, source = getattr(eager, f"x_{split}"), getattr(lazy, f"x_{split}")
    assert isinstance(source, cifar_mod.PixelSource) and source.pixels.dtype == np.uint8
    assert len(source) == len(x)
    for i in range(len(x)):
      record = source[i]
      assert record["index"] == i and record["image"].dtype == np.float32
      np.testing.assert_array_equal(record["image"], x[i])  # the same bits
      assert record["label"] == getattr(eager, f"y_{split}")[i]
    np.testing.assert_array_equal(getattr(lazy, f"y_{split}"), getattr(eager, f"y_{split}"))
  again = load_dataset(name, root=root, lazy=True).x_train
  assert again.fingerprint() == lazy.x_train.fingerprint() != lazy.x_test.fingerprint()
  with pytest.raises(ValueError, match="lazy must be True or False"):
    load_dataset(name, root=root, lazy="yes")


def test_cifar100_keeps_fine_and_coarse(data_cifar100_dir):
  root, members, fine_to_coarse = data_cifar100_dir
  ds = load_dataset("cifar100", root=root)
  assert ds.num_classes == 100 and len(ds.coarse_names) == 20
  assert ds.class_names[7] == "fine7" and ds.coarse_names[3] == "coarse3"
  assert ds.x_train.shape == (30, 32, 32, 3) and ds.x_test.shape == (6, 32, 32, 3)
  np.testing.assert_array_equal(ds.y_train, members["train"][b"fine_labels"])
  np.testing.assert_array_equal(ds.coarse_test, members["test"][b"coarse_labels"])
  np.testing.assert_array_equal(fine_to_coarse[ds.y_train], ds.coarse_train)
  raw = np.asarray(members["train"][b"data"][:, :1024]).reshape(-1, 32, 32)  # red plane
  red = ds.x_train[..., 0] * cifar_mod.CIFAR100_STD[0] + cifar_mod.CIFAR100_MEAN[0]
  np.testing.assert_allclose(red * 255, raw, atol=1e-3)


def test_cifar10n_reads_npy_label_sets(data_cifar10_dir, tmp_path):
  root, members, labels = data_cifar10_dir
  _write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
  human = _cifar10n_dict(labels, np.random.default_rng(0))
  np.save(tmp_path / "CIFAR-10_human.npy", human)
  ds = load_dataset("cifar10n", root=tmp_path)
  assert ds.name == "cifar10n"
  assert set(ds.noisy_label_sets) == {"aggre", "worse", "random1", "random2", "random3"}
  np.testing.assert_array_equal(ds.noisy_label_sets["worse"], human["worse_label"])
  np.testing.assert_array_equal(ds.noisy_label_sets["random2"], human["random_label2"])
  np.testing.assert_array_equal(ds.y_train, labels)
  splits = make_splits(ds, noise="human:worse", val_fraction=0.2, seed=0)
  np.testing.assert_array_equal(splits.y_train, human["worse_label"][splits.train_indices])
  np.testing.assert_array_equal(splits.y_train_clean, labels[splits.train_indices])


def test_cifar10n_label_file_errors(data_cifar10_dir, tmp_path):
  _, members, labels = data_cifar10_dir
  _write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
  with pytest.raises(FileNotFoundError, match="CIFAR-10_human.npy.*UCSC-REAL"):
    load_dataset("cifar10n", root=tmp_path)
  (tmp_path / "CIFAR-10_human.pt").write_bytes(b"not really torch")
  with pytest.raises(FileNotFoundError, match=r"(?s)needs torch.*torch.load.*np.save"):
    load_dataset("cifar10n", root=tmp_path)
  wrong = _cifar10n_dict((labels + 1) % 10, np.random.default_rng(0))
  np.save(tmp_path / "CIFAR-10_human.npy", wrong)
  with pytest.raises(ValueError, match="clean_label differs from the archive's training"):
    load_dataset("cifar10n", root=tmp_path)
  partial = _cifar10n_dict(labels, np.random.default_rng(0))
  del partial["worse_label"]
  np.save(tmp_path / "CIFAR-10_human.npy", partial)
  with pytest.raises(ValueError, match=r"lacks keys \['worse_label'\]"):
    load_dataset("cifar10n", root=tmp_path)
  np.save(tmp_path / "CIFAR-10_human.npy", labels)
  with pytest.raises(ValueError, match="does not hold a dict"):
    load_dataset("cifar10n", root=tmp_path)


def test_cifar100n(data_cifar100_dir, tmp_path):
  root, members, _ = data_cifar100_dir
  _write_tar(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", members)
  fine = np.asarray(members["train"][b"fine_labels"])
  coarse = np.asarray(members["train"][b"coarse_labels"])
  noisy = (fine + np.arange(fine.size) % 2) % 100
  np.save(
    tmp_path / "CIFAR-100_human.npy",
    dict(clean_label=fine, noisy_label=noisy, clean_coarse_label=coarse, noisy_coarse_label=coarse),
  )
  ds = load_dataset("cifar100n", root=tmp_path)
  assert ds.name == "cifar100n" and list(ds.noisy_label_sets) == ["noisy100"]
  np.testing.assert_array_equal(ds.noisy_label_sets["noisy100"], noisy)
  assert ds.coarse_train is not None


# ------------------------------------------------------------------ image folder


COLORS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "emu": (0, 255, 0)}


def _make_folder(root, splits=("train", "test"), classes=tuple(COLORS), per_class=2):
  for split in splits:
    for cls in classes:
      d = root / split / cls
      d.mkdir(parents=True)
      for i in range(per_class):
        Image.new("RGB", (20 + i, 12), COLORS[cls]).save(d / f"{i}.png")
  return root


@pytest.fixture
def data_image_folder(tmp_path):
  """root/train/<class>/*.png and root/test/<class>/*.png, solid colours, 3 classes."""
  return _make_folder(tmp_path)


def test_folder_loader(data_image_folder):
  (data_image_folder / "train" / "cat" / "notes.txt").write_text("ignored")
  Image.new("L", (8, 8), 128).save(data_image_folder / "train" / "emu" / "gray.jpg")
  ds = load_dataset("folder", root=data_image_folder, image_size=8, dataset_name="toy")
  assert ds.name == "toy" and ds.class_names == ("cat", "dog", "emu")
  assert ds.x_train.shape == (7, 8, 8, 3) and ds.x_test.shape == (6, 8, 8, 3)
  assert ds.x_train.dtype == np.float32
  np.testing.assert_array_equal(ds.y_train, [0, 0, 1, 1, 2, 2, 2])
  pixels = ds.x_train * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
  np.testing.assert_allclose(pixels[0], np.broadcast_to([1.0, 0, 0], (8, 8, 3)), atol=1e-5)
  np.testing.assert_allclose(pixels[2], np.broadcast_to([0, 0, 1.0], (8, 8, 3)), atol=1e-5)
  np.testing.assert_allclose(pixels[6], 128 / 255, atol=1e-5)  # grayscale -> RGB
  assert load_dataset("folder", root=data_image_folder).input_shape == (32, 32, 3)


def test_folder_uses_val_when_no_test(tmp_path):
  _make_folder(tmp_path, splits=("train", "val"), per_class=1)
  ds = load_dataset("folder", root=tmp_path, image_size=4)
  assert ds.x_test.shape == (3, 4, 4, 3)


def test_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no training folder"):
    load_dataset("folder", root=tmp_path)
  _make_folder(tmp_path / "a", splits=("train",))
  with pytest.raises(FileNotFoundError, match="no test/ or val/ folder"):
    load_dataset("folder", root=tmp_path / "a")
  _make_folder(tmp_path / "b", splits=("train",))
  _make_folder(tmp_path / "b", splits=("test",), classes=("cat", "dog"))
  with pytest.raises(ValueError, match=r"class folders differ: only in train \['emu'\]"):
    load_dataset("folder", root=tmp_path / "b")
  root = _make_folder(tmp_path / "c")
  (root / "train" / "cat" / "0.png").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="cannot read image"):
    load_dataset("folder", root=root)
  with pytest.raises(ValueError, match="image_size must be an int >= 1"):
    load_dataset("folder", root=root, image_size=0)


# ------------------------------------------------------------------ tfds (faked)


class _FakeSource:
  def __init__(self, records, names=None):
    self._records = records
    features = {k: types.SimpleNamespace(names=v) for k, v in (names or {}).items()}
    self.dataset_info = types.SimpleNamespace(features=features)

  def __len__(self):
    return len(self._records)

  def __getitem__(self, i):
    return self._records[i]


def _fake_tfds(monkeypatch, splits, calls):
  module = types.ModuleType("tensorflow_datasets")

  def data_source(name, *, data_dir=None, download=True):
    calls.append(dict(name=name, data_dir=data_dir, download=download))
    if name != "cifar100":
      raise AssertionError(f"Dataset {name}: could not find data in {data_dir}.")
    return splits

  module.data_source = data_source
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)


def _records(rng, n, human=False):
  out = []
  for _ in range(n):
    r = {
      "image": rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8),
      "label": np.int64(rng.integers(0, 3)),
      "coarse_label": np.int64(rng.integers(0, 2)),
    }
    if human:
      r["aggre_label"] = np.int64(rng.integers(0, 3))
    out.append(r)
  return out


def test_tfds_loader_with_fake_source(monkeypatch, tmp_path):
  rng = np.random.default_rng(0)
  names = {"label": ["a", "b", "c"], "coarse_label": ["x", "y"]}
  train = _FakeSource(_records(rng, 10, human=True), names)
  test = _FakeSource(_records(rng, 4), names)
  calls = []
  _fake_tfds(monkeypatch, {"train": train, "test": test}, calls)
  ds = load_dataset("tfds:cifar100", root=tmp_path)
  assert calls == [dict(name="cifar100", data_dir=str(tmp_path), download=False)]
  assert ds.name == "tfds:cifar100" and ds.class_names == ("a", "b", "c")
  assert ds.coarse_names == ("x", "y")
  assert ds.x_train.shape == (10, 4, 4, 3) and ds.x_train.dtype == np.float32
  np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(ds.x_train.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
  raw = np.stack([r["image"] for r in train._records]) / 255.0
  np.testing.assert_allclose(
    ds.x_test * raw.std(axis=(0, 1, 2)) + raw.mean(axis=(0, 1, 2)),
    np.stack([r["image"] for r in test._records]) / 255.0,
    atol=1e-5,
  )
  np.testing.assert_array_equal(ds.y_train, [r["label"] for r in train._records])
  np.testing.assert_array_equal(ds.coarse_test, [r["coarse_label"] for r in test._records])
  np.testing.assert_array_equal(
    ds.noisy_label_sets["aggre"], [r["aggre_label"] for r in train._records]
  )
  with pytest.raises(ValueError, match=r"no split 'validation' \(splits: \['test', 'train'\]\)"):
    load_dataset("tfds:cifar100", root=tmp_path, test_split="validation")
  with pytest.raises(ValueError, match=r"no field\(s\) \['fine'\].*label_key="):
    load_dataset("tfds:cifar100", root=tmp_path, label_key="fine")


def test_tfds_lazy_sources_equal_the_in_memory_arrays(monkeypatch, tmp_path):
  from sap_jax.data.sources import RecordSource

  rng = np.random.default_rng(1)
  names = {"label": ["a", "b", "c"], "coarse_label": ["x", "y"]}
  train = _FakeSource(_records(rng, 10, human=True), names)
  test = _FakeSource(_records(rng, 4), names)
  _fake_tfds(monkeypatch, {"train": train, "test": test}, [])
  arrays = load_dataset("tfds:cifar100", root=tmp_path)
  lazy = load_dataset("tfds:cifar100", root=tmp_path, lazy=True)
  assert isinstance(lazy.x_train, RecordSource) and isinstance(lazy.x_test, RecordSource)
  for src, x in ((lazy.x_train, arrays.x_train), (lazy.x_test, arrays.x_test)):
    got = np.stack([src[i]["image"] for i in range(len(src))])
    np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)  # float64 sums vs two passes
  for key in ("y_train", "y_test", "coarse_train", "coarse_test"):
    np.testing.assert_array_equal(getattr(lazy, key), getattr(arrays, key))
  np.testing.assert_array_equal(lazy.noisy_label_sets["aggre"], arrays.noisy_label_sets["aggre"])
  assert lazy.class_names == arrays.class_names and lazy.input_shape == (4, 4, 3)


def test_tfds_not_prepared(monkeypatch, tmp_path):
  _fake_tfds(monkeypatch, {}, [])
  with pytest.raises(FileNotFoundError, match=r"(?s)could not find data.*tfds build cifar10 "):
    load_dataset("tfds:cifar10", root=tmp_path)


def test_tfds_not_installed(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match=r"pip install 'sap-jax\[tfds\]'"):
    load_dataset("tfds:cifar10")


# ------------------------------------------------------------------ registry / Dataset


def test_known_datasets_and_unknown_name():
  names = known_datasets()
  assert {
    "digits",
    "mnist1d",
    "spiral",
    "npz",
    "cifar10",
    "cifar100",
    "cifar10n",
    "cifar100n",
    "folder",
    "tfds:<name>",
  } == set(names)
  with pytest.raises(ValueError, match="unknown data set 'mnist'; known: digits, mnist1d"):
    load_dataset("mnist")
  with pytest.raises(ValueError, match=r"takes no option\(s\) \['size'\].*n_per_class"):
    load_dataset("spiral", size=3)
  with pytest.raises(ValueError, match="seed must be a non-negative int"):
    load_dataset("spiral", seed=-1)


def test_dataset_validation():
  x, y = np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1], np.int32)
  ok = Dataset("t", x, y, x, y, ("a", "b"))
  assert ok.num_classes == 2 and ok.input_shape == (2,) and "train=4" in repr(ok)
  with pytest.raises(ValueError, match="x_train must be a float32"):
    Dataset("t", x.astype(np.float64), y, x, y, ("a", "b"))
  with pytest.raises(ValueError, match="y_test must be an int32"):
    Dataset("t", x, y, x, y.astype(np.int64), ("a", "b"))
  with pytest.raises(ValueError, match=r"y_train must lie in \[0, 2\)"):
    Dataset("t", x, y + 1, x, y, ("a", "b"))
  with pytest.raises(ValueError, match="give both coarse_train and coarse_test"):
    Dataset("t", x, y, x, y, ("a", "b"), coarse_train=y)
  with pytest.raises(ValueError, match=r"noisy_label_sets\['worse'\] must have shape"):
    Dataset("t", x, y, x, y, ("a", "b"), noisy_label_sets={"worse": y[:2]})


# ------------------------------------------------------------------ make_splits


@pytest.fixture(scope="module")
def data_digits():
  return load_dataset("digits")


def test_make_splits_shapes_and_exact_mask(data_digits):
  s = make_splits(data_digits, noise="symmetric:0.25", val_fraction=0.1, seed=0)
  assert isinstance(s, NoisySplits) and s.noise == NoiseSpec("symmetric", 0.25)
  assert len(s.y_val) == 130 and len(s.y_train) == 1170
  assert s.x_train.shape == (1170, 8, 8, 1) and s.x_val.shape == (130, 8, 8, 1)
  np.testing.assert_array_equal(s.noise_mask, s.y_train != s.y_train_clean)
  # Exactly round(0.25 * 1300) flips over train + val together.
  assert s.noise_mask.sum() + s.val_noise_mask.sum() == 325
  assert s.noise_rate_observed == pytest.approx(s.noise_mask.mean())
  # Rows map back to the data set; train and val partition it.
  np.testing.assert_array_equal(s.x_train, data_digits.x_train[s.train_indices])
  np.testing.assert_array_equal(s.y_val_clean, data_digits.y_train[s.val_indices])
  assert sorted(np.concatenate([s.train_indices, s.val_indices])) == list(range(1300))
  np.testing.assert_array_equal(s.x_test, data_digits.x_test)
  assert s.num_classes == 10 and s.class_names == data_digits.class_names


def test_make_splits_validation_is_noisy_at_same_rate(data_digits):
  rates = []
  for seed in range(4):
    s = make_splits(data_digits, noise="symmetric:0.25", val_fraction=0.2, seed=seed)
    rates.append(s.val_noise_mask.mean())
    assert s.val_noise_mask.any()
  assert abs(np.mean(rates) - 0.25) < 0.04


def test_make_splits_stratified_by_noisy_label(data_digits):
  s = make_splits(data_digits, noise="symmetric:0.25", val_fraction=0.15, seed=2)
  noisy_all = np.concatenate([s.y_train, s.y_val])
  quota = len(s.y_val) * np.bincount(noisy_all, minlength=10) / noisy_all.size
  counts = np.bincount(s.y_val, minlength=10)
  assert np.all(np.abs(counts - quota) < 1)
  assert counts.sum() == round(0.15 * 1300)


def test_make_splits_determinism_and_seed_dependence(data_digits):
  a = make_splits(data_digits, noise="symmetric:0.1", seed=5)
  b = make_splits(data_digits, noise=NoiseSpec.parse("symmetric:0.1"), seed=5)
  c = make_splits(data_digits, noise="symmetric:0.1", seed=6)
  for field in ("y_train", "y_val", "train_indices", "val_indices", "noise_mask"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert not np.array_equal(a.val_indices, c.val_indices)
  flipped_a = set(a.train_indices[a.noise_mask]) | set(a.val_indices[a.val_noise_mask])
  flipped_c = set(c.train_indices[c.noise_mask]) | set(c.val_indices[c.val_noise_mask])
  assert flipped_a != flipped_c


def test_make_splits_noise_kinds(data_digits):
  clean = make_splits(data_digits, noise="none", seed=0)
  assert not clean.noise_mask.any() and clean.noise_rate_observed == 0.0
  asym = make_splits(data_digits, noise="asymmetric:0.4", seed=0)
  mask, vmask = asym.noise_mask, asym.val_noise_mask
  src = np.concatenate([asym.y_train_clean[mask], asym.y_val_clean[vmask]])
  dst = np.concatenate([asym.y_train[mask], asym.y_val[vmask]])
  assert set(src) <= {2, 3, 5, 6, 7}
  assert all({2: 7, 3: 8, 5: 6, 6: 5, 7: 1}[s] == d for s, d in zip(src, dst))
  custom = make_splits(data_digits, noise="asymmetric:0.5:0>1", seed=0)
  assert set(custom.y_train_clean[custom.noise_mask]) == {0}


def test_make_splits_hierarchical_and_cifar_map():
  rng = np.random.default_rng(0)
  fine_to_coarse = rng.permutation(np.repeat(np.arange(4), 3))
  y = np.tile(np.arange(12), 20).astype(np.int32)
  x = rng.normal(size=(y.size, 2)).astype(np.float32)
  c = fine_to_coarse[y].astype(np.int32)
  ds = Dataset("cifar100", x, y, x, y, tuple(map(str, range(12))), c, c)
  h = make_splits(ds, noise="hierarchical:0.3", seed=0)
  assert h.noise_mask.any()
  np.testing.assert_array_equal(fine_to_coarse[h.y_train], fine_to_coarse[h.y_train_clean])
  a = make_splits(ds, noise="asymmetric:0.3", seed=0)
  np.testing.assert_array_equal(fine_to_coarse[a.y_train], fine_to_coarse[a.y_train_clean])
  x10 = rng.normal(size=(100, 2)).astype(np.float32)
  y10 = np.arange(100, dtype=np.int32) % 10
  cifar10 = Dataset("cifar10", x10, y10, x10, y10, tuple(map(str, range(10))))
  s = make_splits(cifar10, noise="asymmetric:0.5", val_fraction=0.0, seed=0)
  assert {CIFAR10_ASYMMETRIC_MAP[k] for k in s.y_train_clean[s.noise_mask]} == set(
    s.y_train[s.noise_mask]
  )


@pytest.mark.parametrize("fraction,n_val", [(0.0, 0), (0.001, 1), (0.5, 650), (0.9995, 1299)])
def test_make_splits_val_fraction_edges(data_digits, fraction, n_val):
  s = make_splits(data_digits, noise="symmetric:0.2", val_fraction=fraction, seed=0)
  assert len(s.y_val) == n_val and len(s.y_train) == 1300 - n_val
  assert s.x_val.shape == (n_val, 8, 8, 1)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(val_fraction=1.0), r"val_fraction must be in \[0, 1\)"),
    (dict(val_fraction=-0.1), r"val_fraction must be in \[0, 1\)"),
    (dict(val_fraction="0.1"), "val_fraction must be a float"),
    (dict(seed=-3), "seed must be a non-negative int"),
    (dict(noise="symmetric:1.5"), r"rate must be in \[0, 1\)"),
    (dict(noise="human:worse"), "not in 'digits'.*has none; load 'cifar10n'"),
    (dict(noise="hierarchical:0.2"), "needs coarse_labels"),
  ],
)
def test_make_splits_errors(data_digits, kwargs, match):
  with pytest.raises(ValueError, match=match):
    make_splits(data_digits, **kwargs)


def test_make_splits_tiny_val_leaves_nothing():
  x = np.zeros((2, 1), np.float32)
  y = np.array([0, 1], np.int32)
  ds = Dataset("t", x, y, x, y, ("a", "b"))
  with pytest.raises(ValueError, match="leaves none to train on"):
    make_splits(ds, val_fraction=0.9)
  with pytest.raises(ValueError, match="must be a sap_jax.data.Dataset"):
    make_splits({"x": x})


def test_make_splits_human_variant_listing():
  x = np.zeros((4, 1), np.float32)
  y = np.array([0, 1, 0, 1], np.int32)
  ds = Dataset("cifar10n", x, y, x, y, ("a", "b"), noisy_label_sets={"aggre": 1 - y})
  with pytest.raises(ValueError, match="available: aggre"):
    make_splits(ds, noise="human:worse")
  s = make_splits(ds, noise="human:aggre", val_fraction=0.0)
  assert s.noise_mask.all()


def test_containers_pickle_and_validate(data_digits):
  import copy

  s = make_splits(data_digits, noise="asymmetric:0.2:1>7", val_fraction=0.1, seed=0)
  for obj in (data_digits, s, s.noise):
    clone = pickle.loads(pickle.dumps(obj))
    assert type(clone) is type(obj)
    copy.deepcopy(obj)
  assert pickle.loads(pickle.dumps(s.noise)) == s.noise
  with pytest.raises(ValueError, match="noise_mask must be a bool array equal to"):
    NoisySplits(**{**s.__dict__, "noise_mask": ~s.noise_mask})
  with pytest.raises(ValueError, match="noise_mask must be a bool array"):
    NoisySplits(**{**s.__dict__, "noise_mask": s.noise_mask.astype(np.int32)})


def test_npz_integer_inputs_are_converted_by_the_documented_rule(tmp_path):
  path = tmp_path / "u8.npz"
  images = np.arange(12 * 3 * 2).reshape(12, 3, 2).astype(np.uint8)
  _write_npz(path, x_train=images, x_test=images[:6].astype(np.int16))
  with pytest.warns(UserWarning) as record:
    ds = load_dataset("npz", root=path)
  messages = [str(w.message) for w in record]
  assert any(m.startswith("x_train in the npz has dtype uint8") and "/ 255" in m for m in messages)
  assert any(
    m.startswith("x_test in the npz has dtype int16") and "as stored" in m for m in messages
  )
  np.testing.assert_array_equal(ds.x_train, images.astype(np.float32) / np.float32(255))
  np.testing.assert_array_equal(ds.x_test, images[:6].astype(np.float32))


def test_npz_label_gaps_need_num_classes(tmp_path):
  path = tmp_path / "gap.npz"
  y = np.arange(12) % 3
  y[4] = 1000  # one stray label among classes 0..2
  _write_npz(path, y_train=y, class_names=None)
  with pytest.raises(
    ValueError, match=r"classes \[3\.\.999\] \(997 of 1001\) have no sample.*num_classes=1001"
  ):
    load_dataset("npz", root=path)
  ds = load_dataset("npz", root=path, num_classes=1001)  # explicit: empty classes allowed
  assert ds.num_classes == 1001 and ds.class_names[-1] == "1000"
  with pytest.raises(ValueError, match="labels go up to 1000 but num_classes=3"):
    load_dataset("npz", root=path, num_classes=3)
  named = tmp_path / "named.npz"
  _write_npz(named, y_train=np.arange(12) % 2)  # class "c" only in the test split: fine
  assert load_dataset("npz", root=named).num_classes == 3
  with pytest.raises(ValueError, match="num_classes=4 but class_names in the npz has 3"):
    load_dataset("npz", root=named, num_classes=4)
  with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
    load_dataset("npz", root=named, num_classes="3")


def test_npz_files_that_are_not_npz_archives_never_suggest_pickle(tmp_path):
  text = tmp_path / "text.npz"
  text.write_text("x_train,y_train\n0.1,0\n")
  npy = tmp_path / "array.npz"
  with open(npy, "wb") as f:
    np.save(f, np.zeros(3))
  for path in (text, npy):
    with pytest.raises(ValueError, match=r"is not an \.npz archive") as err:
      load_dataset("npz", root=path)
    assert "allow_pickle" not in str(err.value)
  objects = tmp_path / "objects.npz"
  y = np.empty(12, object)
  y[:] = list(np.arange(12) % 3)
  _write_npz(objects, y_train=y)
  with pytest.raises(ValueError, match="y_train in the npz holds Python objects") as err:
    load_dataset("npz", root=objects)
  assert "allow_pickle" not in str(err.value)


def test_dataset_refuses_nonfinite_inputs():
  x = np.zeros((4, 2), np.float32)
  y = np.array([0, 1, 0, 1], np.int32)
  x[2, 1] = np.inf
  with pytest.raises(
    ValueError, match=r"x_test contains NaN or inf in 1 sample\(s\) \(first at index 2\)"
  ):
    Dataset("t", np.zeros_like(x), y, x, y, ("a", "b"))
