"""Random-access data sources: where samples live, read one record at a time.

A *source* is anything with ``__len__`` and ``__getitem__(i) -> record`` (grain's
``RandomAccessDataSource`` protocol, which ``tfds.data_source``, ArrayRecord readers, a
``grain.MapDataset`` and the classes here all satisfy). A *record* is a mapping::

    {"image": float32 array of the per-example shape (H×W×C images, 40×1 MNIST-1D, ...),
     "label": int class index in [0, K),
     "index": int, the sample's index in its source (optional: the position is used)}

Nothing here holds more than one record's pixels: `FolderSource` lists file names and
labels when built and decodes one image per ``__getitem__``, so a source of a million
images costs its file list, not its pixels. `sap_jax.data.feeder.feed` turns any source
into device batches; every phase that takes a source reads it through the feeder.

* `ArraySource`: in-memory arrays as a source (the in-memory run and the streamed run read
  the same records).
* `FolderSource`: an image-folder split (``root/<split>/<class>/*.jpg``), decoded as
  `sap_jax.data.folder.load_folder` decodes it, so both give the same floats.
* `RecordSource`: any source whose records use other keys or raw ``uint8`` pixels (a
  ``tfds.data_source``), adapted to the record format above.
* `is_source` / `check_source`: what counts as a source, and the up-front checks.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

IMAGE, LABEL, INDEX = "image", "label", "index"
"""The record keys every source returns."""


@runtime_checkable
class Source(Protocol):
  """grain's random-access protocol: a length and one record per index."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> Mapping[str, Any]: ...


def is_source(data: Any) -> bool:
  """Whether ``data`` is a random-access source (not an array or a list of samples).

  The rule: anything with a ``shape`` (numpy arrays, memmaps, jax arrays), a list or a
  tuple (always an array-like of samples, even a list of records: it is refused as inputs,
  `sap_jax.input_checks.as_array`), a str, bytes or a mapping is not a source; any other
  object with ``__len__`` and ``__getitem__`` is one (grain's protocol).
  """
  if isinstance(data, (np.ndarray, list, tuple, str, bytes, Mapping)) or hasattr(data, "shape"):
    return False
  return hasattr(data, "__len__") and hasattr(data, "__getitem__")


class ArraySource:
  """In-memory arrays as a source: record i is ``{"image": x[i], "label": y[i], "index": i}``.

  Args:
    x: ``(N, ...)`` float inputs.
    y: ``(N,)`` integer labels, or None (records without labels: prediction only).
  """

  def __init__(self, x: Any, y: Any = None):
    x = np.asarray(x)
    if x.ndim < 1 or len(x) == 0:
      raise ValueError(f"ArraySource needs (N, ...) inputs with N ≥ 1, got shape {x.shape}.")
    if y is not None:
      y = np.asarray(y)
      if y.shape != (len(x),):
        raise ValueError(
          f"ArraySource: labels of shape {y.shape} for {len(x)} inputs; pass one label per input."
        )
    self.x, self.y = x, y

  def __len__(self) -> int:
    return len(self.x)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = {IMAGE: self.x[index], INDEX: int(index)}
    if self.y is not None:
      record[LABEL] = int(self.y[index])
    return record

  def fingerprint(self) -> str:
    h = hashlib.sha256(f"{self.x.dtype.str}|{self.x.shape}|".encode())
    h.update(np.ascontiguousarray(self.x).view(np.uint8).data)
    if self.y is not None:
      h.update(np.asarray(self.y, np.int64).tobytes())
    return f"sha256:{h.hexdigest()}"

  def __repr__(self) -> str:
    return f"ArraySource(x={self.x.shape}, labels={self.y is not None})"


