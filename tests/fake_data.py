"""Writers of small files in the real on-disk formats, for end-to-end tests.

CIFAR python archives (pickled batches in a tar.gz), the CIFAR-10N label file
(a pickled dict saved with np.save) and an image-folder tree (one folder per
class, as Clothing1M and WebVision ship). Images carry a class-dependent signal
so that a model can learn something in a few steps.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = [
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
]


def _images(rng, labels, size=32):
  """uint8 HWC images: noise plus a bright square whose position encodes the label."""
  n = len(labels)
  x = rng.integers(0, 96, size=(n, size, size, 3), dtype=np.uint8)
  for i, y in enumerate(labels):
    r, c = divmod(int(y) % 16, 4)
    s = size // 4
    x[i, r * s : (r + 1) * s, c * s : (c + 1) * s, int(y) % 3] = 255
  return x


def _add_pickle(tar, name, obj):
  payload = pickle.dumps(obj, protocol=2)
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 20, seed: int = 0) -> np.ndarray:
  """Writes root/cifar-10-python.tar.gz; returns the training labels in order."""
  rng = np.random.default_rng(seed)
  root.mkdir(parents=True, exist_ok=True)
  train_labels = []
  with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
    for i in range(1, 6):
      labels = rng.integers(0, 10, per_batch)
      train_labels.append(labels)
      images = _images(rng, labels)
      _add_pickle(
        tar,
        f"cifar-10-batches-py/data_batch_{i}",
        {
          b"labels": [int(v) for v in labels],
          b"data": images.transpose(0, 3, 1, 2).reshape(per_batch, -1),
        },
      )
    labels = rng.integers(0, 10, n_test)
    _add_pickle(
      tar,
      "cifar-10-batches-py/test_batch",
      {
        b"labels": [int(v) for v in labels],
        b"data": _images(rng, labels).transpose(0, 3, 1, 2).reshape(n_test, -1),
      },
    )
    _add_pickle(
      tar, "cifar-10-batches-py/batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES]}
    )
  return np.concatenate(train_labels)


def write_cifar10n(
  root: Path, clean: np.ndarray, flip: float = 0.3, seed: int = 0
) -> dict[str, np.ndarray]:
  """Writes root/CIFAR-10_human.npy with the CIFAR-N keys; returns the dict."""
  rng = np.random.default_rng(seed)
  out = {"clean_label": np.asarray(clean)}
  for key in ("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3"):
    flipped = (clean + rng.integers(1, 10, clean.size)) % 10
    out[key] = np.where(rng.random(clean.size) < flip, flipped, clean)
  np.save(root / "CIFAR-10_human.npy", out, allow_pickle=True)
  return out


def write_image_folder(
  root: Path, classes=("shirt", "coat", "dress"), per_class: int = 8, size: int = 24, seed: int = 0
) -> Path:
  """Writes root/{train,test}/<class>/*.png with a class-dependent colour patch."""
  rng = np.random.default_rng(seed)
  for split in ("train", "test"):
    for k, cls in enumerate(classes):
      d = root / split / cls
      d.mkdir(parents=True, exist_ok=True)
      for i in range(per_class):
        img = _images(rng, [k], size=size)[0]
        Image.fromarray(img).save(d / f"{i}.png")
  return root


def blobs(n: int, seed: int = 0, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """k well-separated Gaussian blobs in 2-D: (float32 (n, 2), int32 (n,))."""
  rng = np.random.default_rng(seed)
  centres = 4.0 * np.stack(
    [np.cos(2 * np.pi * np.arange(k) / k), np.sin(2 * np.pi * np.arange(k) / k)], 1
  )
  y = rng.integers(0, k, n).astype(np.int32)
  x = (centres[y] + 0.5 * rng.normal(size=(n, 2))).astype(np.float32)
  return x, y
