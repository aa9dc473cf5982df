"""Finetune: continue training on the samples the model is surest of.

The baseline of the SAP paper (Kodge et al. 2025, "Finetune, 5000 retain
samples"): rank the training samples by their cross-entropy on the noisy labels
under the trained model, keep the ``n_retain`` lowest ("retain" set, the same
ranking SAP uses for its trusted set) and continue training the model on them
with plain cross-entropy and SGD. The learning rate is chosen from a small grid
on the noisy validation split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sap_jax import train as tr
from sap_jax.baselines import base
from sap_jax.batching import epoch_batches
from sap_jax.data.sources import is_source, source_labels
from sap_jax.losses import cross_entropy
from sap_jax.types import Variables

__all__ = ["DEFAULT_GRID", "finetune", "finetune_step", "finetune_variables"]

DEFAULT_GRID: Mapping[str, Sequence[Any]] = {"lr": (1e-3, 1e-2, 5e-2)}
"""Default search: three learning rates (3 settings)."""


@jax.jit
def finetune_step(
  state: tr.TrainState, x: jax.Array, y: jax.Array, rng: jax.Array
) -> tuple[tr.TrainState, jax.Array]:
  """One SGD step on ``mean CE(f(x), y)`` (train mode; BatchNorm stats updated).

  ``state`` comes from :func:`sap_jax.train.state_from_variables`, whose optimizer holds
  its hyperparameters in the state: one compilation serves a whole grid.

  Args:
    state: the model being trained and its optimizer.
    x: ``(B, ...)`` inputs.
    y: ``(B,)`` labels.
    rng: the step's dropout key.

  Returns:
    ``(state, loss)`` with the loss before the step.
  """

  def objective(params):
    logits, new_stats = tr.train_forward(state, params, x, rng)
    return jnp.mean(cross_entropy(logits, y)), new_stats

  (loss, new_stats), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  return state.apply_gradients(grads=grads, batch_stats=new_stats), loss


JITTED = {"finetune.step": finetune_step}
"""The module's compiled programs (see `sap_jax.compile_cache`)."""


def finetune_variables(
  model: nn.Module,
  variables: Variables,
  x: Any,
  y: Any,
  *,
  lr: float,
  epochs: int,
  batch_size: int = 128,
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
  seed: int = 0,
) -> Variables:
  """Continues training ``variables`` on ``(x, y)``.

  Args:
    model: the Linen module.
    variables: the starting point.
    x: inputs to train on (the retain set): an array, or a source (a ``Subset`` view),
      read through the feeder in the same batches.
    y: their labels; with a source, None takes its records' labels.
    lr: learning rate (constant).
    epochs: passes over ``x``; each is ``ceil(n / batch_size)`` steps
      (:func:`sap_jax.batching.epoch_batches`).
    batch_size: samples per step (clipped to ``len(x)``).
    momentum: SGD momentum (fresh buffers).
    weight_decay: L2 coefficient, as ``torch.optim.SGD``.
    seed: data order and dropout (:func:`~sap_jax.baselines.base.method_rngs`).

  Returns:
    The trained variables.
  """
  if epochs < 0:
    raise ValueError(f"epochs must be >= 0, got {epochs}.")
  if is_source(x):
    y = source_labels(x) if y is None else np.asarray(y, np.int32)
  else:
    x, y = np.asarray(x), np.asarray(y, np.int32)
  state = tr.state_from_variables(
    model, variables, learning_rate=lr, momentum=momentum, weight_decay=weight_decay
  )
  order, key = base.method_rngs(seed)
  step = 0
  for _ in range(epochs):
    batches = epoch_batches(order, len(x), batch_size)
    for idx, xb in zip(batches, base.input_batches(x, batches, "retain set")):
      state, loss = finetune_step(state, xb, y[idx], jax.random.fold_in(key, step))
      step += 1
  if step and not np.isfinite(float(loss)):
    raise FloatingPointError(
      f"Finetune loss became {float(loss)} at lr={lr}; lower the learning rate."
    )
  return base.variables_like(variables, state.params, state.batch_stats)


def finetune(
  n_retain: int = 5000,
  *,
  lr: float = 1e-2,
  epochs: int = 10,
  batch_size: int = 128,
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
  grid: Mapping[str, Sequence[Any]] | None = DEFAULT_GRID,
  progress: bool = False,
  keep_original: bool = True,
) -> base.Method:
  """Finetune on the ``n_retain`` lowest-loss training samples.

  Args:
    n_retain: retain-set size (paper: 5000), clipped by
      :func:`~sap_jax.baselines.base.clip_budget`.
    lr: learning rate when ``grid`` does not vary it.
    epochs: passes over the retain set.
    batch_size: samples per step.
    momentum: SGD momentum.
    weight_decay: L2 coefficient.
    grid: values to search over for ``lr`` and/or ``epochs`` (default: 3 learning
      rates); None trains only ``lr``/``epochs`` (1 setting).
    progress: show a bar over settings.
    keep_original: return the unchanged model when no setting beats it on
      the noisy validation split (the rule SAP's α sweep follows).

  Returns:
    The method ``"finetune"``; ``details["retain_indices"]`` are the samples
    trained on.
  """
  hparams = dict(
    n_retain=n_retain,
    lr=lr,
    epochs=epochs,
    batch_size=batch_size,
    momentum=momentum,
    weight_decay=weight_decay,
    grid=grid,
  )
  settings_defaults = {"lr": lr, "epochs": epochs}
  base.expand_grid(settings_defaults, grid)  # validate early

  def body(task: base.CorrectionTask) -> base.Outcome:
    n = base.clip_budget(n_retain, task.n_train)
    retain = base.lowest_loss(base.train_losses(task), n)
    x_r, y_r = task.train_subset(retain)
    settings = base.expand_grid(settings_defaults, grid)

    def fit(lr, epochs):
      return finetune_variables(
        task.model,
        task.variables,
        x_r,
        y_r,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        momentum=momentum,
        weight_decay=weight_decay,
        seed=task.seed,
      )

    best, setting, records = base.search(
      task, settings, fit, progress=progress, keep_original=keep_original, desc="finetune"
    )
    chosen = {**setting, "n_retain": n, "n_retain_requested": n_retain}
    details = {
      "settings": records,
      "retain_indices": retain,
      "budget_rule": base.BUDGET_RULE,
      "vanilla_val_accuracy": base.val_accuracy(task, task.variables),
    }
    return base.Outcome(best, len(settings), chosen, details)

  return base.make_method("finetune", body, hparams)
