"""Evaluation of a model on labelled inputs: the one evaluation path.

Every accuracy the package reports (training's validation checks, the α sweep,
the baselines' hyperparameter choice, the experiment records) comes from
`evaluate`, so the same model on the same data always gets the same number.
Batches have one shape (the ragged last one padded and masked), so one
compilation serves every batch of a model.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sap_jax import sharding as shd
from sap_jax.batching import padded_batches
from sap_jax.data.sources import is_source, no_separate_labels
from sap_jax.forward_checks import (
  check_logits_output,
  looks_like_probabilities,
  output_width,
  warn_if_probabilities,
)
from sap_jax.hashable import hashable
from sap_jax.input_checks import check_inputs, check_labelled, check_labels
from sap_jax.losses import cross_entropy
from sap_jax.types import ApplyFn, Variables


@functools.partial(jax.jit, static_argnums=0)
def _eval_batch(apply_fn, variables, x, y, mask):
  logits = check_logits_output(apply_fn(variables, x))
  losses = cross_entropy(logits, y)
  correct = (jnp.argmax(logits, axis=-1) == y) & mask
  probabilities = looks_like_probabilities(logits) & mask  # rows that look like softmax
  return jnp.sum(correct), jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(probabilities)


@functools.partial(jax.jit, static_argnums=0)
def _predict_batch(apply_fn, variables, x):
  return check_logits_output(apply_fn(variables, x))


JITTED = {"evaluation.eval_batch": _eval_batch, "evaluation.predict_batch": _predict_batch}
"""The module-level compiled programs (see `sap_jax.compile_cache`)."""


def check_finite_inputs(x: Any, what: str) -> np.ndarray:
  """``x`` as a host array after `sap_jax.input_checks.check_inputs`: refused when
  None, empty, of an integer dtype (``uint8`` images: the message says how to convert)
  or holding NaN/Inf (``what`` names it in the error). The check SAP's entry points
  make once on their inputs. A global array sharded over a data axis stays on its
  devices (`sap_jax.sharding`)."""
  x = check_inputs(x, what)
  return x if shd.is_global(x) else np.asarray(x)


def labels_as_array(y: Any) -> np.ndarray | jax.Array:
  """int32 labels: a global array sharded over a data axis stays on its devices, anything
  else becomes a host array."""
  return y.astype(jnp.int32) if shd.is_global(y) else np.asarray(y, np.int32)


def check_xy(x: Any, y: Any, what: str = "x/y") -> tuple[np.ndarray, np.ndarray | None]:
  """``(x, y)`` as host arrays, after the checks that need no model.

  The inputs as `check_finite_inputs`; the labels one non-negative integer per input
  (`sap_jax.input_checks.check_labels`). The upper bound K needs the model: see
  `sap_jax.input_checks.check_labelled`, which `evaluate` uses.

  Args:
    x: ``(N, ...)`` floating inputs, N ≥ 1, all finite.
    y: ``(N,)`` integer labels, or None (inputs only).
    what: the names used in error messages.

  Raises:
    ValueError: empty, integer or non-finite inputs; non-integer, non-1-D or negative
      labels; mismatched lengths.
  """
  x = check_finite_inputs(x, what)
  return x, None if y is None else check_labels(y, len(x), None, what)


def evaluate(
  apply_fn: ApplyFn, variables: Variables, x: Any, y: Any = None, batch_size: int = 1024
) -> dict[str, float]:
  """Accuracy and mean cross-entropy of ``apply_fn`` on ``(x, y)``.

  Batches of ``min(batch_size, N)`` samples; the ragged last batch is padded
  (`sap_jax.batching.padded_batches`) and masked, so one compilation serves every batch.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: ``(N, ...)`` inputs: a host array, a global array sharded over a mesh's data
      axis (each device evaluates its own samples; only the sums cross to the host), or
      a labelled source (`sap_jax.data.sources`; ``y`` None), streamed in one pass
      (`sap_jax.streaming.evaluate`).
    y: ``(N,)`` integer labels (host, or sharded like ``x``); None for a source.
    batch_size: evaluation batch size (sharded ``x``: over all devices together).

  Returns:
    ``{"accuracy": float, "loss": float}``.

  Raises:
    ValueError: inputs or labels refused by `sap_jax.input_checks.check_labelled`
      (labels outside ``[0, K)`` for the model's K outputs, NaN inputs, ``uint8``
      images, a forward that does not return logits, …).
  """
  if is_source(x):
    from sap_jax import streaming

    no_separate_labels(y)
    return streaming.evaluate(apply_fn, variables, x, batch_size=batch_size)
  if shd.is_global(x):
    return _sharded_evaluate(apply_fn, variables, x, y, batch_size)
  x, y = check_labelled(apply_fn, variables, x, y, "x/y")
  return evaluate_checked(apply_fn, variables, x, y, batch_size)


def evaluate_checked(
  apply_fn: ApplyFn, variables: Variables, x: Any, y: Any, batch_size: int = 1024
) -> dict[str, float]:
  """`evaluate` of inputs and labels that `sap_jax.input_checks.check_labelled` has
  accepted for this model already, without checking them again: for a caller that
  scores the same split many times (the α sweep: every α, every split). A global array
  sharded over a data axis goes through `evaluate`.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: ``(N, ...)`` finite floating inputs, N ≥ 1.
    y: ``(N,)`` int32 labels in ``[0, K)``.
    batch_size: evaluation batch size.

  Returns:
    ``{"accuracy": float, "loss": float}``, as `evaluate`.
  """
  if shd.is_global(x):
    return evaluate(apply_fn, variables, x, y, batch_size)
  x = np.asarray(x)
  n = len(x)
  fn = hashable(apply_fn)
  sums = []
  for (xb, yb), real in padded_batches(x, y, batch_size=batch_size):
    mask = np.arange(len(xb)) < real
    sums.append(_eval_batch(fn, variables, xb, yb, mask))
  return _totals(jax.device_get(sums), n)


def _sharded_setup(apply_fn, variables, x, y, what):
  """(x, sharded int32 y or None, replicated variables) for a sharded ``x``."""
  mesh, axis = shd.data_axis_of(x)
  shd.check_divides(x.shape[0], mesh, axis, what)
  if y is None:
    check_inputs(x, what)
    output_width(apply_fn, variables, x)
    return x, None, shd.replicate(variables, mesh)
  x, y_host = check_labelled(apply_fn, variables, x, shd.to_host(y), what)
  y = y if shd.data_axis_of(y) == (mesh, axis) else shd.shard_batch(y_host, mesh, axis)
  return x, y.astype(jnp.int32), shd.replicate(variables, mesh)


def _sharded_evaluate(apply_fn, variables, x, y, batch_size):
  """`evaluate` of a global array sharded over a data axis: each device evaluates its own
  samples; only the two sums cross to the host."""
  x, y, variables = _sharded_setup(apply_fn, variables, x, y, "x/y")
  fn = hashable(apply_fn)
  sums = [
    _eval_batch(fn, variables, xb, yb, jnp.ones(len(yb), bool))
    for (xb, yb), _ in shd.sample_batches((x, y), batch_size)
  ]
  return _totals(jax.device_get(sums), x.shape[0])


def _totals(sums: list, n: int) -> dict[str, float]:
  """``{"accuracy", "loss"}`` from the batches' sums, warning when every output row looked
  like probabilities (`sap_jax.input_checks.warn_if_probabilities`)."""
  correct = sum(int(c) for c, _, _ in sums)
  loss = sum(float(s) for _, s, _ in sums)
  warn_if_probabilities(sum(int(p) for _, _, p in sums) == n)
  return {"accuracy": correct / n, "loss": loss / n}


def predict_logits(
  apply_fn: ApplyFn, variables: Variables, x: Any, batch_size: int = 1024
) -> np.ndarray:
  """Logits of ``apply_fn`` on ``x`` as a host ``(N, K)`` array.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: ``(N, ...)`` inputs, or a source (its labels are not read).
    batch_size: evaluation batch size (ragged last batch padded).

  Returns:
    ``np.ndarray`` of logits.
  """
  if is_source(x):
    from sap_jax import streaming

    return streaming.predict_logits(apply_fn, variables, x, batch_size=batch_size)
  if shd.is_global(x):
    x, _, variables = _sharded_setup(apply_fn, variables, x, None, "x")
    fn = hashable(apply_fn)
    out = None
    for (xb,), index in shd.sample_batches((x,), batch_size):
      logits = shd.to_host(_predict_batch(fn, variables, xb))
      out = np.empty((x.shape[0], *logits.shape[1:]), logits.dtype) if out is None else out
      out[index] = logits
    return out
  x, _ = check_xy(x, None, "x")
  output_width(apply_fn, variables, x)  # the forward returns logits, before any batch
  fn = hashable(apply_fn)
  outs = [
    (_predict_batch(fn, variables, xb), k) for (xb,), k in padded_batches(x, batch_size=batch_size)
  ]
  logits = np.concatenate([np.asarray(o)[:k] for o, k in outs])
  warn_if_probabilities(bool(looks_like_probabilities(logits).all()))
  return logits


def fit_fraction(apply_fn: ApplyFn, variables: Variables, x: Any, y_noisy: Any, mask: Any) -> float:
  """How much of the label noise the model has memorised.

  The accuracy, against their NOISY labels, on the corrupted samples
  (``mask`` true): 1.0 means every wrong label is fitted, as after the
  paper's 350 training epochs.

  Args:
    apply_fn: eval-mode forward.
    variables: the model variables.
    x: ``(N, ...)`` training inputs.
    y_noisy: ``(N,)`` training labels as trained on (with noise).
    mask: ``(N,)`` bool, true where the label was corrupted.

  Returns:
    The fraction of corrupted samples predicted as their noisy label.
  """
  x, y_noisy = check_xy(x, y_noisy)
  mask = np.asarray(mask)
  if mask.shape != (len(x),) or mask.dtype != np.bool_:
    raise ValueError(
      f"mask must be a boolean array of shape ({len(x)},), got shape {mask.shape} "
      f"dtype {mask.dtype}."
    )
  if not mask.any():
    raise ValueError(
      "mask selects no corrupted sample; fit_fraction is undefined without label noise."
    )
  return evaluate(apply_fn, variables, x[mask], y_noisy[mask])["accuracy"]
