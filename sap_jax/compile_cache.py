"""The SAP core's compiled programs and how many compilations each holds.

Every jitted function of the core is module-level and keyed by a hashable
``apply_fn`` (`sap_jax.hashable`), so a second correction of the same model compiles
nothing. Each core module lists its programs in a public ``JITTED`` dict; this module
gathers them, for tests and benchmarks that check that a call compiled nothing new.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def compiled_functions() -> dict[str, Callable[..., Any]]:
  """name → jitted function, for every module-level program of the SAP core."""
  from sap_jax import correction, evaluation, spread_eigh, stats, sweep, trusted
  from sap_jax.stats import qr

  return {
    **trusted.JITTED,
    **stats.JITTED,
    **qr.JITTED,
    **evaluation.JITTED,
    **sweep.JITTED,
    **spread_eigh.JITTED,
    **correction.JITTED,
  }


def cache_sizes() -> dict[str, int]:
  """name → number of compilations the program holds now."""
  return {name: fn._cache_size() for name, fn in compiled_functions().items()}
