"""The SAP core's compiled programs, how many compilations each holds, and which
programs a block of code lowers.

Every jitted function of the core is module-level and keyed by a hashable
``apply_fn`` (`sap_jax.hashable`), so a second correction of the same model compiles
nothing. Each core module lists its programs in a public ``JITTED`` dict; this module
gathers them, for tests and benchmarks that check that a call compiled nothing new.

In a new process every program is traced and lowered again even when JAX's persistent
cache (`sap_jax.compilation`) then finds it compiled: the lowered module is the cache
key. So the programs a correction lowers — `lowered_programs` counts them — are the
first call's cost once the cache is warm.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax

LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
"""The `jax.monitoring` duration event JAX records once per program it lowers."""


def compiled_functions() -> dict[str, Callable[..., Any]]:
  """name → jitted function, for every module-level program of the SAP core."""
  from sap_jax import correction, decomposition, evaluation, sample_scores, spread_eigh, stats
  from sap_jax.stats import qr

  return {
    **sample_scores.JITTED,
    **stats.JITTED,
    **qr.JITTED,
    **evaluation.JITTED,
    **decomposition.JITTED,
    **spread_eigh.JITTED,
    **correction.JITTED,
  }


def cache_sizes() -> dict[str, int]:
  """name → number of compilations the program holds now."""
  return {name: fn._cache_size() for name, fn in compiled_functions().items()}


@contextlib.contextmanager
def lowered_programs() -> Iterator[list[tuple[str, float]]]:
  """Records ``(name, seconds)`` of every program JAX lowers while the block runs.

  A program is lowered at its first call in a process for each new combination of
  static arguments, shapes, dtypes and placements (committed or not) of its inputs,
  eager ``jnp`` operations included (``jit(convert_element_type)``, ``jit(stage)``, …).
  Names are as JAX logs them, e.g. ``"jit(_accumulate)"``. Listens on JAX's process-
  wide `jax.monitoring` events (`LOWERING_EVENT`), removed again at exit; lowerings on
  other threads in that time are recorded too.

  Example::

    with lowered_programs() as lowered:
      activation_stats(apply_fn, variables, batches)
    names = [name for name, _ in lowered]
  """
  lowered: list[tuple[str, float]] = []

  def listener(event: str, seconds: float, **kwargs: Any) -> None:
    if event == LOWERING_EVENT:
      lowered.append((str(kwargs.get("fun_name", "?")), float(seconds)))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield lowered
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
