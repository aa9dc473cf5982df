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
  floating array (`check_logits_output`).

**Integer inputs** (e.g. ``uint8`` images) are refused here, with the conversion in the
message, never converted: the library cannot know the scale the model was trained on
(``/ 255``, standardised, raw counts), and a guess that differs from training gives
plausible, wrong accuracies without a word. Data loaders, which do know their files'
conventions, convert at the loading edge and say so (`sap_jax.data.load_npz`: ``uint8``
→ float32 ``/ 255`` with a warning, as the CIFAR and image-folder loaders do).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sap_jax.hashable import hashable
from sap_jax.types import ApplyFn, Variables

__all__ = [
  "INTEGER_INPUT_FIX",
  "WRAP_FIX",
  "all_finite",
  "check_inputs",
  "check_labelled",
  "check_labels",
  "check_logits_output",
  "output_width",
  "traced_output",
]

INTEGER_INPUT_FIX = (
  "convert them the way the model's training inputs were, e.g. x.astype(np.float32) / 255 "
  "for 8-bit images (the package's image loaders' convention)"
)
"""The fix every integer-input refusal names."""

WRAP_FIX = (
  "apply_fn(variables, x) must return the logits as one (N, K) array: wrap the forward, "
  "e.g. def logits_fn(variables, x): return model.apply(variables, x, train=False){index}"
)
"""The default advice of `check_logits_output` (``{index}`` names the part to return)."""


def _as_array(x: Any, what: str) -> np.ndarray | jax.Array:
  if x is None:
    raise ValueError(f"{what}: no inputs (got None); pass an (N, ...) array.")
  if isinstance(x, jax.Array):
    return x  # kept on its devices: a global (sharded) array is never pulled to the host
  try:
    return np.asarray(x)
  except (ValueError, TypeError) as err:
    raise ValueError(
      f"{what}: cannot be made one array ({err}); pass an (N, ...) array whose samples "
      "all have the same shape."
    ) from None


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
  x = _as_array(x, what)
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


def check_logits_output(out: Any, what: str = "apply_fn", *, fix: str = WRAP_FIX) -> Any:
  """``out`` (an array, or its ``jax.eval_shape`` stand-in) if it is ``(N, K)`` logits.

  The one rule for forwards: ``apply_fn(variables, x)`` returns the logits, one
  floating ``(N, K)`` array. A tuple, list or dict (logits plus features, a
  ``{"logits": …}`` output) is refused with how to wrap it, never unpacked by
  guesswork. Runs at trace time too (on tracers), so jitted losses and evaluations
  call it on their forward's output.

  Args:
    out: the forward's output.
    what: the forward's name in the message.
    fix: the advice for a tuple, dict or other non-array output; ``{index}`` in it
      becomes the part to return (``[0]``, ``['logits']``).

  Raises:
    ValueError: anything but one 2-D floating array.
  """
  if isinstance(out, Mapping):
    keys = sorted(map(str, out))
    index = "['logits']" if "logits" in keys else f"[{keys[0]!r}]" if keys else ""
    raise ValueError(
      f"{what} returned a dict with keys {keys}, not logits; "
      f"{fix.replace('{index}', index)} (the entry that holds the logits)."
    )
  if isinstance(out, (tuple, list)):
    raise ValueError(
      f"{what} returned a {type(out).__name__} of {len(out)}, not logits; "
      f"{fix.replace('{index}', '[0]')} (the element that holds the logits)."
    )
  if not hasattr(out, "shape") or not hasattr(out, "dtype"):
    raise ValueError(
      f"{what} returned {type(out).__name__}, not logits; {fix.replace('{index}', '')}."
    )
  if len(out.shape) != 2:
    fix = (
      "return the logits, not one value per sample (predicted classes, a loss)"
      if len(out.shape) < 2
      else "flatten or pool the output in the model"
    )
    raise ValueError(
      f"{what} returned shape {tuple(out.shape)}; expected logits of shape (batch, "
      f"num_classes): {fix}."
    )
  dtype = np.dtype(out.dtype)
  if not (np.issubdtype(dtype, np.floating) or dtype.kind == "V"):
    raise ValueError(
      f"{what} returned dtype {dtype}; expected floating logits, not predicted classes."
    )
  return out


def traced_output(fn: Any, *args: Any, what: str = "apply_fn(variables, x)") -> Any:
  """``jax.eval_shape(fn, *args)`` (shapes only, no FLOPs), a failure reported as a
  ValueError naming the call, the error it raised and the likely fix (inputs of the
  wrong per-example shape, variables of another model)."""
  try:
    return jax.eval_shape(fn, *args)
  except Exception as err:  # noqa: BLE001 — any failure of the user's forward is reported
    detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
    shapes = ", ".join(
      f"{tuple(a.shape)} {a.dtype}" for a in args if isinstance(a, jax.ShapeDtypeStruct)
    )
    raise ValueError(
      f"{what} fails on a sample of shape {shapes} ({type(err).__name__}: {detail}); pass "
      "inputs with the per-example shape the model was built for, and its own variables."
    ) from err


def output_width(apply_fn: ApplyFn, variables: Variables, x: Any) -> int:
  """K, the model's number of outputs, from a shape-only trace on one sample.

  ``jax.eval_shape`` of ``apply_fn(variables, x[:1])`` (`traced_output`): no FLOPs,
  and cached by JAX for an equal ``apply_fn`` and equal shapes (sub-millisecond on a
  second call). The output is checked with `check_logits_output`.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: ``(N, ...)`` inputs, N ≥ 1 (only the shape and dtype of one sample are used).

  Returns:
    The width K of the logits.
  """
  sample = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
  out = traced_output(hashable(apply_fn), variables, sample)
  return int(check_logits_output(out).shape[-1])


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
