"""Conv geometry and im2col as pure array functions.

A conv layer's representation rows are its unfolded input patches: the row of output
position ``o`` holds every input value that position's kernel window reads, which is what
`lax.conv_general_dilated_patches` computes (built here by slicing, which is faster).

Everything here is a function of an input array ``x`` of shape ``(N, *spatial, C_in)``
and a `ConvGeometry` (kernel size, strides, explicit padding, dilations), like kfac-jax's
``patches_second_moment.py``: no module objects. The one function that reads an
`nn.Conv` is the adapter `conv_geometry`, which turns a layer call into ``(x,
geometry)`` (applying flax's CIRCULAR / REFLECT / CAUSAL padding modes to ``x`` on the
way). A transposed conv is read as its twin `nn.Conv` (`conv_transpose_twin`: input
dilation by the strides, the transposed padding); Flax NNX layers are read through
Linen twins too (`sap_jax.nnx.layers`), so nothing else changes.

Two feature orders are used:

* channel-major ``(C_in, k_1, …, k_n)``, channel slowest: the order of `conv_patches`
  and of the statistics, matching a kernel of shape ``(*k, C_in, C_out)`` transposed to
  ``(C_in, *k, C_out)`` and flattened;
* offset-major ``(k_1, …, k_n, C_in)``: the cheaper one to build (whole channel blocks
  side by side), reordered with `channel_major_order`.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


class ConvGeometry(NamedTuple):
  """The static geometry of one conv call, as `lax.conv_general_dilated` sees it.

  Attributes:
    kernel_size: kernel extent per spatial axis, ``(k_1, …, k_n)``.
    strides: output stride per spatial axis.
    padding: explicit ``(lo, hi)`` padding per spatial axis (negative values crop).
    input_dilation: input (transposed-conv) dilation per spatial axis.
    kernel_dilation: kernel (atrous) dilation per spatial axis.
    features: output channels of the kernel.
    groups: ``feature_group_count``: each group's kernel sees C_in / groups channels.
  """

  kernel_size: tuple[int, ...]
  strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  input_dilation: tuple[int, ...]
  kernel_dilation: tuple[int, ...]
  features: int
  groups: int = 1


def conv_geometry(module: nn.Conv, inputs: jax.Array) -> tuple[jax.Array, ConvGeometry]:
  """The adapter from an `nn.Conv` call to the pure functions of this module.

  Args:
    module: a bound or unbound `nn.Conv` whose attributes define the geometry.
    inputs: the layer's input, ``(*batch, *spatial, C_in)``.

  Returns:
    ``(x, geometry)``: the input with the batch axes flattened, ``(N, *spatial,
    C_in)``, and flax's CIRCULAR / REFLECT / CAUSAL padding already applied (those
    modes then read as VALID); and the geometry, with the padding made explicit.

  Raises:
    ValueError: CAUSAL padding on a conv that is not 1-D.
  """
  kernel_size = (
    (module.kernel_size,) if isinstance(module.kernel_size, int) else tuple(module.kernel_size)
  )
  n = len(kernel_size)

  def broadcast(v):
    if v is None:
      v = 1
    return (v,) * n if isinstance(v, int) else tuple(v)

  strides = broadcast(module.strides)
  input_dilation = broadcast(module.input_dilation)
  kernel_dilation = broadcast(module.kernel_dilation)
  inputs = jnp.asarray(inputs)
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
  if isinstance(padding, str):
    # As lax.conv_general_dilated does (string padding excludes input dilation).
    eff_k = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation)]
    padding = lax.padtype_to_pads(x.shape[1 : 1 + n], eff_k, strides, padding)
  explicit = tuple((int(lo), int(hi)) for lo, hi in padding)
  geometry = ConvGeometry(
    kernel_size,
    strides,
    explicit,
    input_dilation,
    kernel_dilation,
    int(module.features),
    int(module.feature_group_count),
  )
  return x, geometry


def conv_transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
  """The explicit padding `lax.conv_transpose` gives a string mode (``k`` the dilated
  kernel extent, ``s`` the stride), as in JAX's own ``_conv_transpose_padding``."""
  if padding == "SAME":
    total = k + s - 2
    lo = k - 1 if s > k - 1 else int(np.ceil(total / 2))
  elif padding == "VALID":
    total = k + s - 2 + max(k - s, 0)
    lo = k - 1
  else:
    raise ValueError(f"Invalid transposed-conv padding mode {padding!r}.")
  return lo, total - lo


