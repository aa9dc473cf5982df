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
import warnings

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


def enable_persistent_cache(path: str | None = None, given_as: str = "as given") -> str | None:
  """Turns on JAX's persistent compilation cache in the folder `resolve_cache_dir`
  picks, caching every program however small or quick to compile.

  Returns the folder, or None (and changes nothing) when the choice is ``off``. Call it
  before the first compilation: JAX settles whether to use the cache then.

  Being only a cache, a folder that cannot be used (a file there, a read-only file
  system, no permission) is not an error: a warning names it and where it came from, and
  the run goes on without the cache (None). ``given_as`` says where ``path`` came from
  (the command line passes ``"--compilation-cache"``).
  """
  folder = resolve_cache_dir(path)
  if folder is None:
    return None
  problem = _unusable(folder)
  if problem is not None:
    origin = given_as if path else f"from ${ENV_VAR}" if os.environ.get(ENV_VAR) else "default"
    warnings.warn(
      f"the compilation cache {folder} ({origin}) {problem}; running without the cache (pass "
      f"--compilation-cache DIR or set ${ENV_VAR} to a writable folder, or to off)",
      stacklevel=2,
    )
    return None
  import jax

  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return folder


def _unusable(folder: str) -> str | None:
  """Why ``folder`` cannot hold the cache (after creating it if missing); None if it can."""
  try:
    os.makedirs(folder, exist_ok=True)
  except FileExistsError:
    return "is a file, not a folder"
  except OSError as e:
    return f"cannot be created ({e.strerror or e})"
  if not os.path.isdir(folder):
    return "is not a folder"
  try:
    read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
  except (OSError, AttributeError):
    read_only = False
  if read_only:
    return "is on a read-only file system"
  if not os.access(folder, os.W_OK | os.X_OK):
    return "is not writable"
  return None
