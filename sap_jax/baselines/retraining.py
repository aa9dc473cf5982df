"""Retrain: train from scratch on the clean labels, the upper reference.

Only possible where the clean labels are known (synthetic noise); it shows how
far a correction is from a model that never saw the noise. The training recipe is
the vanilla model's own (``task.train_config``: same epochs, optimiser, seed), so
the only difference is the labels. No hyperparameter is searched; the one
training run counts as one setting.
"""

from __future__ import annotations

from sap_jax import train as tr
from sap_jax.baselines import base

__all__ = ["retrain"]


def retrain(*, progress: bool = False) -> base.Method:
  """Train ``task.model`` from scratch on ``(x_train, y_train_clean)``.

  Args:
    progress: show the training bar.

  Returns:
    The method ``"retrain"``; it raises ``ValueError`` when the task has no
    ``y_train_clean``. ``task.train_config.early_stopping_patience`` (if set)
    stops on the noisy validation split, as the vanilla run would.
  """

  def body(task: base.CorrectionTask) -> base.Outcome:
    if task.y_train_clean is None:
      raise ValueError(
        "retrain needs the clean training labels: build the task "
        "with y_train_clean= (e.g. CorrectionTask.from_splits)."
      )
    config = task.train_config
    val = {}
    if config.early_stopping_patience is not None:
      val = dict(zip(("x_val", "y_val"), task.val_data()))
    result = tr.train_model(
      task.model, *task.train_data(task.y_train_clean), config, progress=progress, **val
    )
    details = {"train_time_s": result.train_time_s, "history": result.history}
    return base.Outcome(result.variables, 1, {"train_config": config.to_dict()}, details)

  return base.make_method("retrain", body, {})
