"""SCRUB (Kurmanji, Triantafillou, Hayes & Triantafillou, NeurIPS 2023).

Published as "Towards Unbounded Machine Unlearning" (arXiv 2302.09880; code
github.com/meghdadk/SCRUB). The trained model is the *teacher* (frozen); the
*student* starts as a copy of it and alternates:

* max-steps on the forget set D_f: gradient ascent on
  ``d(x) = T² · KL(p_T(teacher(x)) ‖ p_T(student(x)))`` (step on ``−mean d``),
  pushing the student away from the teacher where the data are to be forgotten;
* min-steps on the retain set D_r: descent on
  ``γ · CE(student(x), y) + α · mean d(x)``, staying close to the teacher and
  accurate where the data are kept.

``p_T(z) = softmax(z / T)``. The divergence is the one of the paper (Eq. for
``d(x; w^u)``) and of the code's ``DistillKL``: teacher distribution first,
``KL(teacher ‖ student)``, scaled by T² and averaged over the batch. (The issue
text and PAPER.md write ``KL(student‖teacher)``; both vanish exactly when
student = teacher, and we follow the published definition.)

Schedule (code's ``train_distill`` loop): for each of ``epochs`` epochs, one pass
of max-steps over the forget set if the epoch index is < ``msteps`` (the code
uses ``epoch <= msteps``, i.e. one more max epoch), then one pass of min-steps
over the retain set. SGD with momentum 0.9 and weight decay 5e-4 as in the code;
the student runs in train mode (BatchNorm batch statistics, dropout), the
teacher in eval mode (its logits are computed once).

In the SAP paper's label-noise setting the forget set is the ``n_forget``
highest-loss training samples (paper: 200) and the retain set the ``n_retain``
lowest-loss ones (paper: 1000). Defaults follow the SCRUB code's CIFAR
configuration: lr 5e-4, α 0.001, γ 0.99, T 4, msteps 2, 3 epochs, batch 128
(retain) and 32 (forget).

Note on the start: at student = teacher the divergence and its gradient are
exactly 0, so the very first max-step moves the student only through weight
decay and BatchNorm/dropout train-mode differences, as in the published code.
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

__all__ = [
  "DEFAULT_GRID",
  "PAPER_SCALE_GRID",
  "scrub",
  "scrub_kl",
  "scrub_max_step",
  "scrub_min_objective",
  "scrub_min_step",
  "scrub_variables",
]

DEFAULT_GRID: Mapping[str, Sequence[Any]] = {
  "lr": (5e-4, 5e-3),
  "alpha": (1e-3, 0.1),
  "msteps": (1, 2),
}
"""Default search: 2 × 2 × 2 = 8 settings."""

PAPER_SCALE_GRID: Mapping[str, Sequence[Any]] = {
  "lr": (1e-4, 5e-4, 1e-3, 5e-3, 1e-2),
  "alpha": (1e-3, 1e-2, 0.1, 0.5, 1.0),
  "gamma": (0.5, 0.99, 1.0),
  "msteps": (1, 2, 3),
  "epochs": (3, 5, 10),
}
"""A grid of the size the SAP paper reports for SCRUB (5·5·3·3·3 = 675
settings). The paper does not publish its grid; these values span the SCRUB
code's configurations."""


def scrub_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: Any) -> jax.Array:
  """``T² · mean_batch KL(softmax(t/T) ‖ softmax(s/T))`` (SCRUB's ``DistillKL``)."""
  t = jnp.asarray(temperature, jnp.float32)
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
  log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
  kl = jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)
  return t * t * jnp.mean(kl)


def scrub_min_objective(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  y: jax.Array,
  *,
  alpha: Any,
  gamma: Any,
  temperature: Any,
) -> jax.Array:
  """The min-step objective ``γ·mean CE(s, y) + α·scrub_kl(s, t, T)``."""
  ce = cross_entropy(student_logits, y)
  return gamma * jnp.mean(ce) + alpha * scrub_kl(student_logits, teacher_logits, temperature)


