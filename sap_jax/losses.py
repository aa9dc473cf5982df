"""The per-example cross-entropy: one definition for trusted selection, baselines,
training and evaluation."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from sap_jax.types import ApplyFn


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy of integer labels, per example, computed in float32.

  Args:
    logits: (N, K) model outputs (any float dtype).
    labels: (N,) integer class indices.

  Returns:
    float32[N] losses.
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def model_cross_entropy(apply_fn: ApplyFn, variables: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  """`cross_entropy` of ``apply_fn(variables, x)`` against ``y`` (traceable)."""
  return cross_entropy(apply_fn(variables, x), y)