class FolderSource:
  """One split of an image folder (``root/<split>/<class>/*``), read lazily.

  Built from the file list alone; ``__getitem__`` decodes one image as
  `sap_jax.data.folder.load_folder` does (RGB, bilinear resize to ``image_size``², [0, 1],
  ImageNet mean/std), so ``FolderSource(root, "train")[i]["image"]`` equals
  ``load_folder(root=root).x_train[i]``. A file that cannot be decoded is named in the
  error with its index.

  Args:
    root: the folder holding ``<split>/``.
    split: the split's sub-folder ("train", "test", "val").
    image_size: output side length in pixels.
    classes: the class names (sub-folders) in label order; default: the split's sorted
      sub-folders. Pass the training split's classes for an evaluation split.
    normalize: standardise with the ImageNet mean/std (as `load_folder`); False gives
      [0, 1] pixels, for a transform that normalises itself (augmentation).
  """

  def __init__(
    self,
    root: Any,
    split: str = "train",
    *,
    image_size: int = 32,
    classes: Sequence[str] | None = None,
    normalize: bool = True,
  ):
    from sap_jax.data import folder

    root = os.fspath(root)
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise FileNotFoundError(
        f"no folder {split_dir!r}; lay the data out as root/{split}/<class>/*.jpg."
      )
    found = folder.class_dirs(split_dir)
    classes = list(found if classes is None else classes)
    missing = sorted(set(found) - set(classes))
    if missing:
      raise ValueError(
        f"{split_dir!r} has class folders {missing} that are not among the {len(classes)} "
        "classes given; give every split the same class sub-folders."
      )
    if len(classes) < 2:
      raise ValueError(
        f"{split_dir!r} has {len(classes)} class folder(s); make one sub-folder per class "
        "(at least two)."
      )
    paths, labels = folder.list_split(split_dir, classes)
    if not paths:
      raise ValueError(f"{split_dir!r} holds no images ({', '.join(folder.IMAGE_EXTENSIONS)}).")
    self.root, self.split, self.image_size, self.normalize = root, split, image_size, normalize
    self.classes = tuple(classes)
    self.paths = tuple(paths)
    self.labels = labels

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    from sap_jax.data import folder

    index = int(index)
    image = folder.decode_image(self.paths[index], self.image_size, self.normalize, index)
    return {IMAGE: image, LABEL: int(self.labels[index]), INDEX: index}

  def fingerprint(self) -> str:
    """A digest of the files (relative path, size, modification time), the labels and the
    decoding options: it changes when a file is added, removed, replaced or relabelled."""
    h = hashlib.sha256(f"{self.image_size}|{self.normalize}|{self.classes}|".encode())
    for path, label in zip(self.paths, self.labels):
      st = os.stat(path)
      rel = os.path.relpath(path, self.root)
      h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    return f"files-sha256:{h.hexdigest()}"

  def empty_classes(self) -> list[str]:
    """The class names with no image in this split."""
    present = set(np.unique(self.labels).tolist())
    return [c for i, c in enumerate(self.classes) if i not in present]

  def __repr__(self) -> str:
    return (
      f"FolderSource({os.path.join(self.root, self.split)!r}, {len(self)} images, "
      f"{len(self.classes)} classes, {self.image_size}px)"
    )


class Subset:
  """A view of a source: the samples ``indices`` (default all), in that order, with
  ``labels`` in place of the source's own when given (noisy labels over a clean source).

  Record i is ``source[indices[i]]`` with ``"index"`` i (its place in the view) and
  ``"label"`` ``labels[i]``. Only the indices and labels are held, never the inputs.
  """

  def __init__(self, source: Any, indices: Any = None, labels: Any = None):
    n = source_length(source, "Subset source")
    self.source = source
    self.indices = np.arange(n) if indices is None else np.asarray(indices, np.int64)
    if self.indices.ndim != 1 or (
      self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n)
    ):
      raise ValueError(f"Subset: indices must be 1-D positions in [0, {n}).")
    self.labels = None if labels is None else np.asarray(labels)
    if self.labels is not None and self.labels.shape != self.indices.shape:
      raise ValueError(
        f"Subset: {self.labels.shape} labels for {len(self.indices)} samples; give one each."
      )

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    record = dict(self.source[int(self.indices[index])])
    record[INDEX] = index
    if self.labels is not None:
      record[LABEL] = int(self.labels[index])
    return record

  def fingerprint(self) -> str:
    """A digest of the view: its source's fingerprint, the indices and the labels."""
    h = hashlib.sha256(source_fingerprint(self.source).encode())
    h.update(self.indices.tobytes())
    if self.labels is not None:
      h.update(np.asarray(self.labels, np.int64).tobytes())
    return f"sha256:{h.hexdigest()}"

  def __repr__(self) -> str:
    return f"Subset({self.source!r}, {len(self)} samples, labels={self.labels is not None})"


def subset(x: Any, indices: Any) -> Any:
  """``x[indices]`` of an array, or the `Subset` view of a source."""
  return Subset(x, indices) if is_source(x) else x[indices]


def with_labels(x: Any, y: Any) -> tuple[Any, Any]:
  """``(x, y)`` of arrays as they are; of a source, ``(Subset(x, labels=y), None)``: the
  form every phase takes (a source carries its labels)."""
  return (Subset(x, labels=y), None) if is_source(x) else (x, y)


def input_shape(x: Any) -> tuple[int, ...]:
  """One sample's shape, of an ``(N, ...)`` array or of a source's first record."""
  return tuple(first_input(x).shape[1:]) if is_source(x) else tuple(np.shape(x)[1:])


def source_fingerprint(source: Any) -> str:
  """The source's own ``fingerprint()`` (a digest of what identifies its samples), or its
  type and length when it has none."""
  fingerprint = getattr(source, "fingerprint", None)
  if callable(fingerprint):
    return str(fingerprint())
  return f"{type(source).__module__}.{type(source).__qualname__}:{len(source)}"


