"""Functions as static `jax.jit` arguments.

Module-level jitted functions take the model's ``apply_fn`` as a static argument,
so a compilation is reused by every later call with an equal ``apply_fn`` (the
same object, or e.g. `sap_jax.train.eval_apply_fn` of an equal model). Static
arguments must be hashable; `hashable` wraps the ones that are not, and
`ModuleApply` / `EvalApply` are the value-equal forwards of a Linen module (equal
modules give equal, equally hashed functions). This module is the one owner of
that mechanism.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn


def hashable(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` itself when hashable, else a wrapper hashed and compared by identity."""
  try:
    hash(fn)
  except TypeError:
    return _ByIdentity(fn)
  return fn


class _ByIdentity:
  """Hashable stand-in for an unhashable function."""

  def __init__(self, fn):
    self.fn = fn

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)

  def __hash__(self):
    return id(self.fn)

  def __eq__(self, other):
    return isinstance(other, _ByIdentity) and other.fn is self.fn


@dataclasses.dataclass(frozen=True)
class ModuleApply:
  """``model.apply`` with value equality (bound methods compare by identity).

  Equal modules give equal (and equally hashed) objects, so train states and
  apply functions of equal models hit the same jit cache entries.
  """

  model: nn.Module

  def __call__(self, variables: Any, *args, **kwargs):
    return self.model.apply(variables, *args, **kwargs)


@dataclasses.dataclass(frozen=True)
class EvalApply:
  """``apply_fn(variables, x) = model.apply(variables, x, train=False)``, with value equality."""

  model: nn.Module

  def __call__(self, variables: Any, x: Any) -> Any:
    return self.model.apply(variables, x, train=False)
