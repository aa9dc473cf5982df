"""Collecting activation statistics through the layer-call observer: streaming accumulation.

A layer's rows (`sap_jax.stats.rows`) are reduced to C = RᵀR inside the jitted forward
pass, batch by batch, never materialised for the whole set: memory is O(Σ_l d_l²),
independent of the number of samples, and every row (every conv patch) counts. A layer
called several times (shared weights) accumulates the rows of every call, with a warning
naming it, its calls and their rows (`sap_jax.stats.calls.warn_repeated`), unless the
caller chose the call that counts (``activation_stats(..., calls={"head": 1})``).

Every function here is a callback on the layer-call observer
(`sap_jax.stats.observe.observe_linen_calls`): the statistics (`activation_stats`), the
rows (`intercepted_rows`, `activation_rows`) and the cost estimate (`gram_costs`), so any
Linen model (and, through `sap_jax.stats.observe.report_call`, any NNX model) works
without per-model code.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sap_jax import sharding as shd
from sap_jax.forward_checks import TrainModeForward, check_not_nnx, forward_failure
from sap_jax.hashable import hashable
from sap_jax.input_checks import check_inputs
from sap_jax.layers import path_name
from sap_jax.stats.accumulate import (
  LayerStats,
  NotBatchMajor,
  Ordered,
  accumulate,
  batch_stats_jit,
)
from sap_jax.stats.calls import ALL_CALLS, check_calls_option, chosen_calls, layer_calls
from sap_jax.stats.gram import layer_gram_cost
from sap_jax.stats.observe import LayerCall, LiftedTransformError, observe_linen_calls, shape_of
from sap_jax.stats.rows import Layout, layer_rows
from sap_jax.stats.sharded import (
  combine_shards,
  shard_accumulate,
  sharded_activation_stats,
)
from sap_jax.types import ApplyFn, Path


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


@jax.jit
def _finite_flags(leaves):
  """One program for all leaves (eager ``isfinite`` would compile per leaf shape)."""
  return jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])


JITTED = {
  "stats.batch_stats": batch_stats_jit,
  "stats.accumulate": accumulate,
  "stats.finite_flags": _finite_flags,
  "stats.shard_accumulate": shard_accumulate,
  "stats.combine_shards": combine_shards,
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
  `accumulate` returns will be: committed to the variables' device when the variables
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
  calls: str | Mapping[Any, int] = ALL_CALLS,
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
    calls: which call of a layer called more than once per forward counts: "all"
      (default: every call's rows summed, with a warning naming the layer, its calls
      and their rows) or a dict layer → call number, 0-based in forward order
      (``{"head": 1}``: only the inputs of the head's second call count, no warning
      for it); a layer is keyed by its "/"-joined name or its path tuple. Checked
      against a shape-only trace of the first batch before any statistic.

  Returns:
    A dict, in the order the layers are first called, from the layer's path in the
    ``params`` tree (a tuple of names, the parent of its ``kernel``) to its
    `LayerStats`.

  Raises:
    ValueError: no batch, no supported layer, non-finite variables or activations; a
      ``calls`` entry naming no layer, a layer called once or a call it does not have.
  """
  check_not_nnx(apply_fn, variables)
  _check_batches(batches)
  if not check_calls_option(calls):
    return _collect(apply_fn, variables, batches, rows_per_batch, seed, dtype, basis, ())
  if isinstance(batches, (list, tuple)):
    first = batches[0] if batches else None
  else:  # an iterator: its first batch put back
    batches = iter(batches)
    first = next(batches, None)
    batches = itertools.chain([] if first is None else [first], batches)
  if first is None:  # refused as no inputs
    return _collect(apply_fn, variables, batches, rows_per_batch, seed, dtype, basis, ())
  x0 = first.x if isinstance(first, shd.LocalBatch) else first
  try:
    found = layer_calls(apply_fn, variables, shape_of(x0))
  except LiftedTransformError:
    raise
  except Exception:  # noqa: BLE001 — the statistics' own checks name the cause
    _collect(apply_fn, variables, batches, rows_per_batch, seed, dtype, basis, ())
    raise
  stats = _collect(
    apply_fn, variables, batches, rows_per_batch, seed, dtype, basis, chosen_calls(calls, found)
  )
  return {p: stats[p] for p in found if p in stats}  # first-call order, as without a choice


def _collect(apply_fn, variables, batches, rows_per_batch, seed, dtype, basis, calls):
  """`activation_stats` with ``calls`` the checked `CallChoice`."""
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
      calls=calls,
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
  static = dict(
    apply_fn=hashable(apply_fn),
    rows_per_batch=rows_per_batch,
    dtype=jnp.dtype(dtype),
    calls=calls,
  )

  batches = iter(batches)
  first = next(batches, None)
  if first is not None and (
    isinstance(first, shd.LocalBatch) or shd.data_axis_of(first) is not None
  ):
    # Up front here; the host path checks them in its first step (`accumulate`).
    _check_finite_variables(variables)
    ordered = sharded_activation_stats(
      apply_fn,
      variables,
      itertools.chain([first], batches),
      rows_per_batch=rows_per_batch,
      seed=seed,
      dtype=dtype,
      calls=calls,
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
        shapes = batch_stats_jit.eval_shape(variables, x, k, np.int32(real), **static)
      except NotBatchMajor:
        masked = False
        shapes = batch_stats_jit.eval_shape(variables, x, k, None, **static)
      except Exception as err:  # noqa: BLE001 — a train-mode forward is named, else raised
        _raise_train_mode(err)
        raise
      acc = _placed_zeros(shapes, variables)
    if masked and real < full[0] and x.shape[1:] == full[1:]:
      x = _pad_batch(x, full[0])
    first = flags is None
    acc, flags = accumulate(
      acc, variables, x, k, np.int32(real) if masked else None, np.int32(offset), **static
    )
    if first:  # the variables are refused after one batch, before any other
      ok = np.asarray(flags)[: len(variable_names)]
      _refuse_nonfinite_variables([n for n, fine in zip(variable_names, ok) if not fine])
    offset += real
  return _checked_stats(acc, None if flags is None else np.asarray(flags)[len(variable_names) :])


def _checked_stats(
  acc: Ordered | None, gram_flags: np.ndarray | None = None
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
