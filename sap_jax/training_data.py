"""The training data of `sap_jax.train.train_model`: checked before any work, then
batched epoch by epoch.

Host arrays, global arrays sharded over a mesh's data axis, and random-access sources
(`sap_jax.data.sources`) each get their checks (labels in ``[0, K)``, shapes, batch
size, early stopping's validation set) and their per-epoch batches in the same order,
where the step runs.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from sap_jax import sharding as shd
from sap_jax.batching import epoch_batches
from sap_jax.data.array_feeder import feed_arrays
from sap_jax.data.feeder import feed
from sap_jax.data.sources import check_length, first_input, is_source, source_length
from sap_jax.evaluation import check_xy
from sap_jax.input_checks import check_labels
from sap_jax.train_config import TrainConfig
from sap_jax.train_state import model_output_width
from sap_jax.training_step import RunRngs

__all__ = [
  "epoch_batches_of",
  "checked_training_data",
  "checked_training_source",
  "first_sample",
  "training_mesh",
]


def training_mesh(x, x_val, mesh: jax.sharding.Mesh | None) -> jax.sharding.Mesh | None:
  """The mesh to train over: ``mesh``, or the one a global ``x`` is sharded over (an error
  when they differ, or when the data axis is not `sap_jax.sharding.DATA_AXIS`)."""
  found = shd.common_data_axis(x, x_val)
  if found is None:
    return mesh
  if found[1] != shd.DATA_AXIS:
    raise ValueError(
      f"x is sharded over the mesh axis {found[1]!r}; train_model shards batches over "
      f"{shd.DATA_AXIS!r}: make the mesh with sap_jax.sharding.data_mesh()."
    )
  if mesh is not None and mesh != found[0]:
    raise ValueError(
      f"x is sharded over a mesh of shape {dict(found[0].shape)}, not the mesh= given "
      f"({dict(mesh.shape)}); pass the mesh the data are sharded over, or mesh=None."
    )
  return found[0]


def first_sample(x) -> np.ndarray:
  """``x[:1]`` on the host (every process): a source's first record's input, or the first
  batch the feeder cuts from arrays (a global array's in place, on its devices)."""
  if is_source(x):
    return first_input(x, "training source")
  return shd.to_host(next(iter(feed_arrays(x, batch_size=1, what="x"))).x)[:1]


def checked_training_data(model: nn.Module, x, y, x_val, y_val, config: TrainConfig):
  """``(x, y, (x_val, y_val) or None)`` as host arrays, after the input checks.

  Both splits as `sap_jax.evaluation.check_xy` (finite floating inputs, one integer
  label per input), then every label, training and validation, in ``[0, K)`` for the
  model's K outputs (`sap_jax.train_state.model_output_width`): all before any work.
  """
  x, y = check_xy(x, y, "x/y")
  if (x_val is None) != (y_val is None):
    raise ValueError("Pass both x_val and y_val, or neither.")
  val = None if x_val is None else check_xy(x_val, y_val, "x_val/y_val")
  if val is not None and val[0].shape[1:] != x.shape[1:]:
    raise ValueError(
      f"x_val samples have shape {val[0].shape[1:]} but x samples {x.shape[1:]}; "
      "validation inputs must be shaped like the training inputs."
    )
  if config.early_stopping_patience is not None and val is None:
    raise ValueError(
      "early_stopping_patience needs a validation set: pass x_val and y_val, "
      "or set early_stopping_patience=None."
    )
  if config.batch_size > len(x):
    raise ValueError(
      f"batch_size={config.batch_size} exceeds the {len(x)} training samples; "
      "pass a smaller TrainConfig.batch_size."
    )
  k = model_output_width(model, x)
  y = check_labels(y, len(x), k, "x/y")
  if val is not None:
    val = (val[0], check_labels(val[1], len(val[0]), k, "x_val/y_val"))
  return x, y, val


def epoch_batches_of(x, y, n, config: TrainConfig, rngs: RunRngs, epoch, mesh, transform, workers):
  """One epoch's full batches in a fresh order, ``(inputs, labels)`` where the step runs:
  the same order for arrays and for a source of the same ``n`` samples, cut by the feeder
  (`sap_jax.data.feeder.feed` for a source, with ``transform`` applied per sample;
  `~sap_jax.data.array_feeder.feed_arrays` for host arrays or a global array on its mesh)."""
  order = epoch_batches(rngs.data_order, n, config.batch_size, drop_last=True).reshape(-1)
  if is_source(x):
    check_length(x, n, "training source")
    batches = feed(
      x,
      config.batch_size,
      mesh=mesh,
      indices=order,
      transform=transform,
      seed=config.seed,
      epoch=epoch,
      workers=workers,
      what="training source",
    )
  else:
    batches = feed_arrays(x, y, config.batch_size, mesh=mesh, indices=order, what="x")
  for batch in batches:
    yield batch.x, batch.y


def checked_training_source(model: nn.Module, source, y, source_val, y_val, config):
  """``(source, None, val source or None)`` after the checks a source allows before
  any work: a non-empty labelled source (labels checked in ``[0, K)`` as they stream),
  a validation source of the same input shape, the batch size."""
  if y is not None or y_val is not None:
    raise ValueError(
      "a source carries its own labels: pass y=None and y_val=None with a source "
      "(records {'image', 'label'})."
    )
  n = source_length(source, "training source")
  sample = first_input(source, "training source")
  if source_val is not None:
    source_length(source_val, "validation source")
    shape = first_input(source_val, "validation source").shape
    if shape[1:] != sample.shape[1:]:
      raise ValueError(
        f"validation samples have shape {shape[1:]} but training samples "
        f"{sample.shape[1:]}; validation inputs must be shaped like the training inputs."
      )
  if config.early_stopping_patience is not None and source_val is None:
    raise ValueError(
      "early_stopping_patience needs a validation set: pass x_val, or set "
      "early_stopping_patience=None."
    )
  if config.batch_size > n:
    raise ValueError(
      f"batch_size={config.batch_size} exceeds the {n} training samples; "
      "pass a smaller TrainConfig.batch_size."
    )
  model_output_width(model, sample)
  return source, None, (None if source_val is None else (source_val,))
