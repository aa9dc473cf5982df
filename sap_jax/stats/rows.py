"""Per-layer representation rows and layouts.

What a "row" of a layer's representation matrix R is, per layer kind:

* `nn.Dense` (`DENSE`): the input vector; all leading axes are folded, so a
  transformer's tokens are rows.
* `nn.DenseGeneral` (`DENSE_GENERAL`): the input's contracting axes (``axis``),
  flattened in the order of the kernel's input axes; all other axes are folded into rows.
* `nn.Conv` (`CONV`): the unfolded input patch seen by one output position
  (`sap_jax.stats.conv`), from the layer's own kernel size, strides, padding (including
  flax's CIRCULAR/REFLECT/CAUSAL modes), input and kernel dilation. The patch's
  feature order is (C_in, k_1, …, k_n), channel slowest. A grouped conv
  (``feature_group_count`` = G > 1) gets one row set per group, since each group's
  kernel only sees its own C_in/G channels.

A `Layout` records how a layer's kernel lines up with those rows. Also here: the row
budget's sampling (`budget_rows`; the older per-batch `sample_rows`) and gathering
chosen rows without materialising the others (`rows_at`).

The row budget (`budget_rows`) is independent of the batching: every row of a layer
is kept with the same probability p = budget / (rows of a full batch), decided by a
uniform number drawn from the row's own key, ``fold_in(fold_in(layer key, global
sample index), ·)``: the same rows are kept whether the samples come in batches of 64
with a budget of 64·c rows or in batches of 256 with 256·c, and a short last batch
keeps p of its rows, not as many as a full one (the published code's per-batch cap
over-weights a short last batch). A full batch keeps budget rows on average.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sap_jax.stats.conv import conv_geometry, extract_patches, extract_patches_at

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


def is_supported(module: nn.Module) -> bool:
  """Whether `layer_rows` covers this Linen module (Dense, DenseGeneral, shared-weight Conv)."""
  if isinstance(module, nn.Conv):  # ConvLocal / ConvTranspose are not nn.Conv.
    return bool(getattr(module, "shared_weights", True))
  return isinstance(module, (nn.Dense, nn.DenseGeneral))


def layer_rows(module: nn.Module, inputs: jax.Array) -> tuple[jax.Array, Layout]:
  """The representation rows of one layer call and the layer's layout.

  Args:
    module: the intercepted `nn.Dense`, `nn.DenseGeneral` or `nn.Conv`.
    inputs: the input the layer was called with.

  Returns:
    ``(rows, layout)``: rows of shape (n, d), or (G, n, d) for a grouped conv.

  Raises:
    NotImplementedError: a DenseGeneral with ``batch_dims``.
    ValueError: a conv whose input channels are not divisible by its groups.
    TypeError: any other module type.
  """
  x = jnp.asarray(inputs)
  if isinstance(module, nn.Dense):
    d = x.shape[-1]
    return x.reshape(-1, d), Layout(DENSE, (d, module.features), 1)
  if isinstance(module, nn.DenseGeneral):
    if tuple(np.atleast_1d(module.batch_dims)):
      name = "/".join(module.path)
      raise NotImplementedError(
        f"DenseGeneral layer {name!r} has batch_dims; SAP "
        "supports DenseGeneral without batch_dims only. Exclude the layer with "
        f"exclude=({name!r},)."
      )
    axes = module.axis if isinstance(module.axis, Iterable) else (module.axis,)
    axes = tuple(sorted(a % x.ndim for a in axes))
    in_shape = tuple(x.shape[a] for a in axes)
    x = jnp.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
    features = (
      tuple(module.features) if isinstance(module.features, Iterable) else (module.features,)
    )
    rows = x.reshape(-1, math.prod(in_shape))
    return rows, Layout(DENSE_GENERAL, in_shape + features, len(axes))
  if isinstance(module, nn.Conv):
    xc, geom = conv_geometry(module, x)
    groups = geom.groups
    c_in = x.shape[-1]
    if c_in % groups:
      raise ValueError(
        f"Conv {'/'.join(module.path)!r}: {c_in} input channels are not "
        f"divisible by feature_group_count={groups}."
      )
    layout = Layout(
      CONV,
      geom.kernel_size + (c_in // groups, geom.features),
      len(geom.kernel_size) + 1,
      groups,
    )
    rows = extract_patches(xc, geom)
    if groups > 1:
      # Channel-major features: group g owns the contiguous block g·d … (g+1)·d.
      rows = rows.reshape(rows.shape[0], groups, layout.dim).transpose(1, 0, 2)
    return rows, layout
  raise TypeError(f"Unsupported layer type {type(module).__name__}.")


def rows_shape(module: nn.Module, inputs: jax.Array) -> tuple[tuple[int, ...], Layout]:
  """Shape of `layer_rows(module, inputs)`'s rows, and the layout, computing nothing."""
  layout = []

  def rows_only(v):
    rows, lay = layer_rows(module, v)
    layout.append(lay)
    return rows

  shape = jax.eval_shape(rows_only, inputs).shape
  return tuple(shape), layout[0]


