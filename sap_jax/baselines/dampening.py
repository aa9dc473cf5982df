"""SSD: Selective Synaptic Dampening (Foster, Schoepf & Brintrup, AAAI 2024).

Published as "Fast Machine Unlearning Without Retraining Through Selective
Synaptic Dampening" (arXiv 2308.07707; code github.com/if-loops/
selective-synaptic-dampening). SSD needs no training:

1. Importances: the diagonal of the Fisher information of the parameters on the
   full training data, ``[I_D]``, and on the forget set, ``[I_Df]``.
2. Selection: parameter entries with ``[I_Df]_i > α·[I_D]_i`` are specialised to
   the forget set.
3. Dampening: those entries are multiplied by
   ``β_i = min(λ·[I_D]_i / [I_Df]_i, 1)``; every other entry is left untouched.

Defaults α = 10, λ = 1 (the SSD paper's values, also the SAP paper's). In the
label-noise setting of the SAP paper the forget set is the ``n_forget``
highest-loss training samples (paper: 1000), i.e. the ones most likely
mislabelled.

The Fisher diagonal here is the *empirical* Fisher with the given (noisy)
labels, as in the SSD code (cross-entropy against the dataset labels, not labels
sampled from the model): by default the mean over samples of the squared
per-sample gradient, ``[I]_i = (1/n) Σ_s (∂ℓ(x_s, y_s)/∂θ_i)²``. The SSD code
instead averages squared *mini-batch mean* gradients over batches; that
estimator is ``per_example=False`` (it depends on the batch size). Gradients are
taken in eval mode (BatchNorm running statistics, no dropout). Every parameter
is eligible (Dense/Conv kernels and biases, BatchNorm scale and bias) as in the
SSD code, which dampens all ``named_parameters``; ``batch_stats`` are not
parameters and are never changed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sap_jax.baselines import base
from sap_jax.batching import batched, padded_batches
from sap_jax.data.feeder import feed
from sap_jax.data.sources import Subset, is_source, source_length
from sap_jax.losses import model_cross_entropy
from sap_jax.types import ApplyFn, Variables

__all__ = [
  "DEFAULT_GRID",
  "fisher_diagonal",
  "ssd",
  "ssd_dampen",
  "ssd_dampen_params",
  "ssd_fraction_selected",
]

DEFAULT_GRID: Mapping[str, Sequence[Any]] = {
  "alpha": (10.0, 5.0, 3.0, 2.0, 1.0),
  "lambda_": (1.0, 0.1),
}
"""Default search: α × λ = 5 × 2 = 10 settings (one Fisher pass serves all).

