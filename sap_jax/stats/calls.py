"""Which covered layers a forward calls, how often and with how many rows: a shape-only
trace (`jax.eval_shape`, nothing computed) to run before any work.

It answers two questions up front, before a trusted set is scored or a statistic
streamed:

* can SAP read every layer? A covered layer inside a lifted transform (``nn.scan``,
  ``nn.vmap``, ``nn.remat``, ``nnx.scan``, …) is refused here, with its path and the
  transform (`sap_jax.stats.observe.LiftedTransformError`), instead of after the
  expensive steps;
* is a layer called more than once per forward (a ``head`` applied to the tokens and to
  the pooled vector)? Its statistics then sum the rows of every call, one projection
  serving all of them; `repeated_layers` lists such layers with their rows per call and
  `activation_stats` warns about them (`repeated_calls_text`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax

from sap_jax.layers import path_name
from sap_jax.stats.observe import LayerCall, observe_linen_calls, shape_of
from sap_jax.stats.rows import rows_shape
from sap_jax.types import ApplyFn, Path


def layer_calls(apply_fn: ApplyFn, variables: Any, x: Any) -> dict[Path, tuple[int, ...]]:
  """Every covered layer's calls in one forward of ``x``, by a shape-only trace.

  Args:
    apply_fn: the eval-mode forward (Linen, or an NNX forward from `sap_jax.nnx`).
    variables: the model variables.
    x: a batch of inputs, or only its shape (`jax.ShapeDtypeStruct`).

  Returns:
    path → the number of rows (per group) of each of its calls, in call order; the
    layers in the order they are first called.

  Raises:
    LiftedTransformError: a covered layer runs inside a lifted transform (named, with
      the layer's path).
  """
  out: dict[Path, list[int]] = {}

  def on_call(call: LayerCall) -> None:
    shape, _ = rows_shape(call.layer, call.inputs)
    out.setdefault(call.path, []).append(int(shape[-2]))

  spec = x if isinstance(x, jax.ShapeDtypeStruct) else shape_of(x)
  jax.eval_shape(lambda v, xx: observe_linen_calls(apply_fn, v, xx, on_call), variables, spec)
  return {p: tuple(rows) for p, rows in out.items()}


class RepeatedLayer(NamedTuple):
  """A layer called more than once per forward.

  Attributes:
    name: its "/"-joined path.
    calls: how many times one forward calls it.
    rows: the rows (per group) of each call, in call order, for one batch.
  """

  name: str
  calls: int
  rows: tuple[int, ...]


def repeated_layers(calls: Mapping[Path, tuple[int, ...]]) -> list[RepeatedLayer]:
  """The layers of `layer_calls`' result that one forward calls more than once."""
  return [
    RepeatedLayer(path_name(p), len(rows), tuple(rows))
    for p, rows in calls.items()
    if len(rows) > 1
  ]


def repeated_calls_text(repeated: list[RepeatedLayer]) -> str:
  """One line on the layers called more than once per forward (empty when none)."""
  if not repeated:
    return ""
  parts = [
    f"{r.name!r} {r.calls} times (rows per call {', '.join(map(str, r.rows))})" for r in repeated
  ]
  return (
    f"layers called more than once per forward: {'; '.join(parts)}. Their statistics sum "
    "the rows of every call and one projection serves all calls; if only one call's "
    "output matters (e.g. a head applied to the tokens and to the pooled vector), "
    "exclude the layer or call it once."
  )


def warn_repeated(seen: list[LayerCall]) -> list[RepeatedLayer]:
  """Warns (`UserWarning`, `repeated_calls_text`) when one forward's covered layer calls
  ``seen`` name a layer more than once; traceable (rows come from shapes). Returns the
  repeated layers."""
  paths = [c.path for c in seen]
  twice = {p for p in paths if paths.count(p) > 1}
  if not twice:
    return []
  rows: dict[Path, list[int]] = {}
  for c in seen:
    if c.path in twice:
      rows.setdefault(c.path, []).append(int(rows_shape(c.layer, c.inputs)[0][-2]))
  repeated = repeated_layers({p: tuple(r) for p, r in rows.items()})
  warnings.warn(repeated_calls_text(repeated), UserWarning, stacklevel=2)
  return repeated