def rows_at(module: nn.Module, inputs: jax.Array, index: jax.Array, layout: Layout) -> jax.Array:
  """Rows ``index`` of `layer_rows(module, inputs)`, whose layout is ``layout``.

  A conv's other patches are never unfolded.

  Args:
    module: the layer.
    inputs: the input the layer was called with.
    index: row indices, shape (m,).
    layout: the layer's layout (from `layer_rows` or `rows_shape`).

  Returns:
    (m, d) rows, or (G, m, d) for a grouped conv.
  """
  if layout.kind != CONV:
    return jnp.take(layer_rows(module, inputs)[0], index, axis=-2)
  x, geom = conv_geometry(module, inputs)
  rows = extract_patches_at(x, geom, index)
  if layout.groups > 1:
    rows = rows.reshape(rows.shape[0], layout.groups, layout.dim).transpose(1, 0, 2)
  return rows


def sample_rows(key: jax.Array, n: int, budget: int, valid: jax.Array | None) -> jax.Array:
  """``budget`` distinct row indices in [0, n) for a row budget.

  Args:
    key: PRNG key.
    n: number of rows.
    budget: number of indices to draw, ≤ n.
    valid: a traced count: the indices are drawn uniformly at random among the first
      ``valid`` rows (all rows when None); indices past ``valid`` are drawn only when
      there are fewer valid rows than the budget.

  Returns:
    (budget,) int indices.
  """
  u = jax.random.uniform(key, (n,))
  if valid is not None:
    u = jnp.where(jnp.arange(n) < valid, u, 2.0)
  return lax.top_k(-u, budget)[1]


def budget_margin(budget: int) -> int:
  """Rows gathered per batch for a budget: budget + 6√budget + 8, enough that more rows
  qualify with probability < 1e-9 (a binomial's tail 6 standard deviations out)."""
  return int(budget + math.ceil(6.0 * math.sqrt(budget)) + 8)


def budget_rows(
  key: jax.Array,
  n: int,
  samples: int,
  budget: int,
  offset: jax.Array | int,
  valid: jax.Array | None,
) -> tuple[jax.Array, jax.Array]:
  """The rows the batching-independent row budget keeps, as indices and 0/1 weights.

  Row j of sample b (rows are sample-major: n = samples · m, sample b owns rows
  b·m … b·m + m − 1) is kept iff u < p, p = budget / n, with u uniform from
  ``fold_in(key, offset + b)`` (its m numbers, one per row): each row is kept
  independently with probability p, whatever the batch it comes in.

  Args:
    key: the layer's key (the same for every batch).
    n: rows of this (full-shape) batch.
    samples: samples of this batch (axis 0 of the layer input), n % samples == 0.
    budget: expected rows kept per full batch, < n.
    offset: global index of the batch's first sample (traceable).
    valid: a traced count of the real rows (the first ones; padding after), or None.

  Returns:
    ``(index, weight)``: (c,) row indices, c = min(n, `budget_margin`(budget)), and
    float32 weights, 1 for a kept row and 0 for a gathered row that is not kept.
  """
  if n % samples:
    raise ValueError(f"{n} rows are not a whole number per sample for {samples} samples.")
  m = n // samples
  sample_ids = jnp.asarray(offset, jnp.int32) + jnp.arange(samples, dtype=jnp.int32)
  u = jax.vmap(lambda s: jax.random.uniform(jax.random.fold_in(key, s), (m,)))(sample_ids)
  u = u.reshape(n)
  keep = u < budget / n
  if valid is not None:
    keep = keep & (jnp.arange(n) < valid)
  cap = min(n, budget_margin(budget))
  index = lax.top_k(-jnp.where(keep, u, 2.0), cap)[1]
  return index, keep[index].astype(jnp.float32)
