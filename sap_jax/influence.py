"""Trusted-sample influence: how each trusted sample's statistics move the validation loss.

Write a layer's trusted statistics with one weight per trusted sample,
C = Σᵢ wᵢ Σ_{rows r of sample i} r rᵀ. The score of sample i is the gradient of the
corrected model's mean validation cross-entropy L with respect to wᵢ at w = 1: a
positive score says that giving the sample less weight (dropping it: Δwᵢ = −1) lowers
L to first order; the samples scored highest are the ones the validation split "likes
least".

No gradient goes through an eigendecomposition (ill-conditioned at near-degenerate
eigenvalues). With C̃ = C / tr C and M = (α − 1) C̃ + I, SAP's projection is the
smooth, eigh-free P(α) = α C̃ M⁻¹ = α/(α − 1) (I − M⁻¹), so dP = α M⁻¹ dC̃ M⁻¹ and,
with S = sym(∂L/∂P) = sym((∂L/∂K̂) Kᵀ) (K̂ = P K),

    ∂L/∂C̃ = G̃ = α M⁻¹ S M⁻¹,       ∂L/∂C = (G̃ − tr(G̃ C̃) I) / tr C.

In the eigenbasis computed once (C̃ = V diag(σ̃) Vᵀ, D = (α − 1) σ̃ + 1) this is
G̃ = α V (Vᵀ S V ⊘ D Dᵀ) Vᵀ: one gradient of L w.r.t. the corrected kernels, then per
layer a few d × d products. Then

    ∂L/∂wᵢ = Σ_l Σ_{rows r of i in layer l} (rᵀ G̃_l r − τ_l ‖r‖²) / tr C_l,
    τ_l = tr(G̃_l C̃_l),

one pass over the trusted samples (their rows are recomputed per sample and reduced
to two numbers per layer; tr C_l is the sum of their squared norms).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sap_jax.data.sources import is_source
from sap_jax.decomposition import Decomposition
from sap_jax.hashable import hashable
from sap_jax.input_checks import as_array, check_inputs
from sap_jax.kernels import flat_kernel, kernels_of, with_kernels
from sap_jax.layers import path_name
from sap_jax.objective import (
  alpha_dict,
  batched_loss_and_grad,
  corrected_variables,
  cross_entropy,
  param_dtype,
)
from sap_jax.stats import intercepted_rows
from sap_jax.sweep import check_split
from sap_jax.types import ApplyFn, Path, Variables


class Influence(NamedTuple):
  """Influence of every trusted sample on the validation loss.

  Attributes:
    scores: float[n_trusted], ∂L/∂wᵢ at w = 1 (higher: dropping it lowers L more).
    per_layer: path → float[n_trusted], each layer's share of the score.
    loss: L, the corrected model's mean validation cross-entropy.
    gram_grads: path → ∂L/∂C̃ (the gradient w.r.t. the trace-normalised Gram matrix,
      (G, d, d)).
  """

  scores: np.ndarray
  per_layer: dict[Path, np.ndarray]
  loss: float
  gram_grads: dict[Path, jax.Array]


def _loss_of_kernels(apply_fn, kernels, variables, x, y, weights):
  logits = apply_fn(with_kernels(variables, kernels), x)
  return jnp.sum(weights * cross_entropy(logits, y))


def check_full_eigh(decomposition: Decomposition) -> None:
  """The closed form needs every layer's full eigenbasis (σ̃, V with V d×d)."""
  thin = [
    path_name(p)
    for p, layout in decomposition.layouts
    if p not in decomposition.bases
    or decomposition.bases[p].vectors.size != layout.groups * layout.dim**2
  ]
  if thin:
    raise ValueError(
      f"trusted_influence needs a full eigendecomposition of every layer; layers {thin} were "
      "decomposed by the solve path or a thin SVD. Pass decompose(variables, stats, "
      "method='eigh') of Gram statistics (activation_stats(..., basis='gram'))."
    )


SAME_SAMPLES_FIX = (
  "pass exactly the samples the statistics were taken on (in any order), with every row "
  "counted (activation_stats without rows_per_batch)"
)


