"""Scaled activation projections and the parameter update that applies them.

For one layer with input Gram matrix C = RᵀR = V Σ² Vᵀ (V: right singular vectors of
the row matrix R, the "U" of the paper's column convention):

    σ̃_i = σ_i² / Σ_j σ_j²                      (normalised spectrum)
    λ_i = α σ̃_i / ((α − 1) σ̃_i + 1)           (importance, α > 0)
    P   = V diag(λ) Vᵀ                          (scaled projection)

λ = σ̃ at α = 1 (so P = C / tr C), λ → 1 on every non-zero direction as α → ∞, and
λ = 0 on directions the trusted inputs never use. A layer y = x K + b whose inputs
are replaced by x P computes x P K + b, so the corrected kernel is K̂ = P K (P is
symmetric). For a conv the kernel is flattened in the patch feature order
(C_in, k_1, …, k_n) first; a grouped conv applies group g's projection to the
output channels of group g.

Everything here is a pure function of arrays: it jits, differentiates in α and
vmaps over α.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sap_jax.kernels import (
  check_kernel,
  flat_kernel,
  kernel_at,
  require_params,
  unflat_kernel,
  with_kernels,
)
from sap_jax.layer_keys import per_layer_alpha
from sap_jax.stats import LayerStats, Layout
from sap_jax.stats.qr import LayerFactor
from sap_jax.types import Path


class Basis(NamedTuple):
  """Eigenbasis of a layer's input statistics.

  Attributes:
    spectrum: normalised spectrum σ̃ (…, k), non-negative, summing to 1 (all zeros
      when the layer's inputs were all zero); k = d, or fewer for a thin basis
      (`svd_basis` of n < d rows), whose missing directions all get λ = 0.
    vectors: orthonormal eigenvectors V (…, d, k), column i belongs to σ̃_i.
  """

  spectrum: jax.Array
  vectors: jax.Array


@struct.dataclass
class Projection:
  """A layer's input projection P together with the layer's static layout."""

  matrix: jax.Array
  layout: Layout = struct.field(pytree_node=False)


def normalised_spectrum(sigma_sq: jax.Array) -> jax.Array:
  """σ̃ = σ² / Σσ² over the last axis; negative round-off is clipped to zero."""
  sigma_sq = jnp.clip(sigma_sq, 0.0)
  total = jnp.sum(sigma_sq, axis=-1, keepdims=True)
  return sigma_sq / jnp.maximum(total, jnp.finfo(sigma_sq.dtype).tiny)


def importance(spectrum: jax.Array, alpha: jax.Array | float) -> jax.Array:
  """λ = α σ̃ / ((α − 1) σ̃ + 1), the SAP importance of each direction."""
  spectrum = jnp.asarray(spectrum, jnp.result_type(spectrum, jnp.float32))
  alpha = jnp.asarray(alpha, spectrum.dtype)
  return alpha * spectrum / ((alpha - 1.0) * spectrum + 1.0)


def eigh_basis(gram: jax.Array, rcond: float | None = None) -> Basis:
  """Basis from the eigendecomposition of C = RᵀR (batched over leading axes).

  Args:
    gram: C (…, d, d), symmetric positive semi-definite.
    rcond: eigenvalues below ``rcond · max eigenvalue`` are treated as exact
      zeros. Eigenvalues of a float32 Gram matrix carry round-off of about
      eps · λ_max (measured: ≤ 1.6e-7 · λ_max for d up to 4608), which a large α
      would otherwise promote to λ ≈ α·1e-7 on directions the trusted inputs
      never use. Default 10 · eps of the dtype.
  """
  trace = jnp.trace(gram, axis1=-2, axis2=-1)[..., None, None]
  # Scale to unit trace first: the eigenvectors do not change, the conditioning
  # of float32 eigh does not depend on the magnitude of the activations.
  scaled = gram / jnp.maximum(trace, jnp.finfo(gram.dtype).tiny)
  scaled = 0.5 * (scaled + jnp.swapaxes(scaled, -1, -2))
  sigma_sq, vectors = jnp.linalg.eigh(scaled)
  if rcond is None:
    rcond = 10.0 * float(jnp.finfo(scaled.dtype).eps)
  top = jnp.max(sigma_sq, axis=-1, keepdims=True)
  sigma_sq = jnp.where(sigma_sq > rcond * top, sigma_sq, 0.0)
  return Basis(normalised_spectrum(sigma_sq), vectors)


def svd_basis(rows: jax.Array) -> Basis:
  """Basis from the thin SVD of the stacked rows R (n, d) or (G, n, d).

  This is the method as the paper writes it (also the basis of a TSQR factor,
  `sap_jax.stats.qr`). The thin SVD keeps memory O(n·d) (a full SVD's U is n × n:
  3.3 GB at 20,000 rows). For n < d the basis is thin: k = n vectors (d, k) and a
  spectrum of length k; every direction outside them gets λ = 0. `eigh_basis` of the
  streamed Gram matrix gives the same projection (up to round-off) and is what
  `bases` uses by default.
  """
  _, s, vt = jnp.linalg.svd(rows, full_matrices=False)
  return Basis(normalised_spectrum(s**2), jnp.swapaxes(vt, -1, -2))


def layer_basis(stats: LayerStats | LayerFactor) -> Basis:
  """One layer's basis: the thin SVD of a TSQR factor F (`LayerFactor`, never C = FᵀF,
  whose float32 eigendecomposition would square the factor's condition number), else the
  eigendecomposition of the Gram matrix."""
  if isinstance(stats, LayerFactor):
    return svd_basis(stats.factor)
  return eigh_basis(stats.gram)


def bases(stats: Mapping[Path, LayerStats | LayerFactor]) -> dict[Path, Basis]:
  """One decomposition per layer (the expensive, α-independent part): `layer_basis`."""
  return {path: layer_basis(s) for path, s in stats.items()}


def projection_matrix(basis: Basis, alpha: jax.Array | float) -> jax.Array:
  """P = V diag(λ(α)) Vᵀ."""
  lam = importance(basis.spectrum, alpha)
  return jnp.einsum(
    "...ik,...k,...jk->...ij",
    basis.vectors,
    lam,
    basis.vectors,
    precision=jax.lax.Precision.HIGHEST,
  )


def alpha_for(alpha: Any, path: Path) -> Any:
  """The α of layer ``path``: ``alpha[path]`` for a per-layer dict, else ``alpha``."""
  if isinstance(alpha, Mapping):
    if path not in alpha:
      raise KeyError(
        f"Per-layer alpha has no entry for layer {'/'.join(path)!r}; give every "
        "layer in the statistics an alpha, or use a scalar."
      )
    return alpha[path]
  return alpha


def check_alpha(alpha: Any) -> None:
  """Raises ValueError unless every α is a finite number > 0 (concrete values only)."""
  values = alpha.values() if isinstance(alpha, Mapping) else [alpha]
  for a in values:
    if isinstance(a, jax.core.Tracer):
      continue
    arr = np.asarray(a)  # on the host, as JAX would store it: eager jnp compiles programs
    with np.errstate(over="ignore"):
      arr = arr.astype(jax.dtypes.canonicalize_dtype(arr.dtype))
    if not bool(np.all(np.isfinite(arr))) or not bool(np.all(arr > 0)):
      raise ValueError(f"alpha must be finite and > 0 (the paper uses 1e3…1e6), got {a}.")


def projections_from_bases(
  layer_bases: Mapping[Path, Basis],
  layouts: Mapping[Path, Layout],
  alpha: Any,
) -> dict[Path, Projection]:
  """Projections for one α (a scalar or a dict layer → scalar, keyed by path tuples or
  "/"-joined names: `sap_jax.layer_keys.per_layer_alpha`) from precomputed bases."""
  alpha = per_layer_alpha(alpha, layer_bases)
  return {
    path: Projection(projection_matrix(b, alpha_for(alpha, path)), layouts[path])
    for path, b in layer_bases.items()
  }


def projections(
  stats: Mapping[Path, LayerStats | LayerFactor], alpha: Any
) -> dict[Path, Projection]:
  """SAP projections P = V diag(λ(α)) Vᵀ for every layer in ``stats``.

  Args:
    stats: output of `activation_stats` (possibly filtered with `select_layers`); for
      TSQR statistics (``basis="qr"``) V and σ̃ come from the thin SVD of each factor.
    alpha: the scaling coefficient α > 0: a scalar (one for all layers) or a dict
      from layer (path tuple or "/"-joined name, as ``result.layers`` prints it) to
      scalar; a key that names no layer is refused. Differentiable; usable under `jax.vmap` over α
      (the eigendecompositions do not depend on α and are computed once).

  Returns:
    A dict path → `Projection` (``.matrix`` is (d, d), or (G, d, d) for a conv with
    G groups).
  """
  check_alpha(alpha)
  return projections_from_bases(bases(stats), {p: s.layout for p, s in stats.items()}, alpha)


def project_kernel(kernel: jax.Array, projection: Projection) -> jax.Array:
  """The kernel that sees projected inputs: K̂ = P K in the layer's own layout."""
  layout, p = projection.layout, projection.matrix
  check_kernel(kernel, layout)
  d, groups = layout.dim, layout.groups
  want = (d, d) if groups == 1 else (groups, d, d)
  if tuple(p.shape) != want:
    raise ValueError(f"Projection has shape {tuple(p.shape)}, expected {want}.")
  hp = jax.lax.Precision.HIGHEST
  p = p.astype(kernel.dtype).reshape(groups, d, d)
  new = jnp.matmul(p, flat_kernel(kernel, layout), precision=hp)
  return unflat_kernel(new, layout)


def rotated_kernels(
  kernels: Mapping[Path, jax.Array],
  layer_bases: Mapping[Path, Basis],
  layouts: Mapping[Path, Layout],
) -> dict[Path, jax.Array]:
  """Vᵀ K per layer, (G, k, O/G): the α-independent half of K̂ = V diag(λ) Vᵀ K."""
  hp = jax.lax.Precision.HIGHEST
  out = {}
  for path, b in layer_bases.items():
    kernel, layout = kernels[path], layouts[path]
    check_kernel(kernel, layout)
    v = b.vectors.astype(kernel.dtype).reshape(layout.groups, layout.dim, -1)
    # Vᵀ K as a contraction over V's first axis (no transposed copy of V).
    out[path] = jnp.einsum("gij,gio->gjo", v, flat_kernel(kernel, layout), precision=hp)
  return out


def projected_kernels(
  kernels: Mapping[Path, jax.Array],
  layer_bases: Mapping[Path, Basis],
  layouts: Mapping[Path, Layout],
  alpha: Any,
  rotated: Mapping[Path, jax.Array] | None = None,
) -> dict[Path, jax.Array]:
  """K̂ = V (λ(α) ⊙ (Vᵀ K)) for every layer of ``layer_bases`` (pure, jittable).

  Args:
    kernels: path → the layer's kernel.
    layer_bases: path → `Basis`.
    layouts: path → `Layout` of each layer.
    alpha: scalar α or dict path → α; traceable (vmap, grad over α).
    rotated: optional precomputed `rotated_kernels` (shared by every α of a sweep:
      each α then costs one (d × d)·(d × O) product per layer instead of two).
  """
  hp = jax.lax.Precision.HIGHEST
  out = {}
  for path, b in layer_bases.items():
    layout, kernel = layouts[path], kernels[path]
    check_kernel(kernel, layout)
    d, groups = layout.dim, layout.groups
    v = b.vectors.astype(kernel.dtype).reshape(groups, d, -1)
    w = (
      rotated[path]
      if rotated is not None
      else jnp.einsum("gij,gio->gjo", v, flat_kernel(kernel, layout), precision=hp)
    )
    lam = importance(b.spectrum, alpha_for(alpha, path)).astype(kernel.dtype)
    lam = lam.reshape(groups, v.shape[-1], 1)
    out[path] = unflat_kernel(jnp.matmul(v, lam * w, precision=hp), layout)
  return out


def project_params(
  variables: Mapping[str, Any], layer_projections: Mapping[Path, Projection]
) -> dict[str, Any]:
  """Replaces every covered kernel by the kernel that sees projected inputs.

  Args:
    variables: model variables with a ``params`` collection. Never modified.
    layer_projections: output of `projections` (path → `Projection`).

  Returns:
    New variables: each covered ``kernel`` replaced by P·K (in its layout), biases,
    BatchNorm parameters and statistics and every other leaf unchanged (the very
    same arrays).
  """
  require_params(variables)
  return with_kernels(
    variables,
    {path: project_kernel(kernel_at(variables, path), p) for path, p in layer_projections.items()},
  )
