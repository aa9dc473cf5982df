"""Is this ``(x, y)`` valid for this model? The one owner of that question.

Every public entry point that takes inputs or labels (training, evaluation, the trusted
set, the α sweep, the correction, the baselines) checks them here, once, before any
work, and refuses bad ones with a message that names the problem and the fix:

- inputs: a numeric array with a leading sample axis, at least one sample, a floating
  dtype, and no NaN or Inf (checked explicitly: a batched forward on XLA:CPU can drop a
  NaN and report a plausible accuracy);
- labels: one integer class index per input, in ``[0, K)`` where K is the model's output
  width (`output_width`: one shape-only trace of the forward on one sample, no FLOPs);
- the forward: ``apply_fn(variables, x)`` must return the logits, one ``(N, K)``
  floating array (`check_logits_output`), be a Linen-style forward and not an NNX module
  (`check_not_nnx`: that goes to `sap_jax.nnx`), run in eval mode (a forward that needs
  ``rngs`` or a ``mutable`` collection is refused naming the eval-mode fix,
  `forward_failure`), and read its ``variables`` (one that closes over its own is refused:
  SAP's corrected kernels would never reach it, `check_reads_variables`); logits that
  look like probabilities get a warning (`warn_if_probabilities`).

**Array-likes** (`as_array`, the one place the rule is written): a ``jax.Array`` stays on
its devices, a numpy array (a ``np.memmap`` too) stays as it is, a list or tuple is always
an array of samples (nested lists of numbers or a list of per-sample arrays; never a
source, see `sap_jax.data.sources.is_source`), anything else with ``__array__`` is
converted; records (dicts), text and objects that are not numbers are refused with the fix.

**Integer inputs** (e.g. ``uint8`` images) are refused here, with the conversion in the
message, never converted: the library cannot know the scale the model was trained on
(``/ 255``, standardised, raw counts), and a guess that differs from training gives
plausible, wrong accuracies without a word. Data loaders, which do know their files'
conventions, convert at the loading edge and say so (`sap_jax.data.load_npz`: ``uint8``
→ float32 ``/ 255`` with a warning, as the CIFAR and image-folder loaders do).

This module checks the data (inputs, labels, array-likes); the checks of the forward live
in `sap_jax.forward_checks` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sap_jax.forward_checks import (
  EVAL_MODE_FIX,
  NNX_FIX,
  PROBABILITIES_WARNING,
  WRAP_FIX,
  TrainModeForward,
  check_logits_output,
  check_not_nnx,
  check_reads_variables,
  forward_failure,
  looks_like_probabilities,
  output_width,
  traced_output,
  warn_if_probabilities,
)
from sap_jax.types import ApplyFn, Variables

__all__ = [
  "EVAL_MODE_FIX",
  "INTEGER_INPUT_FIX",
  "NNX_FIX",
  "PROBABILITIES_WARNING",
  "WRAP_FIX",
  "TrainModeForward",
  "all_finite",
  "as_array",
  "check_inputs",
  "check_labelled",
  "check_labels",
  "check_logits_output",
  "check_not_nnx",
  "check_reads_variables",
  "forward_failure",
  "looks_like_probabilities",
  "output_width",
  "traced_output",
  "warn_if_probabilities",
]

INTEGER_INPUT_FIX = (
  "convert them the way the model's training inputs were, e.g. x.astype(np.float32) / 255 "
  "for 8-bit images (the package's image loaders' convention)"
)
"""The fix every integer-input refusal names."""


def as_array(x: Any, what: str) -> np.ndarray | jax.Array:
  """``x`` as one array, whatever array-like kind it came as (the boundary's one rule).

  - a ``jax.Array`` stays on its devices (a global, sharded array is never pulled to
    the host);
  - a numpy array stays as it is (a ``np.memmap`` becomes a plain view: nothing read);
  - a list or tuple is always an array of samples (nested lists of numbers, or a list of
    equally shaped per-sample arrays), made one numpy array. It is never a source: a
    source (`sap_jax.data.sources.is_source`) has no ``shape``, is not a list, tuple, str,
    bytes or mapping, and has ``__len__`` and ``__getitem__``; entry points that take
    sources branch on that before calling this;
  - anything else with ``__array__`` (or the buffer protocol) goes through ``np.asarray``.

  Raises:
    ValueError: None; a list of records (dicts); a str, bytes or mapping; ragged
      samples; anything that does not become a numeric array (the fix in each message).
  """
  if x is None:
    raise ValueError(f"{what}: no inputs (got None); pass an (N, ...) array.")
  if isinstance(x, jax.Array):
    return x  # kept on its devices: a global (sharded) array is never pulled to the host
  if isinstance(x, (list, tuple)) and len(x) and isinstance(x[0], Mapping):
    raise ValueError(
      f"{what}: a {type(x).__name__} of records (dicts); a {type(x).__name__} is read as an "
      "array of samples, never as a source: pass the inputs as one (N, ...) array, or the "
      "records as a source (an object with __len__ and __getitem__, see sap_jax.data.sources)."
    )
  if isinstance(x, (str, bytes, Mapping)):
    raise ValueError(
      f"{what}: got a {type(x).__name__}, not inputs; pass an (N, ...) array (a path must be "
      "loaded first, e.g. sap_jax.data.load_dataset or np.load)."
    )
  try:
    array = np.asarray(x)
  except (ValueError, TypeError) as err:
    raise ValueError(
      f"{what}: cannot be made one array ({err}); pass an (N, ...) array whose samples "
      "all have the same shape."
    ) from None
  if array.dtype == object:
    raise ValueError(
      f"{what}: a {type(x).__name__} that is not an array of numbers (it becomes a numpy "
      f"array of Python objects, shape {array.shape}); pass an (N, ...) float array whose "
      "samples all have the same shape."
    )
  return array


def _first_nonfinite(x: np.ndarray) -> tuple[int, int]:
  """(number of samples holding NaN/Inf, index of the first one); the slow, exact path."""
  bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
  return int(bad.sum()), int(np.argmax(bad))


def all_finite(x: np.ndarray | jax.Array) -> bool:
  """Whether every element of ``x`` is finite (no NaN, no ±Inf), in one pass."""
  if isinstance(x, jax.Array):
    return bool(jnp.all(jnp.isfinite(x)))
  # A float64 sum of float32/16 values cannot overflow, and a NaN or Inf anywhere makes
  # it non-finite: one pass, no N-sized temporary. A float64 input whose sum overflows
  # is confirmed element by element.
  with np.errstate(over="ignore", invalid="ignore"):
    if np.isfinite(np.sum(x, dtype=np.float64)):
      return True
  return bool(np.isfinite(x).all())


def check_inputs(x: Any, what: str = "x") -> np.ndarray | jax.Array:
  """``x`` as an array after checking it holds usable model inputs.

  A host array stays (or becomes) a numpy array; a ``jax.Array`` stays on its devices.

  Args:
    x: ``(N, ...)`` inputs, N ≥ 1, floating dtype, all finite.
    what: the name used in error messages (``"x_train"``, ``"split 'val'"``).

  Returns:
    ``x`` as an array.

  Raises:
    ValueError: None, ragged or non-numeric, a scalar, no samples, an integer or bool
      dtype (with the conversion to apply), NaN or Inf (with the count and first index).
  """
  x = as_array(x, what)
  if x.ndim == 0:
    raise ValueError(
      f"{what}: got a scalar; pass an (N, ...) array with one row per sample (x[None] for one)."
    )
  if len(x) == 0:
    raise ValueError(f"{what}: empty (no samples); pass at least one.")
  dtype = np.dtype(x.dtype)
  if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
    raise ValueError(
      f"{what}: inputs have integer dtype {dtype}; sap_jax computes on floating inputs "
      f"and does not guess their scale: {INTEGER_INPUT_FIX}."
    )
  if not np.issubdtype(dtype, np.floating) and dtype.kind != "V":  # "V": e.g. bfloat16
    raise ValueError(
      f"{what}: inputs have dtype {dtype}; pass a floating array (e.g. float32) of model inputs."
    )
  if not all_finite(x):
    if isinstance(x, jax.Array):
      raise ValueError(f"{what}: contains NaN or Inf; clean or drop those samples first.")
    count, first = _first_nonfinite(x)
    raise ValueError(
      f"{what}: contains NaN or Inf in {count} sample(s) (first at index {first}); clean or "
      "drop those samples first."
    )
  return x


def check_labels(y: Any, n: int, num_classes: int | None = None, what: str = "y") -> np.ndarray:
  """``y`` as an int32 host array after checking one class index per input.

  Args:
    y: ``(n,)`` integer class indices.
    n: the number of inputs they label.
    num_classes: K, when known (the model's output width, `output_width`): labels must
      lie in ``[0, K)``. None checks only that they are ≥ 0.
    what: the name used in error messages.

  Returns:
    int32[n] labels.

  Raises:
    ValueError: None, not 1-D, not an integer dtype (floats and bools included), a
      length other than ``n``, a negative label or one ≥ K (naming the label, its index
      and the fix).
  """
  if y is None:
    raise ValueError(f"{what}: no labels (got None); pass one integer class index per input.")
  y = np.asarray(jax.device_get(y)) if isinstance(y, jax.Array) else np.asarray(y)
  if y.ndim != 1 or y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
    hint = (
      " (y.astype(np.int32) if they are whole numbers)"
      if np.issubdtype(y.dtype, np.floating)
      else ""
    )
    raise ValueError(
      f"{what}: labels must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}; "
      f"pass class indices{hint}."
    )
  if len(y) != n:
    raise ValueError(f"{what}: {n} inputs but {len(y)} labels; pass one label per input.")
  if n == 0:
    return y.astype(np.int32)
  lo = int(y.min())
  if lo < 0:
    raise ValueError(
      f"{what}: label {lo} (at index {int(np.argmin(y))}) is negative; labels are class "
      "indices 0..K-1 (a -1 often marks a missing label: drop those samples)."
    )
  hi = int(y.max())
  if num_classes is not None and hi >= num_classes:
    raise ValueError(
      f"{what}: label {hi} (at index {int(np.argmax(y))}) is outside [0, {num_classes}) for a "
      f"model with {num_classes} outputs; fix the stray label, or build the model with "
      f"{hi + 1} outputs if that class is real."
    )
  return y.astype(np.int32)


def check_labelled(
  apply_fn: ApplyFn,
  variables: Variables,
  x: Any,
  y: Any,
  what: str = "x/y",
  *,
  num_classes: int | None = None,
) -> tuple[np.ndarray | jax.Array, np.ndarray]:
  """``(x, y)`` after every check for this model: `check_inputs`, `output_width`,
  `check_labels` in ``[0, K)``.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: ``(N, ...)`` inputs.
    y: ``(N,)`` integer labels.
    what: the names used in error messages (``"x_val/y_val"``).
    num_classes: K, when the caller knows it already (skips the trace).

  Returns:
    ``(x, int32 y)``.
  """
  x = check_inputs(x, what)
  y = check_labels(y, len(x), None, what)  # what needs no model, before the trace
  k = output_width(apply_fn, variables, x) if num_classes is None else int(num_classes)
  return x, check_labels(y, len(x), k, what)
