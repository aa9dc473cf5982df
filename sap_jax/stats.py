"""Activation statistics: the uncentred second moment of every layer's input.

SAP needs, for each `nn.Dense`, `nn.DenseGeneral` and `nn.Conv` layer of a model,
the representation matrix R whose rows are the layer's input vectors on the trusted
set. Only the Gram matrix C = RᵀR (d×d) is ever needed: its eigenvectors are the
right singular vectors of R and its eigenvalues the squared singular values. So the
rows are reduced to C inside the jitted forward pass, batch by batch, and are never
materialised for the whole set: memory is O(Σ_l d_l²), independent of the number of
samples, and every row (every conv patch) counts.

Layers are found by interception (`flax.linen.intercept_methods`): any Linen model
works without per-model code. What a "row" is, per layer kind:

* `nn.Dense`: the input vector; all leading axes are folded, so a transformer's
  tokens are rows.
* `nn.DenseGeneral`: the input's contracting axes (``axis``), flattened in the order
  of the kernel's input axes; all other axes are folded into rows.
* `nn.Conv`: the unfolded input patch seen by one output position, built with
  `lax.conv_general_dilated_patches` from the layer's own kernel size, strides,
  padding (including flax's CIRCULAR/REFLECT/CAUSAL modes), input and kernel
  dilation. The patch's feature order is (C_in, k_1, …, k_n), channel slowest. A
  grouped conv (``feature_group_count`` = G > 1) gets one Gram matrix per group,
  since each group's kernel only sees its own C_in/G channels.

A layer called several times (shared weights) accumulates the rows of every call.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

Path = tuple[str, ...]
ApplyFn = Callable[[Any, jax.Array], jax.Array]

DENSE = "dense"
DENSE_GENERAL = "dense_general"
CONV = "conv"


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a layer's kernel lines up with the rows of its input statistics.

  Attributes:
    kind: "dense", "dense_general" or "conv".
    kernel_shape: shape of the layer's kernel in the params tree.
    num_in_axes: how many leading kernel axes are input axes (Dense 1,
      DenseGeneral ``len(axis)``, n-D conv n + 1: the spatial axes and C_in/G).
    groups: conv ``feature_group_count`` (1 for everything else).
  """

  kind: str
  kernel_shape: tuple[int, ...]
  num_in_axes: int
  groups: int = 1

  @property
  def dim(self) -> int:
    """Row length d of one group: the size of the projection matrix."""
    return int(math.prod(self.kernel_shape[: self.num_in_axes]))


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


def _path_name(path: Path) -> str:
  return "/".join(path)


