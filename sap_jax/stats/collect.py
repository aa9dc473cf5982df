"""Collecting activation statistics: the layer-call observer and streaming accumulation.

A layer's rows (`sap_jax.stats.rows`) are reduced to C = RᵀR inside the jitted forward
pass, batch by batch, never materialised for the whole set: memory is O(Σ_l d_l²),
independent of the number of samples, and every row (every conv patch) counts. A layer
called several times (shared weights) accumulates the rows of every call, with a warning
naming it, its calls and their rows (`sap_jax.stats.calls.warn_repeated`).

The layer-call observer: `observe_linen_calls` runs a Linen forward under
`flax.linen.intercept_methods` and reports every covered layer call (the one guard: a
module's ``__call__`` with a positional input, on a module `rows.is_supported` covers)
to a callback as a `LayerCall`. The statistics (`activation_stats`), the rows
(`intercepted_rows`, `activation_rows`) and the cost estimate (`gram_costs`) are all
such callbacks, so any Linen model works without per-model code.

How another model API plugs in (Flax NNX: `sap_jax.nnx`): while `observe_linen_calls`
runs, it is the *active observer*; any layer call reported through `report_call` goes
to the same callback as a Linen layer's. So an ``apply_fn`` that runs an NNX model with
its covered layers' ``__call__`` wrapped (each wrapper calling `report_call` with the
layer's graph path, a Linen-equivalent layer for the row readers, its input and its
forward) gets statistics, rows and costs from every function below unchanged.

A covered layer called inside a lifted transform (``nn.scan``, ``nn.vmap``,
``nn.remat``, ``jax.lax.scan``, ``nnx.vmap``, …) runs in an inner JAX trace, from which
no statistic can leave: such a call is refused up front (`LiftedTransformError`, naming
the layer and the transform), never with a JAX tracer error.
"""

from __future__ import annotations

import functools
import itertools
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax.core.tracers import current_trace
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sap_jax import sharding as shd
from sap_jax.hashable import hashable
from sap_jax.input_checks import (
  TrainModeForward,
  check_inputs,
  check_not_nnx,
  forward_failure,
)
from sap_jax.layers import path_name
from sap_jax.stats.conv import linen_conv_twin
from sap_jax.stats.einsum import einsum_twin
from sap_jax.stats.gram import layer_gram, layer_gram_cost
from sap_jax.stats.rows import Layout, is_supported, layer_rows
from sap_jax.types import ApplyFn, Path


@struct.dataclass
class LayerStats:
  """Second-moment statistics of one layer's input rows.

  Attributes:
    gram: C = Σ_r r rᵀ, shape (d, d), or (G, d, d) for a conv with G > 1 groups.
    count: number of rows accumulated (per group), a float32 scalar.
    layout: static description of the layer (kind, kernel shape, groups).
  """

  gram: jax.Array
  count: jax.Array
  layout: Layout = struct.field(pytree_node=False)


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


def intercepted_rows(
  apply_fn: ApplyFn, variables: Any, x: jax.Array
) -> list[tuple[Path, jax.Array, Layout]]:
  """Runs the forward pass once and returns every covered layer call's rows.

  A traceable function: under `jax.jit` the rows are intermediate values only.

  Args:
    apply_fn: eval-mode forward, ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: a batch of inputs.

  Returns:
    A list of ``(path, rows, layout)``, one entry per layer call, in call order.
  """
  calls: list[tuple[Path, jax.Array, Layout]] = []

  def on_call(call: LayerCall) -> None:
    rows, layout = layer_rows(call.layer, call.inputs)
    calls.append((call.path, rows, layout))

  observe_linen_calls(apply_fn, variables, x, on_call)
  return calls


