"""CIFAR-10/100 from the official python archives, and CIFAR-10N/100N human labels.

The archives (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz`` from
https://www.cs.toronto.edu/~kriz/cifar.html) hold pickled dicts: ``b"data"`` uint8 N×3072
in CHW order, ``b"labels"`` (CIFAR-10) or ``b"fine_labels"``/``b"coarse_labels"``
(CIFAR-100), and a meta file with the label names. They are read straight from the tar (or
from the extracted folder); no TensorFlow or torch. The pickles are unpickled, so only open
archives you trust (the official ones).

CIFAR-N (Wei et al. 2022, https://github.com/UCSC-REAL/cifar-10-100n) publishes its human
labels as ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt`` (torch files). Without torch we
read the same dict saved with numpy, ``CIFAR-10_human.npy`` / ``CIFAR-100_human.npy``, put
next to the archive. Their order is the archive's training order (data_batch_1..5).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import tarfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from sap_jax.data.base import Dataset, require_root, standardize, uint8_to_unit

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
"""Per-channel statistics of the CIFAR training sets, pixels scaled to [0, 1]."""

CIFAR10N_VARIANTS = {
  "aggre_label": "aggre",
  "worse_label": "worse",
  "random_label1": "random1",
  "random_label2": "random2",
  "random_label3": "random3",
}
CIFAR100N_VARIANTS = {"noisy_label": "noisy100"}


@dataclasses.dataclass(frozen=True)
class _Layout:
  name: str
  archive: str
  folder: str
  train_members: tuple[str, ...]
  test_member: str
  meta_member: str
  mean: tuple[float, ...]
  std: tuple[float, ...]
  human_file: str  # stem of the CIFAR-N label file
  human_variants: Mapping[str, str]


_CIFAR10 = _Layout(
  name="cifar10",
  archive="cifar-10-python.tar.gz",
  folder="cifar-10-batches-py",
  train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
  test_member="test_batch",
  meta_member="batches.meta",
  mean=CIFAR10_MEAN,
  std=CIFAR10_STD,
  human_file="CIFAR-10_human",
  human_variants=CIFAR10N_VARIANTS,
)
_CIFAR100 = _Layout(
  name="cifar100",
  archive="cifar-100-python.tar.gz",
  folder="cifar-100-python",
  train_members=("train",),
  test_member="test",
  meta_member="meta",
  mean=CIFAR100_MEAN,
  std=CIFAR100_STD,
  human_file="CIFAR-100_human",
  human_variants=CIFAR100N_VARIANTS,
)


# --------------------------------------------------------------------------------------
# Reading the archive.
# --------------------------------------------------------------------------------------


def _locate(root: str, layout: _Layout) -> tuple[str, bool]:
  """Returns (path, is_tar): the archive or the folder holding the pickled members."""
  if os.path.isfile(root):
    return root, True
  if os.path.isdir(root):
    if os.path.isdir(os.path.join(root, layout.folder)):
      return os.path.join(root, layout.folder), False
    if os.path.isfile(os.path.join(root, layout.archive)):
      return os.path.join(root, layout.archive), True
    if os.path.isfile(os.path.join(root, layout.test_member)):
      return root, False  # root is the extracted folder itself
  raise FileNotFoundError(
    f"{layout.name}: found neither {layout.archive!r} nor {layout.folder + '/'!r} in "
    f"{root!r}; download https://www.cs.toronto.edu/~kriz/{layout.archive} on a machine "
    "with internet and copy it (unextracted is fine) into that folder, or pass root= "
    "the folder that holds it."
  )


def _unpickle(f, where: str) -> dict:
  try:
    obj = pickle.load(f, encoding="bytes")
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
    raise ValueError(
      f"cannot unpickle CIFAR member {where!r} ({err}); the file is corrupt or not a "
      "CIFAR python-version pickle: download the archive again."
    ) from None
  if not isinstance(obj, Mapping):
    raise ValueError(
      f"CIFAR member {where!r} holds a {type(obj).__name__}, not a dict; it is not a "
      "CIFAR python-version pickle."
    )
  return obj


def _read_members(path: str, is_tar: bool, layout: _Layout) -> dict[str, dict]:
  """Unpickles the train, test and meta members of a CIFAR archive or folder."""
  names = (*layout.train_members, layout.test_member, layout.meta_member)
  out = {}
  if not is_tar:
    for name in names:
      member = os.path.join(path, name)
      if not os.path.isfile(member):
        raise FileNotFoundError(
          f"{layout.name}: {member!r} is missing; re-extract {layout.archive} so "
          f"that {layout.folder}/ holds {', '.join(names)}."
        )
      with open(member, "rb") as f:
        out[name] = _unpickle(f, member)
    return out
  wanted = {f"{layout.folder}/{name}": name for name in names}
  try:
    tar = tarfile.open(path, "r:*")
  except tarfile.TarError as err:
    raise ValueError(
      f"{layout.name}: {path!r} is not a readable tar archive ({err}); download "
      f"{layout.archive} again (the python version)."
    ) from None
  try:
    with tar:
      for member in tar:  # one sequential pass: no re-decompression on backward seeks
        name = wanted.get(member.name.removeprefix("./"))
        if name is not None and member.isfile():
          with tar.extractfile(member) as f:
            out[name] = _unpickle(f, f"{path}:{member.name}")
  except (tarfile.TarError, EOFError, OSError) as err:
    raise ValueError(
      f"{layout.name}: {path!r} is truncated or corrupt ({err}); download {layout.archive} again."
    ) from None
  missing = [f"{layout.folder}/{name}" for name in names if name not in out]
  if missing:
    raise ValueError(
      f"{layout.name}: {path!r} has no member(s) {', '.join(missing)}; use the python "
      f"version of the archive ({layout.archive})."
    )
  return out


def _field(d: Mapping, key: str, where: str):
  for k in (key.encode(), key):
    if k in d:
      return d[k]
  raise ValueError(
    f"CIFAR member {where!r} has no field {key!r} (has {sorted(map(str, d))}); it is "
    "not a CIFAR python-version pickle."
  )


def _images(batch: Mapping, where: str) -> np.ndarray:
  """b"data" uint8 N×3072 (CHW, row-major) → uint8 N×32×32×3 (HWC)."""
  data = np.asarray(_field(batch, "data", where))
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
    raise ValueError(
      f"CIFAR member {where!r}: data has dtype {data.dtype} and shape {data.shape}, "
      "expected uint8 (N, 3072); it is not a CIFAR python-version pickle."
    )
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _labels(batch: Mapping, key: str, n: int, where: str) -> np.ndarray:
  y = np.asarray(_field(batch, key, where), dtype=np.int64)
  if y.shape != (n,):
    raise ValueError(
      f"CIFAR member {where!r}: {key} has shape {y.shape}, expected ({n},) to match "
      "the images; the archive is corrupt, download it again."
    )
  return y.astype(np.int32)


def _names(meta: Mapping, key: str) -> tuple[str, ...]:
  return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in _field(meta, key, "meta"))


def _check_lazy(lazy: Any) -> None:
  if not isinstance(lazy, bool):
    raise ValueError(f"lazy must be True or False, got {lazy!r}.")


class PixelSource:
  """uint8 images as a source whose records are standardised float32 images.

  Record i is ``{"image": (x[i] / 255 - mean) / std, "label": y[i], "index": i}``, the same
  float32 values as the in-memory loader's row i (the same elementwise operations), so a
  streamed run equals the in-memory one. Holds the pixels as uint8: a quarter of the
  float32 array, which is never built.
  """

  def __init__(self, pixels: np.ndarray, labels: np.ndarray, mean: Any, std: Any):
    self.pixels, self.labels = pixels, labels
    self.mean, self.std = tuple(mean), tuple(std)

  def __len__(self) -> int:
    return len(self.pixels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    image = standardize(uint8_to_unit(self.pixels[int(index)]), self.mean, self.std)
    return {"image": image, "label": int(self.labels[int(index)]), "index": int(index)}

  def fingerprint(self) -> str:
    h = hashlib.sha256(f"pixels|{self.pixels.shape}|{self.mean}|{self.std}|".encode())
    h.update(np.ascontiguousarray(self.pixels).data)
    h.update(np.asarray(self.labels, np.int64).tobytes())
    # its own kind: not compared with the float arrays' "sha256:" of an in-memory run
    return f"pixels-sha256:{h.hexdigest()}"

  def __repr__(self) -> str:
    return f"PixelSource({len(self)} images {self.pixels.shape[1:]})"


def _load(root, layout: _Layout, lazy: bool = False) -> tuple[Dataset, list[str]]:
  """Loads a CIFAR archive; also returns the folders to search for CIFAR-N label files."""
  _check_lazy(lazy)
  root = require_root(root, layout.name, f"'folder containing {layout.archive}'")
  path, is_tar = _locate(root, layout)
  members = _read_members(path, is_tar, layout)
  fine_key = "labels" if layout is _CIFAR10 else "fine_labels"

  def split(names):
    xs, ys, cs = [], [], []
    for name in names:
      x = _images(members[name], name)
      xs.append(x)
      ys.append(_labels(members[name], fine_key, len(x), name))
      if layout is _CIFAR100:
        cs.append(_labels(members[name], "coarse_labels", len(x), name))
    y = np.concatenate(ys)
    if lazy:  # the uint8 pixels (a quarter of the floats), standardised one image at a time
      x = PixelSource(np.concatenate(xs), y, layout.mean, layout.std)
    else:
      x = standardize(uint8_to_unit(np.concatenate(xs)), layout.mean, layout.std)
    return x, y, (np.concatenate(cs) if cs else None)

  x_tr, y_tr, c_tr = split(layout.train_members)
  x_te, y_te, c_te = split((layout.test_member,))
  meta = members[layout.meta_member]
  if layout is _CIFAR10:
    class_names, coarse_names = _names(meta, "label_names"), None
  else:
    class_names = _names(meta, "fine_label_names")
    coarse_names = _names(meta, "coarse_label_names")
  dataset = Dataset(
    name=layout.name,
    x_train=x_tr,
    y_train=y_tr,
    x_test=x_te,
    y_test=y_te,
    class_names=class_names,
    coarse_train=c_tr,
    coarse_test=c_te,
    coarse_names=coarse_names,
  )
  if os.path.isdir(path):  # the extracted folder, or the folder that holds it
    search = [path, os.path.dirname(os.path.abspath(path))]
  else:  # next to the archive
    search = [os.path.dirname(os.path.abspath(path))]
  return dataset, list(dict.fromkeys(os.path.abspath(d) for d in search))


def load_cifar10(*, root=None, seed: int = 0, lazy: bool = False) -> Dataset:
  """Loads CIFAR-10: NHWC float32, /255 then standardised with CIFAR-10 mean/std.

  Args:
    root: Folder holding ``cifar-10-python.tar.gz`` or the extracted
      ``cifar-10-batches-py/`` (or the path of either itself).
    seed: Unused.
    lazy: the inputs as `PixelSource`s (uint8 pixels, each image standardised when it
      is read) instead of float32 arrays: what a streamed run (`sap-jax`, the runner) reads.

  Returns:
    A Dataset "cifar10": 50000 train / 10000 test images 32×32×3, 10 classes.
  """
  del seed
  return _load(root, _CIFAR10, lazy)[0]


def load_cifar100(*, root=None, seed: int = 0, lazy: bool = False) -> Dataset:
  """Loads CIFAR-100 with fine labels (100 classes) and coarse labels (20 superclasses).

  Args:
    root: Folder holding ``cifar-100-python.tar.gz`` or the extracted
      ``cifar-100-python/`` (or the path of either itself).
    seed: Unused.
    lazy: the inputs as `PixelSource`s (uint8 pixels, each image standardised when it
      is read) instead of float32 arrays: what a streamed run (`sap-jax`, the runner) reads.

  Returns:
    A Dataset "cifar100" with coarse_train/coarse_test/coarse_names set.
  """
  del seed
  return _load(root, _CIFAR100, lazy)[0]


# --------------------------------------------------------------------------------------
# CIFAR-N human labels.
# --------------------------------------------------------------------------------------


def _convert_hint(stem: str) -> str:
  return (
    f"convert the published {stem}.pt once, on a machine with torch:\n"
    "    import numpy as np, torch\n"
    f"    d = torch.load('{stem}.pt', weights_only=False)\n"
    f"    np.save('{stem}.npy', {{k: np.asarray(v) for k, v in d.items()}})\n"
    "and put the .npy next to the CIFAR archive."
  )


def _read_human_labels(
  search: list[str], layout: _Layout, clean: np.ndarray, coarse: np.ndarray | None
) -> dict[str, np.ndarray]:
  stem = layout.human_file
  found = [os.path.join(d, stem + ".npy") for d in search]
  path = next((p for p in found if os.path.isfile(p)), None)
  if path is None:
    if any(os.path.isfile(os.path.join(d, stem + ".pt")) for d in search):
      raise FileNotFoundError(f"found {stem}.pt but reading it needs torch; " + _convert_hint(stem))
    raise FileNotFoundError(
      f"{layout.name}n needs the CIFAR-N label file {stem}.npy in one of {search}; get "
      f"{stem}.pt from https://github.com/UCSC-REAL/cifar-10-100n (data/) and "
      + _convert_hint(stem)
    )
  obj = np.load(path, allow_pickle=True)
  labels = obj.item() if obj.dtype == object and obj.ndim == 0 else None
  if not isinstance(labels, Mapping):
    raise ValueError(
      f"{path!r} does not hold a dict of label arrays (np.save of a dict); " + _convert_hint(stem)
    )
  wanted = ("clean_label", *layout.human_variants)
  missing = [k for k in wanted if k not in labels]
  if missing:
    raise ValueError(
      f"{path!r} lacks keys {missing} (has {sorted(labels)}); it must be the "
      f"{stem} file of CIFAR-N, converted with all its keys."
    )
  arrays = {}
  for key in (*wanted, "clean_coarse_label"):
    if key not in labels:
      continue
    y = np.asarray(labels[key])
    if not np.issubdtype(y.dtype, np.integer) or y.shape != clean.shape:
      raise ValueError(
        f"{path!r}: {key} has dtype {y.dtype} and shape {y.shape}, expected integer "
        f"labels of shape {clean.shape} (one per training image)."
      )
    arrays[key] = y.astype(np.int32)
  checks = [("clean_label", clean)]
  if coarse is not None and "clean_coarse_label" in arrays:
    checks.append(("clean_coarse_label", coarse))
  for key, reference in checks:
    n_diff = int(np.count_nonzero(arrays[key] != reference))
    if n_diff:
      raise ValueError(
        f"{path!r}: {key} differs from the archive's training labels at {n_diff} of "
        f"{clean.size} positions; the label file must match this archive, in its "
        f"order ({', '.join(layout.train_members)}). Use the official "
        f"{layout.archive} and {stem}."
      )
  return {variant: arrays[key] for key, variant in layout.human_variants.items()}


def _load_n(root, layout: _Layout, lazy: bool = False) -> Dataset:
  dataset, search = _load(root, layout, lazy)
  sets = _read_human_labels(search, layout, dataset.y_train, dataset.coarse_train)
  return dataclasses.replace(dataset, name=layout.name + "n", noisy_label_sets=sets)


def load_cifar10n(*, root=None, seed: int = 0, lazy: bool = False) -> Dataset:
  """Loads CIFAR-10 plus the CIFAR-10N human label sets.

  Args:
    root: As for cifar10; ``CIFAR-10_human.npy`` must be in the same folder as the
      archive (or the extracted folder, or inside it).
    seed: Unused.
    lazy: the inputs as `PixelSource`s (uint8 pixels, each image standardised when it
      is read) instead of float32 arrays: what a streamed run (`sap-jax`, the runner) reads.

  Returns:
    A Dataset "cifar10n" whose noisy_label_sets has "aggre", "worse", "random1",
    "random2", "random3"; y_train stays the clean labels.
  """
  del seed
  return _load_n(root, _CIFAR10, lazy)


def load_cifar100n(*, root=None, seed: int = 0, lazy: bool = False) -> Dataset:
  """Loads CIFAR-100 plus the CIFAR-100N human label set "noisy100".

  Args:
    root: As for cifar100; ``CIFAR-100_human.npy`` next to the archive.
    seed: Unused.
    lazy: the inputs as `PixelSource`s (uint8 pixels, each image standardised when it
      is read) instead of float32 arrays: what a streamed run (`sap-jax`, the runner) reads.

  Returns:
    A Dataset "cifar100n" whose noisy_label_sets has "noisy100" (fine labels).
  """
  del seed
  return _load_n(root, _CIFAR100, lazy)
