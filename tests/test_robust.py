"""Tests for sap_jax.robust: the maths of each noise-robust piece."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sap_jax import robust, train
from tests import fake_data
from tests.train_cases import TinyMLP


def blobs(n=192, seed=0, k=3):
  return fake_data.blobs(n, seed, k)


# ---------------------------------------------------------------- MixUp


def test_mixup_is_the_exact_convex_combination():
  rng = jax.random.key(3)
  x = np.asarray(jax.random.normal(jax.random.key(0), (8, 4, 4, 3)))
  y = np.eye(5, dtype=np.float32)[np.arange(8) % 5]
  xm, ym = map(np.asarray, robust.mixup(rng, x, y, 0.4))
  lam, perm = map(np.asarray, robust.mixup_params(rng, 8, 0.4))
  assert 0.0 <= float(lam) <= 1.0
  np.testing.assert_array_equal(np.sort(perm), np.arange(8))
  np.testing.assert_allclose(xm, lam * x + (1 - lam) * x[perm], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(ym, lam * y + (1 - lam) * y[perm], rtol=1e-6)
  np.testing.assert_allclose(ym.sum(-1), 1.0, rtol=1e-6)


# B = 4000 in the sampling tests below: they share one compiled sampler.
N_DRAWS = 4000


def test_sample_beta_is_beta_distributed():
  alpha = 0.2
  lams = np.asarray(robust.sample_beta(jax.random.key(0), alpha, (N_DRAWS,)))
  assert np.all((lams >= 0) & (lams <= 1))
  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); mass piles up near 0, 1.
  assert lams.mean() == pytest.approx(0.5, abs=0.02)
  assert lams.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), abs=0.01)
  # P(lam < 0.1) for Beta(0.2, 0.2) is about 0.315.
  assert np.mean(lams < 0.1) == pytest.approx(0.315, abs=0.03)


# ---------------------------------------------------------------- SAM


def _quadratic(params):
  a = jnp.array([1.0, 3.0])
  return (
    0.5 * jnp.sum(a * params["w"] ** 2)
    - params["w"][0]
    + 0.5 * 2.0 * params["b"] ** 2
    + params["b"]
  )


def test_sam_matches_hand_written_reference_on_quadratic():
  lr, mu, wd, rho = 0.1, 0.9, 0.01, 0.05
  cfg = train.TrainConfig(learning_rate=lr, momentum=mu, weight_decay=wd, sam_rho=rho)
  tx = train.make_optimizer(cfg, steps_per_epoch=3)
  params = {"w": jnp.array([1.0, -1.0]), "b": jnp.array(0.5)}
  state = tx.init(params)
  grad = jax.grad(_quadratic)

  def np_grad(w, b):  # Analytic gradient of _quadratic.
    return np.array([1.0, 3.0]) * w - np.array([1.0, 0.0]), 2.0 * b + 1.0

  w, b = np.array([1.0, -1.0]), 0.5
  buf_w, buf_b = np.zeros(2), 0.0
  for _ in range(3):
    upd, state = tx.update(grad(params), state, params, grad_fn=lambda p, _: grad(p))
    params = optax.apply_updates(params, upd)
    gw, gb = np_grad(w, b)
    norm = np.sqrt(np.sum(gw**2) + gb**2)
    gw, gb = np_grad(w + rho * gw / norm, b + rho * gb / norm)
    buf_w = mu * buf_w + gw + wd * w  # Decay at the unperturbed weights.
    buf_b = mu * buf_b + gb + wd * b
    w, b = w - lr * buf_w, b - lr * buf_b
  np.testing.assert_allclose(params["w"], w, rtol=1e-5)
  np.testing.assert_allclose(params["b"], b, rtol=1e-5)

  sgd = train.make_optimizer(train.TrainConfig(learning_rate=lr, momentum=mu, weight_decay=wd), 3)
  p0 = {"w": jnp.array([1.0, -1.0]), "b": jnp.array(0.5)}
  upd_sgd, _ = sgd.update(grad(p0), sgd.init(p0), p0)
  upd_sam, _ = tx.update(grad(p0), tx.init(p0), p0, grad_fn=lambda p, _: grad(p))
  assert not np.allclose(upd_sgd["w"], upd_sam["w"])


def test_sam_zero_gradient_gives_no_perturbation():
  tx = robust.sam(optax.sgd(0.1), rho=0.05)
  params = {"w": jnp.ones(3)}
  zero = {"w": jnp.zeros(3)}
  seen = []
  upd, _ = tx.update(zero, tx.init(params), params, grad_fn=lambda p, _: seen.append(p) or zero)
  np.testing.assert_array_equal(seen[0]["w"], params["w"])
  np.testing.assert_array_equal(upd["w"], 0.0)


def test_sam_keeps_batchnorm_stats_of_the_unperturbed_pass():
  x, y = blobs(32)
  model = TinyMLP(bn=True)
  plain = train.TrainConfig(learning_rate=0.1)
  with_sam = train.TrainConfig(learning_rate=0.1, sam_rho=0.5)
  key = jax.random.key(0)
  s0 = train.create_train_state(model, x[:1], plain, key)
  s1 = train.create_train_state(model, x[:1], with_sam, key)
  a, _ = train.train_step(s0, x, y, key, config=plain)
  b, _ = train.train_step(s1, x, y, key, config=with_sam)
  for la, lb in zip(jax.tree.leaves(a.batch_stats), jax.tree.leaves(b.batch_stats)):
    np.testing.assert_array_equal(la, lb)
  assert not np.allclose(a.params["Dense_0"]["kernel"], b.params["Dense_0"]["kernel"])


# ---------------------------------------------------- logit clip, GLS


def test_clip_logits_bounds_norm_and_keeps_small_vectors():
  z = jax.random.normal(jax.random.key(0), (64, 10))
  z = np.asarray(z * jnp.linspace(0.05, 3.0, 64)[:, None])
  tau = 2.0
  out = np.asarray(robust.clip_logits(z, tau))
  n_in = np.linalg.norm(z, axis=-1)
  n_out = np.linalg.norm(out, axis=-1)
  small = n_in <= tau
  assert small.any() and (~small).any()
  assert np.all(n_out <= tau * (1 + 1e-6))
  np.testing.assert_array_equal(out[small], z[small])
  np.testing.assert_allclose(n_out[~small], tau, rtol=1e-5)
  np.testing.assert_allclose(
    out[~small] / n_out[~small, None], z[~small] / n_in[~small, None], rtol=1e-5
  )
  np.testing.assert_array_equal(robust.clip_logits(jnp.zeros((2, 3)), 1.0), 0.0)


@pytest.mark.parametrize("r", [0.2, -0.4])
def test_gls_targets_closed_form(r):
  k = 5
  labels = jnp.array([0, 3, 4])
  t = robust.smooth_targets(labels, k, r)
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
  want = np.full((3, k), r / k)
  want[np.arange(3), labels] = 1 - r + r / k
  np.testing.assert_allclose(t, want, rtol=1e-6)
  # The CE with these targets is the published loss_gls:
  # (1 - r) NLL(y) + r mean_k(-log p_k).
  z = jax.random.normal(jax.random.key(1), (3, k))
  logp = jax.nn.log_softmax(z)
  nll = -logp[jnp.arange(3), labels]
  np.testing.assert_allclose(
    robust.cross_entropy(z, t), (1 - r) * nll + r * (-logp.mean(-1)), rtol=1e-5
  )


def test_make_loss_fn_composes_clip_and_smoothing():
  z = 5.0 * jax.random.normal(jax.random.key(2), (6, 4))
  y = jnp.array([0, 1, 2, 3, 0, 1])
  plain = robust.make_loss_fn()
  np.testing.assert_allclose(
    plain(z, y), optax.softmax_cross_entropy_with_integer_labels(z, y), rtol=1e-6
  )
  loss_fn = robust.make_loss_fn(logit_clip=1.5, label_smoothing=-0.3)
  got = loss_fn(z, y)
  want = robust.cross_entropy(robust.clip_logits(z, 1.5), robust.smooth_targets(y, 4, -0.3))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Soft (MixUp) targets go through the same path.
  soft = jax.nn.one_hot(y, 4) * 0.7 + jax.nn.one_hot((y + 1) % 4, 4) * 0.3
  np.testing.assert_allclose(
    loss_fn(z, soft),
    robust.cross_entropy(robust.clip_logits(z, 1.5), robust.smooth_targets(soft, 4, -0.3)),
    rtol=1e-6,
  )


def test_make_loss_fn_rejects_bad_values():
  with pytest.raises(ValueError, match="label_smoothing"):
    robust.make_loss_fn(label_smoothing=1.0)
  with pytest.raises(ValueError, match="logit_clip"):
    robust.make_loss_fn(logit_clip=0.0)


# ---------------------------------------------------------------- MentorMix


def test_mentornet_weights_select_losses_below_the_percentile():
  losses = jnp.array([0.1, 2.0, 0.5, 3.0, 0.05, 1.0, 0.7, 4.0, 0.2, 0.3])
  # sort: .05 .1 .2 .3 .5 .7 1 2 3 4; index floor(10 * 0.7) = 7 -> 2.0.
  thr = robust.batch_percentile(losses, 0.7)
  assert float(thr) == 2.0
  v = robust.mentornet_weights(losses, thr)
  np.testing.assert_array_equal(v, [1, 0, 1, 0, 1, 1, 1, 0, 1, 1])
  assert float(robust.batch_percentile(losses, 1.0)) == 4.0


def test_mentormix_mix_coefficients_and_partners():
  x = np.asarray(jax.random.normal(jax.random.key(0), (N_DRAWS, 3)))
  labels = np.arange(N_DRAWS)  # Partner labels are the partner indices.
  v = (np.arange(N_DRAWS) % 2 == 0).astype(np.float32)
  xm, partner, lam = map(np.asarray, robust.mentormix_mix(jax.random.key(1), x, labels, v, 0.2))
  assert np.all(lam[v == 1] >= 0.5) and np.all(lam[v == 0] <= 0.5)
  np.testing.assert_allclose(
    xm, lam[:, None] * x + (1 - lam[:, None]) * x[partner], rtol=1e-5, atol=1e-6
  )
  # Partners ~ softmax(v): a v = 1 sample is e times as likely as a v = 0
  # one; with equal groups P(partner has v = 1) = e / (e + 1).
  assert np.mean(v[partner]) == pytest.approx(np.e / (np.e + 1), abs=0.03)


def test_mentormix_loss_thresholds_and_weighting():
  x, y = blobs(N_DRAWS)
  w = jax.random.normal(jax.random.key(0), (2, 3))

  def forward(inp):
    return (inp @ w, None)

  loss_fn = robust.cross_entropy
  prev = robust.MentorMixState(jnp.array(0.4), jnp.array(0.6))

  def run(burn):
    return robust.mentormix_loss(
      forward,
      loss_fn,
      x,
      y,
      jax.random.key(1),
      prev,
      gamma_p=0.5,
      alpha=0.2,
      ema=0.05,
      burn_in=burn,
    )

  loss, (state, clean, _) = run(False)
  ell = np.asarray(loss_fn(x @ w, y))
  np.testing.assert_allclose(clean, x @ w, rtol=1e-5, atol=1e-6)
  k = N_DRAWS // 2
  np.testing.assert_allclose(state.loss_p, 0.05 * 0.4 + 0.95 * np.sort(ell)[k], rtol=1e-5)
  # Only samples under the second threshold count, and the sum is / B.
  assert 0.0 < float(loss) <= float(state.loss_p_mix) * k / N_DRAWS + 1e-6
  burn, (burn_state, _, _) = run(True)
  assert np.isfinite(burn)
  np.testing.assert_allclose(burn_state.loss_p, state.loss_p)


# --------------------------------------------- each option trains end to end


@pytest.mark.parametrize(
  "options",
  [
    {"mixup_alpha": 0.2},
    {"sam_rho": 0.05},
    {"logit_clip": 2.0},
    {"label_smoothing": 0.2},
    {"label_smoothing": -0.2},
    {"mentormix": True, "mentormix_gamma": 0.85},
  ],
  ids=["mixup", "sam", "logitclip", "gls+", "gls-", "mentormix"],
)
def test_each_option_trains(options):
  x, y = blobs()
  cfg = train.TrainConfig(epochs=6, batch_size=32, learning_rate=0.1, **options)
  res = train.train_model(TinyMLP(), x, y, cfg, progress=False)
  assert res.history[-1]["loss"] < res.history[0]["loss"]
  acc = train.evaluate(train.eval_apply_fn(TinyMLP()), res.variables, x, y)
  assert acc["accuracy"] >= 0.9
