"""Initialisation from pretrained weights: read named arrays, merge them into a model.

Two pure steps, each usable alone::

  pretrained = load_named_arrays("resnet50_imagenet.safetensors")
  variables, report = merge_pretrained(model.init(key, x), pretrained, reinit=("head",))

Names are the package's "/"-joined variable paths (`sap_jax.layers.key_path_name`):
``"params/stage1_block1/conv1/kernel"``, ``"batch_stats/stem_bn/mean"``. A torchvision
state dict is converted to such a tree first (`sap_jax.convert.torchvision`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from sap_jax.layers import key_path_name

COLLECTIONS = ("params", "batch_stats")

# safetensors dtype tags → numpy dtypes (little-endian).
_SAFETENSORS_DTYPES = {
  "F64": np.dtype("<f8"),
  "F32": np.dtype("<f4"),
  "F16": np.dtype("<f2"),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "I64": np.dtype("<i8"),
  "I32": np.dtype("<i4"),
  "I16": np.dtype("<i2"),
  "I8": np.dtype("i1"),
  "U64": np.dtype("<u8"),
  "U32": np.dtype("<u4"),
  "U16": np.dtype("<u2"),
  "U8": np.dtype("u1"),
  "BOOL": np.dtype("?"),
}


class PretrainedReport(NamedTuple):
  """What `merge_pretrained` did, by variable name (JSON-able: ``report._asdict()``).

  Attributes:
    loaded: Model variables taken from the pretrained arrays.
    missing: Model variables absent from the pretrained arrays (kept as initialised).
    unexpected: Pretrained arrays the model has no variable for (ignored).
    reinitialized: Model variables named by ``reinit`` whose pretrained shape differs
      (a classifier head for a new number of classes); kept as initialised.
  """

  loaded: tuple[str, ...]
  missing: tuple[str, ...]
  unexpected: tuple[str, ...]
  reinitialized: tuple[str, ...]


def flatten_names(tree: Any) -> dict[str, Any]:
  """A nested tree (dicts, FrozenDicts, lists) as ``{"/"-joined path: leaf}``."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {key_path_name(path): leaf for path, leaf in leaves}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Parses a .safetensors file: u64 header length, JSON header, raw little-endian buffer."""
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 8:
    raise ValueError(f"{path} is too short to be a safetensors file ({len(data)} bytes).")
  (n,) = struct.unpack("<Q", data[:8])
  if n > len(data) - 8:
    raise ValueError(
      f"{path}: header length {n} exceeds the file ({len(data)} bytes); the file is "
      "truncated or not safetensors."
    )
  try:
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: unreadable safetensors header ({e}).") from e
  buffer = memoryview(data)[8 + n :]
  out = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    tag = entry.get("dtype")
    if tag not in _SAFETENSORS_DTYPES:
      raise ValueError(
        f"{path}: tensor {name!r} has dtype {tag!r}, not one of "
        f"{sorted(_SAFETENSORS_DTYPES)}; convert it to F32 first."
      )
    dtype, shape = _SAFETENSORS_DTYPES[tag], tuple(entry["shape"])
    begin, end = entry["data_offsets"]
    if not 0 <= begin <= end <= len(buffer) or end - begin != dtype.itemsize * int(
      np.prod(shape, dtype=np.int64)
    ):
      raise ValueError(
        f"{path}: tensor {name!r} has offsets {[begin, end]} that do not fit its shape "
        f"{shape} and dtype {tag} in a buffer of {len(buffer)} bytes; the file is damaged."
      )
    out[name] = np.frombuffer(buffer[begin:end], dtype).reshape(shape).copy()
  return out


def _read_orbax(path: str) -> dict[str, Any]:
  import orbax.checkpoint as ocp
  from etils import epath

  handler = ocp.StandardCheckpointHandler()
  try:
    tree = handler.restore(epath.Path(os.path.abspath(path)))
  finally:
    handler.close()
  if isinstance(tree, Mapping) and not set(tree) & set(COLLECTIONS):
    tree = {"params": tree}
  return flatten_names(tree)


