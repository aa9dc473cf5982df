"""The layer-call observer: every covered layer call of a forward pass, reported to a callback.

`observe_linen_calls` runs a Linen forward under `flax.linen.intercept_methods` and reports
every covered layer call (the one guard: a module's ``__call__`` with a positional input, on
a module `rows.is_supported` covers, or the conv/einsum twins of `covered_layer`) to a
callback as a `LayerCall`. The statistics, the rows and the cost estimates
(`sap_jax.stats.collect`) are all such callbacks, so any Linen model works without
per-model code.

Another model API (Flax NNX: `sap_jax.nnx`) plugs in through `report_call`: while an
observer runs (`observing`), a layer call its wrappers report goes to the same callback.

A covered layer called inside a lifted transform (``nn.scan``, ``nn.vmap``, ``nn.remat``,
``jax.lax.scan``, ``nnx.vmap``, …) runs in an inner JAX trace, from which no statistic can
leave: such a call is refused (`LiftedTransformError`, naming the layer and the transform),
never with a JAX tracer error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core.tracers import current_trace

from sap_jax.layers import path_name
from sap_jax.stats.conv import linen_conv_twin
from sap_jax.stats.einsum import einsum_twin
from sap_jax.stats.rows import is_supported
from sap_jax.types import ApplyFn, Path


class LayerCall(NamedTuple):
  """One call of a covered layer, as an observer reports it.

  Attributes:
    path: the layer's path in the ``params`` tree.
    layer: the layer (for Linen, the bound module: what `layer_rows` reads).
    inputs: the input it was called with.
    forward: runs the layer on its original arguments and returns its output.
  """

  path: Path
  layer: Any
  inputs: Any
  forward: Callable[[], Any]


OnCall = Callable[[LayerCall], Any]
"""``on_call(call) -> replacement output or None``: None lets the layer run as usual; a
callback that returns a replacement calls ``call.forward()`` itself (at most once)."""


class LiftedTransformError(ValueError):
  """A covered layer runs inside a lifted transform (scan, vmap, remat, …)."""


class _Active(NamedTuple):
  on_call: OnCall
  trace: Any  # the JAX trace the observed forward runs in
  classes: dict[str, set[str]]  # module name → class names of the Linen modules called


_ACTIVE: list[_Active] = []  # the observers running now, innermost last

# Name prefixes Flax gives lifted modules (``nn.scan(Body)`` is named ``ScanBody_0``).
_LIFTED_PREFIXES = {
  "Scan": "nn.scan",
  "Vmap": "nn.vmap",
  "Checkpoint": "nn.remat",
  "Remat": "nn.remat",
  "Jit": "nn.jit",
  "Map": "nn.map_variables",
  "While": "nn.while_loop",
  "Cond": "nn.cond",
  "Switch": "nn.switch",
}


def _transform_of(path: Path, classes: Mapping[str, set[str]] | None = None) -> str:
  """The lifted transform a layer at ``path`` runs in: from the names Flax gives lifted
  modules (``ScanBody_0``) in the path or, for a lifted module given its own name
  (``nn.scan(Block)(name="encoder")``), from the class of a module named on the path
  (``ScanBlock``; ``classes``: module name → class names, of the modules called)."""
  names = [name for name in path if isinstance(name, str)]
  # (module, the name or class name that may tell its transform)
  tells = [(n, n) for n in names] + [
    (n, c) for n in names for c in sorted((classes or {}).get(n, ()))
  ]
  for module, name in tells:
    for prefix, transform in _LIFTED_PREFIXES.items():
      after = name[len(prefix) : len(prefix) + 1]
      if name.startswith(prefix) and (after.isupper() or after == "_"):
        return f"{transform} (module {module!r})"
  return (
    "a JAX transform (jax.lax.scan, jax.vmap, jax.checkpoint, nnx.scan, nnx.vmap, nnx.remat, …)"
  )


def observing() -> bool:
  """Whether an observer (`observe_linen_calls`) is running now."""
  return bool(_ACTIVE)


def outer_trace() -> Any:
  """The JAX trace of the forward the active observer runs (see `observing`)."""
  return _ACTIVE[-1].trace


def report_call(path: Path, layer: Any, inputs: Any, forward: Callable[[], Any]) -> Any:
  """Reports one covered layer call to the active observer; returns the layer's output.

  The plug-in point of a second model API: its layer wrappers call this (with a
  `LayerCall`'s fields) while `observing()`. The output is the observer's replacement,
  or ``forward()`` when it has none.

  Raises:
    LiftedTransformError: the call runs in an inner JAX trace (a lifted transform), so
      its statistics could not leave it; the message names the layer and the transform.
  """
  active = _ACTIVE[-1]
  if current_trace() != active.trace:
    name = path_name(path)
    raise LiftedTransformError(
      f"Layer {name!r} runs inside {_transform_of(path, active.classes)}: SAP collects "
      "statistics in the model's own forward pass and cannot read a layer inside a lifted "
      "transform (scan, vmap, remat). Apply SAP to a model without the transform "
      "(e.g. unrolled, or with remat switched off for the correction; a remat changes "
      "no value, so the same weights load into the plain model)."
    )
  out = active.on_call(LayerCall(path, layer, inputs, forward))
  return forward() if out is None else out


CallChoice = tuple[tuple[Path, int], ...]
"""Which call counts, for the layers called more than once per forward that the user
chose a call of: ``((path, k), …)``, k 0-based in forward order; hashable, so a static
argument of the compiled statistics (`sap_jax.stats.calls.chosen_calls` builds it)."""


def select_calls(on_call: OnCall, choice: CallChoice) -> OnCall:
  """``on_call``, seeing of each layer in ``choice`` only its chosen call.

  The other calls of such a layer are not reported: the layer runs on them as usual
  (the callback returns None). Layers not in ``choice`` are reported at every call.
  Traceable; count the calls of one forward only (a fresh wrapper per forward).
  """
  if not choice:
    return on_call
  chosen = dict(choice)
  done: dict[Path, int] = {}

  def selected(call: LayerCall) -> Any:
    k = done.get(call.path, 0)
    done[call.path] = k + 1
    if call.path in chosen and chosen[call.path] != k:
      return None
    return on_call(call)

  return selected


def covered_layer(
  module: nn.Module, *args: Any, **kwargs: Any
) -> tuple[nn.Module, tuple[int, ...] | None] | None:
  """What the row readers read for a call of a Linen module, or None (not covered).

  Returns:
    ``(layer, perm)``: the layer is the module itself (Dense, DenseGeneral, Conv), the
    twin `nn.Conv` of an `nn.ConvTranspose` (`sap_jax.stats.conv.linen_conv_twin`) or
    the twin `nn.DenseGeneral` of an `nn.Einsum` (`sap_jax.stats.einsum.einsum_twin`,
    whose input is transposed by ``perm``; None for the others). ``args, kwargs``:
    the call's arguments after the input (an Einsum's call-time ``einsum_str``).
  """
  if is_supported(module):
    return module, None
  if isinstance(module, nn.Einsum):
    eq = kwargs.get("einsum_str", args[0] if args else None) or module.einsum_str
    twin = einsum_twin(eq, module.shape) if eq else "no einsum_str"
    return None if isinstance(twin, str) else (twin[1], twin[0])
  twin = linen_conv_twin(module)
  return None if twin is None else (twin, None)


def observe_linen_calls(apply_fn: ApplyFn, variables: Any, x: Any, on_call: OnCall) -> Any:
  """Runs ``apply_fn(variables, x)``, reporting every covered layer call to ``on_call``.

  A traceable function: it may run under `jax.jit` or `jax.eval_shape`.

  Args:
    apply_fn: a Linen forward, ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: a batch of inputs.
    on_call: called once per covered layer call, in call order (see `OnCall`).

  Returns:
    The model's output.
  """

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    covered = None
    if context.method_name == "__call__" and args:
      covered = covered_layer(module, *args[1:], **kwargs)
    if covered is None:
      if isinstance(module.name, str):  # its class names a lifted transform, if one fails
        classes.setdefault(module.name, set()).add(type(module).__name__)
      return next_fun(*args, **kwargs)
    layer, perm = covered
    inputs = args[0] if perm is None else jnp.transpose(args[0], perm)
    return report_call(tuple(module.path), layer, inputs, lambda: next_fun(*args, **kwargs))

  classes: dict[str, set[str]] = {}
  _ACTIVE.append(_Active(on_call, current_trace(), classes))
  try:
    with nn.intercept_methods(interceptor):
      return refuse_train_mode(apply_fn(variables, x))
  finally:
    _ACTIVE.pop()


def refuse_train_mode(out: Any) -> Any:
  """``out``, unless it is a train-mode Linen forward's ``(output, mutated collections)``.

  Raises:
    ValueError: ``out`` is ``(output, {"batch_stats": …, …})``: the forward was run
      with ``mutable=[...]`` (and so in train mode, BatchNorm on batch statistics).
  """
  if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping) and out[1]:
    keys = sorted(map(str, out[1]))
    if "batch_stats" in keys or all(isinstance(v, Mapping) for v in out[1].values()):
      raise ValueError(
        f"apply_fn returns (output, mutated collections {keys}): a train-mode forward "
        "(model.apply(..., mutable=[...])), whose BatchNorm normalises by batch "
        "statistics. SAP needs the eval-mode forward, e.g. "
        "functools.partial(model.apply, train=False), without mutable."
      )
  return out


def shape_of(x: Any) -> jax.ShapeDtypeStruct:
  """The shape and dtype ``jnp.asarray(x)`` would have, without making it: a shape-only
  trace (`jax.eval_shape`) of a host array then compiles no transfer program."""
  return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))


def module_calls(apply_fn: ApplyFn, variables: Any, x: Any) -> dict[Path, tuple[str, bool]]:
  """path → (class name, covered) of every Linen module whose ``__call__`` the forward
  runs; covered: a layer the statistics read (`rows.is_supported`).

  Shapes only (`jax.eval_shape`): nothing is computed. For the list of layers SAP
  leaves alone (`sap_jax.kernels.skipped_kernels`).
  """
  out: dict[Path, tuple[str, bool]] = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and module.scope is not None:
      covered = covered_layer(module, *args[1:], **kwargs) is not None
      out.setdefault(tuple(module.path), (type(module).__name__, covered))
    return next_fun(*args, **kwargs)

  def run(v, xx):
    with nn.intercept_methods(interceptor):
      return apply_fn(v, xx)

  jax.eval_shape(run, variables, shape_of(x))
  return out
