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
* `nn.Conv`: the unfolded input patch seen by one output position (what
  `lax.conv_general_dilated_patches` computes, built here by slicing), from the
  layer's own kernel size, strides, padding (including flax's
  CIRCULAR/REFLECT/CAUSAL modes), input and kernel dilation. The patch's feature
  order is (C_in, k_1, …, k_n), channel slowest. A grouped conv (``feature_group_count`` = G > 1) gets one Gram matrix per group,
  since each group's kernel only sees its own C_in/G channels.

A layer called several times (shared weights) accumulates the rows of every call.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from sap_jax.hashable import hashable

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


class _ConvGeometry(NamedTuple):
  """A conv call's input (flattened batch, flax padding modes already applied) and
  the geometry `lax.conv_general_dilated` sees."""

  x: jax.Array  # (N, *spatial, C_in)
  kernel_size: tuple[int, ...]
  strides: tuple[int, ...]
  padding: Any  # "SAME"/"SAME_LOWER"/"VALID" or ((lo, hi), ...)
  input_dilation: tuple[int, ...]
  kernel_dilation: tuple[int, ...]


def _conv_geometry(module: nn.Conv, inputs: jax.Array) -> _ConvGeometry:
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
  return _ConvGeometry(x, kernel_size, strides, padding, input_dilation, kernel_dilation)


def _explicit_pads(geom: _ConvGeometry) -> list[tuple[int, int]]:
  n = len(geom.kernel_size)
  if isinstance(geom.padding, str):
    # As lax.conv_general_dilated does (string padding excludes input dilation).
    eff_k = [(k - 1) * d + 1 for k, d in zip(geom.kernel_size, geom.kernel_dilation)]
    return [tuple(p) for p in lax.padtype_to_pads(geom.x.shape[1 : 1 + n], eff_k, geom.strides, geom.padding)]
  return [tuple(int(v) for v in p) for p in geom.padding]