def gram_costs(
  apply_fn: ApplyFn, variables: Any, x: Any, *, rows_per_batch: int | None = None
) -> list[dict[str, Any]]:
  """What `activation_stats` computes for one batch, layer call by layer call.

  Shapes only (`jax.eval_shape`): nothing is run. For benchmarks and capacity
  planning.

  Returns:
    One dict per covered layer call, in call order: ``path`` ("/"-joined),
    ``kind``, ``rows`` (rows that count, per group), ``dim`` (d), ``groups``,
    ``nominal_macs`` (groups · rows · d², the multiply-adds of RᵀR), ``executed_macs``
    (what the chosen algorithm multiplies: block-triangular GEMMs or image shifts)
    and ``method`` ("gemm" or "shifts").
  """
  out: list[dict[str, Any]] = []

  def on_call(call: LayerCall) -> None:
    n, layout, executed, method = layer_gram_cost(call.layer, call.inputs, rows_per_batch)
    out.append(
      dict(
        path=path_name(call.path),
        kind=layout.kind,
        rows=int(n),
        dim=layout.dim,
        groups=layout.groups,
        nominal_macs=int(layout.groups * n * layout.dim**2),
        executed_macs=int(executed),
        method=method,
      )
    )

  jax.eval_shape(
    lambda v, xx: observe_linen_calls(apply_fn, v, xx, on_call), variables, shape_of(x)
  )
  return out


@struct.dataclass
class _Ordered:
  """Per-layer statistics in call order; the paths are static pytree metadata, so
  a jitted function returns them in order (a dict output would come back sorted)."""

  stats: tuple[LayerStats, ...]
  paths: tuple[Path, ...] = struct.field(pytree_node=False)


class _NotBatchMajor(Exception):
  """A covered layer's input does not have the batch on its first axis."""


def _batch_stats(
  apply_fn: ApplyFn,
  variables: Any,
  x: jax.Array,
  key: jax.Array | None,
  rows_per_batch: int | None,
  dtype,
  acc: _Ordered | None = None,
  real: jax.Array | None = None,
  offset: jax.Array | int = 0,
) -> _Ordered:
  """One batch's statistics, added to ``acc`` (running sums) when given.

  Each layer's Gram matrix is added to its running sum as soon as it is computed,
  and the layer's output is made to depend on it (by adding an exact zero), so
  XLA computes and frees one layer's rows at a time, in forward order, instead of
  keeping every layer's input (and every fresh Gram matrix) alive at once.

  ``real``: only the first ``real`` samples of ``x`` count (the rest pad the last
  batch to the shape of the others, so that one compilation serves all). Needs
  every covered layer's input to have the batch on axis 0; `_NotBatchMajor` is
  raised at trace time otherwise. ``offset``: global index of the batch's first sample
  (the row budget's per-row keys).
  """
  running = dict(zip(acc.paths, acc.stats)) if acc is not None else {}
  out: dict[Path, LayerStats] = {}
  calls: list[Path] = []
  seen: list[LayerCall] = []

  def on_call(call: LayerCall) -> jax.Array:
    seen.append(call)
    path, inputs = call.path, call.inputs
    k = None if key is None else jax.random.fold_in(key, len(calls))
    calls.append(path)
    if real is not None and (jnp.ndim(inputs) == 0 or jnp.shape(inputs)[0] != x.shape[0]):
      raise _NotBatchMajor(path_name(path))
    gram, count, layout = layer_gram(call.layer, inputs, k, rows_per_batch, dtype, real, offset)
    prev = out.get(path, running.get(path))
    if prev is not None:
      if prev.layout != layout:
        raise ValueError(
          f"Layer {path_name(path)!r} is called with inputs of different shapes "
          f"({prev.layout} vs {layout}); cannot share one projection."
        )
      gram = gram + prev.gram
      count = count + prev.count
    out[path] = LayerStats(gram=gram, count=count, layout=layout)
    y = call.forward()
    zero = (gram.reshape(-1)[0] * jnp.zeros((), gram.dtype)).astype(y.dtype)
    return y + zero

  observe_linen_calls(apply_fn, variables, x, on_call)
  from sap_jax.stats.calls import warn_repeated  # calls builds on this module

  warn_repeated(seen)  # a layer called twice per forward: its rows are summed
  return _Ordered(tuple(out.values()), tuple(out))


_STATIC = ("apply_fn", "rows_per_batch", "dtype")


