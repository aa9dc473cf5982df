"""Which layers SAP corrects: selection by path pattern and by position."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

from sap_jax.stats import LayerStats
from sap_jax.types import Path


def path_name(path: Path) -> str:
  """A layer path as the "/"-joined name that patterns and reports use."""
  return "/".join(str(p) for p in path)


def select_layers(
  stats: Mapping[Path, LayerStats],
  *,
  exclude: Sequence[str] = (),
  layer_range: tuple[int | None, int | None] | None = None,
) -> dict[Path, LayerStats]:
  """Restricts statistics (and so the correction) to some layers.

  Args:
    stats: output of `activation_stats`, ordered by first call.
    exclude: glob patterns matched against "/"-joined layer paths, e.g.
      ``("head",)`` to leave the classifier alone or ``("*Conv_0",)``.
    layer_range: ``(start, stop)`` slice over the layers in call order (negative
      indices count from the end; ``(0, -1)`` skips the last layer).

  Returns:
    The filtered dict, order kept.

  Raises:
    ValueError: a pattern that matches no layer (likely a typo), or nothing left.
  """
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
    raise ValueError("No layer left to project after exclude/layer_range; loosen the selection.")
  return kept
