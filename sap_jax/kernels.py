"""Layer kernels in a variables tree: read them, replace them, and flatten them to the
feature order of their layer's input rows.

A layer is addressed by its `Path` in the ``params`` collection (the parent of its
``kernel``). A kernel is flattened to ``(G, d, O/G)``: G conv groups (1 for every
other layer), d the row length of the layer's input statistics (for a conv, the patch
features in the order (C_in, k_1, …, k_n)), O the output features. Model-API specific
code (Linen variables here; NNX state elsewhere) stays in this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sap_jax.layers import path_name, skipped_layers
from sap_jax.stats import CONV, Layout
from sap_jax.stats.observe import module_calls
from sap_jax.types import Path


def _get_path(tree: Mapping[str, Any], path: Path) -> Any:
  node = tree
  for name in path:
    if not isinstance(node, Mapping) or name not in node:
      raise KeyError(path_name(path))
    node = node[name]
  return node


def _set_path(tree: Mapping[str, Any], path: Path, value: Any) -> dict[str, Any]:
  """Returns a copy of ``tree`` with ``tree[path]`` replaced (copy on the path only);
  the empty path (a model that is a single layer) replaces the whole tree."""
  if not path:
    return value
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
      f"Layer {path_name(path)!r} of the projections has no kernel in "
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


WEIGHT_NAMES = ("kernel", "embedding")
"""Parameter names of a layer's weight matrix (``embedding``: `nn.Embed`, listed so that
`skipped_kernels` says why it is left alone)."""


def kernel_paths(variables: Mapping[str, Any]) -> list[Path]:
  """The path of every layer with a ``kernel`` (or ``embedding``) in
  ``variables['params']``, in tree order."""
  require_params(variables)
  out: list[Path] = []

  def walk(node: Any, path: Path) -> None:
    if isinstance(node, Mapping):
      if any(k in node and not isinstance(node[k], Mapping) for k in WEIGHT_NAMES):
        out.append(path)
      for key, child in node.items():
        if key not in WEIGHT_NAMES:
          walk(child, (*path, key))

  walk(variables["params"], ())
  return out


def skipped_kernels(
  apply_fn: Any,
  variables: Mapping[str, Any],
  x: Any,
  kept: Iterable[Path],
  *,
  exclude: Sequence[str] = (),
  layer_range: tuple[int | None, int | None] | None = None,
) -> dict[str, str]:
  """Every layer of a Linen model with a kernel that SAP leaves alone, and why.

  One shape-only trace of ``apply_fn(variables, x)`` (`module_calls`), then
  `sap_jax.layers.skipped_layers`.

  Args:
    apply_fn: the eval-mode forward.
    variables: the model variables.
    x: a batch of inputs (one sample is enough).
    kept: the layers projected.
    exclude, layer_range: the selection applied (see `sap_jax.select_layers`).

  Returns:
    ``{"/"-joined path: reason}``.
  """
  calls = module_calls(apply_fn, variables, x)
  kinds = {p: (calls[p][0] if p in calls else None) for p in kernel_paths(variables)}
  called = [p for p, (_, covered) in calls.items() if covered]
  return skipped_layers(kinds, called, kept, exclude=exclude, layer_range=layer_range)


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
