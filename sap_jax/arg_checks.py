"""Are the options of a correction valid? Checked at the entry points before any work.

`sap_jax.input_checks` owns the inputs and labels; this module owns the other
arguments of `run_sap`, `correct`, `sweep_alpha` and `tune_alpha` (and their source and
NNX twins): sizes and counts (``n_trusted``, ``batch_size``, ``rows_per_batch``), the α
grid, caller-chosen ``trusted`` indices, named eval splits, and the layer selection
(``exclude``, ``layer_range``) and the call that counts of a layer called more than once
(``calls``), which `layer_check` tests against the layers a shape-only trace of the
model finds (`jax.eval_shape`: nothing is computed). Each check
raises one ValueError that names the argument, what was wrong and the fix.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from sap_jax import projection as proj
from sap_jax.input_checks import check_inputs
from sap_jax.layers import select_layers
from sap_jax.stats.calls import (
  ALL_CALLS,
  check_calls_option,
  chosen_calls,
  layer_calls,
  repeated_layers,
)
from sap_jax.stats.observe import LiftedTransformError
from sap_jax.types import ApplyFn

RESERVED_SPLIT = "val"
"""The name of the split that chooses α (`sap_jax.sweep.CHOICE_SPLIT`): no eval split takes it."""


def is_integer(value: Any) -> bool:
  """Whether ``value`` is an integer (Python or numpy), not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
  """Whether ``value`` is one real number (Python, numpy or a 0-d array), not a bool."""
  if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
    return False
  try:
    float(value)
  except (TypeError, ValueError):
    return False
  return not np.iscomplexobj(value)


def check_count(value: Any, name: str, *, optional: bool = False) -> int | None:
  """``value`` as an int ≥ 1 (None passes when ``optional``).

  Raises:
    ValueError: a bool, a float, a string, or a number < 1.
  """
  if value is None and optional:
    return None
  if not is_integer(value) or value < 1:
    none = " or None" if optional else ""
    raise ValueError(f"{name} must be an integer ≥ 1{none}, got {value!r}.")
  return int(value)


def check_seed(seed: Any) -> int:
  """``seed`` as an int (a bool, a float or a string refused)."""
  if not is_integer(seed):
    raise ValueError(f"seed must be an integer, got {seed!r}.")
  return int(seed)


def sample_count(x: Any, what: str) -> int:
  """How many samples ``x`` holds (``len``), refused when it has none or is no array
  (`sap_jax.input_checks.check_inputs` names the problem)."""
  try:
    n = len(x)
  except TypeError:
    check_inputs(x, what)  # None, a scalar: refused with the fix
    raise
  if n == 0:
    raise ValueError(f"{what}: empty (no samples); pass at least one.")
  return n


def check_n_trusted(n_trusted: Any, n_train: int) -> int:
  """``n_trusted`` as an int in ``[1, n_train]``.

  Raises:
    ValueError: not an integer, < 1, or more than the training samples (with the bound).
  """
  if not is_integer(n_trusted):
    raise ValueError(
      f"n_trusted must be an integer (how many training samples to trust), got {n_trusted!r}."
    )
  if n_trusted < 1:
    raise ValueError(f"n_trusted={n_trusted} trusts no sample; use 1 ≤ n_trusted ≤ {n_train}.")
  if n_trusted > n_train:
    raise ValueError(
      f"n_trusted={n_trusted} exceeds the {n_train} training samples; use 1 ≤ n_trusted ≤ "
      f"{n_train}."
    )
  return int(n_trusted)


def check_alpha_grid(alphas: Any) -> np.ndarray:
  """The α grid as float64[K], K ≥ 1, every α finite and > 0.

  Raises:
    ValueError: not numbers, empty, NaN/Inf or ≤ 0.
  """
  if isinstance(alphas, Mapping):
    raise ValueError(
      "alphas is a grid of α values (a sequence such as DEFAULT_ALPHAS), got a dict; a "
      "per-layer α goes to apply_alpha or correct."
    )
  try:
    raw = np.asarray(alphas)
  except (TypeError, ValueError):
    raw = np.asarray(None)
  if raw.size and raw.dtype.kind not in "iuf":  # text, bools, ragged or other objects
    raise ValueError(f"alphas must be a sequence of numbers (e.g. DEFAULT_ALPHAS), got {alphas!r}.")
  grid = raw.astype(np.float64).reshape(-1)
  if grid.size == 0:
    raise ValueError("alphas is empty; give at least one α (e.g. DEFAULT_ALPHAS).")
  proj.check_alpha(grid)
  return grid


