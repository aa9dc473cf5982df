"""P(α)·K without an eigendecomposition: one Cholesky factorisation per α and layer.

λ(σ̃) = α σ̃ / ((α − 1) σ̃ + 1) is a rational function of the spectrum, so with the
unit-trace Gram matrix C̃ = C / tr C

    P(α) = α C̃ ((α − 1) C̃ + I)⁻¹,

and M(α) = (α − 1) C̃ + I is symmetric positive definite for every α > 0 (its
eigenvalues lie in [min(1, α), max(1, α)] because 0 ≤ σ̃ ≤ 1). One Cholesky
factorisation of M(α), two triangular solves and a product by C̃ give P(α)·K for a
kernel K (d³/3 + 3 d²·O multiply-adds per α, against an eigendecomposition's ≈ 9 d³
once).

Directions the trusted inputs never use. A float32 Gram matrix carries round-off of
about eps · λ_max in its null space, which λ would turn into α·eps (0.1 at α = 1e6),
and C̃ itself is singular there: its round-off eigenvalues may be negative, so
M(α) = (α − 1) C̃ + I stops being positive definite once α·eps·λ_max exceeds 1 (an
all-NaN Cholesky factor from α ≈ 1e10 on a layer with fewer trusted rows than inputs).
The eigh path cuts eigenvalues below 10·eps·λ_max to zero; the solve path works with
the shifted C̃_τ = C̃ + τI, τ = eps (relative to the trace), positive definite where C̃
is only semi-definite, and applies

    P_τ(α) K = α C̃ M_τ(α)⁻¹ W,     M_τ(α) = (α − 1) C̃_τ + I  (α > 1),
    W = C̃ C̃_τ⁻¹ K = K − τ C̃_τ⁻¹ K,

W being α-independent (one more Cholesky per layer, once). On an eigendirection of C̃
with normalised eigenvalue σ̃ this is λ_τ(σ̃) = λ(σ̃ + τ) · (σ̃ / (σ̃ + τ))²: zero on an
exact zero direction, within 3τ/σ̃ of λ(σ̃) on a used one (under 1 % for σ̃ ≥ 300 τ).
For α > 1, M_τ(α) is positive definite with a condition number bounded in α by that
of C̃_τ (≤ (1 + τ)/τ), so its Cholesky factor is finite wherever `prepare`'s is; for
α ≤ 1 the unshifted M(α) is (eigenvalues in [α, 1]) and is used instead
(λ_τ(σ̃) = λ(σ̃) · σ̃ / (σ̃ + τ) there; both are I at α = 1).
The last product by C̃ damps the solve's own error, which lands on the ill-conditioned
(unused) directions, by their σ̃ ≈ 0. Measured against a float64 SVD of 300 rows of
768 inputs (tests/test_solve.py): ≤ 2e-4 of ‖P‖ for every α from 1 to 1e12 on a flat
spectrum and ≤ 5e-3 on a ReLU layer's steep one (σ̃ from 0.5 down to 3e-5), where the
eigh path gives 2e-6 and 2e-4; on a steep synthetic spectrum (12 decades of σ²) the
solve path is the more accurate of the two (2.7e-3 against 4.8e-3 at α = 3e4, 4.2e-2
against 8.1e-2 at α = 1e6; the unshifted form gave 2.4e-3 and 3.4e-2 there, and NaN
from α = 1e8).

`choose_method` picks this path or the eigendecomposition per layer from a cost model
in K (how many α will be applied), d and the kernel's output width, and keeps the
eigendecomposition for every layer narrower than `AUTO_MIN_WIDTH`, where it is cheap
and the more accurate of the two on unused directions. Everything here is
a pure function of arrays: it jits, vmaps over α and differentiates in α and in the
Gram matrix.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

EIGH = "eigh"
SOLVE = "solve"
AUTO = "auto"
METHODS = (EIGH, SOLVE, AUTO)
"""The ``method`` values of `sap_jax.decompose`; "auto" (`choose_method` per layer) is the
default."""

# Cost model, in GEMM-flop equivalents (2 per multiply-add at the machine's matmul
# rate). Measured on the project's 2-core CPU, float32, one BLAS thread (d = 4608:
# eigh 9.9 s, Cholesky 0.65 s, two triangular solves of 512 columns 0.31 s, a
# (d × d)·(d × 512) product 0.24 s; the ratios hold within 20 % at d = 1152 and 2304).
EIGH_CUBIC = 7.0
"""An eigendecomposition (LAPACK syevd) of a d × d matrix costs ≈ EIGH_CUBIC · d³."""
CHOLESKY_CUBIC = 0.5
"""A Cholesky factorisation (potrf) costs ≈ CHOLESKY_CUBIC · d³."""
AUTO_MIN_WIDTH = 1024
"""``method="auto"`` decomposes a layer narrower than this (d < 1024) by eigh whatever the
cost model says: its eigendecomposition takes ≈ 0.1 s on one CPU core at d = 1024 (and
0.02 s at d = 576), so the solve path would save little, while eigh is the more
accurate path on directions the trusted inputs never use (≤ 1e-6 of ‖P‖ against
5e-4 at α = 3e4: tests/test_solve.py). Every model of the committed experiment tables
(d ≤ 640) is therefore decomposed exactly as by ``method="eigh"``."""


class SolveData(NamedTuple):
  """The α-independent part of the solve path for one layer.

  Attributes:
    gram: C̃ = C / tr C, (G, d, d).
    filtered: W = C̃ (C̃ + τI)⁻¹ K, (G, d, O/G), in C̃'s dtype.
  """

  gram: jax.Array
  filtered: jax.Array


def default_tau(dtype) -> float:
  """The null-direction filter's scale τ = eps of ``dtype``."""
  return float(jnp.finfo(dtype).eps)