def _batch_stats_kw(variables, x, key, real, offset=0, *, apply_fn, rows_per_batch, dtype):
  return _batch_stats(apply_fn, variables, x, key, rows_per_batch, dtype, real=real, offset=offset)


# Module-level jits: one compilation per (model, batch shape, options), reused by
# every later `activation_stats` call (several rounds, sweeps, benchmarks), instead
# of a fresh closure (and a fresh compilation) per call.
_batch_stats_jit = jax.jit(_batch_stats_kw, static_argnames=_STATIC)


def _finite_leaves(leaves: list[Any]) -> jax.Array:
  """bool[len(leaves)], traced: whether each leaf holds no NaN or Inf (True for integer
  and bool leaves)."""
  flags = [
    jnp.all(jnp.isfinite(leaf)) if jnp.issubdtype(leaf.dtype, jnp.inexact) else jnp.bool_(True)
    for leaf in leaves
  ]
  return jnp.stack(flags) if flags else jnp.zeros((0,), bool)


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnums=0)
def _accumulate(acc, variables, x, key, real, offset, *, apply_fn, rows_per_batch, dtype):
  """The running sums with one more batch, and the finiteness checks `activation_stats`
  makes (`_finite_leaves` of every variable leaf, then of every new Gram matrix): in the
  step, so that a new process lowers no separate program for them (O(parameters + Σ d²)
  comparisons per batch, beside the batch's forward and products)."""
  new = _batch_stats(apply_fn, variables, x, key, rows_per_batch, dtype, acc, real, offset)
  if new.paths != acc.paths:
    raise ValueError(
      f"The model called layers {list(new.paths)} on this batch but "
      f"{list(acc.paths)} on the first one; statistics need the same layers in every batch."
    )
  leaves = jax.tree_util.tree_leaves(variables) + [s.gram for s in new.stats]
  return new, _finite_leaves(leaves)


# Sharded batches (global arrays split over a mesh's data axis): the running sums carry a
# leading device axis, sharded over the data axis, so each device adds its own shard's
# Gram matrices to its own partial sums (no collective per batch); `_combine_shards`
# sums the partials once per run (one psum per layer, one for all the counts).


def _shard_step(
  acc, variables, x, key, starts, valid, *, apply_fn, rows_per_batch, dtype, mesh, axis
):
  def body(acc, variables, x, key, starts, valid):
    prev = jax.tree_util.tree_map(lambda a: a[0], acc)
    real = None if valid is None else valid[0]
    new = _batch_stats(apply_fn, variables, x, key, rows_per_batch, dtype, prev, real, starts[0])
    if new.paths != prev.paths:
      raise ValueError(
        f"The model called layers {list(new.paths)} on this batch but "
        f"{list(prev.paths)} on the first one; statistics need the same layers in every batch."
      )
    return jax.tree_util.tree_map(lambda a: a[None], new)

  specs = (P(axis), P(), P(axis), P(), P(axis), P(axis))
  return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P(axis))(
    acc, variables, x, key, starts, valid
  )


_SHARD_STATIC = (*_STATIC, "mesh", "axis")
_shard_accumulate = jax.jit(_shard_step, static_argnames=_SHARD_STATIC, donate_argnums=0)


def _combine(acc: _Ordered, *, mesh: Mesh, axis: str) -> _Ordered:
  def body(acc):
    grams = [jax.lax.psum(s.gram[0], axis) for s in acc.stats]
    counts = jax.lax.psum(jnp.stack([s.count[0] for s in acc.stats]), axis)
    stats = tuple(
      LayerStats(gram=g, count=counts[i], layout=s.layout)
      for i, (g, s) in enumerate(zip(grams, acc.stats))
    )
    return _Ordered(stats, acc.paths)

  return jax.shard_map(body, mesh=mesh, in_specs=P(axis), out_specs=P())(acc)


_combine_shards = jax.jit(_combine, static_argnames=("mesh", "axis"))


