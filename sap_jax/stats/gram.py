"""Gram kernels C = RᵀR and their cost model.

Two ways to compute a layer's input Gram matrix:

* `gram_matrix`: multiply the rows out, one GEMM per block row of the symmetric
  result (block-triangular for large d).
* `conv_gram_by_shifts`: the exact patch Gram of a stride-1 conv from shifted
  products of the image itself, without forming the (rows × C_in·Πk) patch matrix.
  Tested against explicit patch Grams.

`choose_shift_plan` decides between them from shapes alone, with the cost model
(`direct_cost`, `shift_cost`) and the thresholds below. All of these are pure functions
of arrays, shapes and a `ConvGeometry` (`sap_jax.stats.conv`). Per layer call,
`layer_gram` computes the Gram matrix with the kernel chosen (or from a row budget's
sample), and `layer_gram_cost` reports that choice and its multiply-adds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sap_jax.stats.conv import (
  ConvGeometry,
  channel_major_order,
  conv_geometry,
  extract_patches_offset_major,
)
from sap_jax.stats.rows import CONV, Layout, budget_rows, layer_rows, rows_at, rows_shape

# Block-triangular GEMM (`gram_matrix`). From row length d = GRAM_BLOCK_MIN_DIM on, only
# the block upper triangle of B column blocks is multiplied: (B + 1) / 2B of the full
# product's multiply-adds (B = 4: 62.5 %). B stays small (at most GRAM_MAX_BLOCKS, blocks
# of at least GRAM_BLOCK_MIN_DIM / 2 columns) so every product is still a large, efficient
# GEMM.
GRAM_BLOCK_MIN_DIM = 1024
GRAM_MAX_BLOCKS = 4

# Shifted-product conv Gram (`conv_gram_by_shifts`): chosen when it needs under this
# fraction of the direct patch GEMM's multiply-adds (`shift_cost` vs `direct_cost`).
# Measured break-even on CPU: ≈ 40 %.
SHIFT_MAX_COST_RATIO = 0.35
# ... and only for at least this many input channels: below it the C_in × C_in products
# are tiny GEMMs, no faster, and more to compile.
SHIFT_MIN_CHANNELS = 4

_HIGHEST = lax.Precision.HIGHEST


def gram_blocks(d: int) -> int:
  """Column blocks of the block-triangular Gram product for row length d."""
  if d < GRAM_BLOCK_MIN_DIM:
    return 1
  return min(GRAM_MAX_BLOCKS, d // (GRAM_BLOCK_MIN_DIM // 2))


def gram_matrix(rows: jax.Array, dtype) -> jax.Array:
  """C = RᵀR over the row axis (…, n, d) → (…, d, d), one GEMM per block row.

  C is symmetric, so for large d only the block upper triangle is computed: with B
  column blocks (`gram_blocks`), block row i is R_iᵀ R_{i:}, and the lower blocks are
  transposes.

  Args:
    rows: (…, n, d) rows.
    dtype: accumulation dtype.

  Returns:
    (…, d, d) Gram matrices.
  """
  rows = rows.astype(dtype)
  d = rows.shape[-1]
  batch = tuple(range(rows.ndim - 2))
  dims = (((rows.ndim - 2,), (rows.ndim - 2,)), (batch, batch))
  blocks = gram_blocks(d)
  if blocks == 1:
    return lax.dot_general(rows, rows, dims, precision=_HIGHEST)
  edges = [round(i * d / blocks) for i in range(blocks + 1)]
  upper = [
    lax.dot_general(
      rows[..., edges[i] : edges[i + 1]], rows[..., edges[i] :], dims, precision=_HIGHEST
    )
    for i in range(blocks)
  ]  # upper[i]: (…, d_i, d - edges[i]), columns edges[i]:
  block_rows = []
  for i in range(blocks):
    lower = [
      jnp.swapaxes(upper[j][..., edges[i] - edges[j] : edges[i + 1] - edges[j]], -1, -2)
      for j in range(i)
    ]
    block_rows.append(jnp.concatenate(lower + [upper[i]], axis=-1))
  return jnp.concatenate(block_rows, axis=-2)


class ShiftPlan(NamedTuple):
  """Static plan of `conv_gram_by_shifts` for one stride-1 conv geometry.

  Attributes:
    size: the image's spatial shape.
    out: the output's spatial shape.
    windows: per axis, per kernel offset a: the [lo, hi) image coordinates that offset
      reads (output position p = q + pad_lo − a·dil must lie in [0, out)).
    edges: per axis: the image coordinates outside at least one offset's window.
    offsets: the kernel offsets, row-major.
    deltas: the distinct offset differences b − a over pairs a ≤ b (row-major), sorted.
  """

  size: tuple[int, ...]
  out: tuple[int, ...]
  windows: tuple[tuple[tuple[int, int], ...], ...]
  edges: tuple[tuple[int, ...], ...]
  offsets: tuple[tuple[int, ...], ...]
  deltas: tuple[tuple[int, ...], ...]


def shift_plan(input_shape: Sequence[int], geom: ConvGeometry) -> ShiftPlan | None:
  """The plan of `conv_gram_by_shifts` for a conv input of shape (N, *spatial, C), or None.

  None when the conv is not eligible: stride or input dilation ≠ 1, more than 2 spatial
  axes, a 1×…×1 kernel, or an empty output.
  """
  ks, dil = geom.kernel_size, geom.kernel_dilation
  n = len(ks)
  if n > 2 or any(s != 1 for s in geom.strides) or any(s != 1 for s in geom.input_dilation):
    return None
  if math.prod(ks) == 1:
    return None
  size = tuple(input_shape[1 : 1 + n])
  pads = geom.padding
  out = tuple(size[d] + pads[d][0] + pads[d][1] - (ks[d] - 1) * dil[d] for d in range(n))
  if min(out) < 1:
    return None
  windows = tuple(
    tuple(
      (max(0, a * dil[d] - pads[d][0]), min(size[d], a * dil[d] - pads[d][0] + out[d]))
      for a in range(ks[d])
    )
    for d in range(n)
  )
  edges = tuple(
    tuple(sorted({q for lo, hi in windows[d] for q in (*range(0, lo), *range(hi, size[d]))}))
    for d in range(n)
  )
  offsets = tuple(itertools.product(*(range(k) for k in ks)))
  pairs = [(i, j) for i in range(len(offsets)) for j in range(i, len(offsets))]
  deltas = tuple(sorted({tuple(b - a for a, b in zip(offsets[i], offsets[j])) for i, j in pairs}))
  return ShiftPlan(size, out, windows, edges, offsets, deltas)


def shift_cost(input_shape: Sequence[int], plan: ShiftPlan) -> int:
  """Multiply-adds of `conv_gram_by_shifts` on an input of shape (N, *spatial, C)."""
  n_img, c = input_shape[0], input_shape[-1]
  size, edges = plan.size, plan.edges
  positions = 0
  for subset in itertools.product((False, True), repeat=len(size)):
    positions += math.prod(len(edges[d]) if fixed else size[d] for d, fixed in enumerate(subset))
  return n_img * positions * c * c * len(plan.deltas)


def direct_cost(rows: int, d: int) -> int:
  """Multiply-adds of `gram_matrix` on (rows, d)."""
  b = gram_blocks(d)
  return rows * d * d * (b + 1) // (2 * b)


def choose_shift_plan(
  input_shape: Sequence[int], geom: ConvGeometry, rows_per_batch: int | None
) -> ShiftPlan | None:
  """The plan when `conv_gram_by_shifts` is the kernel to use for this conv call, else None.

  It is used for an ungrouped conv with a `shift_plan` whose rows all count (no budget
  below the row count), with at least `SHIFT_MIN_CHANNELS` input channels, and when it
  needs under `SHIFT_MAX_COST_RATIO` of the direct GEMM's multiply-adds.

  Args:
    input_shape: the conv input's shape (N, *spatial, C_in), as from `conv_geometry`.
    geom: the conv's geometry.
    rows_per_batch: the row budget, or None.
  """
  if geom.groups != 1:
    return None
  plan = shift_plan(input_shape, geom)
  if plan is None:
    return None
  n_rows = input_shape[0] * math.prod(plan.out)
  if rows_per_batch is not None and n_rows > rows_per_batch:
    return None
  c_in = input_shape[-1]
  if c_in < SHIFT_MIN_CHANNELS:
    return None
  d = c_in * math.prod(geom.kernel_size)
  if shift_cost(input_shape, plan) >= SHIFT_MAX_COST_RATIO * direct_cost(n_rows, d):
    return None
  return plan


def layer_gram(
  module: Any,
  inputs: jax.Array,
  key: jax.Array | None,
  rows_per_batch: int | None,
  dtype,
  real: jax.Array | None = None,
  offset: jax.Array | int = 0,
) -> tuple[jax.Array, jax.Array, Layout]:
  """Gram matrix, row count and layout of one layer call, by the kernel the cost model picks.

  A stride-1 conv whose rows all count goes through `conv_gram_by_shifts` when
  `choose_shift_plan` picks it; everything else materialises the rows and multiplies
  them out with `gram_matrix`. With a ``rows_per_batch`` budget smaller than the row
  count, only that many random rows are gathered (a conv's other patches are never
  unfolded).

  Args:
    module: the layer (see `sap_jax.stats.rows.layer_rows`).
    inputs: the input it was called with.
    key: PRNG key of the row budget's sampling (unused without a budget).
    rows_per_batch: the row budget, or None.
    dtype: accumulation dtype.
    real: a traced count that marks a padded batch: only the first ``real`` samples
      (axis 0 of ``inputs``) count. The others are zeroed before the products, so
      their rows add nothing, and the budget draws from the real rows only.
    offset: global index of the batch's first sample: the budget keeps each row with
      a probability and a key of its own (`sap_jax.stats.rows.budget_rows`), whatever
      the batching.

  Returns:
    ``(gram, count, layout)``.
  """
  x = jnp.asarray(inputs)
  if real is not None:
    keep = (jnp.arange(x.shape[0]) < real).astype(x.dtype)
    x = x * keep.reshape((-1,) + (1,) * (x.ndim - 1))
  shape, layout = rows_shape(module, x)
  n = shape[-2]
  # Every sample has n / batch rows; only the real samples' rows count.
  real_rows = n if real is None else real * (n // x.shape[0])
  count = jnp.asarray(real_rows, dtype)
  shifts = _shift_kernel(module, x, layout, rows_per_batch)
  if shifts is not None:
    return conv_gram_by_shifts(*shifts, dtype), count, layout
  if rows_per_batch is not None and n > rows_per_batch:
    valid = None if real is None else real_rows
    index, weight = budget_rows(key, n, x.shape[0], rows_per_batch, offset, valid)
    rows = rows_at(module, x, index, layout) * weight[:, None].astype(x.dtype)
    return gram_matrix(rows, dtype), jnp.sum(weight).astype(dtype), layout
  if layout.kind == CONV and layout.groups == 1:
    # Gram of the offset-major patches, then its d × d rows/columns reordered to
    # the channel-major layout (cheaper than reordering the n × d patches).
    order = channel_major_order(x.shape[-1], layout.dim // x.shape[-1])
    gram = gram_matrix(extract_patches_offset_major(*conv_geometry(module, x)), dtype)
    return gram[order][:, order], count, layout
  return gram_matrix(layer_rows(module, x)[0], dtype), count, layout


def layer_gram_cost(
  module: Any, inputs: jax.Array, rows_per_batch: int | None
) -> tuple[int, Layout, int, str]:
  """What `layer_gram` multiplies for one layer call, from shapes alone.

  Traceable; meant for `jax.eval_shape`, where nothing is computed.

  Returns:
    ``(rows, layout, executed_macs, method)``: the rows that count (per group), the
    layout, the multiply-adds of the chosen kernel, and "shifts" or "gemm".
  """
  x = jnp.asarray(inputs)
  rows, layout = layer_rows(module, x)  # abstract under eval_shape
  n = rows.shape[-2]
  if rows_per_batch is not None:
    n = min(n, rows_per_batch)
  shifts = _shift_kernel(module, x, layout, rows_per_batch)
  if shifts is not None:
    xc, _, plan = shifts
    return n, layout, shift_cost(xc.shape, plan), "shifts"
  return n, layout, layout.groups * direct_cost(n, layout.dim), "gemm"


def _shift_kernel(module: Any, x: jax.Array, layout: Layout, rows_per_batch: int | None):
  """``(conv input, geometry, plan)`` when `conv_gram_by_shifts` computes this call's
  Gram matrix, else None."""
  if layout.kind != CONV:
    return None
  xc, geom = conv_geometry(module, x)
  plan = choose_shift_plan(xc.shape, geom, rows_per_batch)
  return None if plan is None else (xc, geom, plan)


def conv_gram_by_shifts(x: jax.Array, geom: ConvGeometry, plan: ShiftPlan, dtype) -> jax.Array:
  """Exact patch Gram matrix of a stride-1 conv without forming the patches.

  Block (a, b) of C = Σ_p patch_p patch_pᵀ (kernel offsets a, b; C_in × C_in) is
  Σ_{q ∈ W_a} x_q x_{q+δ}ᵀ over image positions q, δ = (b − a)·dilation, where W_a
  is the box of positions offset a reads. Every box is the whole image less a few
  edge rows/columns, so with the full-image correlations T_δ = Σ_q x_q x_{q+δ}ᵀ
  (x is zero outside the image) the block is T_δ minus edge-strip sums
  (inclusion–exclusion over the axes). A 3×3 kernel needs 13 distinct δ (b ≥ a)
  instead of 45 block products: on 32×32 inputs ≈ 5× fewer multiply-adds than
  the full patch Gram, and no (rows × 9·C_in) patch matrix.

  The steps: the shifted correlations over the whole image and over each edge strip
  (`_shifted_correlations`), the full-image blocks (`_full_image_blocks`), the edge-strip
  corrections (`_edge_strip_correction`), and the symmetric channel-major matrix
  (`_assemble_blocks`).

  Args:
    x: the conv input (N, *spatial, C), as from `conv_geometry`.
    geom: the conv's geometry (stride 1).
    plan: ``shift_plan(x.shape, geom)``.
    dtype: accumulation dtype.

  Returns:
    (C·Πk, C·Πk) Gram matrix, channel-major features (as `extract_patches`).
  """
  x = x.astype(dtype)
  strips = _edge_strips(plan)
  corr, order = _shifted_correlations(x, geom, plan, strips, dtype)
  table = _block_table(plan, order)
  blocks = _full_image_blocks(corr[strips[0]], table)
  for fixed in strips[1:]:
    correction = _edge_strip_correction(corr[fixed], fixed, plan, table, dtype)
    if correction is not None:
      blocks = blocks + correction
  return _assemble_blocks(blocks, table, len(plan.offsets), x.shape[-1])


def _edge_strips(plan: ShiftPlan) -> list[tuple[bool, ...]]:
  """The position subsets whose correlations are needed, as the axes they fix.

  ``(False, …)`` first: the whole image; then every subset of axes fixed to their edge
  coordinates (the edge strips, and their intersections) that exists.
  """
  return [
    fixed
    for fixed in itertools.product((False, True), repeat=len(plan.size))
    if not any(f and not plan.edges[d] for d, f in enumerate(fixed))
  ]


def _restrict(v: jax.Array, fixed: tuple[bool, ...], edges) -> jax.Array:
  """(N, *L, F) → (E, M, F): positions whose coordinates on the fixed axes are edge
  coordinates, those axes first (GEMM batch), the rest flattened (contracted)."""
  for d, f in enumerate(fixed):
    if f:
      v = jnp.concatenate([lax.slice_in_dim(v, e, e + 1, axis=1 + d) for e in edges[d]], axis=1 + d)
  fixed_axes = [1 + d for d, f in enumerate(fixed) if f]
  if fixed_axes:
    free_axes = [0] + [1 + d for d, f in enumerate(fixed) if not f]
    v = jnp.transpose(v, fixed_axes + free_axes + [v.ndim - 1])
  e = math.prod(v.shape[: len(fixed_axes)])
  return v.reshape(e, -1, v.shape[-1])


def _shifted_correlations(
  x: jax.Array,
  geom: ConvGeometry,
  plan: ShiftPlan,
  strips: list[tuple[bool, ...]],
  dtype,
) -> tuple[dict[tuple[bool, ...], jax.Array], list[int]]:
  """M[fixed][e, t] = Σ x_q x_{q+δ}ᵀ over the positions q of one strip, for every δ.

  Positions whose coordinates on the fixed axes are the edge coordinates e (all
  positions when nothing is fixed), δ = ``plan.deltas[order[t]]``.

  Returns:
    ``(corr, order)``: corr maps each strip to its (E, Δ, C, C) correlations, and
    order lists the δ indices in the order of their products.
  """
  dil, deltas, size = geom.kernel_dilation, plan.deltas, plan.size
  n, c = len(geom.kernel_size), x.shape[-1]
  # Zero-pad so that x[q + δ·dil] is addressable for every image position q.
  lo = [max(0, -min(dl[d] for dl in deltas) * dil[d]) for d in range(n)]
  hi = [max(0, max(dl[d] for dl in deltas) * dil[d]) for d in range(n)]
  xs = lax.pad(
    x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(lo[d], hi[d], 0) for d in range(n)] + [(0, 0, 0)]
  )

  def shifted(xs, delta):
    start = (0,) + tuple(lo[d] + delta[d] * dil[d] for d in range(n)) + (0,)
    limit = (x.shape[0],) + tuple(start[1 + d] + size[d] for d in range(n)) + (c,)
    return lax.slice(xs, start, limit)

  # The products' δ order: grouped by the first component of δ.
  by_first: dict[int, list[int]] = {}
  for k, delta in enumerate(deltas):
    by_first.setdefault(delta[0], []).append(k)
  order = [k for ks_ in by_first.values() for k in ks_]

  bases = {fixed: _restrict(x, fixed, plan.edges) for fixed in strips}
  products: dict[tuple[bool, ...], list[jax.Array]] = {fixed: [] for fixed in strips}
  src = xs
  for k in order:
    # One shifted copy at a time (a slice the dot reads), not a stack of copies.
    other = shifted(src, deltas[k])
    done = []
    for fixed in strips:
      prod = lax.dot_general(
        bases[fixed],
        _restrict(other, fixed, plan.edges),
        (((1,), (1,)), ((0,), (0,))),
        precision=_HIGHEST,
      )
      products[fixed].append(prod[:, :, None, :])
      done.append(prod)
    # The next copy may only be made once this one's products exist: XLA would
    # otherwise materialise every copy up front (13× the layer input for a 3×3
    # kernel). A zero that depends on the products orders them (XLA:CPU drops
    # optimization barriers, and does not fold x·0 for floats).
    zero = sum(q.reshape(-1)[0] for q in done) * jnp.zeros((), dtype)
    src = xs + zero.astype(xs.dtype)
  corr = {
    fixed: jnp.transpose(jnp.concatenate(products[fixed], axis=2), (0, 2, 1, 3)) for fixed in strips
  }  # (E, C, Δ, C) → (E, Δ, C, C)
  return corr, order


class _BlockTable(NamedTuple):
  """For every block (a, b) of C, row-major over the kk × kk offset pairs: block (a, b)
  is block (min, max) of the pair, transposed when a > b."""

  first: np.ndarray  # the pair's first offset min(a, b)
  delta: np.ndarray  # the position of its δ in the correlations' order
  lower: np.ndarray  # a > b: below the diagonal, a transpose


def _block_table(plan: ShiftPlan, order: list[int]) -> _BlockTable:
  offsets, deltas = plan.offsets, plan.deltas
  pos = {k: t for t, k in enumerate(order)}
  kk = len(offsets)
  first, delta_pos, lower = [], [], []
  for i in range(kk):
    for j in range(kk):
      lo_, hi_ = min(i, j), max(i, j)
      delta = tuple(bb - aa for aa, bb in zip(offsets[lo_], offsets[hi_]))
      first.append(lo_)
      delta_pos.append(pos[deltas.index(delta)])
      lower.append(i > j)
  return _BlockTable(np.asarray(first), np.asarray(delta_pos), np.asarray(lower))


def _full_image_blocks(corr_full: jax.Array, table: _BlockTable) -> jax.Array:
  """Every block's full-image correlation T_δ: (kk², C, C)."""
  return jnp.take(corr_full[0], table.delta, axis=0, mode="clip")