def load_named_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads pretrained arrays by name.

  Args:
    path: One of

      * a ``.npz`` file: its names as stored (a variables tree saved flat with "/"
        names, or a torchvision state dict for `sap_jax.convert.torchvision`);
      * a ``.safetensors`` file (parsed here, no extra dependency): its tensor names;
      * a sap_jax checkpoint directory (`sap_jax.checkpoint.save_checkpoint`):
        ``"params/…"`` and ``"batch_stats/…"`` names;
      * an orbax directory holding a variables tree (``{"params": …, …}``) or a bare
        params tree (then named ``"params/…"``).

  Returns:
    ``{name: numpy array}``.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: an unknown file type, or a damaged file.
  """
  from sap_jax import checkpoint

  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no pretrained weights at {path!r}; check the path.")
  if os.path.isdir(path):
    if checkpoint.is_checkpoint(path):
      variables, _ = checkpoint.load_checkpoint(path)
      tree = flatten_names(variables)
    else:
      tree = _read_orbax(path)
    return {k: np.asarray(v) for k, v in tree.items()}
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  if path.endswith(".safetensors"):
    return _read_safetensors(path)
  raise ValueError(
    f"cannot read pretrained weights from {path!r}: give a .npz or .safetensors file, a "
    "sap_jax checkpoint directory or an orbax directory."
  )


def _matches(name: str, patterns: Sequence[str]) -> bool:
  parts = name.split("/")
  return any(p in parts or fnmatch.fnmatchcase(name, p) for p in patterns)


def merge_pretrained(
  init_variables: Any, pretrained: Mapping[str, Any], *, reinit: Sequence[str] = ("head",)
) -> tuple[Any, PretrainedReport]:
  """Fills a model's freshly initialised variables from pretrained arrays, by name.

  Every variable of ``init_variables`` (params, batch_stats, any collection) whose
  "/"-joined name is in ``pretrained`` takes the pretrained value, cast to the
  model's dtype; the rest keep their initial values.

  Args:
    init_variables: The model's variables (``model.init(...)``).
    pretrained: Pretrained arrays: a flat ``{name: array}`` (`load_named_arrays`) or
      a nested variables tree (`sap_jax.convert.torchvision.resnet_variables`).
    reinit: Layers that may change shape and are then re-initialised: a variable
      matches when one of its name's "/"-parts equals an entry ("head") or its whole
      name matches an entry as a glob ("params/head/*").

  Returns:
    ``(variables, report)``: the tree of ``init_variables`` (same structure and
    dtypes) and a `PretrainedReport`.

  Raises:
    ValueError: a variable outside ``reinit`` whose pretrained shape differs (all such
      are named with both shapes), or no variable at all in common (the message shows
      names from both sides).
  """
  if isinstance(reinit, str):
    reinit = (reinit,)
  flat = pretrained if _is_flat(pretrained) else flatten_names(pretrained)
  model_leaves, treedef = jax.tree_util.tree_flatten_with_path(init_variables)
  names = [key_path_name(path) for path, _ in model_leaves]
  loaded, missing, reinitialized, refused = [], [], [], []
  new_leaves = []
  for name, (_, leaf) in zip(names, model_leaves):
    if name not in flat:
      missing.append(name)
      new_leaves.append(leaf)
      continue
    value = flat[name]
    if tuple(np.shape(value)) != tuple(np.shape(leaf)):
      if _matches(name, reinit):
        reinitialized.append(name)
        new_leaves.append(leaf)
        continue
      refused.append(f"{name}: model {tuple(np.shape(leaf))}, pretrained {tuple(np.shape(value))}")
      continue
    loaded.append(name)
    dtype = np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype))
    if isinstance(leaf, jax.Array):
      new_leaves.append(jnp.asarray(np.asarray(value), dtype=dtype))
    else:
      new_leaves.append(np.asarray(value, dtype=dtype))
  if refused:
    raise ValueError(
      f"{len(refused)} pretrained array(s) do not fit the model: {'; '.join(refused[:8])}. "
      "Build the model with the pretrained sizes, or name those layers in reinit= to "
      "re-initialise them."
    )
  model_names = set(names)
  unexpected = sorted(k for k in flat if k not in model_names)
  if not loaded and not reinitialized and names:
    raise ValueError(
      f"no pretrained array matches a model variable: the model has e.g. {names[:3]}, the "
      f"file {sorted(flat)[:3]}; convert the weights to the model's names first "
      "(sap_jax.convert.torchvision for torchvision state dicts)."
    )
  variables = jax.tree_util.tree_unflatten(treedef, new_leaves)
  report = PretrainedReport(tuple(loaded), tuple(missing), tuple(unexpected), tuple(reinitialized))
  return variables, report


def _is_flat(tree: Any) -> bool:
  return isinstance(tree, Mapping) and all(
    isinstance(k, str) and not isinstance(v, Mapping) for k, v in tree.items()
  )