def _shard_zeros(shapes: _Ordered, shards: int, mesh: Mesh, axis: str) -> _Ordered:
  """Zero partial sums, (shards, ...) per leaf, sharded over the data axis."""
  sharding = NamedSharding(mesh, P(axis))
  make = jax.jit(
    lambda: jax.tree_util.tree_map(lambda s: jnp.zeros((shards, *s.shape), s.dtype), shapes),
    out_shardings=sharding,
  )
  return make()


def _shard_shapes(apply_fn, variables, local, key, budget, dtype) -> _Ordered:
  """Shapes of one shard's statistics for a shard batch like ``local`` (nothing runs)."""
  return jax.eval_shape(
    lambda v, xl, k: _batch_stats(apply_fn, v, xl, k, budget, dtype), variables, local, key
  )


def _shard_plan(first: Any, rows_per_batch: int | None):
  """(mesh, axis, shards, per-shard row budget) for sharded batches like ``first``."""
  mesh, axis = shd.data_axis_of(first)
  shards = shd.num_shards(mesh, axis)
  # Each shard sees 1/shards of a full batch's rows: a budget of rows_per_batch / shards
  # keeps every row with the same probability rows_per_batch / n as one device would.
  if rows_per_batch is None or shards == 1:
    budget = rows_per_batch
  elif rows_per_batch % shards == 0:
    budget = rows_per_batch // shards
  else:
    budget = rows_per_batch / shards
  return mesh, axis, shards, budget


def _sharded_activation_stats(apply_fn, variables, batches, *, rows_per_batch, seed, dtype):
  """`activation_stats` over batches that are global arrays sharded over a data axis
  (or `sap_jax.sharding.LocalBatch`es); returns the combined (replicated) `_Ordered`."""
  plan = None
  acc = None
  first_dtype = None
  offset = 0  # global index of the batch's first sample (consecutive global batches)
  for item in batches:
    x, starts, valid = item if isinstance(item, shd.LocalBatch) else (item, None, None)
    if not isinstance(x, jax.Array):
      raise ValueError(
        "activation_stats: a host batch after sharded ones; pass every batch as a global "
        "array over the same mesh (sap_jax.sharding.shard_batch), or all as host arrays."
      )
    if plan is None or x.dtype != first_dtype:
      # The full check (dtype, NaN/Inf: a pass over the batch and a host sync) for the
      # first batch; later batches of its dtype skip it, so a run syncs the host once:
      # a NaN or Inf in them still reaches a Gram matrix, refused at the end.
      x = check_inputs(x, f"activation_stats batch at sample {offset}")
      first_dtype = x.dtype if plan is None else first_dtype
    if plan is None:
      plan = _shard_plan(x, rows_per_batch)
      mesh, axis, shards, budget = plan
      variables = shd.replicate(variables, mesh)
      static = dict(
        apply_fn=hashable(apply_fn),
        rows_per_batch=budget,
        dtype=jnp.dtype(dtype),
        mesh=mesh,
        axis=axis,
      )
      key = np.asarray(jax.random.key_data(jax.random.PRNGKey(seed)))
    if shd.data_axis_of(x) != (mesh, axis):
      raise ValueError(
        f"activation_stats batch at sample {offset}: sharded differently from the first "
        f"batch (mesh axis {axis!r} of {shards} devices); shard every batch the same way."
      )
    per = shd.check_divides(x.shape[0], mesh, axis, f"activation_stats batch at sample {offset}")
    if starts is None:
      starts = shd.shard_starts(offset + per * np.arange(shards), mesh, axis)
    if acc is None:
      local = jax.ShapeDtypeStruct((per, *x.shape[1:]), x.dtype)
      acc = _shard_zeros(
        _shard_shapes(apply_fn, variables, local, key, budget, dtype), shards, mesh, axis
      )
    if valid is not None:
      _check_batch_major(apply_fn, variables, local, key, budget, dtype)
    acc = _shard_accumulate(acc, variables, x, key, starts, valid, **static)
    offset += x.shape[0]
  if acc is None:
    return None
  return _combine_shards(acc, mesh=mesh, axis=axis)