def unit_trace(gram: jax.Array) -> jax.Array:
  """C / tr C over the last two axes (zero stays zero), symmetrised."""
  trace = jnp.trace(gram, axis1=-2, axis2=-1)[..., None, None]
  scaled = gram / jnp.maximum(trace, jnp.finfo(gram.dtype).tiny)
  return 0.5 * (scaled + jnp.swapaxes(scaled, -1, -2))


def _cho_solve(lower: jax.Array, b: jax.Array) -> jax.Array:
  """A⁻¹ b from the Cholesky factor L of A = L Lᵀ (batched)."""
  z = lax.linalg.triangular_solve(lower, b, left_side=True, lower=True)
  return lax.linalg.triangular_solve(lower, z, left_side=True, lower=True, transpose_a=True)


def prepare(gram: jax.Array, kernel: jax.Array, tau: float | None = None) -> SolveData:
  """C̃ and the filtered kernel W (see the module docstring) of one layer.

  Args:
    gram: C = RᵀR, (G, d, d) (or (d, d)).
    kernel: the flat kernel, (G, d, O/G) (or (d, O)).
    tau: the null-direction filter's scale; default `default_tau` of C's dtype.

  Returns:
    `SolveData` with C's leading shape.
  """
  c = unit_trace(gram)
  dtype = c.dtype
  if tau is None:
    tau = default_tau(dtype)
  k = kernel.astype(dtype)
  eye = jnp.eye(c.shape[-1], dtype=dtype)
  w = k - tau * _cho_solve(jnp.linalg.cholesky(c + tau * eye), k)
  # A layer whose inputs were all zero: C̃ = 0, so W is 0 up to round-off; make it exact.
  used = jnp.trace(c, axis1=-2, axis2=-1)[..., None, None] > 0
  return SolveData(c, jnp.where(used, w, 0.0))


def project(data: SolveData, alpha: jax.Array | float, tau: float | None = None) -> jax.Array:
  """P_τ(α)·K = α C̃ ((α − 1)(C̃ + τI) + I)⁻¹ W (τ = 0 for α ≤ 1): one Cholesky, two
  triangular solves and one product by C̃.

  Args:
    data: from `prepare`.
    alpha: α > 0 (traceable: grad and vmap over α work).
    tau: the shift `prepare` used; default `default_tau` of C̃'s dtype.

  Returns:
    The projected flat kernel, W's shape and dtype.
  """
  c, w = data
  if tau is None:
    tau = default_tau(c.dtype)
  alpha = jnp.asarray(alpha, c.dtype)
  eye = jnp.eye(c.shape[-1], dtype=c.dtype)
  shift = jnp.where(alpha > 1.0, jnp.asarray(tau, c.dtype), 0.0)
  m = (alpha - 1.0) * (c + shift * eye) + eye
  x = alpha * _cho_solve(jnp.linalg.cholesky(m), w)
  return jnp.matmul(c, x, precision=lax.Precision.HIGHEST)


def projection_matrix(gram: jax.Array, alpha: jax.Array | float, tau: float | None = None):
  """The full P_τ(α) of the solve path (``project`` of the identity kernel), for tests."""
  d = gram.shape[-1]
  eye = jnp.broadcast_to(jnp.eye(d, dtype=gram.dtype), gram.shape)
  return project(prepare(gram, eye, tau), alpha, tau)


def eigh_cost(d: int, out: int, k: int, groups: int = 1) -> float:
  """GEMM-flop equivalents of the eigh path for K α values: eigh, Vᵀ K, K·V (λ ⊙ Vᵀ K)."""
  return groups * (EIGH_CUBIC * d**3 + 2.0 * d * d * out * (1 + k))


def solve_cost(d: int, out: int, k: int, groups: int = 1) -> float:
  """GEMM-flop equivalents of the solve path for K α values: W once (a Cholesky and two
  triangular solves), then per α one Cholesky, two triangular solves and a product by C̃."""
  prep = CHOLESKY_CUBIC * d**3 + 2.0 * d * d * out
  return groups * (prep + k * (CHOLESKY_CUBIC * d**3 + 4.0 * d * d * out))


def choose_method(d: int, out: int, k: int, groups: int = 1) -> str:
  """ "solve" when d ≥ `AUTO_MIN_WIDTH` and `solve_cost` < `eigh_cost` for this layer and
  K α values, else "eigh".

  Args:
    d: the layer's input width (row length of one group).
    out: the kernel's output width per group.
    k: how many α values will be applied (a sweep's grid size, 1 for one correction).
    groups: conv groups.
  """
  if d < AUTO_MIN_WIDTH:
    return EIGH
  return SOLVE if solve_cost(d, out, k, groups) < eigh_cost(d, out, k, groups) else EIGH


def check_method(method: str, rounds: int = 1) -> None:
  """Refuses a ``method`` that is not one of `METHODS`, and "solve" with ``rounds > 1``
  (several SAP rounds compose each round's projection matrix from its eigenbasis, which
  the solve path never computes).

  Raises:
    ValueError: naming the accepted values, or the fix.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  if rounds > 1 and method == SOLVE:
    raise ValueError(
      "rounds > 1 compose each round's projection matrix from its eigenbasis; the solve "
      'path has none. Use method="auto" (or "eigh"), or rounds=1.'
    )
