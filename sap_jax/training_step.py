"""The jitted training step of `sap_jax.train.train_model` and the run's random streams.

:func:`train_step` is one optimizer step on a batch (MixUp, SAM, logit clipping,
generalised label smoothing, MentorMix from :mod:`sap_jax.robust`), compiled once per
option set; :func:`run_rngs` derives every random stream of a run from its seed.
`sap_jax.train` re-exports both, and lists the compiled program in its ``JITTED``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sap_jax import robust
from sap_jax.train_config import TrainConfig
from sap_jax.train_state import TrainState, train_forward

Array = jax.Array

__all__ = ["RunRngs", "jitted_train_step", "run_rngs", "train_step"]


class RunRngs(NamedTuple):
  """Every random stream of one training run, all from its seed (:func:`run_rngs`).

  Attributes:
    init: PRNG key of parameter initialisation (:func:`create_train_state`).
    steps: step ``t``'s randomness (MixUp, MentorMix, dropout) is
      ``fold_in(steps, t)``.
    data_order: the generator of the per-epoch data order
      (:func:`sap_jax.batching.epoch_batches`).
  """

  init: Array
  steps: Array
  data_order: np.random.Generator


def run_rngs(seed: int) -> RunRngs:
  """The random streams of a training run with ``TrainConfig.seed = seed``.

  The keys come from ``jax.random.key(seed, impl="rbg")``, split into the init and step
  keys: XLA compiles the "rbg" generator several times faster than threefry on CPU
  (tiny ResNet18 init: 4 s against 46 s on 2 loaded cores), and it is just as
  deterministic for a seed on one platform. The data order is
  ``np.random.default_rng(seed)``.

  Args:
    seed: the run's seed.

  Returns:
    A :class:`RunRngs` (its generator is fresh: each call restarts the data order).
  """
  init_key, step_key = jax.random.split(jax.random.key(seed, impl="rbg"))
  return RunRngs(init=init_key, steps=step_key, data_order=np.random.default_rng(seed))


def _mentormix_burn_in_epochs(config: TrainConfig) -> float:
  """Published rule: random weights while epoch < min(burn-in, 0.2·epochs)."""
  return min(config.mentormix_burnin_epochs, 0.2 * config.epochs)


def train_step(
  state: TrainState,
  x: Array,
  y: Array,
  rng: Array,
  epoch: Array | int = 0,
  *,
  config: TrainConfig,
) -> tuple[TrainState, dict[str, Array]]:
  """One optimizer step on a batch (compiled; one compilation per option set).

  The objective is ``mean(loss_fn(f(x), targets))`` with
  ``loss_fn = robust.make_loss_fn(label_smoothing=…, logit_clip=…)``, on MixUp'd
  inputs/targets when ``mixup_alpha > 0``, or the MentorMix loss when ``mentormix``.
  With ``sam_rho > 0`` the gradient is taken at the SAM-perturbed parameters (same
  batch, MixUp draw and dropout mask); BatchNorm statistics come from the first
  (unperturbed) forward pass, and with MentorMix from the mixed-batch pass. The work
  runs in a jitted function whose static argument is ``config.part("step")``; this
  wrapper is itself traceable (``jax.jit(functools.partial(train_step, config=c))``
  works).

  Args:
    state: the current state (its ``tx`` must come from the same config).
    x: ``(B, ...)`` inputs.
    y: ``(B,)`` integer (noisy) labels.
    rng: PRNG key for MixUp/MentorMix/dropout.
    epoch: 0-based epoch (only MentorMix's burn-in reads it).
    config: the training config.

  Returns:
    ``(new_state, {"loss", "accuracy"})``; the accuracy is of the training
    forward pass on the unmixed labels ``y``.
  """
  burn_in = epoch < _mentormix_burn_in_epochs(config)
  return jitted_train_step(state, x, y, rng, burn_in, options=config.part("step"))


@functools.partial(jax.jit, static_argnames=("options",))
def jitted_train_step(
  state: TrainState, x: Array, y: Array, rng: Array, burn_in: Array, *, options: TrainConfig
):
  loss_fn = robust.make_loss_fn(
    label_smoothing=options.label_smoothing, logit_clip=options.logit_clip
  )
  k_mix, k_dropout = jax.random.split(rng)

  def forward(params, inputs):
    return train_forward(state, params, inputs, k_dropout)

  def objective(params):
    if options.mentormix:
      loss, (mm_state, logits, batch_stats) = robust.mentormix_loss(
        functools.partial(forward, params),
        loss_fn,
        x,
        y,
        k_mix,
        state.mentormix,
        gamma_p=options.mentormix_gamma,
        alpha=options.mentormix_alpha,
        ema=options.mentormix_ema,
        burn_in=burn_in,
      )
      return loss, (logits, batch_stats, mm_state)
    inputs, targets = x, y
    if options.mixup_alpha > 0:
      inputs, targets = robust.mixup(
        k_mix, x, jax.nn.one_hot(y, state.num_classes), options.mixup_alpha
      )
    logits, batch_stats = forward(params, inputs)
    loss = jnp.mean(loss_fn(logits, targets))
    return loss, (logits, batch_stats, state.mentormix)

  grad_and_aux = jax.value_and_grad(objective, has_aux=True)
  (loss, (logits, batch_stats, mm_state)), grads = grad_and_aux(state.params)
  if options.sam_rho > 0:

    def grad_fn(params, _):
      return jax.grad(lambda p: objective(p)[0])(params)

    updates, opt_state = state.tx.update(grads, state.opt_state, state.params, grad_fn=grad_fn)
  else:
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    opt_state=opt_state,
    batch_stats=batch_stats,
    mentormix=mm_state,
  )
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y)
  return new_state, {"loss": loss, "accuracy": accuracy}