def _check_batch_major(apply_fn, variables, local, key, budget, dtype) -> None:
  try:
    jax.eval_shape(
      lambda v, xl, k: _batch_stats(apply_fn, v, xl, k, budget, dtype, real=jnp.int32(1)),
      variables,
      local,
      key,
    )
  except _NotBatchMajor as err:
    raise ValueError(
      f"Layer {err} does not see the batch on its first axis, so a padded sharded batch "
      "(LocalBatch.valid) cannot mask its padding; pass batches whose every sample counts."
    ) from None


def sharded_stats_hlo(
  apply_fn: ApplyFn,
  variables: Any,
  batch: jax.Array,
  *,
  rows_per_batch: int | None = None,
  dtype=jnp.float32,
) -> dict[str, str]:
  """The compiled HLO text of the two programs `activation_stats` runs on sharded batches
  like ``batch``: ``"step"`` (one batch added to the per-device partial sums, run once
  per batch) and ``"combine"`` (the partials summed over the devices, once per run). For
  tests and benchmarks that count collectives and the bytes they move."""
  mesh, axis, shards, budget = _shard_plan(batch, rows_per_batch)
  variables = shd.replicate(variables, mesh)
  per = shd.check_divides(batch.shape[0], mesh, axis)
  key = np.asarray(jax.random.key_data(jax.random.PRNGKey(0)))
  local = jax.ShapeDtypeStruct((per, *batch.shape[1:]), batch.dtype)
  acc = _shard_zeros(
    _shard_shapes(apply_fn, variables, local, key, budget, dtype), shards, mesh, axis
  )
  starts = shd.shard_starts(per * np.arange(shards), mesh, axis)
  static = dict(apply_fn=hashable(apply_fn), rows_per_batch=budget, dtype=jnp.dtype(dtype))
  step = _shard_accumulate.lower(
    acc, variables, batch, key, starts, None, **static, mesh=mesh, axis=axis
  )
  combine = _combine_shards.lower(acc, mesh=mesh, axis=axis)
  return {"step": step.compile().as_text(), "combine": combine.compile().as_text()}


@jax.jit
def _finite_flags(leaves):
  """One program for all leaves (eager ``isfinite`` would compile per leaf shape)."""
  return jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])


JITTED = {
  "stats.batch_stats": _batch_stats_jit,
  "stats.accumulate": _accumulate,
  "stats.finite_flags": _finite_flags,
  "stats.shard_accumulate": _shard_accumulate,
  "stats.combine_shards": _combine_shards,
}
"""The module-level compiled programs (see `sap_jax.compile_cache`)."""


def _nonfinite(named_leaves: list[tuple[str, Any]]) -> list[str]:
  """Names of the floating-point leaves that hold a NaN or Inf."""
  named = [
    (n, leaf) for n, leaf in named_leaves if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
  ]
  if not named:
    return []
  flags = np.asarray(_finite_flags([leaf for _, leaf in named]))
  return [n for (n, _), ok in zip(named, flags) if not ok]


