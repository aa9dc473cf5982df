"""Noise-robust training pieces: losses, target transforms and optimizers.

Each piece is a small pure function (or an optax transformation) that the
training step in :mod:`sap_jax.train` composes; none of them forks the
training loop. The methods are the ones the SAP paper combines with SAP
(Kodge et al., AAAI 2025, Table "SAP on top of noise-robust training"):

* MixUp (Zhang et al. 2018): :func:`mixup_params`, :func:`mix`, :func:`mixup`.
* SAM, sharpness-aware minimisation (Foret et al. 2021): :func:`sam`.
* Logit clipping (Wei et al. 2023, "Mitigating memorization of noisy labels by
  clipping the model prediction"): :func:`clip_logits`.
* Generalised label smoothing, GLS (Wei et al. 2022, "To smooth or not?"):
  :func:`smooth_targets`.
* MentorMix (Jiang et al. 2020) with the threshold MentorNet of the published
  SAP training code: :func:`mentormix_loss` and its parts.

Losses are per sample (shape ``(B,)``), as in optax; callers take the mean.
Targets are either integer labels ``(B,)`` or class distributions ``(B, K)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from sap_jax import losses as _losses

Array = jax.Array
LossFn = Callable[[Array, Array], Array]

__all__ = [
  "MentorMixState",
  "batch_percentile",
  "clip_logits",
  "cross_entropy",
  "make_loss_fn",
  "mentormix_init",
  "mentormix_loss",
  "mentormix_mix",
  "mentornet_weights",
  "mix",
  "mixup",
  "mixup_params",
  "normalize_by_global_norm",
  "sam",
  "sample_beta",
  "smooth_targets",
]


# --------------------------------------------------------------------------
# Cross-entropy with hard or soft targets.
# --------------------------------------------------------------------------


def _as_distribution(targets: Array, num_classes: int) -> Array:
  """Returns ``targets`` as a ``(B, K)`` float array (one-hot for labels)."""
  if targets.ndim == 1:
    return jax.nn.one_hot(targets, num_classes)
  return targets


def cross_entropy(logits: Array, targets: Array) -> Array:
  """Per-sample cross-entropy ``-Σ_k t_k log softmax(z)_k``, computed in float32.

  Integer labels go through :func:`sap_jax.losses.cross_entropy`, the package's one
  per-example cross-entropy; soft targets through the same sum written out.

  Args:
    logits: ``(B, K)`` unnormalised scores.
    targets: integer labels ``(B,)`` or target distributions ``(B, K)``. Soft
      targets may have negative entries (generalised label smoothing).

  Returns:
    ``(B,)`` float32 losses.
  """
  if targets.ndim == 1:
    return _losses.cross_entropy(logits, targets)
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(targets * log_p, axis=-1)


# --------------------------------------------------------------------------
# Logit clipping and generalised label smoothing.
# --------------------------------------------------------------------------


def clip_logits(logits: Array, tau: float, eps: float = 1e-7) -> Array:
  """LogitClip: rescales each logit vector to L2 norm at most ``tau``.

  ``z ← z · min(1, τ / ‖z‖₂)`` per sample (Wei et al. 2023). Vectors whose
  norm is already ``≤ τ`` are returned unchanged; gradients flow through the
  norm, as in the authors' code.

  Args:
    logits: ``(..., K)`` logits.
    tau: the norm bound τ > 0.
    eps: guards the division for all-zero logits.

  Returns:
    The clipped logits, same shape and dtype.
  """
  norm = jnp.linalg.norm(logits, axis=-1, keepdims=True)
  scale = jnp.minimum(1.0, tau / jnp.maximum(norm, eps))
  return logits * scale.astype(logits.dtype)


def smooth_targets(targets: Array, num_classes: int, rate: float) -> Array:
  """Generalised label smoothing targets ``(1 − r)·y + r/K``.

  With ``r > 0`` this is ordinary label smoothing; with ``r < 0`` (negative
  label smoothing, Wei et al. 2022) the true class gets more than 1 and the
  others get ``r/K < 0``. Every row still sums to 1. The cross-entropy with
  these targets equals the published ``loss_gls``:
  ``(1 − r)·NLL(y) + r·mean_k(−log p_k)``.

  Args:
    targets: integer labels ``(B,)`` or distributions ``(B, K)`` (e.g. MixUp
      targets).
    num_classes: K.
    rate: the smoothing rate r.

  Returns:
    ``(B, K)`` float targets.
  """
  dist = _as_distribution(targets, num_classes)
  return (1.0 - rate) * dist + rate / num_classes


def make_loss_fn(*, label_smoothing: float = 0.0, logit_clip: float | None = None) -> LossFn:
  """Builds the per-sample training loss.

  Composes, in this order, logit clipping and generalised label smoothing around the
  cross-entropy. With the defaults it is plain cross-entropy.

  Args:
    label_smoothing: the smoothing rate r in (-1, 1); 0 disables it.
    logit_clip: the norm bound τ > 0 of :func:`clip_logits`; None disables it.

  Returns:
    ``loss_fn(logits, targets) -> (B,)`` where ``targets`` are integer labels
    ``(B,)`` or class distributions ``(B, K)``.
  """
  rate = float(label_smoothing)
  tau = logit_clip
  if not -1.0 < rate < 1.0:
    raise ValueError(
      f"label_smoothing={rate} is outside (-1, 1); pass a rate r with -1 < r < 1 (0 disables it)."
    )
  if tau is not None and not tau > 0:
    raise ValueError(
      f"logit_clip={tau} must be a positive norm bound; pass tau > 0 or None to disable it."
    )

  def loss_fn(logits: Array, targets: Array) -> Array:
    if tau is not None:
      logits = clip_logits(logits, tau)
    if rate != 0.0:
      targets = smooth_targets(targets, logits.shape[-1], rate)
    return cross_entropy(logits, targets)

  return loss_fn


# --------------------------------------------------------------------------
# MixUp.
# --------------------------------------------------------------------------


def sample_beta(rng: Array, alpha: float, shape: tuple[int, ...] = ()) -> Array:
  """Samples Beta(α, α) as ``G₁ / (G₁ + G₂)`` with ``Gᵢ ~ Gamma(α)``.

  Computed in log space, ``sigmoid(log G₁ − log G₂)``, so small α does not
  underflow to 0/0. Same distribution as ``jax.random.beta(rng, α, α)`` but
  one ``loggamma`` call instead of two, which halves its (large) XLA compile
  time.

  Args:
    rng: PRNG key.
    alpha: concentration α > 0.
    shape: output shape.

  Returns:
    float32 samples in [0, 1].
  """
  log_g = jax.random.loggamma(rng, jnp.full(tuple(shape) + (2,), alpha, jnp.float32))
  return jax.nn.sigmoid(log_g[..., 0] - log_g[..., 1])


def mixup_params(rng: Array, batch_size: int, alpha: float) -> tuple[Array, Array]:
  """Samples MixUp's coefficient and partner permutation.

  Args:
    rng: PRNG key.
    batch_size: B.
    alpha: Beta concentration α > 0.

  Returns:
    ``(lam, perm)``: a scalar λ ~ Beta(α, α) and a random permutation of
    ``range(B)`` (sample i is mixed with sample ``perm[i]``).
  """
  k_lam, k_perm = jax.random.split(rng)
  lam = sample_beta(k_lam, alpha)
  perm = jax.random.permutation(k_perm, batch_size)
  return lam, perm


def mix(x: Array, y: Array, lam: Array, perm: Array) -> tuple[Array, Array]:
  """The convex combination ``λ·a + (1 − λ)·a[perm]`` of inputs and targets.

  Args:
    x: ``(B, ...)`` inputs (integer inputs are promoted to float32).
    y: ``(B, K)`` targets.
    lam: scalar λ.
    perm: ``(B,)`` partner indices.

  Returns:
    ``(x_mixed, y_mixed)``.
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  lam_x = lam.astype(x.dtype)
  x_mixed = lam_x * x + (1.0 - lam_x) * x[perm]
  y_mixed = lam * y + (1.0 - lam) * y[perm]
  return x_mixed, y_mixed