def conv_transpose_twin(
  kernel_size: int | tuple[int, ...],
  strides: int | tuple[int, ...] | None,
  padding: Any,
  kernel_dilation: int | tuple[int, ...] | None,
  features: int,
) -> nn.Conv | None:
  """The `nn.Conv` that computes what a transposed conv computes, with the same kernel.

  `lax.conv_transpose` (``transpose_kernel=False``, as `nn.ConvTranspose` and
  `nnx.ConvTranspose` call it) is a stride-1 conv of the input dilated by the strides
  (``input_dilation``), with the transposed padding; its rows are the patches of that
  dilated input which the kernel meets (the inserted zeros included, as the layer
  multiplies them). The kernel is the layer's own, shape ``(*k, C_in, C_out)``.

  Returns:
    The unbound twin, or None for CIRCULAR padding (the layer then wraps its output,
    which no conv of its input reproduces).
  """
  ks = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
  n = len(ks)

  def broadcast(v):
    v = 1 if v is None else v
    return (v,) * n if isinstance(v, int) else tuple(v)

  strides, dilation = broadcast(strides), broadcast(kernel_dilation)
  pad = nn.linear.canonicalize_padding(padding, n)
  if pad == "CIRCULAR":
    return None
  if isinstance(pad, str):
    eff = [(k - 1) * d + 1 for k, d in zip(ks, dilation)]
    pad = tuple(conv_transpose_padding(k, s, pad) for k, s in zip(eff, strides))
  return nn.Conv(
    features=int(features),
    kernel_size=ks,
    strides=1,
    padding=tuple((int(lo), int(hi)) for lo, hi in pad),
    input_dilation=strides,
    kernel_dilation=dilation,
  )


def linen_conv_twin(module: Any) -> nn.Conv | None:
  """`conv_transpose_twin` of a Linen `nn.ConvTranspose` (None: not covered, for
  ``transpose_kernel=True``, a kernel mask or CIRCULAR padding)."""
  if not isinstance(module, nn.ConvTranspose):
    return None
  if module.transpose_kernel or module.mask is not None:
    return None
  return conv_transpose_twin(
    module.kernel_size, module.strides, module.padding, module.kernel_dilation, module.features
  )