def _edge_strip_correction(
  corr_strip: jax.Array,
  fixed: tuple[bool, ...],
  plan: ShiftPlan,
  table: _BlockTable,
  dtype,
) -> jax.Array | None:
  """One inclusion–exclusion term: ± the strip sums outside each block's box.

  ``weight[a_S, e] = 1`` if the edge coordinates e (on the fixed axes S) all lie
  outside offset a's box; the term is −Σ_e weight · M[e] for an odd number of fixed
  axes, + for an even one. None when no block needs this strip.

  Returns:
    (kk², C, C) correction, or None.
  """
  n, c = len(plan.size), corr_strip.shape[-1]
  axes = [d for d in range(n) if fixed[d]]
  a_keys = list(itertools.product(*(range(len(plan.windows[d])) for d in axes)))
  e_keys = list(itertools.product(*(plan.edges[d] for d in axes)))
  weight = np.zeros((len(a_keys), len(e_keys)), np.float32)
  for ia, a in enumerate(a_keys):
    boxes = [plan.windows[d][a[t]] for t, d in enumerate(axes)]
    for ie, e in enumerate(e_keys):
      weight[ia, ie] = all(not (lo_ <= q < hi_) for (lo_, hi_), q in zip(boxes, e))
  used = np.flatnonzero(weight.any(0))
  if used.size == 0:
    return None
  m = corr_strip[used]  # (E', Δ, C, C)
  strip = jnp.einsum("ae,ekij->akij", jnp.asarray(weight[:, used], dtype), m, precision=_HIGHEST)
  a_index = {a: t for t, a in enumerate(a_keys)}
  n_delta = len(plan.deltas)
  pick = (
    np.asarray([a_index[tuple(plan.offsets[t][d] for d in axes)] for t in table.first]) * n_delta
    + table.delta
  )
  sign = -1.0 if len(axes) % 2 else 1.0
  return sign * jnp.take(strip.reshape((-1, c, c)), pick, axis=0, mode="clip")


def _assemble_blocks(blocks: jax.Array, table: _BlockTable, kk: int, c: int) -> jax.Array:
  """(kk², C, C) upper-pair blocks → the symmetric (C·kk, C·kk) channel-major matrix."""
  mask = table.lower.reshape(-1, 1, 1)
  full = jnp.where(mask, jnp.swapaxes(blocks, -1, -2), blocks).reshape(kk, kk, c, c)
  return jnp.transpose(full, (2, 0, 3, 1)).reshape(c * kk, c * kk)