def conv_patches(module: nn.Conv, inputs: jax.Array) -> jax.Array:
  """Unfolds a conv layer's input into its patches, exactly as the layer sees it.

  Args:
    module: a bound or unbound `nn.Conv` whose attributes define the geometry.
    inputs: the layer's input, ``(*batch, *spatial, C_in)``.

  Returns:
    Rows of shape (num_output_positions, C_in·Πk), features ordered (C_in, k_1, …).
  """
  rows = _offset_major_patches(module, inputs)
  c = inputs.shape[-1]
  return rows[:, _channel_major_order(c, rows.shape[-1] // c)]


def _offset_major_patches(module: nn.Conv, inputs: jax.Array) -> jax.Array:
  """`conv_patches` with the features ordered (k_1, …, k_n, C_in) instead: the
  cheaper layout to build (whole channel blocks side by side: measured 1.6× faster
  than interleaving them, and faster to compile)."""
  g = _conv_geometry(module, inputs)
  return _patches_by_slicing(
      g.x, g.kernel_size, g.strides, _explicit_pads(g), g.input_dilation, g.kernel_dilation
  )


def _channel_major_order(c: int, k: int) -> np.ndarray:
  """Index that reorders offset-major features (k, C) into channel-major (C, k)."""
  return np.arange(c * k).reshape(k, c).T.reshape(-1)


def _padded_input(x, kernel_size, strides, padding, input_dilation, kernel_dilation):
  """The conv input after explicit (and interior, for input dilation) padding, and
  the output's spatial shape: patch ``o`` at kernel offset ``k`` reads
  ``xp[:, o·stride + k·dilation, :]``."""
  n = len(kernel_size)
  eff_k = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation)]
  config = [(0, 0, 0)] + [
      (lo, hi, ind - 1) for (lo, hi), ind in zip(padding, input_dilation)
  ] + [(0, 0, 0)]
  xp = lax.pad(x, jnp.zeros((), x.dtype), config)
  out = [(xp.shape[1 + i] - eff_k[i]) // strides[i] + 1 for i in range(n)]
  if min(out) < 1:
    raise ValueError(
        f"Conv kernel {tuple(kernel_size)} (dilation {tuple(kernel_dilation)}) does "
        f"not fit the padded input of spatial shape {tuple(xp.shape[1:1 + n])}."
    )
  return xp, out


def _conv_rows_at(module: nn.Conv, inputs: jax.Array, index: jax.Array) -> jax.Array:
  """Rows ``index`` of `conv_patches(module, inputs)`, gathered from the input
  without unfolding the other patches: (len(index), C_in·Πk)."""
  g = _conv_geometry(module, inputs)
  xp, out = _padded_input(
      g.x, g.kernel_size, g.strides, _explicit_pads(g), g.input_dilation, g.kernel_dilation
  )
  pos = jnp.unravel_index(index, (g.x.shape[0], *out))
  cols = []
  for offset in itertools.product(*(range(k) for k in g.kernel_size)):
    coords = tuple(
        p * s + o * d for p, s, o, d in zip(pos[1:], g.strides, offset, g.kernel_dilation)
    )
    cols.append(xp[(pos[0], *coords)])  # (m, C)
  return jnp.stack(cols, axis=-1).reshape(index.shape[0], -1)  # (C, Πk): channel slowest


def _rows_shape(module: nn.Module, inputs: jax.Array) -> tuple[tuple[int, ...], Layout]:
  """Shape of `layer_rows(module, inputs)`'s rows, and the layout, computing nothing."""
  layout = []

  def rows_only(v):
    rows, lay = layer_rows(module, v)
    layout.append(lay)
    return rows

  shape = jax.eval_shape(rows_only, inputs).shape
  return tuple(shape), layout[0]


def _rows_at(
    module: nn.Module, inputs: jax.Array, index: jax.Array, layout: Layout
) -> jax.Array:
  """Rows ``index`` of `layer_rows(module, inputs)` (whose layout is ``layout``); a
  conv's other patches are never unfolded."""
  if not isinstance(module, nn.Conv):
    return jnp.take(layer_rows(module, inputs)[0], index, axis=-2)
  rows = _conv_rows_at(module, inputs, index)
  if layout.groups > 1:
    rows = rows.reshape(rows.shape[0], layout.groups, layout.dim).transpose(1, 0, 2)
  return rows


def _sample_rows(key: jax.Array, n: int, budget: int, valid: jax.Array | None) -> jax.Array:
  """``budget`` distinct row indices in [0, n), uniformly at random among the first
  ``valid`` (a traced count; all rows when None); indices past ``valid`` are drawn
  only when there are fewer valid rows than the budget."""
  u = jax.random.uniform(key, (n,))
  if valid is not None:
    u = jnp.where(jnp.arange(n) < valid, u, 2.0)
  return lax.top_k(-u, budget)[1]


def _patches_by_slicing(x, kernel_size, strides, padding, input_dilation, kernel_dilation):
  """im2col by data movement only: pad (with interior padding for input dilation),
  then one strided slice per kernel offset, side by side on the channel axis, so
  the feature order is (k_1, …, k_n, C_in). `lax.conv_general_dilated_patches` computes
  the same thing as a grouped convolution with a one-hot kernel: Πk MACs per
  output element, and slow on CPU; this is a single copy fusion.

  Args:
    x: ``(N, *spatial, C)``.
    padding: a sequence of (lo, hi) pairs (negative values crop).

  Returns:
    ``(N·Π out_spatial, C·Πk)`` rows.
  """
  xp, out = _padded_input(x, kernel_size, strides, padding, input_dilation, kernel_dilation)
  slices = []
  for offset in itertools.product(*(range(k) for k in kernel_size)):
    start = (0,) + tuple(o * d for o, d in zip(offset, kernel_dilation)) + (0,)
    limit = (
        (xp.shape[0],)
        + tuple(st + (o - 1) * s + 1 for st, o, s in zip(start[1:], out, strides))
        + (xp.shape[-1],)
    )
    slices.append(lax.slice(xp, start, limit, (1,) + tuple(strides) + (1,)))
  patches = jnp.concatenate(slices, axis=-1)  # (N, *out, Πk·C): offset slowest
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


# Gram matrices of at least this many features are computed block-triangularly.
_GRAM_BLOCK_MIN_DIM = 1024
_GRAM_MAX_BLOCKS = 4


def _gram_blocks(d: int) -> int:
  """Column blocks of the block-triangular Gram product for row length d."""
  if d < _GRAM_BLOCK_MIN_DIM:
    return 1
  return min(_GRAM_MAX_BLOCKS, d // (_GRAM_BLOCK_MIN_DIM // 2))


def _gram(rows: jax.Array, dtype) -> jax.Array:
  """C = RᵀR over the row axis (…, n, d) → (…, d, d), one GEMM per block row.

  C is symmetric, so for large d only the block upper triangle is computed: with B
  column blocks, block row i is R_iᵀ R_{i:}, (B + 1) / 2B of the full product's
  multiply-adds (B = 4: 62.5 %), and the lower blocks are transposes. B stays
  small so that every product is still a large, efficient GEMM.
  """
  rows = rows.astype(dtype)
  d = rows.shape[-1]
  hp = lax.Precision.HIGHEST
  batch = tuple(range(rows.ndim - 2))
  dims = (((rows.ndim - 2,), (rows.ndim - 2,)), (batch, batch))
  blocks = _gram_blocks(d)
  if blocks == 1:
    return lax.dot_general(rows, rows, dims, precision=hp)
  edges = [round(i * d / blocks) for i in range(blocks + 1)]
  upper = [
      lax.dot_general(
          rows[..., edges[i] : edges[i + 1]], rows[..., edges[i] :], dims, precision=hp
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


def _shift_plan(geom: _ConvGeometry):
  """Static plan of `_conv_gram_by_shifts` for a stride-1 conv, or None.

  Returns None when the conv is not eligible (stride or input dilation ≠ 1,
  more than 2 spatial axes, a 1×…×1 kernel).
  """
  ks, dil = geom.kernel_size, geom.kernel_dilation
  n = len(ks)
  if n > 2 or any(s != 1 for s in geom.strides) or any(s != 1 for s in geom.input_dilation):
    return None
  if math.prod(ks) == 1:
    return None
  size = geom.x.shape[1 : 1 + n]
  pads = _explicit_pads(geom)
  out = [size[d] + pads[d][0] + pads[d][1] - (ks[d] - 1) * dil[d] for d in range(n)]
  if min(out) < 1:
    return None
  # Image coordinates q seen by kernel offset a along axis d: output position
  # p = q + pad_lo - a·dil must lie in [0, out).
  windows = [
      [(max(0, a * dil[d] - pads[d][0]), min(size[d], a * dil[d] - pads[d][0] + out[d])) for a in range(ks[d])]
      for d in range(n)
  ]
  edges = [
      sorted({q for lo, hi in windows[d] for q in (*range(0, lo), *range(hi, size[d]))})
      for d in range(n)
  ]
  offsets = list(itertools.product(*(range(k) for k in ks)))
  pairs = [(i, j) for i in range(len(offsets)) for j in range(i, len(offsets))]
  deltas = sorted({tuple(b - a for a, b in zip(offsets[i], offsets[j])) for i, j in pairs})
  return dict(size=size, out=out, windows=windows, edges=edges, offsets=offsets, pairs=pairs, deltas=deltas)


def _shift_cost(geom: _ConvGeometry, plan) -> int:
  """Multiply-adds of `_conv_gram_by_shifts`."""
  n_img, c = geom.x.shape[0], geom.x.shape[-1]
  size, edges = plan["size"], plan["edges"]
  positions = 0
  for subset in itertools.product((False, True), repeat=len(size)):
    positions += math.prod(len(edges[d]) if fixed else size[d] for d, fixed in enumerate(subset))
  return n_img * positions * c * c * len(plan["deltas"])


def _direct_cost(rows: int, d: int) -> int:
  """Multiply-adds of `_gram` on (rows, d)."""
  b = _gram_blocks(d)
  return rows * d * d * (b + 1) // (2 * b)


def _conv_gram_by_shifts(geom: _ConvGeometry, plan, dtype) -> jax.Array:
  """Exact patch Gram matrix of a stride-1 conv without forming the patches.

  Block (a, b) of C = Σ_p patch_p patch_pᵀ (kernel offsets a, b; C_in × C_in) is
  Σ_{q ∈ W_a} x_q x_{q+δ}ᵀ over image positions q, δ = (b − a)·dilation, where W_a
  is the box of positions offset a reads. Every box is the whole image less a few
  edge rows/columns, so with the full-image correlations T_δ = Σ_q x_q x_{q+δ}ᵀ
  (x is zero outside the image) the block is T_δ minus edge-strip sums
  (inclusion–exclusion over the axes). A 3×3 kernel needs 13 distinct δ (b ≥ a)
  instead of 45 block products: on 32×32 inputs ≈ 5× fewer multiply-adds than
  the full patch Gram, and no (rows × 9·C_in) patch matrix.
  """
  x = geom.x.astype(dtype)
  ks, dil = geom.kernel_size, geom.kernel_dilation
  n, c = len(ks), x.shape[-1]
  size, edges, deltas = plan["size"], plan["edges"], plan["deltas"]
  hp = lax.Precision.HIGHEST
  # Zero-pad so that x[q + δ·dil] is addressable for every image position q.
  lo = [max(0, -min(dl[d] for dl in deltas) * dil[d]) for d in range(n)]
  hi = [max(0, max(dl[d] for dl in deltas) * dil[d]) for d in range(n)]
  xs = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(lo[d], hi[d], 0) for d in range(n)] + [(0, 0, 0)])

  def shifted(xs, delta):
    start = (0,) + tuple(lo[d] + delta[d] * dil[d] for d in range(n)) + (0,)
    limit = (x.shape[0],) + tuple(start[1 + d] + size[d] for d in range(n)) + (c,)
    return lax.slice(xs, start, limit)

  # Group δ by their first component: one GEMM per group, (C) × (|group|·C).
  groups: dict[int, list[int]] = {}
  for k, delta in enumerate(deltas):
    groups.setdefault(delta[0], []).append(k)

  order = [k for ks_ in groups.values() for k in ks_]  # δ order of the GEMM outputs
  pos = {k: t for t, k in enumerate(order)}
  n_delta = len(deltas)

  def restrict(v, fixed):
    """(N, *L, F) → (E, M, F): positions whose coordinates on the fixed axes are
    edge coordinates, those axes first (GEMM batch), the rest flattened (contracted)."""
    for d, f in enumerate(fixed):
      if f:
        v = jnp.concatenate([lax.slice_in_dim(v, e, e + 1, axis=1 + d) for e in edges[d]], axis=1 + d)
    fixed_axes = [1 + d for d, f in enumerate(fixed) if f]
    if fixed_axes:
      free_axes = [0] + [1 + d for d, f in enumerate(fixed) if not f]
      v = jnp.transpose(v, fixed_axes + free_axes + [v.ndim - 1])
    e = math.prod(v.shape[: len(fixed_axes)])
    return v.reshape(e, -1, v.shape[-1])

  subsets = [
      fixed
      for fixed in itertools.product((False, True), repeat=n)
      if not any(f and not edges[d] for d, f in enumerate(fixed))
  ]  # (False, …) first: the whole image; then the edge strips that exist
  bases_ = {fixed: restrict(x, fixed) for fixed in subsets}
  # corr[fixed]: list over δ groups of (E, C, |group|, C). One group's shifted copies
  # (side by side on the channel axis, |group|× the input) are alive at a time.
  corr: dict[tuple[bool, ...], list[jax.Array]] = {fixed: [] for fixed in subsets}
  src = xs
  for ks_ in groups.values():
    for k in ks_:
      # One shifted copy at a time (a slice the dot reads), not a stack of copies.
      other = shifted(src, deltas[k])
      done = []
      for fixed in subsets:
        prod = lax.dot_general(
            bases_[fixed], restrict(other, fixed), (((1,), (1,)), ((0,), (0,))), precision=hp
        )
        corr[fixed].append(prod[:, :, None, :])
        done.append(prod)
      # The next copy may only be made once this one's products exist: XLA would
      # otherwise materialise every copy up front (13× the layer input for a 3×3
      # kernel). A zero that depends on the products orders them (XLA:CPU drops
      # optimization barriers, and does not fold x·0 for floats).
      zero = sum(q.reshape(-1)[0] for q in done) * jnp.zeros((), dtype)
      src = xs + zero.astype(xs.dtype)

  def correlations(fixed):
    """M[e, δ] = Σ x_q x_{q+δ}ᵀ over positions whose coordinates on the fixed axes
    are the edge coordinates e (all positions when nothing is fixed): (E, Δ, C, C),
    δ in `order`."""
    return jnp.transpose(jnp.concatenate(corr[fixed], axis=2), (0, 2, 1, 3))

  offsets = plan["offsets"]
  kk = len(offsets)
  # Every (a, b) block is computed as block (min, max) of the pair, transposed when
  # a > b: `src[t]` is the first offset of that upper pair, `dlt[t]` its δ position.
  src, dlt, lower = [], [], []
  for i in range(kk):
    for j in range(kk):
      lo_, hi_ = min(i, j), max(i, j)
      delta = tuple(bb - aa for aa, bb in zip(offsets[lo_], offsets[hi_]))
      src.append(lo_)
      dlt.append(pos[deltas.index(delta)])
      lower.append(i > j)
  src_np, dlt_np = np.asarray(src), np.asarray(dlt)
  full = jnp.take(correlations((False,) * n)[0], dlt_np, axis=0, mode="clip")  # (kk², C, C)
  for fixed in subsets[1:]:
    axes = [d for d in range(n) if fixed[d]]
    # weight[a_S, e] = 1 if the edge coordinates e all lie outside offset a's box.
    a_keys = list(itertools.product(*(range(ks[d]) for d in axes)))
    e_keys = list(itertools.product(*(edges[d] for d in axes)))
    weight = np.zeros((len(a_keys), len(e_keys)), np.float32)
    for ia, a in enumerate(a_keys):
      boxes = [plan["windows"][d][a[t]] for t, d in enumerate(axes)]
      for ie, e in enumerate(e_keys):
        weight[ia, ie] = all(not (lo_ <= q < hi_) for (lo_, hi_), q in zip(boxes, e))
    used = np.flatnonzero(weight.any(0))
    if used.size == 0:
      continue
    m = correlations(fixed)[used]  # (E', Δ, C, C)
    strip = jnp.einsum("ae,ekij->akij", jnp.asarray(weight[:, used], dtype), m, precision=hp)
    a_index = {a: t for t, a in enumerate(a_keys)}
    pick = np.asarray([a_index[tuple(offsets[t][d] for d in axes)] for t in src_np]) * n_delta + dlt_np
    sign = -1.0 if len(axes) % 2 else 1.0
    full = full + sign * jnp.take(strip.reshape((-1, c, c)), pick, axis=0, mode="clip")
  mask = np.asarray(lower).reshape(-1, 1, 1)
  full = jnp.where(mask, jnp.swapaxes(full, -1, -2), full).reshape(kk, kk, c, c)
  return jnp.transpose(full, (2, 0, 3, 1)).reshape(c * kk, c * kk)


def _is_supported(module: nn.Module) -> bool:
  if isinstance(module, nn.Conv):  # ConvLocal / ConvTranspose are not nn.Conv.
    return bool(getattr(module, "shared_weights", True))
  return isinstance(module, (nn.Dense, nn.DenseGeneral))


def _layer_gram(
    module: nn.Module,
    inputs: jax.Array,
    key: jax.Array | None,
    rows_per_batch: int | None,
    dtype,
    real: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, Layout]:
  """Gram matrix, row count and layout of one layer call.

  A stride-1 conv whose rows all count goes through `_conv_gram_by_shifts` when
  that needs under 35 % of the multiply-adds (measured break-even on CPU: ≈ 40 %);
  everything else materialises the rows and multiplies them out with `_gram`. With
  a ``rows_per_batch`` budget smaller than the row count, only that many random
  rows are gathered (a conv's other patches are never unfolded).

  ``real`` (a traced count) marks a padded batch: only the first ``real`` samples
  (axis 0 of ``inputs``) count. The others are zeroed before the products, so
  their rows add nothing, and the budget draws from the real rows only.
  """
  x = jnp.asarray(inputs)
  if real is not None:
    keep = (jnp.arange(x.shape[0]) < real).astype(x.dtype)
    x = x * keep.reshape((-1,) + (1,) * (x.ndim - 1))
  shape, layout = _rows_shape(module, x)
  n = shape[-2]
  # Every sample has n / batch rows; only the real samples' rows count.
  real_rows = n if real is None else real * (n // x.shape[0])
  count = jnp.asarray(real_rows, dtype)
  shift = _shift_choice(module, x, rows_per_batch)
  if shift is not None:
    geom, plan, _, _ = shift
    return _conv_gram_by_shifts(geom, plan, dtype), count, layout
  if rows_per_batch is not None and n > rows_per_batch:
    index = _sample_rows(key, n, rows_per_batch, None if real is None else real_rows)
    rows = _rows_at(module, x, index, layout)
    return _gram(rows, dtype), jnp.minimum(count, rows_per_batch), layout
  if isinstance(module, nn.Conv) and layout.groups == 1:
    # Gram of the offset-major patches, then its d × d rows/columns reordered to
    # the channel-major layout (cheaper than reordering the n × d patches).
    order = _channel_major_order(x.shape[-1], layout.dim // x.shape[-1])
    gram = _gram(_offset_major_patches(module, x), dtype)
    return gram[order][:, order], count, layout
  return _gram(layer_rows(module, x)[0], dtype), count, layout


_SHIFT_MIN_CHANNELS = 4


def _shift_choice(module: nn.Module, x: jax.Array, rows_per_batch: int | None):
  """(geometry, plan, rows, layout) when `_conv_gram_by_shifts` is used, else None."""
  if not isinstance(module, nn.Conv) or int(module.feature_group_count) != 1:
    return None
  geom = _conv_geometry(module, x)
  plan = _shift_plan(geom)
  if plan is None:
    return None
  n_rows = geom.x.shape[0] * math.prod(plan["out"])
  if rows_per_batch is not None and n_rows > rows_per_batch:
    return None
  c_in = x.shape[-1]
  if c_in < _SHIFT_MIN_CHANNELS:  # tiny GEMMs: no faster, and more to compile
    return None
  d = c_in * math.prod(geom.kernel_size)
  if _shift_cost(geom, plan) >= 0.35 * _direct_cost(n_rows, d):
    return None
  layout = Layout(CONV, geom.kernel_size + (c_in, module.features), len(geom.kernel_size) + 1, 1)
  return geom, plan, n_rows, layout


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

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and _is_supported(module) and args:
      xin = jnp.asarray(args[0])
      shift = _shift_choice(module, xin, rows_per_batch)
      if shift is not None:
        geom, plan, n, layout = shift
        executed, method = _shift_cost(geom, plan), "shifts"
      else:
        rows, layout = layer_rows(module, xin)  # abstract: under eval_shape
        n = rows.shape[-2]
        if rows_per_batch is not None:
          n = min(n, rows_per_batch)
        executed, method = layout.groups * _direct_cost(n, layout.dim), "gemm"
      out.append(
          dict(
              path=_path_name(tuple(module.path)),
              kind=layout.kind,
              rows=int(n),
              dim=layout.dim,
              groups=layout.groups,
              nominal_macs=int(layout.groups * n * layout.dim**2),
              executed_macs=int(executed),
              method=method,
          )
      )
    return next_fun(*args, **kwargs)

  def run(v, xx):
    with nn.intercept_methods(interceptor):
      return apply_fn(v, xx)

  jax.eval_shape(run, variables, jnp.asarray(x))
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

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and _is_supported(module) and args:
      rows, layout = layer_rows(module, args[0])
      calls.append((tuple(module.path), rows, layout))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    apply_fn(variables, x)
  return calls


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

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if not (context.method_name == "__call__" and _is_supported(module) and args):
      return next_fun(*args, **kwargs)
    path = tuple(module.path)
    k = None if key is None else jax.random.fold_in(key, len(calls))
    calls.append(path)
    if real is not None and (jnp.ndim(args[0]) == 0 or jnp.shape(args[0])[0] != x.shape[0]):
      raise _NotBatchMajor(_path_name(path))
    gram, count, layout = _layer_gram(module, args[0], k, rows_per_batch, dtype, real)
    prev = out.get(path, running.get(path))
    if prev is not None:
      if prev.layout != layout:
        raise ValueError(
            f"Layer {_path_name(path)!r} is called with inputs of different shapes "
            f"({prev.layout} vs {layout}); cannot share one projection."
        )
      gram = gram + prev.gram
      count = count + prev.count
    out[path] = LayerStats(gram=gram, count=count, layout=layout)
    y = next_fun(*args, **kwargs)
    zero = (gram.reshape(-1)[0] * jnp.zeros((), gram.dtype)).astype(y.dtype)
    return y + zero

  calls: list[Path] = []
  with nn.intercept_methods(interceptor):
    apply_fn(variables, x)
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


def _nonfinite(named_leaves: list[tuple[str, Any]]) -> list[str]:
  """Names of the floating-point leaves that hold a NaN or Inf."""
  named = [(n, leaf) for n, leaf in named_leaves if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
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
  bad = _nonfinite([(_path_name(p), s.gram) for p, s in acc.items()])
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


def stats_summary(
    stats: Mapping[Path, LayerStats], spectra: Mapping[Path, Any] | None = None
) -> dict[str, dict[str, Any]]:
  """A JSON-friendly per-layer summary: kind, d, groups, rows, effective rank.

  Args:
    stats: per-layer statistics.
    spectra: optional normalised spectra σ̃ per layer (``Basis.spectrum`` of an
      eigendecomposition already made, e.g. by `sweep_alpha`); without them the
      eigenvalues are computed here (float64, on the host).

  Returns:
    ``{layer name: {kind, dim, groups, rows, effective_rank, top_energy}}``, where
    effective_rank = exp(entropy of σ̃) and top_energy = max σ̃ (means over groups).
  """
  out = {}
  for path, s in stats.items():
    if spectra is not None and path in spectra:
      p = np.asarray(spectra[path], np.float64)
    else:
      eig = np.clip(np.linalg.eigvalsh(np.asarray(s.gram, np.float64)), 0.0, None)
      p = eig / np.maximum(eig.sum(-1, keepdims=True), np.finfo(np.float64).tiny)
    logp = np.log(np.where(p > 0, p, 1.0))
    entropy = -np.sum(p * logp, axis=-1)
    out[_path_name(path)] = {
        "kind": s.layout.kind,
        "dim": s.layout.dim,
        "groups": s.layout.groups,
        "rows": int(s.count),
        "effective_rank": float(np.mean(np.exp(entropy))),
        "top_energy": float(np.mean(np.max(p, axis=-1))),
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
