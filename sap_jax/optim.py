"""The optimizer: ``torch.optim.SGD`` as an optax chain, its schedules, and its grid form.

One builder, `sgd`, makes every optimizer of the package from explicit arguments:
training (`make_optimizer`, from a `TrainConfig`, with a schedule and optionally SAM) and
the baselines' continued training (`tunable_sgd`: the same chain with its learning rate,
momentum and weight decay held in the optimizer state by ``optax.inject_hyperparams``, so
a hyperparameter grid runs through one compilation).
"""

from __future__ import annotations

import functools
from typing import Any

import optax

from sap_jax import robust
from sap_jax.train_config import TrainConfig

__all__ = ["make_optimizer", "make_schedule", "sgd", "tunable_sgd", "tunable_sgd_init"]


def _is_static_zero(value: Any) -> bool:
  return isinstance(value, (int, float)) and value == 0


def sgd(
  learning_rate: optax.ScalarOrSchedule,
  momentum: Any = 0.9,
  nesterov: bool = False,
  weight_decay: Any = 0.0,
) -> optax.GradientTransformation:
  """SGD with momentum and L2 weight decay, exactly as ``torch.optim.SGD``.

  ``chain(add_decayed_weights(wd), sgd(lr, μ, nesterov))``, i.e. with ``g`` the gradient::

    d = g + wd·θ
    b ← μ·b + d
    θ ← θ − lr_t·b            (Nesterov: θ ← θ − lr_t·(d + μ·b))

  (dampening 0). The decay applies to every parameter, BatchNorm scale/bias and biases
  included, as PyTorch's default single param group; ``batch_stats`` are not parameters
  and are never decayed. A weight decay or momentum given as the Python number 0 drops
  its part of the chain (no momentum buffers); array values (e.g. injected
  hyperparameters) always keep it, and a 0 there computes the same numbers.

  Args:
    learning_rate: a float, scalar array or optax schedule.
    momentum: μ (float or scalar array).
    nesterov: Nesterov momentum.
    weight_decay: the L2 coefficient wd (float or scalar array).

  Returns:
    The optax transformation.
  """
  parts = []
  if not _is_static_zero(weight_decay):
    parts.append(optax.add_decayed_weights(weight_decay))
  mu = None if _is_static_zero(momentum) else momentum
  parts.append(optax.sgd(learning_rate, momentum=mu, nesterov=nesterov))
  return optax.chain(*parts)


def make_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
  """Learning rate as a function of the step count (0-based).

  * ``"constant"``: ``lr``.
  * ``"step"``: ``lr`` until step ``⌊0.5·T⌋``, then ``0.1·lr`` until step
    ``⌊0.75·T⌋``, then ``0.01·lr``; T = epochs · steps_per_epoch.
  * ``"cosine"``: ``lr · ½(1 + cos(π·min(t, T)/T))``.

  Args:
    config: the training config.
    steps_per_epoch: optimizer steps per epoch.

  Returns:
    An optax schedule.
  """
  if steps_per_epoch < 1:
    raise ValueError(
      f"steps_per_epoch={steps_per_epoch} must be >= 1; the batch size may exceed the "
      "number of samples."
    )
  total = config.epochs * steps_per_epoch
  lr = config.learning_rate
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  if config.schedule == "step":
    return optax.piecewise_constant_schedule(lr, {int(0.5 * total): 0.1, int(0.75 * total): 0.1})
  return optax.cosine_decay_schedule(lr, decay_steps=total)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """The training optimizer of ``config``: `sgd` on `make_schedule`, SAM-wrapped if asked.

  With ``sam_rho > 0`` the chain is wrapped in :func:`sap_jax.robust.sam`, whose
  ``update`` needs a ``grad_fn``. Equal ``config.part("optimizer")`` and
  ``steps_per_epoch`` return the same object (optax transformations are immutable), so
  train states of runs that differ only in e.g. the seed have equal pytree definitions
  and share the compiled training step.

  Args:
    config: the training config.
    steps_per_epoch: optimizer steps per epoch (for the schedule).

  Returns:
    The optax transformation.
  """
  return _cached_optimizer(config.part("optimizer"), steps_per_epoch)


@functools.lru_cache(maxsize=64)
def _cached_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  tx = sgd(
    make_schedule(config, steps_per_epoch),
    momentum=config.momentum,
    nesterov=config.nesterov,
    weight_decay=config.weight_decay,
  )
  if config.sam_rho > 0:
    tx = robust.sam(tx, config.sam_rho)
  return tx


@functools.cache
def tunable_sgd(nesterov: bool = False) -> optax.GradientTransformationExtraArgs:
  """`sgd` with ``learning_rate``, ``momentum`` and ``weight_decay`` in its state.

  ``optax.inject_hyperparams(sgd)``: the three hyperparameters are read from
  ``opt_state.hyperparams`` at every update, not fixed in the transformation, and the
  same object is returned for every call with the same ``nesterov``. A jitted step that
  takes the transformation statically therefore compiles once for a whole grid of
  values; `tunable_sgd_init` makes the state holding one setting.

  Args:
    nesterov: Nesterov momentum (static).

  Returns:
    The transformation.
  """
  return optax.inject_hyperparams(sgd)(
    learning_rate=0.0, momentum=0.0, nesterov=nesterov, weight_decay=0.0
  )


def tunable_sgd_init(
  params: Any,
  *,
  learning_rate: Any,
  momentum: Any,
  weight_decay: Any,
  nesterov: bool = False,
) -> optax.OptState:
  """The `tunable_sgd` state for one setting: zero momentum buffers, these values.

  Args:
    params: the parameters to optimise.
    learning_rate: lr (constant).
    momentum: μ.
    weight_decay: wd.
    nesterov: must match the `tunable_sgd` that updates the state.

  Returns:
    An ``optax.InjectHyperparamsState`` (hyperparameters in the params' float dtype).
  """
  return optax.inject_hyperparams(sgd)(
    learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
  ).init(params)
