"""One batch's activation statistics, and their running sums (an internal module).

`batch_stats` runs the forward pass once under the layer-call observer and reduces every
covered layer call's rows to its Gram matrix C = RᵀR (`sap_jax.stats.gram.layer_gram`),
row budget and padding mask applied; `accumulate` adds them to running sums in one compiled
step (the sums donated). `sap_jax.stats.collect` (one device) and `sap_jax.stats.sharded`
(a batch sharded over a mesh) drive them.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from sap_jax.layers import path_name
from sap_jax.stats.gram import layer_gram
from sap_jax.stats.observe import CallChoice, LayerCall, observe_linen_calls, select_calls
from sap_jax.stats.rows import Layout
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


@struct.dataclass
class Ordered:
  """Per-layer statistics in call order; the paths are static pytree metadata, so
  a jitted function returns them in order (a dict output would come back sorted)."""

  stats: tuple[LayerStats, ...]
  paths: tuple[Path, ...] = struct.field(pytree_node=False)


class NotBatchMajor(Exception):
  """A covered layer's input does not have the batch on its first axis."""


def batch_stats(
  apply_fn: ApplyFn,
  variables: Any,
  x: jax.Array,
  key: jax.Array | None,
  rows_per_batch: int | None,
  dtype,
  acc: Ordered | None = None,
  real: jax.Array | None = None,
  offset: jax.Array | int = 0,
  calls: CallChoice = (),
) -> Ordered:
  """One batch's statistics, added to ``acc`` (running sums) when given.

  Each layer's Gram matrix is added to its running sum as soon as it is computed,
  and the layer's output is made to depend on it (by adding an exact zero), so
  XLA computes and frees one layer's rows at a time, in forward order, instead of
  keeping every layer's input (and every fresh Gram matrix) alive at once.

  ``real``: only the first ``real`` samples of ``x`` count (the rest pad the last
  batch to the shape of the others, so that one compilation serves all). Needs
  every covered layer's input to have the batch on axis 0; `NotBatchMajor` is
  raised at trace time otherwise. ``offset``: global index of the batch's first sample
  (the row budget's per-row keys). ``calls``: of a layer it names, only the chosen call
  counts (`sap_jax.stats.observe.select_calls`); the others' rows are not read.
  """
  running = dict(zip(acc.paths, acc.stats)) if acc is not None else {}
  out: dict[Path, LayerStats] = {}
  reported: list[Path] = []
  seen: list[LayerCall] = []

  def on_call(call: LayerCall) -> jax.Array:
    seen.append(call)
    path, inputs = call.path, call.inputs
    k = None if key is None else jax.random.fold_in(key, len(reported))
    reported.append(path)
    if real is not None and (jnp.ndim(inputs) == 0 or jnp.shape(inputs)[0] != x.shape[0]):
      raise NotBatchMajor(path_name(path))
    gram, count, layout = layer_gram(call.layer, inputs, k, rows_per_batch, dtype, real, offset)
    prev = out.get(path, running.get(path))
    if prev is not None:
      if prev.layout != layout:
        raise ValueError(
          f"Layer {path_name(path)!r} is called with inputs of different shapes "
          f"({prev.layout} vs {layout}); cannot share one projection. Choose the call "
          f"whose inputs count: calls={{{path_name(path)!r}: k}} (k 0-based, forward order)."
        )
      gram = gram + prev.gram
      count = count + prev.count
    out[path] = LayerStats(gram=gram, count=count, layout=layout)
    y = call.forward()
    zero = (gram.reshape(-1)[0] * jnp.zeros((), gram.dtype)).astype(y.dtype)
    return y + zero

  observe_linen_calls(apply_fn, variables, x, select_calls(on_call, calls))
  from sap_jax.stats.calls import warn_repeated  # calls builds on this module

  warn_repeated(seen)  # a layer called twice per forward, no call chosen: rows summed
  return Ordered(tuple(out.values()), tuple(out))


STATIC = ("apply_fn", "rows_per_batch", "dtype", "calls")


def batch_stats_kw(variables, x, key, real, offset=0, *, apply_fn, rows_per_batch, dtype, calls=()):
  return batch_stats(
    apply_fn, variables, x, key, rows_per_batch, dtype, real=real, offset=offset, calls=calls
  )


# Module-level jits: one compilation per (model, batch shape, options), reused by
# every later `activation_stats` call (several rounds, sweeps, benchmarks), instead
# of a fresh closure (and a fresh compilation) per call.
batch_stats_jit = jax.jit(batch_stats_kw, static_argnames=STATIC)


def finite_leaves(leaves: list[Any]) -> jax.Array:
  """bool[len(leaves)], traced: whether each leaf holds no NaN or Inf (True for integer
  and bool leaves)."""
  flags = [
    jnp.all(jnp.isfinite(leaf)) if jnp.issubdtype(leaf.dtype, jnp.inexact) else jnp.bool_(True)
    for leaf in leaves
  ]
  return jnp.stack(flags) if flags else jnp.zeros((0,), bool)


@functools.partial(jax.jit, static_argnames=STATIC, donate_argnums=0)
def accumulate(acc, variables, x, key, real, offset, *, apply_fn, rows_per_batch, dtype, calls=()):
  """The running sums with one more batch, and the finiteness checks `activation_stats`
  makes (`finite_leaves` of every variable leaf, then of every new Gram matrix): in the
  step, so that a new process lowers no separate program for them (O(parameters + Σ d²)
  comparisons per batch, beside the batch's forward and products)."""
  new = batch_stats(apply_fn, variables, x, key, rows_per_batch, dtype, acc, real, offset, calls)
  if new.paths != acc.paths:
    raise ValueError(
      f"The model called layers {list(new.paths)} on this batch but "
      f"{list(acc.paths)} on the first one; statistics need the same layers in every batch."
    )
  leaves = jax.tree_util.tree_leaves(variables) + [s.gram for s in new.stats]
  return new, finite_leaves(leaves)
