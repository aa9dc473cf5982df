"""Slow, obvious reference implementations the SAP tests compare against.

Nothing here imports sap_jax: these are independent re-derivations (loops over
output positions, explicit per-layer input projection) so a shared bug cannot hide.
"""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def _tuple(v, n):
  if v is None:
    v = 1
  return (v,) * n if isinstance(v, int) else tuple(v)


def im2col(x, kernel_size, strides=1, padding="VALID", kernel_dilation=1, input_dilation=1):
  """Loop-based im2col of an NHWC / NLC input. Feature order (C, k_1, …, k_n).

  Args:
    x: numpy array (N, *spatial, C).
    kernel_size: tuple of n ints.
    strides, kernel_dilation, input_dilation: ints or n-tuples.
    padding: "VALID", "SAME" or a list of n (lo, hi) pairs.

  Returns:
    (N·Π out_spatial, C·Πk) rows, output positions in row-major order.
  """
  x = np.asarray(x, np.float64)
  n = len(kernel_size)
  strides = _tuple(strides, n)
  kd = _tuple(kernel_dilation, n)
  ind = _tuple(input_dilation, n)
  # Input dilation: insert (ind - 1) zeros between input elements.
  spatial = x.shape[1:-1]
  dil_shape = tuple((s - 1) * d + 1 for s, d in zip(spatial, ind))
  xd = np.zeros((x.shape[0],) + dil_shape + (x.shape[-1],))
  xd[(slice(None),) + tuple(slice(None, None, d) for d in ind)] = x
  eff_k = [(k - 1) * d + 1 for k, d in zip(kernel_size, kd)]
  if padding == "VALID":
    pads = [(0, 0)] * n
  elif padding == "SAME":
    pads = []
    for size, k, s in zip(dil_shape, eff_k, strides):
      out = -(-size // s)
      total = max((out - 1) * s + k - size, 0)
      pads.append((total // 2, total - total // 2))
  else:
    pads = [tuple(p) for p in padding]
  xp = np.pad(xd, [(0, 0)] + pads + [(0, 0)])
  out_shape = [(xp.shape[1 + i] - eff_k[i]) // strides[i] + 1 for i in range(n)]
  rows = []
  for b in range(x.shape[0]):
    for pos in itertools.product(*[range(o) for o in out_shape]):
      feat = []
      for c in range(x.shape[-1]):
        for offs in itertools.product(*[range(k) for k in kernel_size]):
          idx = tuple(pos[i] * strides[i] + offs[i] * kd[i] for i in range(n))
          feat.append(xp[(b,) + idx + (c,)])
      rows.append(feat)
  return np.asarray(rows), out_shape


def projected_input_interceptor(projections_by_path, patch_fn=None):
  """An interceptor that multiplies every covered layer's inputs by its P.

  The layer then runs with its ORIGINAL kernel. For a conv, the output is
  computed explicitly as Σ (projected patch)·kernel from `im2col` (no lax conv),
  so this is independent of how sap_jax reshapes kernels.

  Args:
    projections_by_path: dict path → P (numpy; (d, d) or (G, d, d) for grouped).
    patch_fn: optional fast replacement of the loop `im2col`,
      ``patch_fn(module, x) -> rows`` (for large models; `sap_jax.conv_patches`
      is itself checked against `im2col` in test_stats).
  """

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    path = tuple(module.path)
    if context.method_name != "__call__" or path not in projections_by_path:
      return next_fun(*args, **kwargs)
    p = np.asarray(projections_by_path[path], np.float64)
    x = np.asarray(args[0], np.float64)
    params = module.variables["params"]
    if isinstance(module, nn.Dense):
      return next_fun(jnp.asarray(x @ p, jnp.float32))
    if isinstance(module, nn.DenseGeneral):
      axes = module.axis if isinstance(module.axis, (tuple, list)) else (module.axis,)
      axes = tuple(sorted(a % x.ndim for a in axes))
      moved = np.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
      tail = moved.shape[x.ndim - len(axes) :]
      proj = (moved.reshape(-1, int(np.prod(tail))) @ p).reshape(moved.shape)
      back = np.moveaxis(proj, tuple(range(x.ndim - len(axes), x.ndim)), axes)
      return next_fun(jnp.asarray(back, jnp.float32))
    if isinstance(module, nn.Conv):
      ks = _tuple(module.kernel_size, len(x.shape) - 2)
      padding = module.padding
      if isinstance(padding, int):
        padding = [(padding, padding)] * len(ks)
      elif not isinstance(padding, str):
        padding = [(q, q) if isinstance(q, int) else tuple(q) for q in padding]
      if patch_fn is None:
        rows, out_shape = im2col(
          x, ks, module.strides, padding, module.kernel_dilation, module.input_dilation
        )
      else:
        rows = np.asarray(patch_fn(module, jnp.asarray(x, jnp.float32)), np.float64)
        out_shape = next_fun(*args, **kwargs).shape[1:-1]
      kernel = np.asarray(params["kernel"], np.float64)  # (*k, c_g, O)
      groups = module.feature_group_count
      c_g, out_ch = kernel.shape[-2], kernel.shape[-1]
      o_g = out_ch // groups
      d = c_g * int(np.prod(ks))
      outs = []
      for g in range(groups):
        rg = rows[:, g * d : (g + 1) * d]
        pg = p if groups == 1 else p[g]
        proj = (rg @ pg).reshape((-1, c_g) + ks)  # (rows, c, k_1…k_n)
        kg = kernel[..., g * o_g : (g + 1) * o_g]
        letters = "abcdef"[: len(ks)]
        outs.append(np.einsum(f"rc{letters},{letters}co->ro", proj, kg))
      y = np.concatenate(outs, axis=1)
      if module.use_bias:
        y = y + np.asarray(params["bias"], np.float64)
      return jnp.asarray(y.reshape((x.shape[0], *out_shape, out_ch)), jnp.float32)
    return next_fun(*args, **kwargs)

  return interceptor