def check_trusted_indices(trusted: Any, n_train: int) -> np.ndarray:
  """Caller-chosen trusted indices as int64[n], 1 ≤ n, each in ``[0, n_train)``, unique.

  Raises:
    ValueError: not a 1-D sequence of integers, empty, negative, ≥ ``n_train`` or
      repeated (naming the first offender and its position).
  """
  arr = np.asarray(trusted)
  if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
    hint = " (np.flatnonzero(mask) for a boolean mask)" if arr.dtype == np.bool_ else ""
    raise ValueError(
      f"trusted must be a 1-D sequence of integer indices into the training set{hint}, got "
      f"shape {arr.shape} dtype {arr.dtype}."
    )
  if arr.size == 0:
    raise ValueError("trusted is empty; pass at least one index, or None to select the set.")
  arr = arr.astype(np.int64)
  bad = np.flatnonzero((arr < 0) | (arr >= n_train))
  if bad.size:
    i = int(bad[0])
    raise ValueError(
      f"trusted index {int(arr[i])} (at position {i}) is outside [0, {n_train}) for "
      f"{n_train} training samples; pass indices into the training set (no negative ones)."
    )
  uniq, counts = np.unique(arr, return_counts=True)
  if (counts > 1).any():
    dup = int(uniq[np.argmax(counts > 1)])
    raise ValueError(
      f"trusted index {dup} appears {int(counts.max())} times; pass each sample once "
      "(np.unique(trusted))."
    )
  return arr


def check_layer_range(layer_range: Any) -> tuple[int | None, int | None] | None:
  """``layer_range`` as ``(start, stop)`` of ints or None, or None.

  Raises:
    ValueError: anything else (a single number, three values, floats).
  """
  if layer_range is None:
    return None
  ok = (
    isinstance(layer_range, Sequence)
    and not isinstance(layer_range, str)
    and len(layer_range) == 2
    and all(v is None or is_integer(v) for v in layer_range)
  )
  if not ok:
    raise ValueError(
      f"layer_range must be (start, stop), each an integer or None (a slice over the "
      f"layers in call order, e.g. (0, -1)), got {layer_range!r}."
    )
  return (layer_range[0], layer_range[1])


def check_eval_splits(eval_splits: Any, *, sources: bool = False) -> dict[str, Any]:
  """``eval_splits`` as a dict name → ``(x, y)`` (name → source with ``sources``).

  Raises:
    ValueError: not a mapping, a name that is not a string or is the reserved "val"
      (the split that chooses α), a value that is not an ``(x, y)`` pair.
  """
  if eval_splits is None:
    return {}
  if not isinstance(eval_splits, Mapping):
    raise ValueError(
      f"eval_splits must be a dict name → (x, y), e.g. {{'test': (x_test, y_test)}}, got "
      f"{type(eval_splits).__name__}."
    )
  out = {}
  for name, split in eval_splits.items():
    if not isinstance(name, str):
      raise ValueError(f"eval_splits names must be strings such as 'test', got {name!r}.")
    if name == RESERVED_SPLIT:
      raise ValueError(
        f"eval_splits may not use the name {RESERVED_SPLIT!r}: it is the choice split "
        "(x_val, y_val); name it e.g. 'val_clean'."
      )
    if not sources and not (isinstance(split, (tuple, list)) and len(split) == 2):
      raise ValueError(
        f"eval_splits[{name!r}] must be an (x, y) pair of inputs and labels, got "
        f"{type(split).__name__}{f' of {len(split)}' if isinstance(split, (tuple, list)) else ''}."
      )
    out[name] = split
  return out


def layer_check(
  apply_fn: ApplyFn,
  variables: Any,
  sample_shape: Sequence[int],
  batch: int,
  *,
  exclude: str | Sequence[str] = (),
  layer_range: tuple[int | None, int | None] | None = None,
  calls: Any = ALL_CALLS,
) -> tuple:
  """The model's layer calls on a batch of ``batch`` samples of ``sample_shape``, by a
  shape-only trace (nothing compiled, no data read), before any work: refuses a covered
  layer inside a lifted transform, an ``exclude`` / ``layer_range`` that leaves no
  layer (or a pattern that matches none, `select_layers`) and a ``calls`` that is not
  "all" or a dict from a layer called more than once to one of its call numbers
  (`sap_jax.stats.calls.chosen_calls`); returns the layers called more than once
  (`sap_jax.stats.calls.RepeatedLayer`, with the call that counts).

  A forward that fails this trace for another reason (wrong input shape, a train-mode
  forward, no logits) is left to the input checks that follow, whose messages name those
  causes; the trace then reports no repeated layer and checks no selection."""
  check_calls_option(calls)  # its type, whether or not the trace below succeeds
  spec = jax.ShapeDtypeStruct((batch, *sample_shape), np.float32)
  try:
    found = layer_calls(apply_fn, variables, spec)
  except LiftedTransformError:
    raise
  except Exception:  # noqa: BLE001 — diagnosed by the input checks that follow
    return ()
  if not found:
    raise ValueError(
      "the forward calls no layer SAP can project (Dense, DenseGeneral, Conv, "
      "ConvTranspose, Einsum); pass the model's eval-mode forward."
    )
  select_layers(dict.fromkeys(found), exclude=exclude, layer_range=layer_range)
  return tuple(repeated_layers(found, chosen_calls(calls, found)))