def conv_patches(module: nn.Conv, inputs: jax.Array) -> jax.Array:
  """Unfolds a conv layer's input into its patches, exactly as the layer sees it.

  Args:
    module: a bound or unbound `nn.Conv` whose attributes define the geometry.
    inputs: the layer's input, ``(*batch, *spatial, C_in)``.

  Returns:
    Rows of shape (num_output_positions, C_in·Πk), features ordered (C_in, k_1, …).
  """
  kernel_size = (
      (module.kernel_size,)
      if isinstance(module.kernel_size, int)
      else tuple(module.kernel_size)
  )
  n = len(kernel_size)

  def broadcast(v):
    if v is None:
      v = 1
    return (v,) * n if isinstance(v, int) else tuple(v)

  strides = broadcast(module.strides)
  input_dilation = broadcast(module.input_dilation)
  kernel_dilation = broadcast(module.kernel_dilation)
  x = inputs.reshape((-1,) + inputs.shape[inputs.ndim - n - 1 :])

  padding = nn.linear.canonicalize_padding(module.padding, n)
  if padding in ("CIRCULAR", "REFLECT"):
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation)]
    pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)]
    x = jnp.pad(x, pads, mode={"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding])
    padding = "VALID"
  elif padding == "CAUSAL":
    if n != 1:
      raise ValueError("CAUSAL padding is only defined for 1-D convolutions.")
    x = jnp.pad(x, [(0, 0), (kernel_dilation[0] * (kernel_size[0] - 1), 0), (0, 0)])
    padding = "VALID"

  spatial = "".join("HWDXYZ"[i] for i in range(n))
  spec = f"N{spatial}C"
  patches = lax.conv_general_dilated_patches(
      x,
      filter_shape=kernel_size,
      window_strides=strides,
      padding=padding,
      lhs_dilation=input_dilation,
      rhs_dilation=kernel_dilation,
      dimension_numbers=(spec, "OI" + spatial, spec),
      precision=lax.Precision.HIGHEST,
  )
  return patches.reshape(-1, patches.shape[-1])


def layer_rows(module: nn.Module, inputs: jax.Array) -> tuple[jax.Array, Layout]:
  """The representation rows of one layer call and the layer's layout.

  Args:
    module: the intercepted `nn.Dense`, `nn.DenseGeneral` or `nn.Conv`.
    inputs: the input the layer was called with.

  Returns:
    ``(rows, layout)``: rows of shape (n, d), or (G, n, d) for a grouped conv.
  """
  x = jnp.asarray(inputs)
  if isinstance(module, nn.Dense):
    d = x.shape[-1]
    return x.reshape(-1, d), Layout(DENSE, (d, module.features), 1)
  if isinstance(module, nn.DenseGeneral):
    if tuple(np.atleast_1d(module.batch_dims)):
      raise NotImplementedError(
          f"DenseGeneral layer {_path_name(module.path)!r} has batch_dims; SAP "
          "supports DenseGeneral without batch_dims only. Exclude the layer with "
          f"exclude=({_path_name(module.path)!r},)."
      )
    axes = module.axis if isinstance(module.axis, Iterable) else (module.axis,)
    axes = tuple(sorted(a % x.ndim for a in axes))
    in_shape = tuple(x.shape[a] for a in axes)
    x = jnp.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
    features = (
        tuple(module.features)
        if isinstance(module.features, Iterable)
        else (module.features,)
    )
    rows = x.reshape(-1, math.prod(in_shape))
    return rows, Layout(DENSE_GENERAL, in_shape + features, len(axes))
  if isinstance(module, nn.Conv):
    kernel_size = (
        (module.kernel_size,)
        if isinstance(module.kernel_size, int)
        else tuple(module.kernel_size)
    )
    groups = int(module.feature_group_count)
    c_in = x.shape[-1]
    if c_in % groups:
      raise ValueError(
          f"Conv {_path_name(module.path)!r}: {c_in} input channels are not "
          f"divisible by feature_group_count={groups}."
      )
    layout = Layout(
        CONV, kernel_size + (c_in // groups, module.features), len(kernel_size) + 1, groups
    )
    rows = conv_patches(module, x)
    if groups > 1:
      # Channel-major features: group g owns the contiguous block g·d … (g+1)·d.
      rows = rows.reshape(rows.shape[0], groups, layout.dim).transpose(1, 0, 2)
    return rows, layout
  raise TypeError(f"Unsupported layer type {type(module).__name__}.")


def _gram(rows: jax.Array, dtype) -> jax.Array:
  rows = rows.astype(dtype)
  return jnp.einsum(
      "...nd,...ne->...de", rows, rows, precision=lax.Precision.HIGHEST
  )


def _is_supported(module: nn.Module) -> bool:
  if isinstance(module, nn.Conv):  # ConvLocal / ConvTranspose are not nn.Conv.
    return bool(getattr(module, "shared_weights", True))
  return isinstance(module, (nn.Dense, nn.DenseGeneral))


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

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and _is_supported(module) and args:
      rows, layout = layer_rows(module, args[0])
      calls.append((tuple(module.path), rows, layout))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    apply_fn(variables, x)
  return calls


def _batch_stats(
    apply_fn: ApplyFn,
    variables: Any,
    x: jax.Array,
    key: jax.Array | None,
    rows_per_batch: int | None,
    dtype,
    order: list[Path],
) -> dict[Path, LayerStats]:
  out: dict[Path, LayerStats] = {}
  for i, (path, rows, layout) in enumerate(intercepted_rows(apply_fn, variables, x)):
    n = rows.shape[-2]
    if rows_per_batch is not None and n > rows_per_batch:
      pick = jax.random.choice(
          jax.random.fold_in(key, i), n, (rows_per_batch,), replace=False
      )
      rows = jnp.take(rows, pick, axis=-2)
      n = rows_per_batch
    gram = _gram(rows, dtype)
    count = jnp.asarray(n, dtype)
    if path in out:
      if out[path].layout != layout:
        raise ValueError(
            f"Layer {_path_name(path)!r} is called with inputs of different shapes "
            f"({out[path].layout} vs {layout}); cannot share one projection."
        )
      gram = gram + out[path].gram
      count = count + out[path].count
    out[path] = LayerStats(gram=gram, count=count, layout=layout)
  if not order:  # record call order at trace time: jit returns dicts key-sorted
    order.extend(out)
  return out


def _check_finite_variables(variables: Any) -> None:
  bad = [
      jax.tree_util.keystr(p)
      for p, leaf in jax.tree_util.tree_leaves_with_path(variables)
      if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)
      and not bool(jnp.all(jnp.isfinite(leaf)))
  ]
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

  order: list[Path] = []

  @jax.jit
  def first(variables, x, key):
    return _batch_stats(apply_fn, variables, x, key, rows_per_batch, dtype, order)

  @functools.partial(jax.jit, donate_argnums=0)
  def accumulate(acc, variables, x, key):
    new = _batch_stats(apply_fn, variables, x, key, rows_per_batch, dtype, order)
    return jax.tree_util.tree_map(jnp.add, acc, new)

  key = jax.random.PRNGKey(seed)
  acc = None
  for i, x in enumerate(batches):
    x = jnp.asarray(x)
    if x.shape[0] == 0:
      continue
    k = jax.random.fold_in(key, i)
    acc = first(variables, x, k) if acc is None else accumulate(acc, variables, x, k)
  if acc is None:
    raise ValueError(
        "activation_stats got no inputs: `batches` was empty. Pass a non-empty "
        "list of input batches (e.g. the trusted samples)."
    )
  if not acc:
    raise ValueError(
        "No nn.Dense, nn.DenseGeneral or nn.Conv layer was called by apply_fn, so "
        "there is nothing to project. SAP covers Flax Linen Dense/DenseGeneral/Conv "
        "layers; check that apply_fn runs the model's forward pass."
    )
  acc = {p: acc[p] for p in order}
  bad = [
      _path_name(p) for p, s in acc.items() if not bool(jnp.all(jnp.isfinite(s.gram)))
  ]
  if bad:
    raise ValueError(
        f"Non-finite activations (NaN/Inf) reached layers {bad}: the statistics are "
        "unusable. Check the inputs (normalisation, NaNs in the data) and the model."
    )
  return acc


def batched(x: Any, batch_size: int) -> list[Any]:
  """Splits an array along its first axis into consecutive batches."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")
  n = len(x)
  return [x[i : i + batch_size] for i in range(0, n, batch_size)]


def stats_summary(stats: Mapping[Path, LayerStats]) -> dict[str, dict[str, Any]]:
  """A JSON-friendly per-layer summary: kind, d, groups, rows, effective rank."""
  out = {}
  for path, s in stats.items():
    eig = jnp.clip(jnp.linalg.eigvalsh(s.gram), 0.0)
    p = eig / jnp.maximum(eig.sum(-1, keepdims=True), jnp.finfo(eig.dtype).tiny)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(p), 0.0), axis=-1)
    out[_path_name(path)] = {
        "kind": s.layout.kind,
        "dim": s.layout.dim,
        "groups": s.layout.groups,
        "rows": int(s.count),
        "effective_rank": float(jnp.mean(jnp.exp(entropy))),
        "top_energy": float(jnp.mean(jnp.max(p, axis=-1))),
    }
  return out


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
