"""Runs and their data on the command line: a run spec's data (fingerprinted), its model
(checked against the data), and a checkpoint loaded back with its data."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

import sap_jax.nnx as sap_nnx
from sap_jax import (
  checkpoint,
  data,
  provenance,
  train,
)
from sap_jax import sharding as shd
from sap_jax.cli.errors import UserError, one_line
from sap_jax.data.sources import input_shape
from sap_jax.spec import RunSpec, build_model, build_splits, load_data


def data_record(spec: RunSpec, fingerprint: dict[str, str]) -> dict[str, Any]:
  """What a checkpoint records of its data: the absolute root and the content fingerprint."""
  return {
    "dataset": spec.dataset,
    "root": spec.data_root,
    "options": dict(spec.data_options),
    "fingerprint": fingerprint,
  }


LABEL_SPLITS = {"y_train": "training labels", "y_val": "validation labels"}
"""The noisy labels a run derives from its spec (`build_splits`) and trains on."""


def labels_record(splits: data.NoisySplits) -> dict[str, str]:
  """What a checkpoint records of the noisy labels derived from its spec: the SHA-256
  of each split's labels (`sap_jax.provenance.array_digest`), before any cut to a
  multiple of the devices."""
  return {name: provenance.array_digest(getattr(splits, name)) for name in LABEL_SPLITS}


def check_labels_record(path: str, meta: dict[str, Any], splits, data_changed: bool, say) -> None:
  """Compares the noisy labels re-derived from the spec with those recorded at training:
  refused when they differ (a warning where changed data were allowed, which derive other
  labels); a note for a checkpoint saved before they were recorded."""
  recorded = meta.get("labels")
  if not isinstance(recorded, dict):
    say(
      f"note: {path} records no fingerprint of its noisy labels (saved by an older "
      "sap_jax); the labels re-derived from its run spec are used unchecked."
    )
    return
  found = labels_record(splits)
  differ = [LABEL_SPLITS[k] for k in LABEL_SPLITS if recorded.get(k) != found[k]]
  if not differ:
    return
  what = " and ".join(differ)
  if data_changed:
    say(f"warning: the {what} re-derived from the changed data differ from training's.")
    return
  raise UserError(
    f"the noisy {what} re-derived from the run spec of {path} (seed, noise, split sizes) "
    f"differ from those it was trained on; this sap_jax derives other splits from that "
    "spec: evaluate and correct it with the sap_jax version that trained it, or train again."
  )


def load_spec_data(spec: RunSpec, source: str | None = None, given: bool = False) -> data.Dataset:
  """`load_data`, with the way out when the data are not where the run says."""
  try:
    return load_data(spec, stream=True)
  except FileNotFoundError as e:
    if source is None:
      raise
    if given:
      raise UserError(f"no data at --data-root {spec.data_root}: {one_line(e)}") from None
    raise UserError(
      f"the data {source} was trained on are not at {spec.data_root}, where it recorded them "
      f"({one_line(e)}); if they moved, pass --data-root NEW_PATH."
    ) from None


def checked_nnx_model(spec: RunSpec, splits: data.NoisySplits, sample: Any, options: str):
  """The run's NNX twin, built (initialised) and traced (shapes only) on one sample."""
  import jax

  shape = input_shape(splits.x_train)
  try:
    model = build_model(spec, splits.num_classes, shape)
  except TypeError as e:
    raise UserError(f"{one_line(e)}; fix the --model-kw options.") from None
  except ValueError as e:
    raise UserError(
      f"NNX model {spec.model!r} ({options}) cannot be built for inputs of shape {shape}: "
      f"{one_line(e)[:300]}; check the --model-kw values."
    ) from None
  try:
    jax.eval_shape(functools.partial(*sap_nnx.functional(model)), sample)
  except (TypeError, ValueError) as e:
    first = one_line(str(e).split("\n")[0])[:300]
    raise UserError(
      f"NNX model {spec.model!r} ({options}) cannot run on inputs of shape {shape}: "
      f"{first}; check the --model-kw values."
    ) from None
  return model


def checked_model(spec: RunSpec, splits: data.NoisySplits):
  """The run's model, built and traced (shapes only) on one sample before any work.

  Returns ``(model, variable shapes)``; an NNX model (``spec.api == "nnx"``) is built
  initialised, and its shapes are None (loading checks the fit, `load_nnx_model`).
  """
  import jax

  options = ", ".join(f"{k}={v!r}" for k, v in spec.model_kwargs.items()) or "no --model-kw"
  sample = jax.ShapeDtypeStruct((1, *input_shape(splits.x_train)), np.float32)
  key = jax.random.key(0)
  if spec.api == "nnx":
    return checked_nnx_model(spec, splits, sample, options), None
  try:
    model = build_model(spec, splits.num_classes)
  except TypeError as e:
    raise UserError(f"{one_line(e)}; fix the --model-kw options.") from None
  try:
    shapes = jax.eval_shape(
      lambda x: model.init({"params": key, "dropout": key}, x, train=False), sample
    )
  except (TypeError, ValueError) as e:
    first = one_line(str(e).split("\n")[0])[:300]
    raise UserError(
      f"model {spec.model!r} ({options}) cannot be built for inputs of shape "
      f"{input_shape(splits.x_train)}: {first}; check the --model-kw values."
    ) from None
  return model, shapes


