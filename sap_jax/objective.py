"""SAP as a differentiable function: the validation loss of the corrected model.

The corrected model at α is a smooth function of α (and of the trusted statistics):
K̂_l = V_l (λ_l(α_l) ⊙ V_lᵀ K_l) per layer, λ(α) = α σ̃ / ((α − 1) σ̃ + 1). This module
holds the pieces that `sap_jax.tuning`, `sap_jax.sensitivity` and `sap_jax.influence`
differentiate:

* `corrected_variables`: `sap_jax.apply_alpha` without its float32 cast of α (the
  dtype follows the decomposition, so float64 gradients stay float64), traceable;
* `log_alpha_dict`: a per-layer α dict from a scalar or a dict;
* `mean_cross_entropy` / `split_loss_and_grad`: the (weighted) mean cross-entropy of a
  split, and its gradient accumulated over batches.

Everything is a pure function over pytrees.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sap_jax import projection as proj
from sap_jax.data.feeder import feed
from sap_jax.data.sources import is_source, no_separate_labels, source_length
from sap_jax.decomposition import Decomposition, corrected_kernels
from sap_jax.hashable import hashable
from sap_jax.kernels import with_kernels
from sap_jax.layer_keys import per_layer_alpha
from sap_jax.types import ApplyFn, Path, Variables


def corrected_variables(
  variables: Variables, decomposition: Decomposition, alpha: Any
) -> Variables:
  """The corrected variables at ``alpha`` (a scalar or a dict path → α), traceable.

  The same K̂ as `sap_jax.apply_alpha` (`sap_jax.sweep.corrected_kernels`: an eigh
  layer's V (λ(α) ⊙ Vᵀ K), a solve layer's Cholesky solve), with α kept in the dtype it
  comes in (``apply_alpha`` casts it to float32, which costs a float64 gradient its
  precision).
  """
  new = corrected_kernels(decomposition, alpha)
  return with_kernels(variables, new)


def alpha_dict(decomposition: Decomposition, alpha: Any) -> dict[Path, float]:
  """α as a dict path → float over the decomposed layers (a scalar is shared; a dict is
  keyed by path tuples or "/"-joined names, `sap_jax.layer_keys.per_layer_alpha`).

  Raises:
    KeyError: a dict α misses a decomposed layer.
    ValueError: an α is not finite and > 0, or a key names no decomposed layer.
  """
  alpha = per_layer_alpha(alpha, decomposition.paths)
  proj.check_alpha(alpha)
  if isinstance(alpha, Mapping):
    return {p: float(a) for p, a in alpha.items()}
  return {p: float(alpha) for p in decomposition.paths}


def param_dtype(decomposition: Decomposition) -> jnp.dtype:
  """The dtype α is differentiated in: that of the decomposition's spectra."""
  leaves = [b.spectrum for b in decomposition.bases.values()]
  leaves += [data.gram for data in decomposition.solves.values()]
  return jnp.result_type(*leaves, jnp.float32) if leaves else jnp.dtype(jnp.float32)


def log_alpha_of(decomposition: Decomposition, alpha: Any) -> dict[Path, jax.Array]:
  """path → log α_l as arrays in `param_dtype` (a scalar α is shared by every layer)."""
  dtype = param_dtype(decomposition)
  return {p: jnp.log(jnp.asarray(a, dtype)) for p, a in alpha_dict(decomposition, alpha).items()}


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy in the logits' dtype (float64 stays float64)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def corrected_loss_sum(
  apply_fn: ApplyFn,
  variables: Variables,
  decomposition: Decomposition,
  alpha: Any,
  x: jax.Array,
  y: jax.Array,
  weights: jax.Array,
) -> jax.Array:
  """Σᵢ weightsᵢ · CEᵢ of the model corrected at ``alpha`` (traceable)."""
  logits = apply_fn(corrected_variables(variables, decomposition, alpha), x)
  return jnp.sum(weights * cross_entropy(logits, y))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _value_and_grad_batch(fn, apply_fn, params, data, x, y, weights):
  return jax.value_and_grad(lambda p: fn(apply_fn, p, data, x, y, weights))(params)


def _source_loss_and_grad(fn, apply_fn, params, data, source, y, batch_size):
  no_separate_labels(y)
  n = source_length(source, "split")
  total, grad = 0.0, None
  for batch in feed(source, batch_size, what="split"):
    weights = jnp.asarray(batch.mask, jnp.float32)
    value, g = _value_and_grad_batch(
      fn, hashable(apply_fn), params, data, batch.x, batch.y, weights
    )
    total += float(value)
    grad = g if grad is None else jax.tree_util.tree_map(jnp.add, grad, g)
  return total / n, jax.tree_util.tree_map(lambda g: g / n, grad)


def batched_loss_and_grad(
  fn: Callable[..., jax.Array],
  apply_fn: ApplyFn,
  params: Any,
  data: Any,
  x: Any,
  y: Any,
  *,
  batch_size: int = 512,
) -> tuple[float, Any]:
  """Mean over a split of a per-batch loss sum, and its gradient w.r.t. ``params``.

  Args:
    fn: ``fn(apply_fn, params, data, x, y, weights) -> Σ weights · loss``
      (module-level, so its compilation is reused); ``weights`` masks the padding of
      the last batch.
    apply_fn: eval-mode forward (static).
    params: the pytree differentiated (e.g. a dict of per-layer log α).
    data: a pytree the loss reads but is not differentiated in (variables,
      decomposition).
    x, y: the split: arrays, or a labelled source (``y`` None) read batch by batch
      through `sap_jax.data.feeder.feed` (the padding masked by the same weights).
    batch_size: samples per compiled call (every batch is padded to it).

  Returns:
    ``(mean loss, gradient of the mean loss)``.
  """
  if is_source(x):
    return _source_loss_and_grad(fn, apply_fn, params, data, x, y, batch_size)
  x = np.asarray(x)
  y = np.asarray(y, np.int32)
  n = len(x)
  size = min(batch_size, n)
  total, grad = 0.0, None
  for start in range(0, n, size):
    xb, yb = x[start : start + size], y[start : start + size]
    real = len(xb)
    w = np.ones(size, np.float32)
    if real < size:
      pad = size - real
      xb = np.concatenate([xb, np.repeat(xb[:1], pad, axis=0)])
      yb = np.concatenate([yb, np.repeat(yb[:1], pad)])
      w[real:] = 0.0
    value, g = _value_and_grad_batch(
      fn, hashable(apply_fn), params, data, jnp.asarray(xb), jnp.asarray(yb), jnp.asarray(w)
    )
    total += float(value)
    grad = g if grad is None else jax.tree_util.tree_map(jnp.add, grad, g)
  return total / n, jax.tree_util.tree_map(lambda g: g / n, grad)
