"""`TrainConfig`: every option of a training run, validated once, in one place.

Each field says which compiled pieces it shapes (``shapes=`` in its metadata): the
training step (``"step"``: loss, MixUp, MentorMix, SAM) and the optax optimizer
(``"optimizer"``: learning rate, schedule, momentum, weight decay, SAM). `TrainConfig.part`
derives from that the static key of each piece, so no second list of fields exists: runs
that differ only in a field a piece does not read (the seed, the batch size, the number of
epochs for the step, …) share its compilation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["AUGMENTS", "PARTS", "TrainConfig"]

STEP = "step"
OPTIMIZER = "optimizer"
PARTS = (STEP, OPTIMIZER)
"""The pieces `TrainConfig.part` can select the fields of."""

_SCHEDULES = ("constant", "step", "cosine")
AUGMENTS = ("none", "auto", "cifar", "imagenet")
"""The values of `TrainConfig.augment` (see `sap_jax.augmentation`)."""


def _option(default: Any, *shapes: str) -> Any:
  """A field with its default and the compiled pieces (`PARTS`) whose result it changes."""
  return dataclasses.field(default=default, metadata={"shapes": frozenset(shapes)})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyperparameters of one training run (frozen and hashable).

  Defaults follow the paper's CIFAR setting (SGD, momentum 0.9, weight decay
  5e-4, lr 0.05, batch 128); the paper trains for 350 epochs.
  """

  # Passes over the training set (and the length of the "step"/"cosine" schedules).
  epochs: int = _option(100, OPTIMIZER)
  # Samples per step. Each epoch reshuffles and drops the incomplete last
  # batch (static shapes: one compilation); every sample is visited over
  # epochs.
  batch_size: int = _option(128)
  # Base learning rate (the schedule multiplies it).
  learning_rate: float = _option(0.05, OPTIMIZER)
  # Heavy-ball momentum μ as in torch.optim.SGD: b ← μ·b + g, θ ← θ − lr·b.
  momentum: float = _option(0.9, OPTIMIZER)
  # Nesterov momentum (the published LabelNoiseRobustness code uses True).
  nesterov: bool = _option(False, OPTIMIZER)
  # L2 coefficient: g ← g + wd·θ before momentum, on ALL params incl.
  # BatchNorm scale/bias and biases, exactly like torch.optim.SGD.
  weight_decay: float = _option(5e-4, OPTIMIZER)
  # "constant" | "step" (×0.1 at 50 % and 75 % of the steps) | "cosine"
  # (cosine decay to 0 over all steps).
  schedule: str = _option("constant", OPTIMIZER)
  # Seeds parameter init, data order and all training randomness
  # (`sap_jax.train.run_rngs`).
  seed: int = _option(0)
  # MixUp Beta(α, α) concentration; 0 disables MixUp (paper: 0.2).
  mixup_alpha: float = _option(0.0, STEP)
  # SAM neighbourhood radius ρ; 0 disables SAM (paper: 0.05).
  sam_rho: float = _option(0.0, STEP, OPTIMIZER)
  # LogitClip norm bound τ on each logit vector; None disables it.
  logit_clip: float | None = _option(None, STEP)
  # Generalised label smoothing rate r in (-1, 1), negative allowed
  # (paper: 0.2); 0 disables it.
  label_smoothing: float = _option(0.0, STEP)
  # MentorMix with the threshold MentorNet (exclusive with MixUp).
  mentormix: bool = _option(False, STEP)
  # MentorMix loss percentile γp (paper: 0.85).
  mentormix_gamma: float = _option(0.85, STEP)
  # MentorMix Beta(α, α) concentration (paper: 0.2).
  mentormix_alpha: float = _option(0.2, STEP)
  # Weight of the previous threshold in MentorMix's moving average (published
  # code: 0.05).
  mentormix_ema: float = _option(0.05, STEP)
  # MentorMix uses random Bernoulli(½) weights for the first
  # min(mentormix_burnin_epochs, 0.2·epochs) epochs (published code: 10).
  mentormix_burnin_epochs: int = _option(10)
  # Stop after this many epochs without a new best (noisy) validation
  # accuracy and return the best-validation variables; None disables it.
  # Needs x_val/y_val.
  early_stopping_patience: int | None = _option(None)
  # Evaluate on the validation set every this many epochs (and at the end).
  eval_every: int = _option(1)
  # Training-time augmentation (`sap_jax.augmentation`): "none", "auto" (the data set's
  # published recipe, `sap_jax.data.augment.recipe_for`), "cifar" or "imagenet". Data,
  # not compiled: it shapes no piece.
  augment: str = _option("none")

  def __post_init__(self):
    problems = []
    if self.epochs < 1:
      problems.append(f"epochs={self.epochs}: pass epochs >= 1")
    if self.batch_size < 1:
      problems.append(f"batch_size={self.batch_size}: pass batch_size >= 1")
    if not self.learning_rate > 0:
      problems.append(f"learning_rate={self.learning_rate}: pass a value > 0")
    if not 0.0 <= self.momentum < 1.0:
      problems.append(f"momentum={self.momentum}: pass 0 <= momentum < 1")
    if self.nesterov and self.momentum == 0:
      problems.append("nesterov=True needs momentum > 0")
    if self.weight_decay < 0:
      problems.append(f"weight_decay={self.weight_decay}: pass a value >= 0")
    if self.schedule not in _SCHEDULES:
      problems.append(f"schedule={self.schedule!r}: pass one of {_SCHEDULES}")
    if self.mixup_alpha < 0:
      problems.append(f"mixup_alpha={self.mixup_alpha}: pass >= 0 (0 = off)")
    if self.sam_rho < 0:
      problems.append(f"sam_rho={self.sam_rho}: pass >= 0 (0 = off)")
    if self.logit_clip is not None and not self.logit_clip > 0:
      problems.append(f"logit_clip={self.logit_clip}: pass tau > 0 or None")
    if not -1.0 < self.label_smoothing < 1.0:
      problems.append(f"label_smoothing={self.label_smoothing}: pass a rate in (-1, 1) (0 = off)")
    if self.mentormix and self.mixup_alpha > 0:
      problems.append("mentormix=True already mixes samples: set mixup_alpha=0")
    if not 0.0 < self.mentormix_gamma <= 1.0:
      problems.append(f"mentormix_gamma={self.mentormix_gamma}: pass a percentile in (0, 1]")
    if not self.mentormix_alpha > 0:
      problems.append(f"mentormix_alpha={self.mentormix_alpha}: pass > 0")
    if not 0.0 <= self.mentormix_ema < 1.0:
      problems.append(f"mentormix_ema={self.mentormix_ema}: pass [0, 1)")
    if self.mentormix_burnin_epochs < 0:
      problems.append("mentormix_burnin_epochs must be >= 0")
    if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
      problems.append(f"early_stopping_patience={self.early_stopping_patience}: pass >= 1 or None")
    if self.eval_every < 1:
      problems.append(f"eval_every={self.eval_every}: pass >= 1")
    if self.augment not in AUGMENTS:
      problems.append(f"augment={self.augment!r}: pass one of {AUGMENTS}")
    if problems:
      raise ValueError("Invalid TrainConfig: " + "; ".join(problems) + ".")

  def to_dict(self) -> dict[str, Any]:
    """The fields as a JSON-ready dict (``TrainConfig(**d)`` rebuilds it).

    ``augment`` appears only when it is not "none", so the dict of a run without
    augmentation (and every key hashed from it, e.g. the experiment runner's checkpoint
    keys) is what it was before the field existed.
    """
    out = dataclasses.asdict(self)
    if out["augment"] == "none":
      del out["augment"]
    return out

  def part(self, name: str) -> TrainConfig:
    """The config reduced to the fields that shape one compiled piece.

    Every field whose metadata does not list ``name`` takes its default, so two
    configs that differ only in fields the piece ignores give equal (and equally
    hashed) parts: the static key of that piece's compilation or cache.

    Args:
      name: one of `PARTS`: ``"step"`` (the jitted training step) or
        ``"optimizer"`` (the optax transformation).

    Returns:
      A `TrainConfig`.
    """
    if name not in PARTS:
      raise ValueError(f"part={name!r}: pass one of {PARTS}.")
    reset = {
      f.name: f.default
      for f in dataclasses.fields(self)
      if name not in f.metadata["shapes"] and getattr(self, f.name) != f.default
    }
    return dataclasses.replace(self, **reset) if reset else self