class RecordSource:
  """A source whose records use other keys or raw pixels, adapted to the record format.

  Args:
    source: any random-access source (``tfds.data_source(...)``, an ArrayRecord reader
      with a parse step, ...).
    image_key: the record key of the input.
    label_key: the record key of the label (None: records without labels).
    convert: applied to the input (e.g. ``uint8`` → standardised float32); default: cast
      to float32, scaling ``uint8`` pixels to [0, 1].
  """

  def __init__(
    self,
    source: Any,
    *,
    image_key: str = "image",
    label_key: str | None = "label",
    convert: Callable[[np.ndarray], np.ndarray] | None = None,
  ):
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
      raise TypeError(
        f"RecordSource needs a random-access source (len() and [i]), got {type(source).__name__}."
      )
    self.source, self.image_key, self.label_key = source, image_key, label_key
    self.convert = convert or to_float32

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    raw = self.source[int(index)]
    if not isinstance(raw, Mapping) or self.image_key not in raw:
      keys = list(raw) if isinstance(raw, Mapping) else type(raw).__name__
      raise ValueError(
        f"record {int(index)} has no {self.image_key!r} (got {keys}); pass image_key= the "
        "key that holds the input."
      )
    record = {IMAGE: self.convert(np.asarray(raw[self.image_key])), INDEX: int(index)}
    if self.label_key is not None:
      if self.label_key not in raw:
        raise ValueError(
          f"record {int(index)} has no label {self.label_key!r} (keys {list(raw)}); pass "
          "label_key= the key that holds the class index."
        )
      record[LABEL] = int(np.asarray(raw[self.label_key]))
    return record


def to_float32(image: np.ndarray) -> np.ndarray:
  """float32 input: ``uint8`` pixels scaled to [0, 1], anything else cast."""
  if image.dtype == np.uint8:
    return image.astype(np.float32) / np.float32(255.0)
  return image.astype(np.float32)


def source_length(source: Any, what: str = "source") -> int:
  """``len(source)`` after the checks every phase makes on a source before any work.

  Raises:
    TypeError: not a random-access source (with the fix).
    ValueError: an empty source.
  """
  if not is_source(source):
    raise TypeError(
      f"{what}: expected a random-access source (an object with len() and [i] returning a "
      f"record), got {type(source).__name__}; wrap arrays with "
      "sap_jax.data.sources.ArraySource(x, y)."
    )
  n = len(source)
  if n < 1:
    raise ValueError(f"{what} is empty; pass a source with at least one sample.")
  return n


def no_separate_labels(y: Any, what: str = "y") -> None:
  """Refuses labels given beside a source (a source's records carry their labels)."""
  if y is not None:
    raise ValueError(
      f"a source carries its own labels (records {{'image', 'label'}}); pass {what}=None "
      "with a source, or arrays for both."
    )


def check_length(source: Any, n: int, what: str = "source") -> None:
  """Refuses a source whose length is no longer ``n`` (it changed between two passes)."""
  if len(source) != n:
    raise ValueError(
      f"{what} changed length between two passes ({n} → {len(source)} samples); a source "
      "must not change while a run reads it."
    )


def first_input(source: Any, what: str = "source") -> np.ndarray:
  """The source's first input as a batch of one, ``(1, ...)`` float32 (for shape-only
  traces of the model)."""
  record = source[0]
  check_record(record, 0, labelled=False, what=what)
  return np.asarray(record[IMAGE], np.float32)[None]


def check_record(record: Any, index: int, *, labelled: bool, what: str = "source") -> None:
  """The record format: a mapping with ``"image"`` (and ``"label"`` when ``labelled``).

  Raises:
    ValueError: naming the index and what is missing.
  """
  if not isinstance(record, Mapping):
    raise ValueError(
      f"{what}[{index}] is a {type(record).__name__}, not a record; a source returns "
      'mappings {"image": array, "label": int} (wrap arrays with ArraySource).'
    )
  if IMAGE not in record:
    raise ValueError(
      f"{what}[{index}] has no 'image' (keys {list(record)}); adapt the source with "
      "sap_jax.data.sources.RecordSource(source, image_key=...)."
    )
  if labelled and LABEL not in record:
    raise ValueError(
      f"{what}[{index}] has no 'label' (keys {list(record)}); every sample needs its class "
      "index (RecordSource(source, label_key=...) names the key)."
    )


def source_labels(source: Any, what: str = "source") -> np.ndarray:
  """The int32 labels of every sample of a labelled source, in source order.

  Read from what the source holds when it knows them without decoding an input
  (`ArraySource`, `FolderSource`, `Subset`, and any source with a ``labels`` array of one
  label per sample), else from every record (one pass that decodes the inputs too).

  Raises:
    ValueError: a record without a label, naming its index.
  """
  n = source_length(source, what)
  if isinstance(source, Subset):
    if source.labels is not None:
      return np.asarray(source.labels, np.int32)
    return source_labels(source.source, what)[source.indices]
  if isinstance(source, ArraySource) and source.y is not None:
    return np.asarray(source.y, np.int32)
  known = getattr(source, "labels", None)
  if known is not None and not callable(known) and np.shape(known) == (n,):
    return np.asarray(known, np.int32)
  out = np.empty(n, np.int32)
  for i in range(n):
    record = source[i]
    check_record(record, i, labelled=True, what=what)
    out[i] = int(np.asarray(record[LABEL]))
  return out
