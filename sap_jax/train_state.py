"""The state of a training run: model, parameters, optimizer and BatchNorm statistics.

A :class:`TrainState` is made fresh for a run (:func:`create_train_state`) or from
trained variables for continued training (:func:`state_from_variables`, the baselines'
Finetune and SCRUB), and every step computes its training-mode forward pass with
:func:`train_forward`. `sap_jax.train` re-exports all of them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct
from flax.training import train_state as flax_train_state

from sap_jax import optim, robust
from sap_jax.forward_checks import check_logits_output, traced_output
from sap_jax.hashable import ModuleApply
from sap_jax.optim import make_optimizer
from sap_jax.train_config import TrainConfig
from sap_jax.types import Variables

Array = jax.Array

__all__ = [
  "TrainState",
  "create_train_state",
  "model_output_width",
  "state_from_variables",
  "train_forward",
  "variables_of",
]

_COLLECTIONS = ("params", "batch_stats")

MODULE_OUTPUT_FIX = (
  "training needs a module whose __call__ returns the logits as one (N, K) array: wrap it, "
  "e.g. a module whose __call__ returns inner(x, train){index}"
)


class TrainState(flax_train_state.TrainState):
  """Flax TrainState plus BatchNorm statistics and MentorMix thresholds.

  Attributes:
    batch_stats: the ``batch_stats`` collection, ``{}`` for models without
      BatchNorm.
    mentormix: running loss thresholds of MentorMix (unused otherwise).
    num_classes: K, read from the model's output at initialisation (0 in states
      made by :func:`state_from_variables`; only MixUp reads it).
  """

  batch_stats: Any = struct.field(default_factory=dict)
  mentormix: robust.MentorMixState = struct.field(default_factory=robust.mentormix_init)
  num_classes: int = struct.field(pytree_node=False, default=0)


def variables_of(state: TrainState) -> Variables:
  """The model variables held by ``state`` as a plain dict."""
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def model_output_width(model: nn.Module, sample_x: Any) -> int:
  """K, the number of logits ``model`` outputs, without initialising it.

  A shape-only trace (``jax.eval_shape``) of ``model.init_with_output`` on one sample:
  no parameters are made and nothing is compiled, so training checks its labels
  against K before any work.

  Args:
    model: a Linen module called as ``model.apply(v, x, train=bool)``.
    sample_x: inputs; only the shape and dtype of one sample are used.

  Raises:
    ValueError: the model fails on the sample, or returns anything but ``(N, K)`` logits.
  """
  sample = jax.ShapeDtypeStruct((1, *sample_x.shape[1:]), sample_x.dtype)

  def init_logits(x):
    key = jax.random.key(0)
    return model.init_with_output({"params": key, "dropout": key}, x, train=False)[0]

  out = traced_output(init_logits, sample, what="model.init(x[:1], train=False)")
  return int(
    check_logits_output(out, "model.apply(variables, x, train=False)", fix=MODULE_OUTPUT_FIX).shape[
      -1
    ]
  )


def create_train_state(
  model: nn.Module,
  sample_x: Any,
  config: TrainConfig,
  rng: Array,
  *,
  steps_per_epoch: int | None = None,
) -> TrainState:
  """Initialises the model and optimizer.

  Args:
    model: a Linen module called as ``model.apply(v, x, train=bool)``.
    sample_x: an input batch of the right shape (values unused beyond
      initialisation), e.g. ``x[:1]``.
    config: the training config.
    rng: PRNG key for parameter initialisation.
    steps_per_epoch: steps per epoch, needed by the "step" and "cosine"
      schedules; may be omitted for "constant".

  Returns:
    A :class:`TrainState` whose ``apply_fn`` calls ``model.apply`` (wrapped
    so that equal models give equal states for jit caching).
  """
  if steps_per_epoch is None:
    if config.schedule != "constant":
      raise ValueError(
        f"schedule={config.schedule!r} depends on the run length: pass "
        "steps_per_epoch= to create_train_state."
      )
    steps_per_epoch = 1
  k_params, k_dropout = jax.random.split(rng)
  logits, variables = model.init_with_output(
    {"params": k_params, "dropout": k_dropout}, jnp.asarray(sample_x), train=False
  )
  variables = dict(variables)
  extra = sorted(set(variables) - set(_COLLECTIONS))
  if extra:
    raise ValueError(
      f"Model has variable collections {extra}; train.py supports only {_COLLECTIONS}. "
      "Make those collections part of params or batch_stats."
    )
  check_logits_output(logits, "model.apply(variables, x, train=False)", fix=MODULE_OUTPUT_FIX)
  state = TrainState.create(
    apply_fn=ModuleApply(model),
    params=variables["params"],
    tx=make_optimizer(config, steps_per_epoch),
    batch_stats=variables.get("batch_stats", {}),
    mentormix=robust.mentormix_init(),
    num_classes=int(logits.shape[-1]),
  )
  # A concrete int32 step (not Python's 0) keeps the state's types fixed
  # across steps, so the jitted step compiles once.
  return state.replace(step=jnp.zeros((), jnp.int32))


def state_from_variables(
  model: nn.Module,
  variables: Variables,
  *,
  learning_rate: float,
  momentum: float = 0.9,
  weight_decay: float = 0.0,
  nesterov: bool = False,
) -> TrainState:
  """A state that continues training from ``variables`` with fresh SGD buffers.

  The optimizer is :func:`sap_jax.optim.tunable_sgd`, the hyperparameters held in
  ``opt_state``: states for different values share one pytree definition, so a jitted
  step over them compiles once for a whole hyperparameter grid. ``state.apply_gradients``
  takes one SGD step.

  Args:
    model: the Linen module of ``variables``.
    variables: ``{"params", ["batch_stats"]}`` to start from.
    learning_rate: constant learning rate.
    momentum: μ (0: plain SGD).
    weight_decay: L2 coefficient, as ``torch.optim.SGD``.
    nesterov: Nesterov momentum.

  Returns:
    A :class:`TrainState` (``num_classes`` 0).
  """
  params = variables["params"]
  opt_state = optim.tunable_sgd_init(
    params,
    learning_rate=learning_rate,
    momentum=momentum,
    weight_decay=weight_decay,
    nesterov=nesterov,
  )
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    apply_fn=ModuleApply(model),
    params=params,
    tx=optim.tunable_sgd(nesterov),
    opt_state=opt_state,
    batch_stats=variables.get("batch_stats", {}),
  )


def train_forward(
  state: TrainState, params: Any, x: Array, dropout_rng: Array
) -> tuple[Array, Any]:
  """Training-mode logits of ``params`` and the updated BatchNorm statistics.

  Args:
    state: supplies the model (``apply_fn``) and the BatchNorm statistics going in.
    params: the parameters (those being differentiated).
    x: ``(B, ...)`` inputs.
    dropout_rng: PRNG key of the ``"dropout"`` stream.

  Returns:
    ``(logits, batch_stats)``; ``batch_stats`` is ``state.batch_stats`` (``{}``) for
    models without BatchNorm.
  """
  variables = {"params": params}
  rngs = {"dropout": dropout_rng}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
    logits, updates = state.apply_fn(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
    return logits, updates["batch_stats"]
  return state.apply_fn(variables, x, train=True, rngs=rngs), state.batch_stats
