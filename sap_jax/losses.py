"""The per-example cross-entropy: one definition for trusted selection, baselines,
training and evaluation."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from sap_jax.forward_checks import check_logits_output
from sap_jax.types import ApplyFn


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy of integer labels, per example, computed in float32.

  A label outside ``[0, K)`` gets a NaN loss, never another class's: a gather with a
  negative index would otherwise wrap (-1 scored as class K-1). Entry points refuse such
  labels before any work (`sap_jax.input_checks.check_labels`); this is the last line.

  Args:
    logits: (N, K) model outputs (any float dtype).
    labels: (N,) integer class indices.

  Returns:
    float32[N] losses.
  """
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  valid = (labels >= 0) & (labels < logits.shape[-1])
  return jnp.where(valid, losses, jnp.nan)


def model_cross_entropy(apply_fn: ApplyFn, variables: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  """`cross_entropy` of ``apply_fn(variables, x)`` against ``y`` (traceable).

  The forward must return ``(N, K)`` logits (`sap_jax.input_checks.check_logits_output`:
  a tuple or dict output is refused with how to wrap it).
  """
  return cross_entropy(check_logits_output(apply_fn(variables, x)), y)
