"""Which covered layers a forward calls, how often and with how many rows: a shape-only
trace (`jax.eval_shape`, nothing computed) to run before any work.

It answers two questions up front, before a trusted set is scored or a statistic
streamed:

* can SAP read every layer? A covered layer inside a lifted transform (``nn.scan``,
  ``nn.vmap``, ``nn.remat``, ``nnx.scan``, …) is refused here, with its path and the
  transform (`sap_jax.stats.observe.LiftedTransformError`), instead of after the
  expensive steps;
* is a layer called more than once per forward (a ``head`` applied to the tokens and to
  the pooled vector)? By default (``calls="all"``) its statistics sum the rows of every
  call, one projection serving all of them; `repeated_layers` lists such layers with
  their rows per call and `activation_stats` warns about them (`repeated_calls_text`).
  A user's ``calls={"head": 1}`` makes only that call's inputs count
  (`chosen_calls` checks it against the calls found here,
  `sap_jax.stats.observe.select_calls` applies it) and silences the warning for it.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from sap_jax.layer_keys import layer_keyed
from sap_jax.layers import path_name
from sap_jax.stats.observe import CallChoice, LayerCall, observe_linen_calls, shape_of
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
    counted: the call whose inputs the statistics count (0-based, forward order), or
      None: every call's (``calls="all"``, the default).
  """

  name: str
  calls: int
  rows: tuple[int, ...]
  counted: int | None = None


def repeated_layers(
  calls: Mapping[Path, tuple[int, ...]], choice: CallChoice = ()
) -> list[RepeatedLayer]:
  """The layers of `layer_calls`' result that one forward calls more than once, with
  the call that counts for those ``choice`` (`chosen_calls`) names."""
  chosen = dict(choice)
  return [
    RepeatedLayer(path_name(p), len(rows), tuple(rows), chosen.get(p))
    for p, rows in calls.items()
    if len(rows) > 1
  ]


ALL_CALLS = "all"
"""``calls="all"``: every call of a layer counts (its rows summed), the default."""

CALLS_FIX = (
  'pass calls="all" (every call counts) or a dict layer → call number, e.g. '
  '{"head": 1} for the head\'s second call (0-based, in forward order)'
)


def check_calls_option(calls: Any) -> Mapping[Any, Any]:
  """``calls`` as a mapping layer → call number (``{}`` for "all"), its values checked;
  no layer looked up yet (`chosen_calls` does that against a trace).

  Raises:
    ValueError: neither "all" nor a mapping, or a value that is not an integer ≥ 0.
  """
  if isinstance(calls, str) and calls == ALL_CALLS:
    return {}
  if not isinstance(calls, Mapping):
    raise ValueError(f'calls must be "all" or a dict, got {calls!r}; {CALLS_FIX}.')
  for key, k in calls.items():
    if not _is_call_number(k):
      raise ValueError(
        f"calls[{key!r}] must be a call number (an integer ≥ 0, 0-based in forward order), "
        f"got {k!r}; {CALLS_FIX}."
      )
  return calls


def _is_call_number(k: Any) -> bool:
  return isinstance(k, numbers.Integral) and not isinstance(k, (bool, np.bool_)) and k >= 0


def chosen_calls(calls: Any, found: Mapping[Path, tuple[int, ...]]) -> CallChoice:
  """The user's ``calls`` checked against the calls a trace found (`layer_calls`).

  Args:
    calls: "all", or a mapping from a layer (its "/"-joined name, as ``result.layers``
      prints it, or its path tuple) to the 0-based number of the call whose inputs
      count.
    found: `layer_calls`' result: every covered layer's rows per call.

  Returns:
    ``((path, k), …)`` in the layers' call order; ``()`` for "all".

  Raises:
    ValueError: a bad value (`check_calls_option`), a layer the forward does not call
      (the message lists the layers), a layer called only once, or a call number the
      layer does not have (the message says how many calls it has).
  """
  keyed = layer_keyed(check_calls_option(calls), found, "calls", "calls")
  for path, k in keyed.items():
    n = len(found[path])
    name = path_name(path)
    if n == 1:
      twice = [path_name(p) for p, rows in found.items() if len(rows) > 1]
      which = (
        f"the layers called more than once are {twice}"
        if twice
        else "no layer is called more than once"
      )
      raise ValueError(
        f"calls[{name!r}]: layer {name!r} is called once per forward, so there is no call "
        f"to choose; {which}. Drop {name!r} from calls."
      )
    if k >= n:
      raise ValueError(
        f"calls[{name!r}]={k}: layer {name!r} is called {n} times per forward (call "
        f"numbers 0 to {n - 1}, 0-based in forward order); give one of them."
      )
  return tuple((p, int(keyed[p])) for p in found if p in keyed)


def repeated_calls_text(repeated: list[RepeatedLayer]) -> str:
  """One line on the layers called more than once per forward (empty when none)."""
  if not repeated:
    return ""
  parts = [
    f"{r.name!r} {r.calls} times (rows per call {', '.join(map(str, r.rows))})" for r in repeated
  ]
  name = repeated[0].name
  return (
    f"layers called more than once per forward: {'; '.join(parts)}. Their statistics sum "
    "the rows of every call and one projection serves all calls; if only one call's "
    "output matters (e.g. a head applied to the tokens and to the pooled vector), "
    f"choose it: calls={{{name!r}: 1}} (sap-jax correct --layer-call {name}=1), the call "
    "number 0-based in forward order; or exclude the layer."
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