def mixup(rng: Array, x: Array, y_onehot: Array, alpha: float) -> tuple[Array, Array]:
  """MixUp (Zhang et al. 2018) on one batch.

  One λ ~ Beta(α, α) per batch and a random permutation as partners, like
  ``torchvision.transforms.v2.MixUp`` used by the published training code
  (which rolls the batch instead of permuting it).

  Args:
    rng: PRNG key; ``mixup_params(rng, B, alpha)`` gives the λ and partners
      used.
    x: ``(B, ...)`` inputs.
    y_onehot: ``(B, K)`` one-hot (or soft) targets.
    alpha: Beta concentration α > 0.

  Returns:
    ``(x_mixed, y_mixed)`` with ``x_mixed = λ x + (1 − λ) x[perm]`` and the
    same combination of the targets.
  """
  lam, perm = mixup_params(rng, x.shape[0], alpha)
  return mix(x, y_onehot, lam, perm)


# --------------------------------------------------------------------------
# SAM.
# --------------------------------------------------------------------------


def normalize_by_global_norm(eps: float = 1e-12) -> optax.GradientTransformation:
  """Scales updates to unit global L2 norm: ``g / (‖g‖₂ + eps)``.

  Like ``optax.contrib.normalize`` but with the ``eps`` of the reference SAM
  implementation (davda54/sam), so an all-zero gradient gives a zero
  perturbation instead of NaN.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    scale = 1.0 / (optax.tree.norm(updates) + eps)
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def sam(
  base_optimizer: optax.GradientTransformation, rho: float, eps: float = 1e-12
) -> optax.GradientTransformationExtraArgs:
  """Sharpness-aware minimisation around ``base_optimizer``.

  One step, as in Foret et al. (2021) and the davda54/sam code used by the
  published SAP training scripts::

    g   = ∇L(θ)                                  (loss gradient only)
    ε   = ρ · g / (‖g‖₂ + eps)                   (global norm over all params)
    g'  = ∇L(θ + ε)
    θ  ← θ + base_optimizer.update(g', state, θ) (weight decay etc. use θ)

  Built on ``optax.contrib.sam`` in opaque mode with ``sync_period=2`` and the
  adversarial optimizer ``chain(normalize_by_global_norm(eps), sgd(ρ))``, so
  ``update`` must be called with ``grad_fn=lambda params, i: ∇L(params)``;
  ``updates`` passed to ``update`` are the gradient at θ. Each call is one
  full SAM step (two gradient evaluations). The caller decides what happens
  to side outputs of the second forward pass: :mod:`sap_jax.train` keeps the
  BatchNorm statistics of the first (unperturbed) pass.

  Args:
    base_optimizer: the optimizer applied with the perturbed gradient.
    rho: neighbourhood radius ρ > 0.
    eps: added to the gradient norm.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  if not rho > 0:
    raise ValueError(
      f"SAM needs rho > 0, got {rho}; use the base optimizer directly to disable SAM."
    )
  adv = optax.chain(normalize_by_global_norm(eps), optax.sgd(rho))
  return optax.contrib.sam(base_optimizer, adv, sync_period=2, opaque_mode=True)


# --------------------------------------------------------------------------
# MentorMix.
# --------------------------------------------------------------------------


class MentorMixState(NamedTuple):
  """Running (EMA) loss thresholds of MentorMix, carried across steps.

  Attributes:
    loss_p: threshold for the first weighting (on the unmixed batch).
    loss_p_mix: threshold for the second weighting (on the mixed batch).
  """

  loss_p: Array
  loss_p_mix: Array


def mentormix_init() -> MentorMixState:
  """Initial thresholds (0, as in the published code)."""
  return MentorMixState(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))


