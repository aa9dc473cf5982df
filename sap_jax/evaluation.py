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

from sap_jax.batching import padded_batches
from sap_jax.hashable import hashable
from sap_jax.losses import cross_entropy
from sap_jax.types import ApplyFn, Variables


@functools.partial(jax.jit, static_argnums=0)
def _eval_batch(apply_fn, variables, x, y, mask):
  logits = apply_fn(variables, x)
  losses = cross_entropy(logits, y)
  correct = (jnp.argmax(logits, axis=-1) == y) & mask
  return jnp.sum(correct), jnp.sum(jnp.where(mask, losses, 0.0))


@functools.partial(jax.jit, static_argnums=0)
def _predict_batch(apply_fn, variables, x):
  return apply_fn(variables, x)


JITTED = {"evaluation.eval_batch": _eval_batch, "evaluation.predict_batch": _predict_batch}
"""The module-level compiled programs (see `sap_jax.compile_cache`)."""


def check_finite_inputs(x: Any, what: str) -> np.ndarray:
  """``x`` as a host array, refused when empty or holding NaN/Inf (``what`` names it in
  the error). The check SAP's entry points make once on their inputs."""
  if x is None or len(x) == 0:
    raise ValueError(f"{what} is empty: SAP needs at least one input sample.")
  x = np.asarray(x)
  if not np.all(np.isfinite(np.asarray(x, np.float32))):
    raise ValueError(f"{what} contains NaN or Inf; clean the inputs first.")
  return x


def check_xy(x: Any, y: Any, what: str = "x/y") -> tuple[np.ndarray, np.ndarray | None]:
  """``(x, y)`` as host arrays, after checking one integer label per input.

  Args:
    x: ``(N, ...)`` inputs, N ≥ 1.
    y: ``(N,)`` integer labels, or None (inputs only).
    what: the names used in error messages.

  Raises:
    ValueError: empty inputs, non-integer or non-1-D labels, mismatched lengths.
  """
  x = np.asarray(x)
  if y is not None:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
      raise ValueError(
        f"{what}: labels must be a 1-D integer array, got shape {y.shape} dtype "
        f"{y.dtype}; pass class indices."
      )
    if len(x) != len(y):
      raise ValueError(f"{what}: {len(x)} inputs but {len(y)} labels; pass one label per input.")
  if len(x) == 0:
    raise ValueError(f"{what}: no samples; pass at least one.")
  return x, y


def evaluate(
  apply_fn: ApplyFn, variables: Variables, x: Any, y: Any, batch_size: int = 1024
) -> dict[str, float]:
  """Accuracy and mean cross-entropy of ``apply_fn`` on ``(x, y)``.

  Batches of ``min(batch_size, N)`` samples; the ragged last batch is padded
  (`sap_jax.batching.padded_batches`) and masked, so one compilation serves every batch.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: ``(N, ...)`` inputs.
    y: ``(N,)`` integer labels.
    batch_size: evaluation batch size.

  Returns:
    ``{"accuracy": float, "loss": float}``.
  """
  x, y = check_xy(x, y)
  n = len(x)
  fn = hashable(apply_fn)
  sums = []
  for (xb, yb), real in padded_batches(x, y, batch_size=batch_size):
    mask = np.arange(len(xb)) < real
    sums.append(_eval_batch(fn, variables, xb, yb, mask))
  sums = jax.device_get(sums)
  correct = sum(int(c) for c, _ in sums)
  loss = sum(float(s) for _, s in sums)
  return {"accuracy": correct / n, "loss": loss / n}


def predict_logits(
  apply_fn: ApplyFn, variables: Variables, x: Any, batch_size: int = 1024
) -> np.ndarray:
  """Logits of ``apply_fn`` on ``x`` as a host ``(N, K)`` array.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: ``(N, ...)`` inputs.
    batch_size: evaluation batch size (ragged last batch padded).

  Returns:
    ``np.ndarray`` of logits.
  """
  x, _ = check_xy(x, None, "x")
  fn = hashable(apply_fn)
  outs = [
    (_predict_batch(fn, variables, xb), k) for (xb,), k in padded_batches(x, batch_size=batch_size)
  ]
  return np.concatenate([np.asarray(o)[:k] for o, k in outs])


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