Ordered gentlest first (the SSD default α = 10, λ = 1 leads), so ties on the
validation split go to the gentler setting. With ``[I_D]`` on all N samples the
per-sample Fisher obeys ``[I_Df] <= (N / n_forget)·[I_D]``, so no α >= N/n_forget
selects anything: on CIFAR (N = 45000, n_forget = 1000) α = 10 is meaningful, on
small data only α close to 1 is.
"""


def _per_example_loss(apply_fn, variables, params, x, y):
  return model_cross_entropy(apply_fn, {**variables, "params": params}, x, y)


@functools.partial(jax.jit, static_argnums=0)
def _sq_grad_sum_per_example(apply_fn, variables, x, y, mask):
  """Σ_s mask_s · (∂ℓ_s/∂θ)² over a batch (per-sample gradients, vmapped)."""

  def one(xs, ys):
    return jax.grad(lambda p: _per_example_loss(apply_fn, variables, p, xs[None], ys[None])[0])(
      variables["params"]
    )

  grads = jax.vmap(one)(x, y)
  w = mask.astype(jnp.float32)
  return jax.tree_util.tree_map(
    lambda g: jnp.tensordot(w, jnp.square(g.astype(jnp.float32)), axes=1), grads
  )


@functools.partial(jax.jit, static_argnums=0)
def _sq_batch_grad(apply_fn, variables, x, y):
  """(∂ mean_s ℓ_s / ∂θ)², the squared mini-batch gradient."""
  grads = jax.grad(lambda p: jnp.mean(_per_example_loss(apply_fn, variables, p, x, y)))(
    variables["params"]
  )
  return jax.tree_util.tree_map(lambda g: jnp.square(g.astype(jnp.float32)), grads)


def fisher_diagonal(
  apply_fn: ApplyFn,
  variables: Variables,
  x: Any,
  y: Any,
  *,
  batch_size: int = 32,
  per_example: bool = True,
) -> Any:
  """Diagonal empirical Fisher of the cross-entropy on ``(x, y)``.

  ``per_example=True``: ``[I]_i = (1/n) Σ_s (∂ℓ(x_s, y_s)/∂θ_i)²`` (batches of
  per-sample gradients; the ragged last batch is padded and masked).
  ``per_example=False``: the SSD code's estimator, the mean over the
  ``ceil(n / batch_size)`` mini-batches of ``(∂ mean_batch ℓ / ∂θ_i)²`` (the last
  batch may be smaller, as a PyTorch DataLoader's).

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: ``(n, ...)`` inputs, or a labelled source (a ``Subset`` view): its batches come
      from the feeder (`sap_jax.data.feeder.feed`: the same batches, the last one padded
      and masked, or cut to its real samples for ``per_example=False``), so only one
      batch is held and the sums of squared gradients accumulate over them.
    y: ``(n,)`` labels (the noisy ones: empirical Fisher); with a source, None takes
      its records' labels.
    batch_size: samples per gradient call (per-sample gradients of a batch are
      held in memory at once).
    per_example: which estimator (see above).

  Returns:
    float32 tree shaped like ``variables["params"]``.
  """
  if is_source(x):
    return _source_fisher(apply_fn, variables, x, y, batch_size, per_example)
  x, y = np.asarray(x), np.asarray(y, np.int32)
  n = len(x)
  if n == 0 or len(y) != n:
    raise ValueError(
      f"fisher_diagonal needs matching non-empty x/y, got {n} inputs and {len(y)} labels."
    )
  bs = max(1, min(batch_size, n))
  if per_example:
    parts = (
      _sq_grad_sum_per_example(apply_fn, variables, xb, yb, np.arange(bs) < real)
      for (xb, yb), real in padded_batches(x, y, batch_size=bs)
    )
    count = n
  else:
    parts = (
      _sq_batch_grad(apply_fn, variables, xb, yb) for xb, yb in zip(batched(x, bs), batched(y, bs))
    )
    count = -(-n // bs)
  total = next(parts)
  for part in parts:  # one batch's squared gradients in memory at a time
    total = jax.tree_util.tree_map(jnp.add, total, part)
  return jax.tree_util.tree_map(lambda t: t / count, total)


def _source_fisher(apply_fn, variables, source, y, batch_size, per_example):
  """`fisher_diagonal` of a source: the sums accumulated over the feeder's batches."""
  if y is not None:
    source = Subset(source, labels=np.asarray(y, np.int32))
  n = source_length(source, "fisher_diagonal source")
  bs = max(1, min(batch_size, n))
  total = None
  for batch in feed(source, bs, what="fisher_diagonal source"):
    if per_example:
      part = _sq_grad_sum_per_example(apply_fn, variables, batch.x, batch.y, batch.mask)
    else:  # the SSD code's short last mini-batch: its real samples only
      x, y_b = batch.x, batch.y
      if batch.real < x.shape[0]:
        x, y_b = x[: batch.real], y_b[: batch.real]
      part = _sq_batch_grad(apply_fn, variables, x, y_b)
    total = part if total is None else jax.tree_util.tree_map(jnp.add, total, part)
  count = n if per_example else -(-n // bs)
  return jax.tree_util.tree_map(lambda t: t / count, total)


@jax.jit
def ssd_dampen_params(
  params: Any, importance_d: Any, importance_f: Any, alpha: Any, lambda_: Any
) -> Any:
  """SSD on a parameter tree.

  ``θ_i ← θ_i · min(λ·[I_D]_i / [I_Df]_i, 1)`` where ``[I_Df]_i > α·[I_D]_i``,
  ``θ_i`` unchanged elsewhere.

  Args:
    params: the parameters.
    importance_d: ``[I_D]``, same structure.
    importance_f: ``[I_Df]``, same structure.
    alpha: selection threshold α.
    lambda_: dampening constant λ.

  Returns:
    The dampened parameters (dtypes kept).
  """

  def damp(p, i_d, i_f):
    selected = i_f > alpha * i_d
    safe = jnp.where(selected, i_f, 1.0)
    beta = jnp.minimum(lambda_ * i_d / safe, 1.0)
    return jnp.where(selected, p * beta, p).astype(p.dtype)

  return jax.tree_util.tree_map(damp, params, importance_d, importance_f)


JITTED = {
  "ssd.sq_grad_sum_per_example": _sq_grad_sum_per_example,
  "ssd.sq_batch_grad": _sq_batch_grad,
  "ssd.dampen_params": ssd_dampen_params,
}
"""The module's compiled programs (see `sap_jax.compile_cache`)."""


def ssd_dampen(
  variables: Variables,
  importance_d: Any,
  importance_f: Any,
  alpha: float = 10.0,
  lambda_: float = 1.0,
) -> Variables:
  """SSD on model variables: ``params`` dampened, other collections as given.

  See :func:`ssd_dampen_params`.
  """
  out = dict(variables)
  out["params"] = ssd_dampen_params(
    variables["params"], importance_d, importance_f, jnp.float32(alpha), jnp.float32(lambda_)
  )
  return out


def ssd(
  n_forget: int = 1000,
  *,
  alpha: float = 10.0,
  lambda_: float = 1.0,
  n_retain: int | None = None,
  grid: Mapping[str, Sequence[Any]] | None = DEFAULT_GRID,
  per_example: bool = True,
  batch_size: int = 32,
  progress: bool = False,
  keep_original: bool = True,
) -> base.Method:
  """Selective Synaptic Dampening with the highest-loss samples as forget set.

  Args:
    n_forget: forget-set size (paper: 1000), clipped by
      :func:`~sap_jax.baselines.base.clip_budget`.
    alpha: selection threshold α when ``grid`` does not vary it (SSD: 10).
    lambda_: dampening constant λ when ``grid`` does not vary it (SSD: 1).
    n_retain: the data for ``[I_D]``: None = the whole training set (SSD's
      definition); an int = the ``n_retain`` lowest-loss samples (the SAP paper
      lists SSD with 5000 retain samples).
    grid: values of ``alpha`` / ``lambda_`` to search on noisy validation
      (default 10 settings); None evaluates only (alpha, lambda_).
    per_example: Fisher estimator (see :func:`fisher_diagonal`).
    batch_size: samples per gradient call.
    progress: show a bar over settings.
    keep_original: return the unchanged model when no setting beats it on
      the noisy validation split (the rule SAP's α sweep follows).

  Returns:
    The method ``"ssd"``.
  """
  hparams = dict(
    n_forget=n_forget,
    alpha=alpha,
    lambda_=lambda_,
    n_retain=n_retain,
    grid=grid,
    per_example=per_example,
    batch_size=batch_size,
  )
  defaults = {"alpha": alpha, "lambda_": lambda_}
  base.expand_grid(defaults, grid)

  def body(task: base.CorrectionTask) -> base.Outcome:
    losses = base.train_losses(task)
    n_f = base.clip_budget(n_forget, task.n_train)
    forget = base.highest_loss(losses, n_f)
    if n_retain is None:
      ref = np.arange(task.n_train)
    else:
      ref = base.lowest_loss(losses, base.clip_budget(n_retain, task.n_train))
    fisher = functools.partial(
      fisher_diagonal, task.apply_fn, task.variables, batch_size=batch_size, per_example=per_example
    )
    imp_d = fisher(
      *(task.train_data() if n_retain is None and task.streamed else task.train_subset(ref))
    )
    imp_f = fisher(*task.train_subset(forget))
    settings = base.expand_grid(defaults, grid)

    def fit(alpha, lambda_):
      return ssd_dampen(task.variables, imp_d, imp_f, alpha, lambda_)

    best, setting, records = base.search(
      task, settings, fit, progress=progress, keep_original=keep_original, desc="ssd"
    )
    for r in records:
      sel = ssd_fraction_selected(imp_d, imp_f, r["alpha"])
      r["fraction_selected"] = sel
    chosen = {**setting, "n_forget": n_f, "n_forget_requested": n_forget, "n_reference": len(ref)}
    details = {
      "settings": records,
      "forget_indices": forget,
      "budget_rule": base.BUDGET_RULE,
      "vanilla_val_accuracy": base.val_accuracy(task, task.variables),
    }
    return base.Outcome(best, len(settings), chosen, details)

  return base.make_method("ssd", body, hparams)


def ssd_fraction_selected(importance_d: Any, importance_f: Any, alpha: float) -> float:
  """Fraction of parameter entries with ``[I_Df] > α·[I_D]``."""
  leaves_d = jax.tree_util.tree_leaves(importance_d)
  leaves_f = jax.tree_util.tree_leaves(importance_f)
  hit = sum(int(jnp.sum(f > alpha * d)) for d, f in zip(leaves_d, leaves_f))
  size = sum(int(d.size) for d in leaves_d)
  return hit / max(size, 1)