def check_fit(path: str, variables: Any, shapes: Any) -> None:
  """Refuses arrays that do not fit the model the checkpoint's metadata describes."""
  import jax

  def flat(tree) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in leaves}

  saved, wanted = flat(variables), flat(dict(shapes))
  if saved != wanted:
    diff = sorted(set(saved) ^ set(wanted)) or sorted(k for k in saved if saved[k] != wanted[k])
    name = diff[0]
    raise UserError(
      f"the arrays of {path} do not fit the model its metadata describes ({name}: saved "
      f"{saved.get(name)}, model {wanted.get(name)}); its metadata.json was edited or "
      "written by another sap_jax version: restore it from a copy."
    )


def load_nnx_model(path: str, model: Any, variables: Any) -> Any:
  """The NNX model holding a checkpoint's arrays; refuses arrays that do not fit it."""
  try:
    return sap_nnx.with_variables(model, variables)
  except ValueError as e:
    raise UserError(
      f"the arrays of {path} do not fit the NNX model its metadata describes "
      f"({one_line(e)}); its metadata.json was edited or written by another sap_jax "
      "version: restore it from a copy."
    ) from None


class Run(NamedTuple):
  """A loaded checkpoint: ``apply_fn``/``variables`` the eval-mode forward pair of the
  SAP core; ``model`` the NNX model (``spec.api == "nnx"``), else None."""

  variables: dict[str, Any]
  meta: dict[str, Any]
  spec: RunSpec
  splits: data.NoisySplits
  apply_fn: Callable
  data: dict[str, Any]
  data_changed: list[str]
  model: Any = None


def load_run(
  path: str,
  *,
  data_root: str | None = None,
  allow_changed_data: bool = False,
  say=print,
  mesh: Any = None,
) -> Run:
  """A checkpoint, its run spec, its data (checked against its fingerprint) and model;
  with a ``mesh`` the arrays come back replicated on it."""
  sharding = None if mesh is None else shd.replicated(mesh)
  variables, meta = checkpoint.load_checkpoint(path, sharding=sharding)
  if "spec" not in meta:
    raise UserError(
      f"{path} has no run spec in its metadata; it was not written by "
      "`sap-jax train` or `sap-jax correct`."
    )
  try:
    spec = RunSpec.from_dict(meta["spec"])
  except (TypeError, ValueError, KeyError) as e:
    raise UserError(
      f"the run spec in {path} cannot be read ({one_line(e)}); it was written by another "
      "sap_jax version."
    ) from None
  if data_root is not None:
    spec = dataclasses.replace(spec, data_root=data_root)
  dataset = load_spec_data(spec, source=str(path), given=data_root is not None)
  found = provenance.data_fingerprint(dataset)
  recorded = meta["data"].get("fingerprint") if isinstance(meta.get("data"), dict) else None
  changed: list[str] = []
  if not isinstance(recorded, dict):
    say(
      f"note: {path} records no fingerprint of its data (saved by an older sap_jax); "
      "the data are used unchecked."
    )
  else:
    changed = provenance.changed_arrays(recorded, found)
    if changed:
      where = f"data at {spec.data_root}" if spec.data_root else f"{spec.dataset} data"
      what = provenance.describe_changes(changed)
      if not allow_changed_data:
        raise provenance.DataChanged(
          f"the {where} differ from those {path} was trained on: {what} changed. Point "
          "--data-root at the data it was trained on, or pass --allow-changed-data to "
          "use these anyway."
        )
      say(f"warning: the {where} differ from the training data ({what}); used anyway.")
  splits = build_splits(spec, stream=True)
  check_labels_record(str(path), meta, splits, bool(changed), say)
  model, shapes = checked_model(spec, splits)
  record = data_record(spec, found)
  if spec.api == "nnx":
    model = load_nnx_model(path, model, variables)
    apply_fn, variables = sap_nnx.functional(model)
    return Run(variables, meta, spec, splits, apply_fn, record, changed, model)
  check_fit(path, variables, shapes)
  return Run(variables, meta, spec, splits, train.eval_apply_fn(model), record, changed)
