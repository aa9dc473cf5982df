"""Functions as static `jax.jit` arguments.

Module-level jitted functions take the model's ``apply_fn`` as a static argument,
so a compilation is reused by every later call with an equal ``apply_fn`` (the
same object, or e.g. `sap_jax.train.eval_apply_fn` of an equal model). Static
arguments must be hashable; `hashable` wraps the ones that are not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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
