"""Saving and loading NNX models: `sap_jax.checkpoint` with the model's state.

A checkpoint of an NNX model is an ordinary sap_jax checkpoint (orbax arrays, the
caller's metadata, shapes, dtypes and checksums, the no-overwrite rule of
`sap_jax.safe_write`) of `sap_jax.nnx.variables_of(model)`: ``{"params": …,
["batch_stats": …]}``, every `nnx.Param` and every other variable but the RNG streams,
under their graph paths. For the NNX zoo (`sap_jax.models.get(..., api="nnx")`) that is
the Linen twin's layout. Loading needs the model to put the arrays in (build it as it
was built for saving, e.g. from the run spec): it comes back as a copy holding the
saved arrays, its RNG streams those of the model passed in.

    sap_jax.nnx.save_checkpoint("ckpt", model, {"model": "cnn"})
    model, metadata = sap_jax.nnx.load_checkpoint("ckpt", models.get("cnn", 10, api="nnx"))

With several processes (`jax.distributed`) both are called on every process, as their
`sap_jax.checkpoint` counterparts: a model holding global arrays (sharded any way) is
saved shard by shard, and ``load_checkpoint(..., sharding=...)`` reads each array
straight into the sharding asked for (one `jax.sharding.Sharding`, or a dict mirroring
``variables_of(model)``); ``sharding="model"`` takes the sharding of each array of the
model passed in (a model whose arrays sit on a mesh gets the checkpoint's arrays the same
way, each process reading only its part).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from sap_jax import checkpoint
from sap_jax.nnx.functional import check_module, variables_of, with_variables

__all__ = ["load_checkpoint", "save_checkpoint"]

_LINEN_SAVE = "sap_jax.checkpoint.save_checkpoint(path, variables, metadata)"
_LINEN_LOAD = "sap_jax.checkpoint.load_checkpoint(path)"


def save_checkpoint(
  path: str | os.PathLike,
  model: nnx.Module,
  metadata: dict[str, Any],
  *,
  overwrite: bool = False,
  protect: Iterable[str | os.PathLike] = (),
) -> Path:
  """Saves an NNX model's state and ``metadata`` to the directory ``path``
  (`sap_jax.checkpoint.save_checkpoint`: same rules, errors and return value).

  Args:
    path: the checkpoint directory to create.
    model: the ``nnx.Module`` (not modified).
    metadata: a JSON-serialisable dict.
    overwrite: replace an existing sap_jax checkpoint at ``path``.
    protect: paths never written, written into, or replaced by a parent.
  """
  check_module(model, _LINEN_SAVE)
  return checkpoint.save_checkpoint(
    path, variables_of(model), metadata, overwrite=overwrite, protect=protect
  )


def _model_sharding(model: nnx.Module) -> Any:
  """The sharding of each array of ``model``'s state (None where it holds no jax array)."""
  return jax.tree_util.tree_map(lambda v: getattr(v, "sharding", None), variables_of(model))


def load_checkpoint(
  path: str | os.PathLike, model: nnx.Module, *, sharding: checkpoint.TargetSharding | str = None
) -> tuple[nnx.Module, dict]:
  """Loads a checkpoint written by `save_checkpoint` into a copy of ``model``.

  Args:
    path: the checkpoint directory.
    model: an ``nnx.Module`` of the saved structure (its weights are not used; it is
      not modified).
    sharding: where the arrays go, as for `sap_jax.checkpoint.load_checkpoint` (None,
      a `jax.sharding.Sharding`, or a dict mirroring ``variables_of(model)``), or
      ``"model"``: the sharding of each of ``model``'s own arrays.

  Returns:
    ``(model, metadata)``: the copy holding the saved arrays, and the metadata dict.

  Raises:
    FileNotFoundError, DamagedCheckpoint, ValueError: as
      `sap_jax.checkpoint.load_checkpoint`; ValueError also when the arrays do not fit
      ``model`` (the message names the first paths that differ), checked before the
      model is built.
  """
  check_module(model, _LINEN_LOAD)
  if isinstance(sharding, str):
    if sharding != "model":
      raise ValueError(
        f"sharding={sharding!r}: pass 'model' (the model's own shardings), a "
        "jax.sharding.Sharding, a dict of them, or None."
      )
    sharding = _model_sharding(model)
  variables, metadata = checkpoint.load_checkpoint(path, sharding=sharding)
  try:
    loaded = with_variables(model, variables)
  except ValueError as e:
    raise ValueError(f"The checkpoint {Path(path).absolute()} does not fit the model: {e}") from e
  return loaded, metadata
