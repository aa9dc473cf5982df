"""JAX's persistent compilation cache, for the programs at the package's edges.

A new process recompiles every jitted program unless JAX finds it in its persistent
cache on disk. The command line (`sap_jax.cli`) and the experiment runner
(`experiments.run`) call `enable_persistent_cache` once at start-up, so a second
`sap-jax correct` of the same model in a new process loads its programs instead of
compiling them. The library itself never calls it: it changes JAX's process-wide
configuration, which only the program's entry point may decide.

What a warm cache cannot spare: JAX traces and lowers every program again in a new
process (the lowered module is the cache key), then loads the compiled program from
disk. A first call's cost is therefore about the number of programs it lowers, which
the SAP core keeps small: one per step (a forward, a layer's eigendecomposition, …),
none for eager conversions (`sap_jax.compile_cache.lowered_programs` counts them;
``benchmarks/bench_first_call.py`` measures the cold and the warm cost against
training).

The folder is, in order: the ``path`` argument, the ``SAP_JAX_COMPILATION_CACHE``
environment variable, ``$XDG_CACHE_HOME/sap_jax/jax`` (``~/.cache/sap_jax/jax`` when
``XDG_CACHE_HOME`` is unset). The value ``off`` (any case) disables the cache.
"""

from __future__ import annotations

import os

ENV_VAR = "SAP_JAX_COMPILATION_CACHE"
"""Environment variable naming the cache folder (or ``off``)."""

OFF = "off"
"""The value that disables the cache."""


def default_cache_dir() -> str:
  """``$XDG_CACHE_HOME/sap_jax/jax``, or ``~/.cache/sap_jax/jax`` without that variable."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache"))
  return os.path.join(base, "sap_jax", "jax")


def resolve_cache_dir(path: str | None = None) -> str | None:
  """The cache folder `enable_persistent_cache` would use: ``path``, else the
  environment variable, else `default_cache_dir` (an empty value counts as unset);
  None for ``off``."""
  choice = path or os.environ.get(ENV_VAR) or default_cache_dir()
  if choice.strip().lower() == OFF:
    return None
  return os.path.abspath(os.path.expanduser(choice))


def enable_persistent_cache(path: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache in the folder `resolve_cache_dir`
  picks, caching every program however small or quick to compile.

  Returns the folder, or None (and changes nothing) when the choice is ``off``. Call it
  before the first compilation: JAX settles whether to use the cache then.
  """
  folder = resolve_cache_dir(path)
  if folder is None:
    return None
  import jax

  os.makedirs(folder, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return folder
