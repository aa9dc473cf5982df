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
from jax.sharding import Mesh

from sap_jax import sharding as shd
from sap_jax.data.array_feeder import as_input, feed_arrays, labels_on_host, mesh_of
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


def check_finite_inputs(x: Any, what: str) -> np.ndarray | jax.Array:
  """``x`` as the feeder reads it (`sap_jax.data.array_feeder.as_input`) after
  `sap_jax.input_checks.check_inputs`: refused when None, empty, of an integer dtype
  (``uint8`` images: the message says how to convert) or holding NaN/Inf (``what`` names
  it in the error). The check SAP's entry points make once on their inputs. A global
  array sharded over a data axis stays on its devices (`sap_jax.sharding`)."""
  return as_input(check_inputs(x, what))


def check_xy(x: Any, y: Any, what: str = "x/y") -> tuple[np.ndarray, np.ndarray | None]:
  """``(x, y)`` after the checks that need no model: ``x`` where the feeder reads it (a
  global array stays on its devices), ``y`` a host array.

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
  return x, None if y is None else check_labels(labels_on_host(y), len(x), None, what)


def evaluate(
  apply_fn: ApplyFn,
  variables: Variables,
  x: Any,
  y: Any = None,
  batch_size: int = 1024,
  *,
  mesh: Mesh | None = None,
) -> dict[str, float]:
  """Accuracy and mean cross-entropy of ``apply_fn`` on ``(x, y)``.

  Batches of ``min(batch_size, N)`` samples from the feeder
  (`sap_jax.data.array_feeder.feed_arrays`); the ragged last batch is padded and masked, so one
  compilation serves every batch.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: ``(N, ...)`` inputs: a host array, a global array sharded over a mesh's data
      axis (each device evaluates its own share of every batch; only the sums cross to
      the host), or a labelled source (`sap_jax.data.sources`; ``y`` None), streamed in
      one pass (`sap_jax.streaming.evaluate`).
    y: ``(N,)`` integer labels (host, or sharded like ``x``); None for a source.
    batch_size: evaluation batch size (sharded ``x``: over all devices together).
    mesh: the devices that evaluate host arrays or a source (each process reads its own
      rows of every batch; the last batch padded and masked, so N need not divide the
      devices); default one local device. A global array is read on its own mesh.

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
    return streaming.evaluate(apply_fn, variables, x, batch_size=batch_size, mesh=mesh)
  x, y = check_labelled(apply_fn, variables, x, labels_on_host(y), "x/y")
  return evaluate_checked(apply_fn, variables, x, y, batch_size, mesh=mesh)


def evaluate_checked(
  apply_fn: ApplyFn,
  variables: Variables,
  x: Any,
  y: Any,
  batch_size: int = 1024,
  *,
  indices: Any = None,
  mesh: Mesh | None = None,
) -> dict[str, float]:
  """`evaluate` of inputs and labels that `sap_jax.input_checks.check_labelled` has
  accepted for this model already, without checking them again: for a caller that
  scores the same split many times (the α sweep: every α, every split).

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: ``(N, ...)`` finite floating inputs, N ≥ 1 (host, or a global array).
    y: ``(N,)`` int32 labels in ``[0, K)`` (host, or sharded like ``x``).
    batch_size: evaluation batch size.
    indices: evaluate only these samples (default all).
    mesh: as `evaluate`.

  Returns:
    ``{"accuracy": float, "loss": float}``, as `evaluate`.
  """
  x = as_input(x)
  mesh = mesh_of(x, mesh)
  variables = shd.replicate(variables, mesh)
  fn = hashable(apply_fn)
  batches = feed_arrays(x, y, batch_size, mesh=mesh, indices=indices, what="x/y")
  sums = [_eval_batch(fn, variables, b.x, b.y, b.mask) for b in batches]
  return _totals(jax.device_get(sums), x.shape[0] if indices is None else len(indices))


def _totals(sums: list, n: int) -> dict[str, float]:
  """``{"accuracy", "loss"}`` from the batches' sums, warning when every output row looked
  like probabilities (`sap_jax.input_checks.warn_if_probabilities`)."""
  correct = sum(int(c) for c, _, _ in sums)
  loss = sum(float(s) for _, s, _ in sums)
  warn_if_probabilities(sum(int(p) for _, _, p in sums) == n)
  return {"accuracy": correct / n, "loss": loss / n}


def predict_logits(
  apply_fn: ApplyFn,
  variables: Variables,
  x: Any,
  batch_size: int = 1024,
  *,
  mesh: Mesh | None = None,
) -> np.ndarray:
  """Logits of ``apply_fn`` on ``x`` as a host ``(N, K)`` array.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: ``(N, ...)`` inputs (a host array, or a global array sharded over a mesh's data
      axis: each device runs its share of every batch), or a source (its labels are not
      read).
    batch_size: evaluation batch size (ragged last batch padded).
    mesh: as `evaluate`.

  Returns:
    ``np.ndarray`` of logits.
  """
  if is_source(x):
    from sap_jax import streaming

    return streaming.predict_logits(apply_fn, variables, x, batch_size=batch_size, mesh=mesh)
  x, _ = check_xy(x, None, "x")
  output_width(apply_fn, variables, x)  # the forward returns logits, before any batch
  mesh = mesh_of(x, mesh)
  variables = shd.replicate(variables, mesh)
  fn = hashable(apply_fn)
  outs = [
    (_predict_batch(fn, variables, b.x), b.real)
    for b in feed_arrays(x, None, batch_size, mesh=mesh)
  ]
  logits = np.concatenate([shd.to_host(o)[:k] for o, k in outs])
  warn_if_probabilities(bool(looks_like_probabilities(logits).all()))
  return logits


def fit_fraction(
  apply_fn: ApplyFn,
  variables: Variables,
  x: Any,
  y_noisy: Any,
  mask: Any,
  *,
  mesh: Mesh | None = None,
) -> float:
  """How much of the label noise the model has memorised.

  The accuracy, against their NOISY labels, on the corrupted samples
  (``mask`` true): 1.0 means every wrong label is fitted, as after the
  paper's 350 training epochs.

  Args:
    apply_fn: eval-mode forward.
    variables: the model variables.
    x: ``(N, ...)`` training inputs (host, or a global array sharded over a mesh's data
      axis: the corrupted samples are gathered on its devices).
    y_noisy: ``(N,)`` training labels as trained on (with noise; host or sharded).
    mask: ``(N,)`` bool, true where the label was corrupted.
    mesh: as `evaluate`.

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
  index = np.flatnonzero(mask)
  k = output_width(apply_fn, variables, x)
  check_labels(y_noisy[index], len(index), k, "x/y")  # as `evaluate` of the corrupted samples
  return evaluate_checked(apply_fn, variables, x, y_noisy, indices=index, mesh=mesh)["accuracy"]