def padded_input(x: jax.Array, geom: ConvGeometry) -> tuple[jax.Array, list[int]]:
  """The conv input after explicit (and interior, for input dilation) padding.

  Args:
    x: ``(N, *spatial, C)``.
    geom: the conv's geometry.

  Returns:
    ``(xp, out)``: the padded input and the output's spatial shape. Patch ``o`` at
    kernel offset ``k`` reads ``xp[:, o·stride + k·dilation, :]``.

  Raises:
    ValueError: the kernel does not fit the padded input.
  """
  ks, strides, dil = geom.kernel_size, geom.strides, geom.kernel_dilation
  n = len(ks)
  eff_k = [(k - 1) * d + 1 for k, d in zip(ks, dil)]
  config = (
    [(0, 0, 0)]
    + [(lo, hi, ind - 1) for (lo, hi), ind in zip(geom.padding, geom.input_dilation)]
    + [(0, 0, 0)]
  )
  xp = lax.pad(x, jnp.zeros((), x.dtype), config)
  out = [(xp.shape[1 + i] - eff_k[i]) // strides[i] + 1 for i in range(n)]
  if min(out) < 1:
    raise ValueError(
      f"Conv kernel {tuple(ks)} (dilation {tuple(dil)}) does "
      f"not fit the padded input of spatial shape {tuple(xp.shape[1 : 1 + n])}."
    )
  return xp, out


def channel_major_order(c: int, k: int) -> np.ndarray:
  """Index that reorders offset-major features (k, C) into channel-major (C, k)."""
  return np.arange(c * k).reshape(k, c).T.reshape(-1)


def extract_patches_offset_major(x: jax.Array, geom: ConvGeometry) -> jax.Array:
  """im2col by data movement only, features ordered (k_1, …, k_n, C_in).

  Pad (with interior padding for input dilation), then one strided slice per kernel
  offset, side by side on the channel axis. `lax.conv_general_dilated_patches`
  computes the same thing as a grouped convolution with a one-hot kernel: Πk MACs per
  output element, and slow on CPU; this is a single copy fusion. Whole channel blocks
  side by side are measured 1.6× faster than interleaving them (the channel-major
  order), and faster to compile.

  Args:
    x: ``(N, *spatial, C)``.
    geom: the conv's geometry.

  Returns:
    ``(N·Π out_spatial, C·Πk)`` rows.
  """
  xp, out = padded_input(x, geom)
  slices = []
  for offset in itertools.product(*(range(k) for k in geom.kernel_size)):
    start = (0,) + tuple(o * d for o, d in zip(offset, geom.kernel_dilation)) + (0,)
    limit = (
      (xp.shape[0],)
      + tuple(st + (o - 1) * s + 1 for st, o, s in zip(start[1:], out, geom.strides))
      + (xp.shape[-1],)
    )
    slices.append(lax.slice(xp, start, limit, (1,) + tuple(geom.strides) + (1,)))
  patches = jnp.concatenate(slices, axis=-1)  # (N, *out, Πk·C): offset slowest
  return patches.reshape(-1, patches.shape[-1])


def extract_patches(x: jax.Array, geom: ConvGeometry) -> jax.Array:
  """im2col with channel-major features (C_in, k_1, …, k_n): ``(N·Π out, C·Πk)``."""
  rows = extract_patches_offset_major(x, geom)
  c = x.shape[-1]
  return rows[:, channel_major_order(c, rows.shape[-1] // c)]


def extract_patches_at(x: jax.Array, geom: ConvGeometry, index: jax.Array) -> jax.Array:
  """Rows ``index`` of `extract_patches`, gathered without unfolding the other patches.

  Args:
    x: ``(N, *spatial, C)``.
    geom: the conv's geometry.
    index: flat row indices into ``(N, *out_spatial)``, shape (m,).

  Returns:
    ``(m, C·Πk)`` rows, channel-major features.
  """
  xp, out = padded_input(x, geom)
  pos = jnp.unravel_index(index, (x.shape[0], *out))
  cols = []
  for offset in itertools.product(*(range(k) for k in geom.kernel_size)):
    coords = tuple(
      p * s + o * d for p, s, o, d in zip(pos[1:], geom.strides, offset, geom.kernel_dilation)
    )
    cols.append(xp[(pos[0], *coords)])  # (m, C)
  return jnp.stack(cols, axis=-1).reshape(index.shape[0], -1)  # (C, Πk): channel slowest


def conv_patches(module: nn.Conv, inputs: jax.Array) -> jax.Array:
  """Unfolds a conv layer's input into its patches, exactly as the layer sees it.

  Args:
    module: a bound or unbound `nn.Conv` whose attributes define the geometry.
    inputs: the layer's input, ``(*batch, *spatial, C_in)``.

  Returns:
    Rows of shape (num_output_positions, C_in·Πk), features ordered (C_in, k_1, …).
  """
  x, geom = conv_geometry(module, inputs)
  return extract_patches(x, geom)
