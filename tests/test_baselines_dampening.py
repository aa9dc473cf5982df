"""sap_jax.baselines.dampening: SSD's dampening rule and its Fisher-diagonal importances."""

import jax
import jax.numpy as jnp
import numpy as np

from sap_jax import baselines as bl
from sap_jax import train
from tests.baseline_cases import Linear, leaves_equal, linear_variables, same_layout


def test_ssd_dampening_hand_case():
  params = {
    "dense": {"kernel": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "bias": jnp.array([1.0, -1.0])},
    "bn": {"scale": jnp.array([1.0, 1.0]), "bias": jnp.array([0.5, 0.5])},
  }
  stats = {"bn": {"mean": jnp.array([0.3, 0.4]), "var": jnp.array([2.0, 3.0])}}
  i_d = {
    "dense": {"kernel": jnp.array([[1.0, 1.0], [1.0, 0.0]]), "bias": jnp.array([0.1, 2.0])},
    "bn": {"scale": jnp.array([0.0, 1.0]), "bias": jnp.array([1.0, 1.0])},
  }
  i_f = {
    "dense": {"kernel": jnp.array([[5.0, 20.0], [11.0, 0.0]]), "bias": jnp.array([2.0, 30.0])},
    "bn": {"scale": jnp.array([1e-3, 1.0]), "bias": jnp.array([10.0, 10.5])},
  }
  variables = {"params": params, "batch_stats": stats}

  out = bl.ssd_dampen(variables, i_d, i_f, alpha=10.0, lambda_=1.0)
  # Selected where I_Df > 10·I_D; scaled by min(I_D / I_Df, 1).
  want = {
    "dense": {
      "kernel": [[1.0, 2.0 / 20.0], [3.0 / 11.0, 4.0]],
      "bias": [1.0 * 0.1 / 2.0, -1.0 * 2.0 / 30.0],
    },
    "bn": {"scale": [0.0, 1.0], "bias": [0.5, 0.5 * 1.0 / 10.5]},
  }
  jax.tree_util.tree_map(
    lambda got, w: np.testing.assert_allclose(got, np.asarray(w), rtol=1e-6), out["params"], want
  )
  assert out["batch_stats"] is stats  # BatchNorm statistics untouched
  # λ·I_D/I_Df is capped at 1: a large λ leaves selected entries as they are,
  # except where I_D = 0 (the factor is 0 for any λ).
  big = bl.ssd_dampen(variables, i_d, i_f, alpha=10.0, lambda_=1e3)["params"]
  leaves_equal(big, {**params, "bn": {**params["bn"], "scale": jnp.array([0.0, 1.0])}})
  # Exactly at the threshold nothing is selected (strict >).
  same = bl.ssd_dampen(
    variables, i_d, jax.tree_util.tree_map(lambda d: 10.0 * d, i_d), alpha=10.0, lambda_=1.0
  )
  leaves_equal(same["params"], params)
  same_layout(out, variables)


def _hand_linear_grads(w, b, x, y):
  """Per-sample CE gradients of logits = x W + b: dW = x (p − e_y)ᵀ, db = p − e_y."""
  z = x @ w + b
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  r = p - np.eye(w.shape[1])[y]
  return x[:, :, None] * r[:, None, :], r


def test_fisher_diagonal_matches_hand_computation():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 4)).astype(np.float32)
  y = rng.integers(0, 3, 10).astype(np.int32)
  variables = linear_variables()
  apply_fn = train.eval_apply_fn(Linear())
  w = variables["params"]["head"]["kernel"].astype(np.float64)
  b = variables["params"]["head"]["bias"].astype(np.float64)
  gw, gb = _hand_linear_grads(w, b, x.astype(np.float64), y)

  # Empirical Fisher, per sample: mean over samples of squared gradients
  # (batch 4: the ragged last batch of 2 is padded and masked).
  got = bl.fisher_diagonal(apply_fn, variables, x, y, batch_size=4)
  np.testing.assert_allclose(got["head"]["kernel"], (gw**2).mean(0), rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(got["head"]["bias"], (gb**2).mean(0), rtol=1e-5, atol=1e-8)

  # The SSD code's estimator: mean over mini-batches of the squared batch gradient.
  got = bl.fisher_diagonal(apply_fn, variables, x, y, batch_size=5, per_example=False)
  want_w = np.mean([gw[i : i + 5].mean(0) ** 2 for i in (0, 5)], axis=0)
  want_b = np.mean([gb[i : i + 5].mean(0) ** 2 for i in (0, 5)], axis=0)
  np.testing.assert_allclose(got["head"]["kernel"], want_w, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(got["head"]["bias"], want_b, rtol=1e-5, atol=1e-8)