def _named_variables(variables: Any) -> list[tuple[str, Any]]:
  return [(jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_leaves_with_path(variables)]


def _refuse_nonfinite_variables(bad: list[str]) -> None:
  if bad:
    raise ValueError(
      f"Variables contain NaN or Inf at {bad[:5]}; SAP needs a finite model. "
      "Restore a healthy checkpoint before correcting."
    )


def _check_finite_variables(variables: Any) -> None:
  _refuse_nonfinite_variables(_nonfinite(_named_variables(variables)))


def _placed_zeros(shapes: Any, variables: Any) -> Any:
  """Zeros of ``shapes`` (a pytree of `jax.ShapeDtypeStruct`), placed as the running sums
  `_accumulate` returns will be: committed to the variables' device when the variables
  are committed to one, so that every batch's call lowers the same program (a first call
  on uncommitted sums and later ones on committed outputs would lower it twice). Made on
  the host: eager ``jnp.zeros`` would compile a program per shape."""
  zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  placed = {
    leaf.sharding
    for leaf in jax.tree_util.tree_leaves(variables)
    if isinstance(leaf, jax.Array) and leaf.committed
  }
  return jax.device_put(zeros, placed.pop() if len(placed) == 1 else None)


def _pad_batch(x: Any, size: int) -> Any:
  """``x`` padded to ``size`` samples by repeating its first sample (on the host for a
  host array: eager slicing and concatenation would compile programs per shape)."""
  fill = (size - x.shape[0], *x.shape[1:])
  if isinstance(x, np.ndarray):
    return np.concatenate([x, np.broadcast_to(x[:1], fill)])
  return jnp.concatenate([x, jnp.broadcast_to(x[:1], fill)])


BATCHED_FIX = "wrap it: sap_jax.batched(x, 256) (or [x] for one batch)"
"""The fix when one array is given where `activation_stats` takes batches."""


def _check_batches(batches: Any) -> None:
  """Refuses one array (or a list of samples) given where an iterable of batches is
  expected: iterating it would read each sample as a batch of its rows."""
  if hasattr(batches, "shape") and not isinstance(batches, shd.LocalBatch):
    raise ValueError(
      f"activation_stats: batches is one array of shape {tuple(batches.shape)}, which would be "
      f"read sample by sample as batches; {BATCHED_FIX}."
    )
  if isinstance(batches, (list, tuple)) and batches:
    first = batches[0]
    if isinstance(first, numbers.Number) or (
      isinstance(first, (list, tuple)) and first and isinstance(first[0], numbers.Number)
    ):
      raise ValueError(
        "activation_stats: batches is a list of samples (nested lists of numbers), which "
        f"would be read sample by sample as batches; make it one array and {BATCHED_FIX}."
      )


def _raise_train_mode(err: BaseException) -> None:
  message = forward_failure(err, "activation_stats: apply_fn(variables, x)")
  if message is not None:
    raise TrainModeForward(message) from err


def _check_batch_axis(apply_fn, variables, x, offset) -> None:
  """A 1-D first batch (samples without a feature axis) must give one output row per
  sample: else it is one sample's features, read as a batch (a shape-only trace)."""
  if x.ndim != 1:
    return
  try:
    out = jax.eval_shape(apply_fn, variables, jax.ShapeDtypeStruct(x.shape, x.dtype))
  except Exception:  # noqa: BLE001 — reported by the statistics' own trace
    return
  shape = getattr(out, "shape", None)
  if shape is None or len(shape) < 2 or shape[0] != x.shape[0]:
    raise ValueError(
      f"activation_stats batch at sample {offset}: a batch of shape {tuple(x.shape)} gives "
      f"an output of shape {shape}, not one row per sample: it looks like one sample of an "
      f"array iterated as batches; pass batches of shape (n, ...): {BATCHED_FIX}."
    )


def activation_stats(
  apply_fn: ApplyFn,
  variables: Any,
  batches: Iterable[Any],
  *,
  rows_per_batch: int | None = None,
  seed: int = 0,
  dtype=jnp.float32,
  basis: str = "gram",
) -> dict[Path, LayerStats]:
  """Streams the input Gram matrix C = RᵀR of every Dense/DenseGeneral/Conv layer.

  Args:
    apply_fn: the model's eval-mode forward, ``apply_fn(variables, x) -> logits``
      (e.g. ``functools.partial(model.apply, train=False)``).
    variables: the model variables (``{"params": …, "batch_stats": …}``).
    batches: any iterable of input arrays (a list, a generator over a dataset).
      Batches of equal shape share one compilation. Batches may be global arrays
      sharded over a mesh's data axis (`sap_jax.sharding.shard_batch`, `from_process_local`,
      or the `LocalBatch`es of `sap_jax.sharding.local_batches`): then each device adds
      its own shard's Gram matrices to partial sums of its own, with no collective per
      batch, and the devices combine them once at the end (one psum per layer; see
      `sharded_stats_hlo`). The result is replicated on every device, equal to one
      device's to float tolerance, with the same rows under a row budget.
    rows_per_batch: if set, a row budget (like the published code's 50,000 per
      layer): every row of a layer whose full batch has n > rows_per_batch rows is
      kept with probability rows_per_batch / n, from a key of its own (the layer and
      the sample's global index, `sap_jax.stats.rows.budget_rows`), so a full batch
      keeps rows_per_batch rows on average, a short last batch the same fraction, and
      the same rows are kept for batches of b with budget r as for batches of 4b with
      4r. Default: every row counts.
    seed: seed of the row subsampling.
    dtype: accumulation dtype; float64 needs ``jax.config.update("jax_enable_x64",
      True)``.
    basis: "gram" (C = RᵀR); "qr": a streamed TSQR factor per layer instead
      (`sap_jax.stats.qr.activation_factors`, `LayerFactor`s; SVD-accurate); "auto":
      the exact rows of layers that see at most d rows, C of the others.

  Returns:
    A dict, in the order the layers are first called, from the layer's path in the
    ``params`` tree (a tuple of names, the parent of its ``kernel``) to its
    `LayerStats`.

  Raises:
    ValueError: no batch, no supported layer, non-finite variables or activations.
  """
  check_not_nnx(apply_fn, variables)
  _check_batches(batches)
  if basis in ("qr", "auto"):
    if isinstance(batches, (list, tuple)) and any(
      isinstance(b, shd.LocalBatch) or shd.data_axis_of(b) is not None for b in batches
    ):
      raise ValueError(
        f'basis="{basis}" takes host batches only; sharded batches use basis="gram".'
      )
    from sap_jax.stats.qr import activation_factors  # qr builds on this module

    long_layers = "qr" if basis == "qr" else "gram"
    return activation_factors(
      apply_fn,
      variables,
      batches,
      rows_per_batch=rows_per_batch,
      seed=seed,
      dtype=dtype,
      long_layers=long_layers,
    )
  if basis != "gram":
    raise ValueError(f'basis must be "gram", "qr" or "auto", got {basis!r}.')
  if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError(
      "dtype=float64 needs 64-bit JAX: call "
      "jax.config.update('jax_enable_x64', True) first, or use float32."
    )
  if rows_per_batch is not None and rows_per_batch < 1:
    raise ValueError(f"rows_per_batch must be ≥ 1 or None, got {rows_per_batch}.")
  static = dict(apply_fn=hashable(apply_fn), rows_per_batch=rows_per_batch, dtype=jnp.dtype(dtype))

  batches = iter(batches)
  first = next(batches, None)
  if first is not None and (
    isinstance(first, shd.LocalBatch) or shd.data_axis_of(first) is not None
  ):
    # Up front here; the host path checks them in its first step (`_accumulate`).
    _check_finite_variables(variables)
    ordered = _sharded_activation_stats(
      apply_fn,
      variables,
      itertools.chain([first], batches),
      rows_per_batch=rows_per_batch,
      seed=seed,
      dtype=dtype,
    )
    return _checked_stats(ordered)
  batches = itertools.chain([] if first is None else [first], batches)

  # Only a row budget draws (and needs) a key: none spares the eager PRNGKey programs.
  key = None if rows_per_batch is None else jax.random.PRNGKey(seed)
  acc = flags = None
  full = None  # shape of the first batch; smaller batches are padded to it
  masked = True
  offset = 0  # global index of the batch's first sample
  variable_names = [name for name, _ in _named_variables(variables)]
  # Host batches stay numpy arrays and the scalars numpy scalars up to the compiled step:
  # eager jnp conversions would compile (and, in a new process, lower) a program each.
  for x in batches:
    x = check_inputs(x, f"activation_stats batch at sample {offset}")
    real = x.shape[0]
    k = key  # the row budget's keys are per layer and global sample, not per batch
    if acc is None:
      full = x.shape
      # Zeros of the statistics' shapes: one compiled step (donating its running
      # sums) then serves every batch, the first included, and the last one too
      # (padded) when every covered layer sees the batch on its first axis.
      _check_batch_axis(apply_fn, variables, x, offset)
      try:
        shapes = _batch_stats_jit.eval_shape(variables, x, k, np.int32(real), **static)
      except _NotBatchMajor:
        masked = False
        shapes = _batch_stats_jit.eval_shape(variables, x, k, None, **static)
      except Exception as err:  # noqa: BLE001 — a train-mode forward is named, else raised
        _raise_train_mode(err)
        raise
      acc = _placed_zeros(shapes, variables)
    if masked and real < full[0] and x.shape[1:] == full[1:]:
      x = _pad_batch(x, full[0])
    first = flags is None
    acc, flags = _accumulate(
      acc, variables, x, k, np.int32(real) if masked else None, np.int32(offset), **static
    )
    if first:  # the variables are refused after one batch, before any other
      ok = np.asarray(flags)[: len(variable_names)]
      _refuse_nonfinite_variables([n for n, fine in zip(variable_names, ok) if not fine])
    offset += real
  return _checked_stats(acc, None if flags is None else np.asarray(flags)[len(variable_names) :])


def _checked_stats(
  acc: _Ordered | None, gram_flags: np.ndarray | None = None
) -> dict[Path, LayerStats]:
  """The statistics as a dict, after the checks every run ends with: inputs given, a
  covered layer called, finite statistics (``gram_flags``: per layer, whether its Gram
  matrix is finite, as the last step found it; None: checked here)."""
  if acc is None:
    raise ValueError(
      "activation_stats got no inputs: `batches` was empty. Pass a non-empty "
      "list of input batches (e.g. the trusted samples)."
    )
  if not acc.paths:
    raise ValueError(
      "No nn.Dense, nn.DenseGeneral, nn.Conv, nn.ConvTranspose or nn.Einsum layer "
      "was called by apply_fn, so there is nothing to project. SAP covers those Flax "
      "Linen layers (and their NNX twins through sap_jax.nnx); check that apply_fn "
      "runs the model's forward pass (an NNX model: use sap_jax.nnx.activation_stats)."
    )
  acc = dict(zip(acc.paths, acc.stats))
  named = [(path_name(p), s.gram) for p, s in acc.items()]
  if gram_flags is None:
    bad = _nonfinite(named)
  else:
    bad = [name for (name, _), fine in zip(named, gram_flags) if not fine]
  if bad:
    raise ValueError(
      f"Non-finite activations (NaN/Inf) reached layers {bad}: the statistics are "
      "unusable. Check the inputs (normalisation, NaNs in the data) and the model."
    )
  return acc


def activation_rows(
  apply_fn: ApplyFn,
  variables: Any,
  batches: Iterable[Any],
  *,
  max_rows: int = 50_000,
  seed: int = 0,
) -> dict[Path, tuple[jax.Array, Layout]]:
  """Materialises (a random subset of) every layer's input rows.

  This is the representation R as the published method builds it, for the `svd`
  basis option and for tests; `activation_stats` never needs it. Each layer keeps
  at most ``max_rows`` rows, drawn uniformly without replacement from all rows.

  Returns:
    dict path → ``(rows, layout)``, rows (n, d) or (G, n, d).
  """
  if max_rows < 1:
    raise ValueError(f"max_rows must be ≥ 1, got {max_rows}.")
  _check_finite_variables(variables)
  meta: list[tuple[Path, Layout]] = []

  @jax.jit
  def fn(v, x):
    calls = intercepted_rows(apply_fn, v, x)
    meta[:] = [(path, layout) for path, _, layout in calls]
    return [rows for _, rows, _ in calls]

  collected: dict[Path, list[jax.Array]] = {}
  layouts: dict[Path, Layout] = {}
  for x in batches:
    all_rows = fn(variables, jnp.asarray(x))
    for (path, layout), rows in zip(meta, all_rows):
      collected.setdefault(path, []).append(rows)
      layouts[path] = layout
  if not collected:
    raise ValueError("No Dense/DenseGeneral/Conv layer was called (or no batch given).")
  rng = np.random.default_rng(seed)
  out = {}
  for path, parts in collected.items():
    rows = jnp.concatenate(parts, axis=-2)
    n = rows.shape[-2]
    if n > max_rows:
      rows = jnp.take(rows, jnp.asarray(np.sort(rng.choice(n, max_rows, replace=False))), axis=-2)
    out[path] = (rows, layouts[path])
  return out
