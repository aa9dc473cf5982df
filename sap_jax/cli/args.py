"""Argument types and defaults of the command line: every option shows its default,
numbers and ``KEY=VALUE`` pairs are read strictly, defaults come from the library."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import re
from collections.abc import Sequence
from typing import Any


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Shows every option's default, except None (the option's help says what None means)."""

  def _get_help_string(self, action):
    if action.default is None or action.required:
      return action.help
    return super()._get_help_string(action)


def field_defaults(cls: type) -> dict[str, Any]:
  """A dataclass's field defaults (fields with a default factory are left out)."""
  return {
    f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
  }


def keyword_defaults(fn) -> dict[str, Any]:
  """A function's keyword argument defaults."""
  return {
    name: p.default
    for name, p in inspect.signature(fn).parameters.items()
    if p.default is not inspect.Parameter.empty
  }


def floats_text(values: Sequence[float]) -> str:
  """Comma-separated numbers (``1e2,3e2,…``) that `floats` reads back exactly."""

  def text(v: float) -> str:
    mantissa, exponent = f"{v:e}".split("e")
    short = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return short if float(short) == v else repr(float(v))

  return ",".join(text(v) for v in values)


def floats(text: str) -> tuple[float, ...]:
  try:
    values = tuple(float(t) for t in text.split(",") if t.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
  if not values:
    raise argparse.ArgumentTypeError("expected at least one number")
  return values


def alpha_grid(text: str) -> tuple[float, ...]:
  """`floats`, every value finite and > 0 (an α grid)."""
  values = floats(text)
  bad = [v for v in values if not (math.isfinite(v) and v > 0)]
  if bad:
    raise argparse.ArgumentTypeError(
      f"every α must be finite and > 0 (the paper uses 1e3…1e6), got {bad[0]:g} in {text!r}"
    )
  return values


def positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
  return value


def kv(text: str) -> tuple[str, Any]:
  """``KEY=VALUE``, VALUE read as JSON when it is JSON (``3``, ``[1,2]``, ``true``), else text."""
  if "=" not in text:
    raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as width=64, got {text!r}")
  key, value = text.split("=", 1)
  if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key.strip()):
    raise argparse.ArgumentTypeError(
      f"expected KEY=VALUE with KEY a name such as width, got {text!r}"
    )
  key = key.strip()
  try:
    parsed = json.loads(value)
  except json.JSONDecodeError:
    parsed = value
  return key.replace("-", "_"), parsed


def layer_call(text: str) -> tuple[str, int]:
  """``NAME=K`` of ``--layer-call``: a layer's "/"-joined name (as the report's
  ``layers`` and the repeated-layer warning print it) and K ≥ 0, the number of the call
  whose inputs count (0-based, in forward order)."""
  name, sep, k = text.rpartition("=")
  try:
    number = int(k) if sep and name.strip() else -1
  except ValueError:
    number = -1
  if number < 0:
    raise argparse.ArgumentTypeError(
      f"expected NAME=K such as head=1 (a layer called more than once per forward, K the "
      f"call whose inputs count, 0-based in forward order), got {text!r}"
    )
  return name.strip(), number


class LayerCalls(argparse.Action):
  """Collects repeated ``--layer-call NAME=K`` into ``{NAME: K}`` (`run_sap`'s ``calls``);
  a layer given twice is refused."""

  def __call__(self, parser, namespace, values, option_string=None):
    name, k = values
    chosen = dict(getattr(namespace, self.dest, None) or {})
    if name in chosen:
      parser.error(
        f"{option_string} gives layer {name!r} twice ({name}={chosen[name]} and {name}={k}); "
        "give each layer once"
      )
    chosen[name] = k
    setattr(namespace, self.dest, chosen)


def add_layer_call_arg(p: argparse.ArgumentParser) -> None:
  """``--layer-call NAME=K`` (repeatable): `run_sap`'s ``calls``; unset, every call counts."""
  p.add_argument(
    "--layer-call",
    type=layer_call,
    action=LayerCalls,
    default=None,
    metavar="NAME=K",
    help="for a layer called more than once per forward (e.g. a ViT head applied to the "
    "tokens and to the pooled vector), count only the inputs of its call K (0-based, in "
    "forward order), e.g. head=1 (repeatable, one per layer; unset: every call's inputs "
    "count, with a warning)",
  )