def check_sample_count(
  apply_fn: ApplyFn, variables: Variables, decomposition: Decomposition, x: np.ndarray
) -> dict[Path, int]:
  """Refuses ``x`` when its number of rows per layer differs from the count the
  decomposition's statistics hold (`Decomposition.samples`), before any work: rows per
  sample come from a shape-only trace of one sample. Returns path → rows per sample."""
  calls: list[Path] = []

  def rows_of(v, xi):
    out = []
    for path, rows, layout in intercepted_rows(apply_fn, v, xi):
      calls.append(path)
      out.append(rows.reshape(layout.groups, -1, layout.dim))
    return out

  shapes = jax.eval_shape(rows_of, variables, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype))
  per: dict[Path, int] = {}
  for path, shape in zip(calls, shapes, strict=True):
    per[path] = per.get(path, 0) + int(shape.shape[1])
  n = len(x)
  for path, totals in decomposition.samples.items():
    if path not in per:
      continue
    counted = float(totals[0])
    if abs(counted - n * per[path]) > 0.5:
      raise ValueError(
        f"trusted_influence: the {n} samples of x_trusted give layer {path_name(path)!r} "
        f"{n * per[path]} rows, but the decomposition's statistics counted {counted:g} "
        f"({counted / per[path]:g} samples); {SAME_SAMPLES_FIX}."
      )
  return per


def check_sample_trace(
  decomposition: Decomposition, path: Path, total: float, rows: dict[Path, int]
) -> None:
  """Refuses samples whose rows' squared norms (Σ‖r‖² = tr C) differ from the
  decomposition's statistics: the same count, other samples."""
  if path not in decomposition.samples or path not in rows:
    return
  expected = float(decomposition.samples[path][1])
  if abs(total - expected) > 1e-3 * max(abs(expected), np.finfo(np.float32).tiny):
    raise ValueError(
      f"trusted_influence: x_trusted are not the samples the decomposition's statistics were "
      f"taken on (layer {path_name(path)!r}: their rows' squared norms sum to {total:.6g}, "
      f"{expected:.6g} in the statistics); {SAME_SAMPLES_FIX}."
    )


def normalised_gram_gradients(
  decomposition: Decomposition,
  kernel_grads: dict[Path, jax.Array],
  alpha: dict[Path, float],
) -> tuple[dict[Path, jax.Array], dict[Path, jax.Array]]:
  """G̃_l = ∂L/∂C̃_l and τ_l = tr(G̃_l C̃_l) from ∂L/∂K̂_l (closed form, no eigh gradient).

  Args:
    decomposition: the bases (σ̃, V) and original kernels K.
    kernel_grads: path → ∂L/∂K̂ in the kernel's own shape.
    alpha: path → α_l.

  Returns:
    ``(path → G̃ (G, d, d), path → τ (G,))``.
  """
  hp = jax.lax.Precision.HIGHEST
  grads, taus = {}, {}
  for path, layout in decomposition.layouts:
    basis = decomposition.bases[path]
    g, d = layout.groups, layout.dim
    kernel = decomposition.kernels[path]
    gk = flat_kernel(kernel_grads[path], layout)
    a = flat_kernel(kernel, layout)
    s = jnp.matmul(gk, jnp.swapaxes(a, -1, -2), precision=hp)
    s = 0.5 * (s + jnp.swapaxes(s, -1, -2))
    v = basis.vectors.reshape(g, d, d).astype(s.dtype)
    sigma = basis.spectrum.reshape(g, d).astype(s.dtype)
    dd = (alpha[path] - 1.0) * sigma + 1.0
    s_hat = jnp.einsum("gij,gjk,gkl->gil", jnp.swapaxes(v, -1, -2), s, v, precision=hp)
    a_hat = alpha[path] * s_hat / (dd[:, :, None] * dd[:, None, :])
    grads[path] = jnp.einsum("gij,gjk,glk->gil", v, a_hat, v, precision=hp)
    taus[path] = jnp.sum(sigma * jnp.diagonal(a_hat, axis1=-2, axis2=-1), axis=-1)
  return grads, taus


