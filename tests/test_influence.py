"""trusted_influence: ∂L/∂wᵢ against central differences of the loss in wᵢ (float64,
statistics and eigendecomposition recomputed at every perturbed weight), and the closed
form ∂L/∂C̃ against autodiff of the eigh-free P(α) = α C̃ ((α − 1) C̃ + I)⁻¹."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sap_jax as sj
from sap_jax.influence import normalised_gram_gradients
from sap_jax.kernels import flat_kernel, kernels_of, unflat_kernel, with_kernels
from sap_jax.objective import corrected_variables
from tests.differentiable_cases import mean_loss, smooth_case

ALPHA = 30.0


@pytest.fixture(scope="module")
def case():
  with jax.enable_x64(True):
    c = smooth_case(n_trusted=8, n_val=20, seed=1)
    per_sample = [
      sj.activation_stats(c.apply_fn, c.variables, [c.x_trusted[i : i + 1]], dtype=jnp.float64)
      for i in range(len(c.x_trusted))
    ]
    yield c, per_sample


def _loss_with_weights(c, per_sample, w):
  """The slow reference: C(w) = Σ wᵢ Cᵢ, a fresh decomposition, the corrected loss."""
  stats = {
    p: sj.LayerStats(sum(wi * s[p].gram for wi, s in zip(w, per_sample)), s0.count, s0.layout)
    for p, s0 in per_sample[0].items()
  }
  dec = sj.decompose(c.variables, stats)
  return mean_loss(c.apply_fn, corrected_variables(c.variables, dec, ALPHA), c.x_val, c.y_val)


def test_scores_match_central_differences_in_the_weights(case):
  c, per_sample = case
  with jax.enable_x64(True):
    inf = sj.trusted_influence(
      c.apply_fn,
      c.variables,
      c.decomposition,
      c.x_trusted,
      c.x_val,
      c.y_val,
      ALPHA,
      batch_size=3,
    )
    n = len(c.x_trusted)
    assert inf.scores.shape == (n,)
    np.testing.assert_allclose(sum(inf.per_layer.values()), inf.scores, rtol=1e-12)
    h = 1e-5
    fd = []
    for i in range(n):
      e = np.eye(n)[i]
      fd.append(
        (
          _loss_with_weights(c, per_sample, 1 + h * e)
          - _loss_with_weights(c, per_sample, 1 - h * e)
        )
        / (2 * h)
      )
    np.testing.assert_allclose(inf.scores, fd, rtol=1e-5, atol=1e-9)
    assert inf.loss == pytest.approx(_loss_with_weights(c, per_sample, np.ones(n)), rel=1e-10)


def test_closed_form_matches_autodiff_of_the_eigh_free_projection(case):
  """G̃ = α M⁻¹ S M⁻¹ against jax.grad of L(P(C̃)·K) w.r.t. C̃, P by a linear solve."""
  c, _ = case
  with jax.enable_x64(True):
    dec = c.decomposition
    layouts = dict(dec.layouts)
    c_tilde = {p: jnp.einsum("gij,gj,gkj->gik", *_vs(dec, p, layouts[p])) for p in dec.paths}

    def loss(ct):
      kernels = {}
      for p, m in ct.items():
        lay = layouts[p]
        eye = jnp.eye(lay.dim)
        proj = jnp.linalg.solve((ALPHA - 1) * m + eye, ALPHA * m)  # M⁻¹ α C̃ = P (symmetric)
        kernels[p] = unflat_kernel(proj @ flat_kernel(dec.kernels[p], lay), lay)
      logits = c.apply_fn(with_kernels(c.variables, kernels), c.x_val)
      return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(len(c.y_val)), c.y_val])

    want = jax.grad(loss)(c_tilde)
    corrected = corrected_variables(c.variables, dec, ALPHA)
    kgrads = jax.grad(
      lambda k: jnp.mean(
        -jax.nn.log_softmax(c.apply_fn(with_kernels(c.variables, k), c.x_val))[
          jnp.arange(len(c.y_val)), c.y_val
        ]
      )
    )(kernels_of(corrected, dec.paths))
    got, _ = normalised_gram_gradients(dec, kgrads, {p: ALPHA for p in dec.paths})
    for p in dec.paths:
      w = want[p]
      np.testing.assert_allclose(got[p], 0.5 * (w + jnp.swapaxes(w, -1, -2)), rtol=1e-8, atol=1e-12)


def _vs(dec, p, lay):
  b = dec.bases[p]
  v = b.vectors.reshape(lay.groups, lay.dim, lay.dim)
  return v, b.spectrum.reshape(lay.groups, lay.dim), v


def test_empty_trusted_set_is_refused(case):
  c, _ = case
  with jax.enable_x64(True):
    with pytest.raises(ValueError, match="x_trusted is empty"):
      sj.trusted_influence(
        c.apply_fn, c.variables, c.decomposition, c.x_trusted[:0], c.x_val, c.y_val, ALPHA
      )