@jax.jit
def scrub_max_step(
  state: tr.TrainState, x: jax.Array, teacher_logits: jax.Array, rng: jax.Array, temperature: Any
) -> tuple[tr.TrainState, jax.Array]:
  """One max-step: SGD on ``−scrub_kl(student(x), teacher_logits)``.

  Args:
    state: the student and its optimizer (:func:`sap_jax.train.state_from_variables`;
      the hyperparameters live in the optimizer state: one compilation per grid).
    x: ``(B, ...)`` forget-set inputs.
    teacher_logits: ``(B, K)`` the teacher's eval-mode logits on ``x``.
    rng: the step's dropout key.
    temperature: T.

  Returns:
    ``(state, kl)`` with the KL before the step.
  """

  def objective(params):
    logits, stats = tr.train_forward(state, params, x, rng)
    kl = scrub_kl(logits, teacher_logits, temperature)
    return -kl, (kl, stats)

  (_, (kl, stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  return state.apply_gradients(grads=grads, batch_stats=stats), kl


@jax.jit
def scrub_min_step(
  state: tr.TrainState,
  x: jax.Array,
  y: jax.Array,
  teacher_logits: jax.Array,
  rng: jax.Array,
  temperature: Any,
  alpha: Any,
  gamma: Any,
) -> tuple[tr.TrainState, jax.Array]:
  """One min-step: SGD on :func:`scrub_min_objective`.

  Args:
    state: the student and its optimizer, as for :func:`scrub_max_step`.
    x: ``(B, ...)`` retain-set inputs.
    y: ``(B,)`` their labels.
    teacher_logits: ``(B, K)`` the teacher's eval-mode logits on ``x``.
    rng: the step's dropout key.
    temperature: T.
    alpha: weight of the KL term.
    gamma: weight of the cross-entropy.

  Returns:
    ``(state, objective)`` with the objective before the step.
  """

  def objective(params):
    logits, stats = tr.train_forward(state, params, x, rng)
    loss = scrub_min_objective(
      logits, teacher_logits, y, alpha=alpha, gamma=gamma, temperature=temperature
    )
    return loss, stats

  (loss, stats), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  return state.apply_gradients(grads=grads, batch_stats=stats), loss


JITTED = {"scrub.max_step": scrub_max_step, "scrub.min_step": scrub_min_step}
"""The module's compiled programs (see `sap_jax.compile_cache`)."""


def scrub_variables(
  model: nn.Module,
  variables: Variables,
  x_forget: Any,
  x_retain: Any,
  y_retain: Any,
  *,
  lr: float = 5e-4,
  alpha: float = 1e-3,
  gamma: float = 0.99,
  temperature: float = 4.0,
  msteps: int = 2,
  epochs: int = 3,
  batch_size: int = 128,
  forget_batch_size: int = 32,
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
  teacher_logits_forget: Any = None,
  teacher_logits_retain: Any = None,
  seed: int = 0,
) -> Variables:
  """Runs SCRUB from ``variables`` (teacher and initial student).

  Args:
    model: the Linen module.
    variables: the trained model (the teacher; the student starts here).
    x_forget: forget-set inputs: an array, or a source (a ``Subset`` view) read through
      the feeder in the same batches.
    x_retain: retain-set inputs, likewise.
    y_retain: retain-set labels; with a source, None takes its records' labels.
    lr: SGD learning rate.
    alpha: weight of the KL term in the min-steps.
    gamma: weight of the cross-entropy in the min-steps.
    temperature: distillation temperature T.
    msteps: epochs (the first ones) that include a max pass.
    epochs: total epochs.
    batch_size: retain samples per min-step.
    forget_batch_size: forget samples per max-step.
    momentum: SGD momentum.
    weight_decay: L2 coefficient.
    teacher_logits_forget: precomputed eval-mode teacher logits (else computed).
    teacher_logits_retain: likewise for the retain set.
    seed: data order and dropout.

  Returns:
    The student's variables.
  """
  if epochs < 0 or msteps < 0:
    raise ValueError(f"epochs and msteps must be >= 0, got {epochs}, {msteps}.")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
  apply_fn = tr.eval_apply_fn(model)
  x_f, x_r = (x if is_source(x) else np.asarray(x) for x in (x_forget, x_retain))
  if is_source(x_r) and y_retain is None:
    y_retain = source_labels(x_r, "retain set")
  y_r = np.asarray(y_retain, np.int32)
  t_f = (
    tr.predict_logits(apply_fn, variables, x_f)
    if teacher_logits_forget is None
    else np.asarray(teacher_logits_forget)
  )
  t_r = (
    tr.predict_logits(apply_fn, variables, x_r)
    if teacher_logits_retain is None
    else np.asarray(teacher_logits_retain)
  )
  state = tr.state_from_variables(
    model, variables, learning_rate=lr, momentum=momentum, weight_decay=weight_decay
  )
  f32 = jnp.float32
  temperature, alpha, gamma = f32(temperature), f32(alpha), f32(gamma)
  order, key = base.method_rngs(seed)
  step = 0
  for epoch in range(epochs):
    if epoch < msteps and len(x_f):
      batches = epoch_batches(order, len(x_f), forget_batch_size)
      for idx, xb in zip(batches, base.input_batches(x_f, batches, "forget set")):
        state, _ = scrub_max_step(state, xb, t_f[idx], jax.random.fold_in(key, step), temperature)
        step += 1
    batches = epoch_batches(order, len(x_r), batch_size)
    for idx, xb in zip(batches, base.input_batches(x_r, batches, "retain set")):
      state, loss = scrub_min_step(
        state,
        xb,
        y_r[idx],
        t_r[idx],
        jax.random.fold_in(key, step),
        temperature,
        alpha,
        gamma,
      )
      step += 1
  if epochs and not np.isfinite(float(loss)):
    raise FloatingPointError(
      f"SCRUB objective became {float(loss)} at lr={lr}; lower the learning rate."
    )
  return base.variables_like(variables, state.params, state.batch_stats)


def scrub(
  n_retain: int = 1000,
  n_forget: int = 200,
  *,
  alpha: float = 1e-3,
  gamma: float = 0.99,
  temperature: float = 4.0,
  msteps: int = 2,
  epochs: int = 3,
  lr: float = 5e-4,
  batch_size: int = 128,
  forget_batch_size: int = 32,
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
  grid: Mapping[str, Sequence[Any]] | None = DEFAULT_GRID,
  progress: bool = False,
  keep_original: bool = True,
) -> base.Method:
  """SCRUB with the lowest-loss samples as retain and the highest as forget set.

  Args:
    n_retain: retain-set size (paper: 1000), clipped by
      :func:`~sap_jax.baselines.base.clip_budget`.
    n_forget: forget-set size (paper: 200), clipped likewise.
    alpha: KL weight of the min-steps (SCRUB code: 0.001).
    gamma: cross-entropy weight of the min-steps (SCRUB code: 0.99).
    temperature: distillation temperature T (SCRUB code: 4).
    msteps: number of first epochs with a max pass (SCRUB code: 2).
    epochs: total epochs (SCRUB code: 3).
    lr: SGD learning rate (SCRUB code: 5e-4).
    batch_size: retain batch (SCRUB code: 128).
    forget_batch_size: forget batch (SCRUB code: 32).
    momentum: SGD momentum (0.9).
    weight_decay: L2 coefficient (5e-4).
    grid: values to search for any of ``lr, alpha, gamma, temperature, msteps,
      epochs`` (default :data:`DEFAULT_GRID`, 8 settings;
      :data:`PAPER_SCALE_GRID` has the paper's 675); None runs the defaults.
    progress: show a bar over settings.
    keep_original: return the unchanged model when no setting beats it on
      the noisy validation split (the rule SAP's α sweep follows).

  Returns:
    The method ``"scrub"``.
  """
  hparams = dict(
    n_retain=n_retain,
    n_forget=n_forget,
    alpha=alpha,
    gamma=gamma,
    temperature=temperature,
    msteps=msteps,
    epochs=epochs,
    lr=lr,
    batch_size=batch_size,
    forget_batch_size=forget_batch_size,
    momentum=momentum,
    weight_decay=weight_decay,
    grid=grid,
  )
  defaults = {
    "lr": lr,
    "alpha": alpha,
    "gamma": gamma,
    "temperature": temperature,
    "msteps": msteps,
    "epochs": epochs,
  }
  base.expand_grid(defaults, grid)

  def body(task: base.CorrectionTask) -> base.Outcome:
    losses = base.train_losses(task)
    n_r = base.clip_budget(n_retain, task.n_train)
    n_f = base.clip_budget(n_forget, task.n_train)
    retain = base.lowest_loss(losses, n_r)
    forget = base.highest_loss(losses, n_f)
    (x_r, y_r), (x_f, _) = task.train_subset(retain), task.train_subset(forget)
    t_r = tr.predict_logits(task.apply_fn, task.variables, x_r)
    t_f = tr.predict_logits(task.apply_fn, task.variables, x_f)
    settings = base.expand_grid(defaults, grid)

    def fit(**setting):
      return scrub_variables(
        task.model,
        task.variables,
        x_f,
        x_r,
        y_r,
        batch_size=batch_size,
        forget_batch_size=forget_batch_size,
        momentum=momentum,
        weight_decay=weight_decay,
        teacher_logits_forget=t_f,
        teacher_logits_retain=t_r,
        seed=task.seed,
        **setting,
      )

    best, setting, records = base.search(
      task, settings, fit, progress=progress, keep_original=keep_original, desc="scrub"
    )
    chosen = {
      **setting,
      "n_retain": n_r,
      "n_retain_requested": n_retain,
      "n_forget": n_f,
      "n_forget_requested": n_forget,
    }
    details = {
      "settings": records,
      "retain_indices": retain,
      "forget_indices": forget,
      "budget_rule": base.BUDGET_RULE,
      "vanilla_val_accuracy": base.val_accuracy(task, task.variables),
    }
    return base.Outcome(best, len(settings), chosen, details)

  return base.make_method("scrub", body, hparams)