def batch_percentile(losses: Array, gamma_p: float) -> Array:
  """The γp-percentile of a batch of losses as the published code takes it.

  ``sort(losses)[min(floor(B·γp), B − 1)]`` (ascending; no interpolation).

  Args:
    losses: ``(B,)`` per-sample losses.
    gamma_p: γp in (0, 1].

  Returns:
    A scalar.
  """
  b = losses.shape[0]
  k = min(int(b * gamma_p), b - 1)
  return jnp.sort(losses)[k]


def mentornet_weights(losses: Array, threshold: Array) -> Array:
  """Threshold MentorNet: weight 1 where ``loss < threshold``, else 0.

  The ``'threshold'`` MentorNet of the published code (``loss_diff < 0``
  with ``loss_diff = loss − loss_p``), i.e. the self-paced weighting of
  Jiang et al. (2018) without a learned network.

  Args:
    losses: ``(B,)`` per-sample losses (no gradient needed).
    threshold: scalar threshold.

  Returns:
    ``(B,)`` float32 weights in {0, 1}.
  """
  return (losses < threshold).astype(jnp.float32)


def mentormix_mix(
  rng: Array, x: Array, labels: Array, weights: Array, alpha: float
) -> tuple[Array, Array, Array]:
  """MentorMix's weighted MixUp.

  For each sample i:

  * partner j ~ Categorical(softmax(v)) over the batch (with replacement), as
    in the published code (``Categorical(F.softmax(v))``): a clean-looking
    sample (v = 1) is e ≈ 2.72 times as likely a partner as one with v = 0;
  * λ ~ Beta(α, α), λ_max = max(λ, 1 − λ),
    ``λ_i = v_i·λ_max + (1 − v_i)·(1 − λ_max)``: a sample judged clean
    dominates its mix, a suspected-noisy one is dominated by its partner;
  * ``x̃_i = λ_i x_i + (1 − λ_i) x_j``.

  Args:
    rng: PRNG key.
    x: ``(B, ...)`` inputs.
    labels: ``(B,)`` integer labels.
    weights: ``(B,)`` MentorNet weights v.
    alpha: Beta concentration α > 0.

  Returns:
    ``(x_mixed, partner_labels, lam)`` with ``lam`` of shape ``(B,)``.
  """
  x, labels = jnp.asarray(x), jnp.asarray(labels)
  b = x.shape[0]
  k_partner, k_lam = jax.random.split(rng)
  weights = jax.lax.stop_gradient(weights)
  partner = jax.random.categorical(k_partner, weights, shape=(b,))
  lam = sample_beta(k_lam, alpha, (b,))
  lam_max = jnp.maximum(lam, 1.0 - lam)
  lam = weights * lam_max + (1.0 - weights) * (1.0 - lam_max)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  lam_x = lam.reshape((b,) + (1,) * (x.ndim - 1)).astype(x.dtype)
  x_mixed = lam_x * x + (1.0 - lam_x) * x[partner]
  return x_mixed, labels[partner], lam


