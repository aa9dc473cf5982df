"""A streaming triangular factor of every layer's rows (TSQR): SVD accuracy without R.

The Gram path forms C = RᵀR in float32, which squares the conditioning: on rows whose
σ² spans 12 decades its projection differs from an exact SVD of R by up to 1e-1 at
α = 1e6. This accumulator keeps instead, per layer, a factor F with FᵀF = RᵀR and at
most d rows, updated batch by batch:

    F ← rows of [F; batch rows]                 while they are at most d,
    F ← the d × d triangle of QR([F; batch rows]) once they are more

("TSQR", communication-avoiding QR; the factors of several devices combine the same
way: `combine_factors`). Its thin SVD (`sap_jax.projection.svd_basis`) has the
singular values and right singular vectors of R to float32 accuracy, as the published
float32 SVD of R has, in O(d²) memory whatever the number of rows. A layer that sees
fewer rows than d keeps exactly its rows (n × d, less memory than a Gram matrix), and
its thin SVD costs O(n² d) instead of an eigendecomposition's O(d³).

With ``long_layers="gram"`` (``activation_stats(..., basis="auto")``) a layer switches to
C = RᵀR, computed by `activation_stats`' own kernels, once it has seen more than d
rows: short layers keep their exact rows (a thin SVD of n × d instead of a d × d
eigendecomposition, and an exact null space), long ones cost what the Gram path costs.

Rows are the layer's representation rows (`sap_jax.stats.rows.layer_rows`: conv
geometry, groups, DenseGeneral axes); a ``rows_per_batch`` budget keeps that many
uniformly random rows per layer and batch, as `activation_stats` does. Built as a
callback on the layer-call observer (`sap_jax.stats.observe.observe_linen_calls`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from sap_jax.hashable import hashable
from sap_jax.layers import path_name
from sap_jax.stats.collect import LayerStats
from sap_jax.stats.gram import layer_gram
from sap_jax.stats.observe import CallChoice, LayerCall, observe_linen_calls, select_calls
from sap_jax.stats.rows import Layout, budget_rows, layer_rows, rows_at, rows_shape
from sap_jax.types import ApplyFn, Path


@struct.dataclass
class LayerFactor:
  """A triangular (or row) factor of one layer's input rows.

  Attributes:
    factor: F (k, d), or (G, k, d) for a conv with G > 1 groups, with FᵀF = RᵀR and
      k = min(rows, d).
    count: number of rows accumulated (per group), a float32 scalar.
    layout: static description of the layer (kind, kernel shape, groups).
  """

  factor: jax.Array
  count: jax.Array
  layout: Layout = struct.field(pytree_node=False)

  @property
  def gram(self) -> jax.Array:
    """C = FᵀF (formed on demand, for the Gram-based paths and summaries)."""
    f = self.factor
    return jnp.einsum("...ki,...kj->...ij", f, f, precision=jax.lax.Precision.HIGHEST)


def tsqr_update(factor: jax.Array | None, rows: jax.Array) -> jax.Array:
  """The factor of [factor; rows]: the stack while it has at most d rows, else its
  d × d QR triangle (batched over leading axes; shapes are static)."""
  stacked = rows if factor is None else jnp.concatenate([factor, rows.astype(factor.dtype)], -2)
  d = stacked.shape[-1]
  if stacked.shape[-2] <= d:
    return stacked
  return jnp.linalg.qr(stacked, mode="r")


def combine_factors(factors: Iterable[jax.Array]) -> jax.Array:
  """One factor of the union of the rows of several factors (e.g. one per device)."""
  out = None
  for f in factors:
    out = tsqr_update(out, f)
  if out is None:
    raise ValueError("combine_factors got no factor.")
  return out


@struct.dataclass
class _Ordered:
  factors: tuple[LayerFactor, ...]
  paths: tuple[Path, ...] = struct.field(pytree_node=False)


def _batch_factors(
  apply_fn, variables, x, key, acc, real, offset, *, rows_per_batch, dtype, long_layers, calls=()
) -> _Ordered:
  """One batch's rows folded into the running factors ``acc`` (None: the first batch).

  With a row budget, ``real`` marks a padded last batch (only its first ``real``
  samples count) and ``offset`` is the global index of the batch's first sample: the
  budget keeps the rows `activation_stats` keeps (`sap_jax.stats.rows.budget_rows`).
  ``calls``: of a layer it names, only the chosen call counts (`select_calls`).
  """
  running = {} if acc is None else dict(zip(acc.paths, acc.factors))
  out: dict[Path, LayerFactor] = {}
  reported: list[Path] = []

  def on_call(call: LayerCall) -> None:
    k = jax.random.fold_in(key, len(reported))
    reported.append(call.path)
    xin = jnp.asarray(call.inputs)
    shape, layout = rows_shape(call.layer, xin)
    n = shape[-2]
    if rows_per_batch is not None and n > rows_per_batch:
      valid = None if real is None else real * (n // xin.shape[0])
      index, weight = budget_rows(k, n, xin.shape[0], rows_per_batch, offset, valid)
      rows = rows_at(call.layer, xin, index, layout) * weight[:, None].astype(xin.dtype)
      n = jnp.sum(weight)
    else:
      if real is not None:  # a padded batch: the padding samples' rows are zeros
        keep = (jnp.arange(xin.shape[0]) < real).astype(xin.dtype)
        xin = xin * keep.reshape((-1,) + (1,) * (xin.ndim - 1))
        n = real * (n // xin.shape[0])
      rows = layer_rows(call.layer, xin)[0]
    prev = out.get(call.path, running.get(call.path))
    if prev is not None and prev.layout != layout:
      raise ValueError(
        f"Layer {path_name(call.path)!r} is called with inputs of different shapes "
        f"({prev.layout} vs {layout}); cannot share one projection. Choose the call "
        f"whose inputs count: calls={{{path_name(call.path)!r}: k}} (k 0-based, forward order)."
      )
    count = jnp.asarray(n, jnp.float32) + (0.0 if prev is None else prev.count)
    had = (
      0
      if prev is None
      else (layout.dim + 1 if isinstance(prev, LayerStats) else prev.factor.shape[-2])
    )
    if long_layers == "gram" and had + rows.shape[-2] > layout.dim:
      # A long layer: from here on a Gram matrix, by activation_stats' own kernels.
      gram, _, _ = layer_gram(call.layer, call.inputs, k, rows_per_batch, dtype, real, offset)
      if prev is not None:
        gram = gram + (prev.gram if isinstance(prev, LayerStats) else prev.gram.reshape(gram.shape))
      out[call.path] = LayerStats(gram, count, layout)
      return
    factor = tsqr_update(None if prev is None else prev.factor, rows.astype(dtype))
    out[call.path] = LayerFactor(factor, count, layout)

  observe_linen_calls(apply_fn, variables, x, select_calls(on_call, calls))
  return _Ordered(tuple(out.values()), tuple(out))


_STATIC = ("apply_fn", "rows_per_batch", "dtype", "long_layers", "calls")
_first_jit = jax.jit(
  lambda variables, x, key, real, offset, *, apply_fn, rows_per_batch, dtype, long_layers, calls: (
    _batch_factors(
      apply_fn,
      variables,
      x,
      key,
      None,
      real,
      offset,
      rows_per_batch=rows_per_batch,
      dtype=dtype,
      long_layers=long_layers,
      calls=calls,
    )
  ),
  static_argnames=_STATIC,
)
_update_jit = jax.jit(
  lambda acc, variables, x, key, real, offset, *, apply_fn, rows_per_batch, dtype, long_layers, calls: (
    _batch_factors(
      apply_fn,
      variables,
      x,
      key,
      acc,
      real,
      offset,
      rows_per_batch=rows_per_batch,
      dtype=dtype,
      long_layers=long_layers,
      calls=calls,
    )
  ),
  static_argnames=_STATIC,
)  # no donation: a factor that still grows has a new shape, its buffer can't be reused

JITTED = {"stats.qr_first": _first_jit, "stats.qr_update": _update_jit}
"""The module-level compiled programs (see `sap_jax.compile_cache`)."""


def activation_factors(
  apply_fn: ApplyFn,
  variables: Any,
  batches: Iterable[Any],
  *,
  rows_per_batch: int | None = None,
  seed: int = 0,
  dtype=jnp.float32,
  long_layers: str = "qr",
  calls: CallChoice = (),
) -> dict[Path, LayerFactor | LayerStats]:
  """Streams a TSQR factor of the input rows of every Dense/DenseGeneral/Conv layer.

  The same layers, rows, row budget and order as `activation_stats`, but each layer
  keeps F (k ≤ d rows, FᵀF = RᵀR) instead of C = RᵀR. `sap_jax.decompose` takes the
  result as it takes statistics (one thin SVD of F per layer).

  Args:
    apply_fn: the model's eval-mode forward, ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    batches: any iterable of input arrays. Each distinct batch shape, and each factor
      shape while a layer's factor still grows (fewer rows than d), compiles once.
    rows_per_batch: keep at most this many uniformly random rows per layer and batch.
    seed: seed of the row subsampling.
    dtype: accumulation dtype (float64 needs ``jax_enable_x64``).
    long_layers: what a layer keeps once it has seen more rows than d: "qr" (the TSQR
      triangle, SVD-accurate) or "gram" (C = RᵀR from then on, as `activation_stats`
      computes it, a `LayerStats`): short layers keep their exact rows either way, so
      "gram" costs what `activation_stats` costs and decomposes a short layer by the
      thin SVD of its rows (O(n² d), no d × d eigendecomposition).
    calls: the chosen calls of layers called more than once (checked by
      `activation_stats`: `sap_jax.stats.calls.chosen_calls`); ``()``: every call counts.

  Returns:
    dict path → `LayerFactor`, in the order the layers are first called.

  Raises:
    ValueError: no batch, no supported layer, a bad budget or non-finite factors.
  """
  if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError(
      "dtype=float64 needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) "
      "first, or use float32."
    )
  if rows_per_batch is not None and rows_per_batch < 1:
    raise ValueError(f"rows_per_batch must be ≥ 1 or None, got {rows_per_batch}.")
  if long_layers not in ("qr", "gram"):
    raise ValueError(f'long_layers must be "qr" or "gram", got {long_layers!r}.')
  static = dict(
    apply_fn=hashable(apply_fn),
    rows_per_batch=rows_per_batch,
    dtype=jnp.dtype(dtype),
    long_layers=long_layers,
    calls=calls,
  )
  key = jax.random.PRNGKey(seed)  # per layer and global sample, as activation_stats
  acc = None
  full = None
  offset = 0
  for x in batches:
    x = jnp.asarray(x)
    real = x.shape[0]
    if real == 0:
      continue
    full = x.shape if full is None else full
    masked = None
    if rows_per_batch is not None and real < full[0] and x.shape[1:] == full[1:]:
      # The budget's keep probability is per full batch: pad, as activation_stats does.
      x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (full[0] - real, *x.shape[1:]))])
      masked = jnp.int32(real)
    args = (x, key, masked, jnp.int32(offset))
    offset += real
    if acc is None:
      acc = _first_jit(variables, *args, **static)
    else:
      new = _update_jit(acc, variables, *args, **static)
      if new.paths != acc.paths:
        raise ValueError(
          f"The model called layers {list(new.paths)} on this batch but {list(acc.paths)} "
          "on the first one; statistics need the same layers in every batch."
        )
      acc = new
  if acc is None:
    raise ValueError(
      "activation_factors got no inputs: `batches` was empty. Pass a non-empty list of "
      "input batches (e.g. the trusted samples)."
    )
  if not acc.paths:
    raise ValueError(
      "No nn.Dense, nn.DenseGeneral or nn.Conv layer was called by apply_fn, so there is "
      "nothing to project; check that apply_fn runs the model's forward pass."
    )
  out = dict(zip(acc.paths, acc.factors))
  flags = jax.device_get(
    [jnp.all(jnp.isfinite(f.gram if isinstance(f, LayerStats) else f.factor)) for f in out.values()]
  )
  bad = [path_name(p) for p, ok in zip(out, flags) if not ok]
  if bad:
    raise ValueError(
      f"Non-finite activations (NaN/Inf) reached layers {bad}: the statistics are "
      "unusable. Check the variables, the inputs (normalisation, NaNs) and the model."
    )
  return out
