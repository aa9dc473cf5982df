"""Type aliases shared by the whole package: defined here once.

Attributes:
  Path: a layer's path in the ``params`` tree, the parent of its ``kernel``
    (e.g. ``("Conv_0",)`` or ``("block1", "Dense_0")``; an NNX graph path may hold
    integers, the index in an ``nnx.List``: ``("layers", 0)``).
  Variables: Flax Linen variables, ``{"params": …, "batch_stats": …}``.
  ApplyFn: an eval-mode forward ``apply_fn(variables, x) -> logits``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Path = tuple[str | int, ...]
Variables = dict[str, Any]
ApplyFn = Callable[[Any, jax.Array], jax.Array]

__all__ = ["ApplyFn", "Path", "Variables"]
