"""Which layers SAP corrects: selection by path pattern and by position, and the list
of the layers with a kernel that it leaves alone, each with the reason (`skipped_layers`)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sap_jax.types import Path

# `sap_jax.stats` imports `path_name` from here, so the statistics' type is not imported
# (no import circle): a layer's statistics are any value (`sap_jax.stats.LayerStats`).
LayerStats = Any


def path_name(path: Path) -> str:
  """A layer path as the "/"-joined name that patterns and reports use.

  Elements may be strings (Linen module names, NNX attribute names) or integers (the
  index of a layer in an NNX ``nnx.List`` / ``nnx.Sequential``): ``("layers", 0,
  "kernel")`` → ``"layers/0/kernel"``.
  """
  return "/".join(str(p) for p in path)


def key_path_name(key_path: tuple) -> str:
  """A JAX key path (`jax.tree_util` DictKey/SequenceKey/GetAttrKey entries) as the same
  "/"-joined name: ``(DictKey('params'), DictKey('Dense_0'))`` → ``"params/Dense_0"``."""
  return path_name(tuple(getattr(k, "key", getattr(k, "idx", k)) for k in key_path))


def exclude_patterns(exclude: str | Sequence[str]) -> tuple[str, ...]:
  """The glob patterns of an ``exclude`` argument: a string is one pattern (``"head"``,
  not the four letters), any other sequence a tuple of patterns.

  Raises:
    ValueError: a pattern that is not a string.
  """
  patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
  for pattern in patterns:
    if not isinstance(pattern, str):
      raise ValueError(
        f"exclude holds glob patterns of layer names (strings such as 'head' or "
        f"'block1/*'), got {pattern!r}."
      )
  return patterns


def select_layers(
  stats: Mapping[Path, LayerStats],
  *,
  exclude: str | Sequence[str] = (),
  layer_range: tuple[int | None, int | None] | None = None,
) -> dict[Path, LayerStats]:
  """Restricts statistics (and so the correction) to some layers.

  Args:
    stats: output of `activation_stats`, ordered by first call.
    exclude: glob patterns matched against "/"-joined layer paths, e.g.
      ``("head",)`` to leave the classifier alone or ``("*Conv_0",)``; a string is one
      pattern (`exclude_patterns`).
    layer_range: ``(start, stop)`` slice over the layers in call order (negative
      indices count from the end; ``(0, -1)`` skips the last layer).

  Returns:
    The filtered dict, order kept.

  Raises:
    ValueError: a pattern that matches no layer (likely a typo), or nothing left.
  """
  exclude = exclude_patterns(exclude)
  names = {p: path_name(p) for p in stats}
  for pattern in exclude:
    if not any(fnmatch.fnmatchcase(n, pattern) for n in names.values()):
      raise ValueError(
        f"exclude pattern {pattern!r} matches no layer; the layers are {list(names.values())}."
      )
  paths = list(stats)
  if layer_range is not None:
    paths = paths[slice(*layer_range)]
  kept = {
    p: stats[p] for p in paths if not any(fnmatch.fnmatchcase(names[p], pat) for pat in exclude)
  }
  if not kept:
    raise ValueError(
      f"No layer left to project after exclude={exclude!r} and layer_range={layer_range!r}; "
      f"the layers are {list(names.values())}: loosen the selection."
    )
  return kept


NOT_SUPPORTED_WHY = {
  "Embed": "an index lookup: its input is a token id, not an activation to project",
  "ConvLocal": "one kernel per output position (a d×d projection per position)",
  "ConvTranspose": "with transpose_kernel=True, a kernel mask or CIRCULAR padding",
  "Einsum": "an equation that is not a DenseGeneral over its contracting axes: a batch "
  "axis shared by kernel and output, kernel output axes before the contracting ones, "
  "or an ellipsis (see sap_jax.stats.einsum)",
}
"""Layer types SAP leaves alone on purpose, and why (the reason `skipped_layers` gives)."""


def skipped_layers(
  kernel_layers: Mapping[Path, str | None],
  called: Iterable[Path],
  kept: Iterable[Path],
  *,
  exclude: str | Sequence[str] = (),
  layer_range: tuple[int | None, int | None] | None = None,
) -> dict[str, str]:
  """Every layer with a kernel that SAP does not project, with the reason.

  Args:
    kernel_layers: path → layer type name (None when unknown: the layer never ran) of
      every layer that holds a ``kernel`` parameter.
    called: the covered layers the forward called (the statistics' paths, before any
      selection), in call order.
    kept: the layers projected (after `select_layers`).
    exclude, layer_range: the selection that was applied.

  Returns:
    ``{"/"-joined path: reason}``, in ``kernel_layers``' order: "excluded by pattern
    'p'", "outside layer_range (a, b)", "layer type T is not supported (…)" or "never
    called in the forward".
  """
  exclude = exclude_patterns(exclude)
  called, kept = list(called), set(kept)
  out = {}
  for path, kind in kernel_layers.items():
    if path in kept:
      continue
    name = path_name(path)
    if path in called:
      pattern = next((p for p in exclude if fnmatch.fnmatchcase(name, p)), None)
      out[name] = (
        f"excluded by pattern {pattern!r}"
        if pattern is not None
        else f"outside layer_range {tuple(layer_range or ())}"
      )
    elif kind is not None:
      why = NOT_SUPPORTED_WHY.get(kind)
      out[name] = f"layer type {kind} is not supported" + (f" ({why})" if why else "")
    else:
      out[name] = "never called in the forward"
  return out
