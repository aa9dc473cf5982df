"""NNX layers as the SAP core sees them: covered types, Linen twins, call interception.

The core's row readers (`sap_jax.stats.rows`, `sap_jax.stats.conv`) read a layer's
geometry from a Linen module's attributes. An NNX layer call is handed to them as its
*Linen twin*: an unbound Linen module with the same geometry (`linen_twin`), and the
input arranged as that twin expects it. The kernels are the NNX layer's own, addressed
by its graph path, with the same shapes as the twin's, so everything downstream (Gram
matrices, the decomposition, the kernel update) is the Linen code unchanged.

`intercepting` wraps the ``__call__`` of the covered classes while an NNX forward runs
under an observer (`sap_jax.stats.observe.report_call`), reporting each call of a layer
of the model (by its graph path) and returning the observer's output.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.core.tracers import current_trace

from sap_jax.kernels import WEIGHT_NAMES
from sap_jax.layers import path_name, skipped_layers
from sap_jax.stats.conv import conv_transpose_twin
from sap_jax.stats.einsum import einsum_twin
from sap_jax.stats.observe import (
  LayerCall,
  LiftedTransformError,
  observe_linen_calls,
  outer_trace,
  report_call,
)
from sap_jax.types import Path

COVERED: tuple[type, ...] = (
  nnx.Linear,
  nnx.LinearGeneral,
  nnx.Conv,
  nnx.ConvTranspose,
  nnx.Einsum,
)
"""The NNX layer classes SAP projects (``nnx.MultiHeadAttention``'s projections are
`nnx.LinearGeneral` layers, so they are covered too; an `nnx.ConvTranspose` with
``transpose_kernel=True``, a mask or CIRCULAR padding is not, nor an `nnx.Einsum` that
is no DenseGeneral over its contracting axes: see `is_covered`)."""


def is_covered(layer: nnx.Module) -> bool:
  """Whether SAP projects this NNX layer."""
  if isinstance(layer, nnx.ConvTranspose):
    return _transpose_twin(layer) is not None
  if isinstance(layer, nnx.Einsum):
    return not isinstance(einsum_twin(layer.einsum_str, layer.kernel_shape), str)
  return isinstance(layer, COVERED)


def _transpose_twin(layer: nnx.ConvTranspose) -> nn.Conv | None:
  if layer.transpose_kernel or layer.mask is not None:
    return None
  return conv_transpose_twin(
    layer.kernel_size, layer.strides, layer.padding, layer.kernel_dilation, layer.out_features
  )


class UnsupportedLayerError(ValueError):
  """A covered NNX layer uses an option SAP cannot project."""


def linen_twin(layer: nnx.Module, path: Path) -> nn.Module:
  """An unbound Linen module with ``layer``'s geometry, for the core's row readers.

  Args:
    layer: an instance of a `COVERED` class.
    path: its graph path (for error messages).

  Raises:
    UnsupportedLayerError: a LinearGeneral with ``batch_axis`` or a masked conv.
  """
  name = path_name(path)
  if isinstance(layer, nnx.Linear):
    return nn.Dense(features=layer.out_features)
  if isinstance(layer, nnx.LinearGeneral):
    if layer.batch_axis:
      raise UnsupportedLayerError(
        f"LinearGeneral layer {name!r} has batch_axis: each batch slice has its own "
        f"kernel, which one projection cannot serve. Exclude it with exclude=({name!r},)."
      )
    return nn.DenseGeneral(features=tuple(layer.out_features), axis=tuple(layer.axis))
  if isinstance(layer, nnx.ConvTranspose):
    twin = _transpose_twin(layer)
    if twin is None:
      raise UnsupportedLayerError(f"ConvTranspose layer {name!r} is not covered.")
    return twin
  if isinstance(layer, nnx.Conv):
    if layer.mask is not None:
      raise UnsupportedLayerError(
        f"Conv layer {name!r} has a kernel mask: the projected kernel P·K would no "
        f"longer respect it. Exclude it with exclude=({name!r},)."
      )
    return nn.Conv(
      features=layer.out_features,
      kernel_size=tuple(layer.kernel_size),
      strides=layer.strides,
      padding=layer.padding,
      input_dilation=layer.input_dilation,
      kernel_dilation=layer.kernel_dilation,
      feature_group_count=layer.feature_group_count,
    )
  raise TypeError(f"{type(layer).__name__} is not a layer SAP covers.")


def layer_paths(model: nnx.Module) -> dict[int, Path]:
  """``id(layer)`` → graph path of every covered layer of ``model`` (a layer shared by
  several attributes is listed once, under its first path)."""
  out: dict[int, Path] = {}
  for path, module in nnx.iter_modules(model):
    if is_covered(module) and id(module) not in out:
      out[id(module)] = tuple(path)
  return out


def _refuse_transformed(layer: nnx.Module, model: nnx.Module) -> None:
  """A covered layer that is not one of the model's objects, called in an inner trace:
  an NNX transform (``nnx.vmap``, ``nnx.remat``, ``nnx.scan``) runs a copy of it."""
  if current_trace() == outer_trace():
    return  # a layer built on the fly, holding no parameter of the model: not ours
  shape = tuple(getattr(getattr(layer, "kernel", None), "shape", ()))
  same_type = [
    (path_name(path), tuple(getattr(getattr(m, "kernel", None), "shape", ())))
    for path, m in nnx.iter_modules(model)
    if type(m) is type(layer)
  ]
  candidates = [name for name, s in same_type if s == shape]
  # nnx.scan / nnx.vmap over a stack of layers: the model holds the kernels stacked on
  # leading axes, (L, …) for the (…) of the copy that runs.
  stacked = [
    name for name, s in same_type if len(s) > len(shape) and s[len(s) - len(shape) :] == shape
  ]
  transform = "an NNX transform (nnx.vmap, nnx.scan, nnx.remat, …)"
  if not candidates and stacked:
    candidates, transform = stacked, f"nnx.scan or nnx.vmap over its stacked {shape} kernels"
  kind = type(layer).__name__
  if len(candidates) == 1:
    which = f"layer {candidates[0]!r}"
  elif candidates:
    which = f"an {kind} layer (one of {candidates})"
  else:
    which = f"an {kind} layer with a {shape} kernel"
  raise LiftedTransformError(
    f"{which} runs inside {transform}: SAP "
    "collects statistics in the model's own forward pass and cannot read a layer "
    "inside a lifted transform. Apply SAP to a model without the transform (e.g. "
    "unrolled, or with remat switched off for the correction)."
  )


def _wrapper(original, paths: Mapping[int, Path], model: nnx.Module):
  @functools.wraps(original)
  def call(self, inputs, *args, **kwargs):
    path = paths.get(id(self))
    if path is None:  # not one of the model's objects
      _refuse_transformed(self, model)
      return original(self, inputs, *args, **kwargs)
    forward = functools.partial(original, self, inputs, *args, **kwargs)
    if isinstance(self, nnx.Einsum):
      eq = kwargs.get("einsum_str", args[0] if args else None) or self.einsum_str
      twin = einsum_twin(eq, self.kernel_shape)
      if isinstance(twin, str):  # left alone: `skipped` says why
        return forward()
      perm, layer = twin
      return report_call(path, layer, jnp.transpose(inputs, perm), forward)
    if not is_covered(self):  # left alone: `skipped` says why
      return forward()
    return report_call(path, linen_twin(self, path), inputs, forward)

  return call


@contextlib.contextmanager
def intercepting(model: nnx.Module) -> Iterator[None]:
  """While active, calls of ``model``'s covered layers are reported to the running
  observer (`sap_jax.stats.observe.report_call`). Restores the classes on exit."""
  paths = layer_paths(model)
  originals = {cls: cls.__dict__["__call__"] for cls in COVERED}
  try:
    for cls, original in originals.items():
      cls.__call__ = _wrapper(original, paths, model)
    yield
  finally:
    for cls, original in originals.items():
      cls.__call__ = original


def kernel_layers(model: nnx.Module) -> dict[Path, nnx.Module]:
  """Graph path → module of every module of ``model`` that holds a ``kernel`` (or an
  ``embedding``, `nnx.Embed`) param, a shared module under its first path."""
  out: dict[Path, nnx.Module] = {}
  seen: set[int] = set()
  for path, module in nnx.iter_modules(model):
    if id(module) in seen:
      continue
    if any(isinstance(getattr(module, n, None), nnx.Param) for n in WEIGHT_NAMES):
      out[tuple(path)] = module
      seen.add(id(module))
  return out


def called_layers(apply_fn: Any, variables: Any, x: Any) -> list[Path]:
  """The covered layers the forward calls, in call order (shapes only: nothing runs)."""
  paths: list[Path] = []

  def on_call(call: LayerCall) -> None:
    if call.path not in paths:
      paths.append(call.path)

  jax.eval_shape(lambda v, xx: observe_linen_calls(apply_fn, v, xx, on_call), variables, x)
  return paths


def skipped(
  model: nnx.Module,
  apply_fn: Any,
  variables: Any,
  x: Any,
  kept: Iterable[Path],
  *,
  exclude: Sequence[str] = (),
  layer_range: tuple[int | None, int | None] | None = None,
) -> dict[str, str]:
  """Every layer of an NNX model with a kernel that SAP leaves alone, and why
  (`sap_jax.layers.skipped_layers`; ``apply_fn, variables`` from `functional`)."""
  kinds = {
    path: (None if is_covered(m) else type(m).__name__) for path, m in kernel_layers(model).items()
  }
  called = called_layers(apply_fn, variables, x)
  return skipped_layers(kinds, called, kept, exclude=exclude, layer_range=layer_range)
