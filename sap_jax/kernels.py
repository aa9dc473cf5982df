"""Layer kernels in a variables tree: read them, replace them, and flatten them to the
feature order of their layer's input rows.

A layer is addressed by its `Path` in the ``params`` collection (the parent of its
``kernel``). A kernel is flattened to ``(G, d, O/G)``: G conv groups (1 for every
other layer), d the row length of the layer's input statistics (for a conv, the patch
features in the order (C_in, k_1, …, k_n)), O the output features. Model-API specific
code (Linen variables here; NNX state elsewhere) stays in this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sap_jax.stats import CONV, Layout
from sap_jax.types import Path


def _get_path(tree: Mapping[str, Any], path: Path) -> Any:
  node = tree
  for name in path:
    if not isinstance(node, Mapping) or name not in node:
      raise KeyError("/".join(path))
    node = node[name]
  return node


def _set_path(tree: Mapping[str, Any], path: Path, value: Any) -> dict[str, Any]:
  """Returns a copy of ``tree`` with ``tree[path]`` replaced (copy on the path only)."""
  new = dict(tree)
  if len(path) == 1:
    new[path[0]] = value
  else:
    new[path[0]] = _set_path(tree[path[0]], path[1:], value)
  return new


def require_params(variables: Mapping[str, Any]) -> None:
  """Raises ValueError unless ``variables`` has a ``params`` collection."""
  if "params" not in variables:
    raise ValueError(
      "variables has no 'params' collection; pass the full Flax variables dict "
      "({'params': ..., 'batch_stats': ...})."
    )


def kernel_at(variables: Mapping[str, Any], path: Path) -> jax.Array:
  """``variables['params'][path]['kernel']``, with an error that names the layer."""
  try:
    layer = _get_path(variables["params"], path)
    if not isinstance(layer, Mapping) or "kernel" not in layer:
      raise KeyError(path)
    return layer["kernel"]
  except KeyError:
    raise ValueError(
      f"Layer {'/'.join(path)!r} of the projections has no kernel in "
      "variables['params']: the statistics come from a different model."
    ) from None


def kernels_of(variables: Mapping[str, Any], paths: Iterable[Path]) -> dict[Path, jax.Array]:
  """path → ``variables['params'][path]['kernel']`` for the given layer paths."""
  require_params(variables)
  return {path: kernel_at(variables, path) for path in paths}


def with_kernels(variables: Mapping[str, Any], kernels: Mapping[Path, jax.Array]) -> dict[str, Any]:
  """Copy of ``variables`` with the given kernels replaced (copy on the paths only;
  every other leaf is the very same array)."""
  require_params(variables)
  params = variables["params"]
  for path, k in kernels.items():
    params = _set_path(params, path, {**_get_path(params, path), "kernel": k})
  return {**variables, "params": params}


def check_kernel(kernel: jax.Array, layout: Layout) -> None:
  """Raises ValueError unless ``kernel`` has the shape the statistics' layout says."""
  if tuple(kernel.shape) != layout.kernel_shape:
    raise ValueError(
      f"Kernel shape {tuple(kernel.shape)} does not match the statistics' layer "
      f"shape {layout.kernel_shape}: the statistics come from a different model. "
      "Recompute activation_stats with these variables."
    )


def _conv_perm(layout: Layout) -> tuple[int, ...]:
  n_in = layout.num_in_axes  # spatial axes + C_in/G
  # (k_1, …, k_n, c, O) → (c, k_1, …, k_n, O): the patch feature order.
  return (n_in - 1,) + tuple(range(n_in - 1)) + (n_in,)


def flat_kernel(kernel: jax.Array, layout: Layout) -> jax.Array:
  """The kernel as (G, d, O/G) in the row feature order of its statistics."""
  d, groups = layout.dim, layout.groups
  if layout.kind != CONV:
    return kernel.reshape(1, d, -1)
  flat = jnp.transpose(kernel, _conv_perm(layout)).reshape(d, groups, -1)  # O = G · O_g
  return jnp.swapaxes(flat, 0, 1)


def unflat_kernel(flat: jax.Array, layout: Layout) -> jax.Array:
  """Inverse of `flat_kernel`."""
  shape = layout.kernel_shape
  if layout.kind != CONV:
    return flat.reshape(shape)
  perm = _conv_perm(layout)
  new = jnp.swapaxes(flat, 0, 1).reshape(tuple(shape[i] for i in perm))
  return jnp.transpose(new, tuple(int(i) for i in np.argsort(perm)))