def mentormix_loss(
  forward: Callable[[Array], tuple[Array, Any]],
  loss_fn: LossFn,
  x: Array,
  labels: Array,
  rng: Array,
  state: MentorMixState,
  *,
  gamma_p: float = 0.85,
  alpha: float = 0.2,
  ema: float = 0.05,
  burn_in: Array | bool = False,
) -> tuple[Array, tuple[MentorMixState, Array, Any]]:
  """MentorMix loss with the threshold MentorNet (no learned MentorNet).

  The exact rule of ``MentorMixLoss`` in the published training code
  (github.com/sangamesh-kodge/LabelNoiseRobustness, ``utils.py``, itself
  taken from LJY-HY/MentorMix_pytorch), after Jiang et al. (2020),
  "Beyond Synthetic Noise: Deep Learning on Controlled Noisy Labels"::

    ℓ_i      = loss(f(x_i), y_i)                      (no gradient)
    p        = ema·p_prev + (1 − ema)·sort(ℓ)[⌊B·γp⌋]
    v_i      = 1[ℓ_i < p]                 (Bernoulli(½) during burn-in)
    x̃, y_j, λ = mentormix_mix(x, y, v, α)
    ℓ̃_i      = λ_i·loss(f(x̃_i), y_i) + (1 − λ_i)·loss(f(x̃_i), y_j)
    p̃        = ema·p̃_prev + (1 − ema)·sort(ℓ̃)[⌊B·γp⌋]
    ṽ_i      = 1[ℓ̃_i < p̃]                 (Bernoulli(½) during burn-in)
    L        = mean_i(ṽ_i · ℓ̃_i)                     (mean over all B)

  Args:
    forward: ``forward(x) -> (logits, aux)``, the training-mode forward pass
      as a function of the parameters being differentiated; the ``aux`` of
      the mixed pass is returned (e.g. new BatchNorm statistics), that of the
      first pass is dropped.
    loss_fn: per-sample loss ``loss_fn(logits, labels) -> (B,)``.
    x: ``(B, ...)`` inputs.
    labels: ``(B,)`` integer labels.
    rng: PRNG key.
    state: the EMA thresholds from the previous step.
    gamma_p: percentile γp in (0, 1].
    alpha: Beta concentration of the mixing coefficient.
    ema: weight of the previous threshold in its moving average.
    burn_in: if true, both weightings are replaced by Bernoulli(½) draws (the
      published code does this for the first ``min(10, 0.2·epochs)`` epochs).

  Returns:
    ``(loss, (new_state, clean_logits, aux))``; ``clean_logits`` are the
    (gradient-stopped) logits of the unmixed batch.
  """
  k_v, k_mix, k_vmix = jax.random.split(rng, 3)
  b = labels.shape[0]

  clean_logits, _ = forward(x)
  clean_logits = jax.lax.stop_gradient(clean_logits)
  losses = loss_fn(clean_logits, labels)
  loss_p = ema * state.loss_p + (1.0 - ema) * batch_percentile(losses, gamma_p)
  v = jnp.where(
    burn_in,
    jax.random.bernoulli(k_v, 0.5, (b,)).astype(jnp.float32),
    mentornet_weights(losses, loss_p),
  )

  x_mixed, partner_labels, lam = mentormix_mix(k_mix, x, labels, v, alpha)
  mixed_logits, aux = forward(x_mixed)
  mixed_losses = lam * loss_fn(mixed_logits, labels) + (1.0 - lam) * loss_fn(
    mixed_logits, partner_labels
  )
  detached = jax.lax.stop_gradient(mixed_losses)
  loss_p_mix = ema * state.loss_p_mix + (1.0 - ema) * batch_percentile(detached, gamma_p)
  v_mix = jnp.where(
    burn_in,
    jax.random.bernoulli(k_vmix, 0.5, (b,)).astype(jnp.float32),
    mentornet_weights(detached, loss_p_mix),
  )
  loss = jnp.mean(mixed_losses * v_mix)
  chex.assert_shape(loss, ())
  return loss, (MentorMixState(loss_p, loss_p_mix), clean_logits, aux)
