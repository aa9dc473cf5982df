"""Collecting activation statistics: the layer-call observer and streaming accumulation.

A layer's rows (`sap_jax.stats.rows`) are reduced to C = RᵀR inside the jitted forward
pass, batch by batch, never materialised for the whole set: memory is O(Σ_l d_l²),
independent of the number of samples, and every row (every conv patch) counts. A layer
called several times (shared weights) accumulates the rows of every call.

The layer-call observer: `observe_linen_calls` runs a Linen forward under
`flax.linen.intercept_methods` and reports every covered layer call (the one guard: a
module's ``__call__`` with a positional input, on a module `rows.is_supported` covers)
to a callback as a `LayerCall`. The statistics (`activation_stats`), the rows
(`intercepted_rows`, `activation_rows`) and the cost estimate (`gram_costs`) are all
such callbacks, so any Linen model works without per-model code.

How Flax NNX plugs in: an ``observe_nnx_calls(model, x, on_call)`` next to
`observe_linen_calls` runs an ``nnx.Module`` with its covered layers' ``__call__``
wrapped, reporting each call as a `LayerCall` (the layer's path in the model's state,
the layer, its input, its forward) and returning the callback's replacement output, as
here. The layer readers gain an NNX branch each: `rows.is_supported`, `rows.layer_rows`
and the one conv adapter `conv.conv_geometry`. The callbacks, Gram kernels and
accumulation stay as they are; the functions below take the observer as an argument
instead of calling `observe_linen_calls` directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sap_jax.hashable import hashable
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
    if not (context.method_name == "__call__" and is_supported(module) and args):
      return next_fun(*args, **kwargs)
    call = LayerCall(tuple(module.path), module, args[0], lambda: next_fun(*args, **kwargs))
    out = on_call(call)
    return next_fun(*args, **kwargs) if out is None else out

  with nn.intercept_methods(interceptor):
    return apply_fn(variables, x)


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
        path="/".join(call.path),
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
    lambda v, xx: observe_linen_calls(apply_fn, v, xx, on_call), variables, jnp.asarray(x)
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
) -> _Ordered:
  """One batch's statistics, added to ``acc`` (running sums) when given.

  Each layer's Gram matrix is added to its running sum as soon as it is computed,
  and the layer's output is made to depend on it (by adding an exact zero), so
  XLA computes and frees one layer's rows at a time, in forward order, instead of
  keeping every layer's input (and every fresh Gram matrix) alive at once.

  ``real``: only the first ``real`` samples of ``x`` count (the rest pad the last
  batch to the shape of the others, so that one compilation serves all). Needs
  every covered layer's input to have the batch on axis 0; `_NotBatchMajor` is
  raised at trace time otherwise.
  """
  running = dict(zip(acc.paths, acc.stats)) if acc is not None else {}
  out: dict[Path, LayerStats] = {}
  calls: list[Path] = []

  def on_call(call: LayerCall) -> jax.Array:
    path, inputs = call.path, call.inputs
    k = None if key is None else jax.random.fold_in(key, len(calls))
    calls.append(path)
    if real is not None and (jnp.ndim(inputs) == 0 or jnp.shape(inputs)[0] != x.shape[0]):
      raise _NotBatchMajor("/".join(path))
    gram, count, layout = layer_gram(call.layer, inputs, k, rows_per_batch, dtype, real)
    prev = out.get(path, running.get(path))
    if prev is not None:
      if prev.layout != layout:
        raise ValueError(
          f"Layer {'/'.join(path)!r} is called with inputs of different shapes "
          f"({prev.layout} vs {layout}); cannot share one projection."
        )
      gram = gram + prev.gram
      count = count + prev.count
    out[path] = LayerStats(gram=gram, count=count, layout=layout)
    y = call.forward()
    zero = (gram.reshape(-1)[0] * jnp.zeros((), gram.dtype)).astype(y.dtype)
    return y + zero

  observe_linen_calls(apply_fn, variables, x, on_call)
  return _Ordered(tuple(out.values()), tuple(out))


_STATIC = ("apply_fn", "rows_per_batch", "dtype")


def _batch_stats_kw(variables, x, key, real, *, apply_fn, rows_per_batch, dtype):
  return _batch_stats(apply_fn, variables, x, key, rows_per_batch, dtype, real=real)


# Module-level jits: one compilation per (model, batch shape, options), reused by
# every later `activation_stats` call (several rounds, sweeps, benchmarks), instead
# of a fresh closure (and a fresh compilation) per call.
_batch_stats_jit = jax.jit(_batch_stats_kw, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnums=0)
def _accumulate(acc, variables, x, key, real, *, apply_fn, rows_per_batch, dtype):
  new = _batch_stats(apply_fn, variables, x, key, rows_per_batch, dtype, acc, real)
  if new.paths != acc.paths:
    raise ValueError(
      f"The model called layers {list(new.paths)} on this batch but "
      f"{list(acc.paths)} on the first one; statistics need the same layers in every batch."
    )
  return new


@jax.jit
def _finite_flags(leaves):
  """One program for all leaves (eager ``isfinite`` would compile per leaf shape)."""
  return jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])


JITTED = {
  "stats.batch_stats": _batch_stats_jit,
  "stats.accumulate": _accumulate,
  "stats.finite_flags": _finite_flags,
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


def _check_finite_variables(variables: Any) -> None:
  bad = _nonfinite(
    [(jax.tree_util.keystr(p), leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(variables)]
  )
  if bad:
    raise ValueError(
      f"Variables contain NaN or Inf at {bad[:5]}; SAP needs a finite model. "
      "Restore a healthy checkpoint before correcting."
    )


def activation_stats(
  apply_fn: ApplyFn,
  variables: Any,
  batches: Iterable[Any],
  *,
  rows_per_batch: int | None = None,
  seed: int = 0,
  dtype=jnp.float32,
) -> dict[Path, LayerStats]:
  """Streams the input Gram matrix C = RᵀR of every Dense/DenseGeneral/Conv layer.

  Args:
    apply_fn: the model's eval-mode forward, ``apply_fn(variables, x) -> logits``
      (e.g. ``functools.partial(model.apply, train=False)``).
    variables: the model variables (``{"params": …, "batch_stats": …}``).
    batches: any iterable of input arrays (a list, a generator over a dataset).
      Batches of equal shape share one compilation.
    rows_per_batch: if set, keep at most this many uniformly random rows per layer
      and batch (a row budget like the published code's 50,000 per layer). Default:
      every row counts.
    seed: seed of the row subsampling.
    dtype: accumulation dtype; float64 needs ``jax.config.update("jax_enable_x64",
      True)``.

  Returns:
    A dict, in the order the layers are first called, from the layer's path in the
    ``params`` tree (a tuple of names, the parent of its ``kernel``) to its
    `LayerStats`.

  Raises:
    ValueError: no batch, no supported layer, non-finite variables or activations.
  """
  if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError(
      "dtype=float64 needs 64-bit JAX: call "
      "jax.config.update('jax_enable_x64', True) first, or use float32."
    )
  if rows_per_batch is not None and rows_per_batch < 1:
    raise ValueError(f"rows_per_batch must be ≥ 1 or None, got {rows_per_batch}.")
  _check_finite_variables(variables)

  static = dict(apply_fn=hashable(apply_fn), rows_per_batch=rows_per_batch, dtype=jnp.dtype(dtype))

  key = jax.random.PRNGKey(seed)
  acc = None
  full = None  # shape of the first batch; smaller batches are padded to it
  masked = True
  for i, x in enumerate(batches):
    x = jnp.asarray(x)
    real = x.shape[0]
    if real == 0:
      continue
    k = jax.random.fold_in(key, i)
    if acc is None:
      full = x.shape
      # Zeros of the statistics' shapes: one compiled step (donating its running
      # sums) then serves every batch, the first included, and the last one too
      # (padded) when every covered layer sees the batch on its first axis.
      try:
        shapes = _batch_stats_jit.eval_shape(variables, x, k, jnp.int32(real), **static)
      except _NotBatchMajor:
        masked = False
        shapes = _batch_stats_jit.eval_shape(variables, x, k, None, **static)
      acc = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    if masked and real < full[0] and x.shape[1:] == full[1:]:
      pad = jnp.broadcast_to(x[:1], (full[0] - real, *x.shape[1:]))
      x = jnp.concatenate([x, pad])
    acc = _accumulate(acc, variables, x, k, jnp.int32(real) if masked else None, **static)
  if acc is None:
    raise ValueError(
      "activation_stats got no inputs: `batches` was empty. Pass a non-empty "
      "list of input batches (e.g. the trusted samples)."
    )
  if not acc.paths:
    raise ValueError(
      "No nn.Dense, nn.DenseGeneral or nn.Conv layer was called by apply_fn, so "
      "there is nothing to project. SAP covers Flax Linen Dense/DenseGeneral/Conv "
      "layers; check that apply_fn runs the model's forward pass."
    )
  acc = dict(zip(acc.paths, acc.stats))
  bad = _nonfinite([("/".join(p), s.gram) for p, s in acc.items()])
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