@functools.partial(jax.jit, static_argnums=0)
def _sample_forms(apply_fn, variables, mats, x):
  """Per sample and layer: Σ_r rᵀ M r and Σ_r ‖r‖², per group, (n, G) each."""

  def one(xi):
    quad = {p: jnp.zeros(m.shape[0], m.dtype) for p, m in mats.items()}
    norm = {p: jnp.zeros(m.shape[0], m.dtype) for p, m in mats.items()}
    for path, rows, layout in intercepted_rows(apply_fn, variables, xi[None]):
      if path not in mats:
        continue
      m = mats[path]
      r = rows.reshape(layout.groups, -1, layout.dim).astype(m.dtype)
      hp = jax.lax.Precision.HIGHEST
      quad[path] = quad[path] + jnp.einsum("gnd,gde,gne->g", r, m, r, precision=hp)
      norm[path] = norm[path] + jnp.sum(r * r, axis=(1, 2))
    return quad, norm

  return jax.vmap(one)(x)


def trusted_influence(
  apply_fn: ApplyFn,
  variables: Variables,
  decomposition: Decomposition,
  x_trusted: Any,
  x_val: Any,
  y_val: Any,
  alpha: Any,
  *,
  batch_size: int = 256,
) -> Influence:
  """∂(mean validation cross-entropy)/∂wᵢ for every trusted sample i, at w = 1.

  Args:
    apply_fn: eval-mode forward.
    variables: the model the statistics were taken on (the uncorrected one).
    decomposition: `sap_jax.decompose` of the statistics of exactly ``x_trusted``
      with every row counted (no ``rows_per_batch`` budget).
    x_trusted: the trusted inputs, in any order (scores come back in that order).
    x_val, y_val: the split the loss is taken on (the noisy validation split).
    alpha: the α of the corrected model (scalar or dict path → α).
    batch_size: samples per compiled call.

  Returns:
    An `Influence`.
  """
  if not is_source(x_val):  # a source's records are checked as they stream
    x_val, y_val = check_split(x_val, y_val, "val", apply_fn, variables)
  x_trusted = as_array(x_trusted, "x_trusted")
  if len(x_trusted) == 0:
    raise ValueError("x_trusted is empty; pass the inputs the statistics were taken on.")
  x_trusted = np.asarray(check_inputs(x_trusted, "x_trusted"))
  check_full_eigh(decomposition)
  rows = check_sample_count(apply_fn, variables, decomposition, x_trusted)
  alphas = alpha_dict(decomposition, alpha)
  dtype = param_dtype(decomposition)
  corrected = corrected_variables(
    variables, decomposition, {p: jnp.asarray(a, dtype) for p, a in alphas.items()}
  )
  loss, kernel_grads = batched_loss_and_grad(
    _loss_of_kernels,
    apply_fn,
    kernels_of(corrected, decomposition.paths),
    variables,
    x_val,
    y_val,
    batch_size=max(batch_size, 512),
  )
  grads, taus = normalised_gram_gradients(decomposition, kernel_grads, alphas)
  fn = hashable(apply_fn)
  quads, norms = [], []
  for start in range(0, len(x_trusted), batch_size):
    q, nrm = _sample_forms(fn, variables, grads, jnp.asarray(x_trusted[start : start + batch_size]))
    quads.append(q)
    norms.append(nrm)
  per_layer = {}
  for path in decomposition.paths:
    q = np.concatenate([np.asarray(b[path], np.float64) for b in quads])
    nrm = np.concatenate([np.asarray(b[path], np.float64) for b in norms])
    trace = nrm.sum(axis=0)
    check_sample_trace(decomposition, path, float(trace.sum()), rows)
    tau = np.asarray(taus[path], np.float64)
    per_layer[path] = np.sum((q - tau * nrm) / np.maximum(trace, np.finfo(np.float64).tiny), -1)
  scores = np.sum(np.stack(list(per_layer.values())), axis=0)
  return Influence(scores, per_layer, float(loss), grads)
