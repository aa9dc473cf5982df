"""Supervised training of Flax Linen classifiers on (noisy) labels.

The pieces follow the Flax examples: :func:`create_train_state`,
:func:`train_step` (pure, jitted), :func:`evaluate`, and one outer loop,
:func:`train_model`, that shuffles, logs and shows progress. Any Linen module
called as ``model.apply(variables, x, train=bool)`` works, with or without a
``batch_stats`` collection (BatchNorm) and with or without dropout (a
``"dropout"`` rng is always supplied in training mode).

Variables are plain nested dicts ``{"params": ..., "batch_stats": ...}``
(``batch_stats`` only when the model has BatchNorm), and the eval-mode
forward the SAP code consumes is ``apply_fn(variables, x) -> logits``, made
by :func:`eval_apply_fn`.

The optimizer matches ``torch.optim.SGD`` (momentum, dampening 0, L2 weight
decay added to the gradient), so hyperparameters from the paper's PyTorch
code carry over. Noise-robust options (MixUp, SAM, logit clipping,
generalised label smoothing, MentorMix) come from :mod:`sap_jax.robust`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
from flax import struct
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from sap_jax import robust
from sap_jax.batching import padded_batches
from sap_jax.hashable import EvalApply, ModuleApply, hashable

Array = jax.Array
Variables = dict[str, Any]
ApplyFn = Callable[[Variables, Array], Array]

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "create_train_state",
    "eval_apply_fn",
    "evaluate",
    "fit_fraction",
    "make_optimizer",
    "make_schedule",
    "predict_logits",
    "train_model",
    "train_step",
    "variables_of",
]

_SCHEDULES = ("constant", "step", "cosine")
_COLLECTIONS = ("params", "batch_stats")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyperparameters of one training run (hashable: a static jit argument).

  Defaults follow the paper's CIFAR setting (SGD, momentum 0.9, weight decay
  5e-4, lr 0.05, batch 128); the paper trains for 350 epochs.
  """

  # Passes over the training set.
  epochs: int = 100
  # Samples per step. Each epoch reshuffles and drops the incomplete last
  # batch (static shapes: one compilation); every sample is visited over
  # epochs.
  batch_size: int = 128
  # Base learning rate (the schedule multiplies it).
  learning_rate: float = 0.05
  # Heavy-ball momentum μ as in torch.optim.SGD: b ← μ·b + g, θ ← θ − lr·b.
  momentum: float = 0.9
  # Nesterov momentum (the published LabelNoiseRobustness code uses True).
  nesterov: bool = False
  # L2 coefficient: g ← g + wd·θ before momentum, on ALL params incl.
  # BatchNorm scale/bias and biases, exactly like torch.optim.SGD.
  weight_decay: float = 5e-4
  # "constant" | "step" (×0.1 at 50 % and 75 % of the steps) | "cosine"
  # (cosine decay to 0 over all steps).
  schedule: str = "constant"
  # Seeds parameter init, data order and all training randomness.
  seed: int = 0
  # MixUp Beta(α, α) concentration; 0 disables MixUp (paper: 0.2).
  mixup_alpha: float = 0.0
  # SAM neighbourhood radius ρ; 0 disables SAM (paper: 0.05).
  sam_rho: float = 0.0
  # LogitClip norm bound τ on each logit vector; None disables it.
  logit_clip: float | None = None
  # Generalised label smoothing rate r in (-1, 1), negative allowed
  # (paper: 0.2); 0 disables it.
  label_smoothing: float = 0.0
  # MentorMix with the threshold MentorNet (exclusive with MixUp).
  mentormix: bool = False
  # MentorMix loss percentile γp (paper: 0.85).
  mentormix_gamma: float = 0.85
  # MentorMix Beta(α, α) concentration (paper: 0.2).
  mentormix_alpha: float = 0.2
  # Weight of the previous threshold in MentorMix's moving average (published
  # code: 0.05).
  mentormix_ema: float = 0.05
  # MentorMix uses random Bernoulli(½) weights for the first
  # min(mentormix_burnin_epochs, 0.2·epochs) epochs (published code: 10).
  mentormix_burnin_epochs: int = 10
  # Stop after this many epochs without a new best (noisy) validation
  # accuracy and return the best-validation variables; None disables it.
  # Needs x_val/y_val.
  early_stopping_patience: int | None = None
  # Evaluate on the validation set every this many epochs (and at the end).
  eval_every: int = 1

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
      problems.append(f"label_smoothing={self.label_smoothing}: pass a rate "
                      "in (-1, 1) (0 = off)")
    if self.mentormix and self.mixup_alpha > 0:
      problems.append("mentormix=True already mixes samples: set "
                      "mixup_alpha=0")
    if not 0.0 < self.mentormix_gamma <= 1.0:
      problems.append(f"mentormix_gamma={self.mentormix_gamma}: pass a "
                      "percentile in (0, 1]")
    if not self.mentormix_alpha > 0:
      problems.append(f"mentormix_alpha={self.mentormix_alpha}: pass > 0")
    if not 0.0 <= self.mentormix_ema < 1.0:
      problems.append(f"mentormix_ema={self.mentormix_ema}: pass [0, 1)")
    if self.mentormix_burnin_epochs < 0:
      problems.append("mentormix_burnin_epochs must be >= 0")
    if (self.early_stopping_patience is not None
        and self.early_stopping_patience < 1):
      problems.append(f"early_stopping_patience="
                      f"{self.early_stopping_patience}: pass >= 1 or None")
    if self.eval_every < 1:
      problems.append(f"eval_every={self.eval_every}: pass >= 1")
    if problems:
      raise ValueError("Invalid TrainConfig: " + "; ".join(problems) + ".")

  def to_dict(self) -> dict[str, Any]:
    """The fields as a JSON-ready dict (``TrainConfig(**d)`` rebuilds it)."""
    return dataclasses.asdict(self)


class TrainResult(NamedTuple):
  """What :func:`train_model` returns.

  Attributes:
    variables: ``{"params", ["batch_stats"]}`` of the final model, or of the
      best-validation epoch when early stopping is on.
    history: one dict per epoch: ``epoch`` (1-based), ``loss`` (mean training
      objective), ``train_accuracy`` (on the noisy labels, from the training
      forward passes), ``lr`` (at the epoch's first step), and when evaluated
      ``val_accuracy`` and ``val_loss``.
    train_time_s: wall-clock seconds of the training loop (incl. compilation
      and validation).
  """
  variables: Variables
  history: list[dict[str, float]]
  train_time_s: float


class TrainState(train_state.TrainState):
  """Flax TrainState plus BatchNorm statistics and MentorMix thresholds.

  Attributes:
    batch_stats: the ``batch_stats`` collection, ``{}`` for models without
      BatchNorm.
    mentormix: running loss thresholds of MentorMix (unused otherwise).
    num_classes: K, read from the model's output at initialisation.
  """
  batch_stats: Any = struct.field(default_factory=dict)
  mentormix: robust.MentorMixState = struct.field(
      default_factory=robust.mentormix_init)
  num_classes: int = struct.field(pytree_node=False, default=0)


def eval_apply_fn(model: nn.Module) -> ApplyFn:
  """The eval-mode forward ``apply_fn(variables, x) -> logits`` of a model.

  Equivalent to ``functools.partial(model.apply, train=False)`` but equal
  (and equally hashed) for equal modules, so jitted consumers such as
  :func:`evaluate` compile once per model, not once per call.
  """
  return EvalApply(model)


def variables_of(state: TrainState) -> Variables:
  """The model variables held by ``state`` as a plain dict."""
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


# --------------------------------------------------------------------------
# Optimizer.
# --------------------------------------------------------------------------


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
    raise ValueError(f"steps_per_epoch={steps_per_epoch} must be >= 1; "
                     "the batch size may exceed the number of samples.")
  total = config.epochs * steps_per_epoch
  lr = config.learning_rate
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  if config.schedule == "step":
    return optax.piecewise_constant_schedule(
        lr, {int(0.5 * total): 0.1, int(0.75 * total): 0.1})
  return optax.cosine_decay_schedule(lr, decay_steps=total)


def make_optimizer(config: TrainConfig,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum, schedule and L2 weight decay, as ``torch.optim.SGD``.

  ``chain(add_decayed_weights(wd), sgd(schedule, momentum, nesterov))``:
  ``d = g + wd·θ``, ``b ← μ·b + d``, ``θ ← θ − lr_t·b`` (Nesterov:
  ``θ ← θ − lr_t·(d + μ·b)``). The decay applies to every parameter,
  BatchNorm scale/bias and biases included, matching PyTorch's default (one
  param group). ``batch_stats`` are not parameters and are never decayed.
  With ``sam_rho > 0`` this is wrapped in :func:`sap_jax.robust.sam`, whose
  ``update`` needs a ``grad_fn``.

  Args:
    config: the training config.
    steps_per_epoch: optimizer steps per epoch (for the schedule).

  Returns:
    The optax transformation.
  """
  key = tuple(getattr(config, f) for f in _OPTIMIZER_FIELDS)
  return _cached_optimizer(key, steps_per_epoch)


_OPTIMIZER_FIELDS = ("epochs", "learning_rate", "momentum", "nesterov",
                     "weight_decay", "schedule", "sam_rho")


@functools.lru_cache(maxsize=64)
def _cached_optimizer(key: tuple, steps_per_epoch: int):
  """Builds the optimizer once per setting (optax transforms are immutable).

  Returning the same object for equal settings gives train states of runs
  that differ only in e.g. the seed equal pytree definitions, so they share
  the compiled training step.
  """
  config = TrainConfig(**dict(zip(_OPTIMIZER_FIELDS, key)))
  schedule = make_schedule(config, steps_per_epoch)
  parts = []
  if config.weight_decay > 0:
    parts.append(optax.add_decayed_weights(config.weight_decay))
  parts.append(optax.sgd(schedule, momentum=config.momentum or None,
                         nesterov=config.nesterov))
  tx = optax.chain(*parts)
  if config.sam_rho > 0:
    tx = robust.sam(tx, config.sam_rho)
  return tx


# --------------------------------------------------------------------------
# State and step.
# --------------------------------------------------------------------------


def create_train_state(model: nn.Module, sample_x: Any, config: TrainConfig,
                       rng: Array, *,
                       steps_per_epoch: int | None = None) -> TrainState:
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
          "steps_per_epoch= to create_train_state.")
    steps_per_epoch = 1
  k_params, k_dropout = jax.random.split(rng)
  logits, variables = model.init_with_output(
      {"params": k_params, "dropout": k_dropout}, jnp.asarray(sample_x),
      train=False)
  variables = dict(variables)
  extra = sorted(set(variables) - set(_COLLECTIONS))
  if extra:
    raise ValueError(
        f"Model has variable collections {extra}; train.py supports only "
        f"{_COLLECTIONS}. Make those collections part of params or "
        "batch_stats.")
  if logits.ndim != 2:
    raise ValueError(f"Model output has shape {logits.shape}; expected "
                     "logits of shape (batch, num_classes).")
  tx = make_optimizer(config, steps_per_epoch)
  state = TrainState.create(
      apply_fn=ModuleApply(model),
      params=variables["params"],
      tx=tx,
      batch_stats=variables.get("batch_stats", {}),
      mentormix=robust.mentormix_init(),
      num_classes=int(logits.shape[-1]),
  )
  # A concrete int32 step (not Python's 0) keeps the state's types fixed
  # across steps, so the jitted step compiles once.
  return state.replace(step=jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class _StepOptions:
  """The part of a TrainConfig that shapes the compiled step.

  Keying the jitted step on this (not on the whole config) lets runs that
  differ only in seed, epochs, learning rate etc. share one compilation.
  """
  mixup_alpha: float
  sam_rho: float
  logit_clip: float | None
  label_smoothing: float
  mentormix: bool
  mentormix_gamma: float
  mentormix_alpha: float
  mentormix_ema: float

  @classmethod
  def of(cls, config: TrainConfig) -> "_StepOptions":
    return cls(**{f.name: getattr(config, f.name)
                  for f in dataclasses.fields(cls)})


def _mentormix_burn_in_epochs(config: TrainConfig) -> float:
  """Published rule: random weights while epoch < min(burn-in, 0.2·epochs)."""
  return min(config.mentormix_burnin_epochs, 0.2 * config.epochs)


def train_step(state: TrainState, x: Array, y: Array, rng: Array,
               epoch: Array | int = 0, *,
               config: TrainConfig) -> tuple[TrainState, dict[str, Array]]:
  """One optimizer step on a batch (compiled; one compilation per option set).

  The objective is ``mean(loss_fn(f(x), targets))`` with
  ``loss_fn = robust.make_loss_fn(config)`` (label smoothing, logit
  clipping), on MixUp'd inputs/targets when ``mixup_alpha > 0``, or the
  MentorMix loss when ``mentormix``. With ``sam_rho > 0`` the gradient is
  taken at the SAM-perturbed parameters (same batch, MixUp draw and dropout
  mask); BatchNorm statistics come from the first (unperturbed) forward pass,
  and with MentorMix from the mixed-batch pass. The work runs in a jitted
  function whose static argument is only the loss/SAM options of ``config``;
  this wrapper is itself traceable (``jax.jit(functools.partial(train_step,
  config=c))`` works).

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
  return _train_step(state, x, y, rng, burn_in,
                     options=_StepOptions.of(config))


@functools.partial(jax.jit, static_argnames=("options",))
def _train_step(state: TrainState, x: Array, y: Array, rng: Array,
                burn_in: Array, *, options: _StepOptions):
  loss_fn = robust.make_loss_fn(options)
  has_bn = bool(state.batch_stats)
  k_mix, k_dropout = jax.random.split(rng)

  def forward(params, inputs):
    variables = {"params": params}
    rngs = {"dropout": k_dropout}
    if has_bn:
      variables["batch_stats"] = state.batch_stats
      logits, updates = state.apply_fn(variables, inputs, train=True,
                                       mutable=["batch_stats"], rngs=rngs)
      return logits, updates["batch_stats"]
    logits = state.apply_fn(variables, inputs, train=True, rngs=rngs)
    return logits, state.batch_stats

  def objective(params):
    if options.mentormix:
      loss, (mm_state, logits, batch_stats) = robust.mentormix_loss(
          functools.partial(forward, params), loss_fn, x, y, k_mix,
          state.mentormix, gamma_p=options.mentormix_gamma,
          alpha=options.mentormix_alpha, ema=options.mentormix_ema,
          burn_in=burn_in)
      return loss, (logits, batch_stats, mm_state)
    inputs, targets = x, y
    if options.mixup_alpha > 0:
      inputs, targets = robust.mixup(
          k_mix, x, jax.nn.one_hot(y, state.num_classes), options.mixup_alpha)
    logits, batch_stats = forward(params, inputs)
    loss = jnp.mean(loss_fn(logits, targets))
    return loss, (logits, batch_stats, state.mentormix)

  grad_and_aux = jax.value_and_grad(objective, has_aux=True)
  (loss, (logits, batch_stats, mm_state)), grads = grad_and_aux(state.params)
  if options.sam_rho > 0:
    def grad_fn(params, _):
      return jax.grad(lambda p: objective(p)[0])(params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params,
                                         grad_fn=grad_fn)
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


# --------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _eval_batch(apply_fn, variables, x, y, mask):
  logits = apply_fn(variables, x)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  correct = (jnp.argmax(logits, axis=-1) == y) & mask
  return jnp.sum(correct), jnp.sum(jnp.where(mask, losses, 0.0))


@functools.partial(jax.jit, static_argnums=0)
def _predict_batch(apply_fn, variables, x):
  return apply_fn(variables, x)


def _check_xy(x, y, what: str = "x/y"):
  x = np.asarray(x)
  if y is not None:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f"{what}: labels must be a 1-D integer array, got "
                       f"shape {y.shape} dtype {y.dtype}; pass class indices.")
    if len(x) != len(y):
      raise ValueError(f"{what}: {len(x)} inputs but {len(y)} labels; pass "
                       "one label per input.")
  if len(x) == 0:
    raise ValueError(f"{what}: no samples; pass at least one.")
  return x, y


def evaluate(apply_fn: ApplyFn, variables: Variables, x: Any, y: Any,
             batch_size: int = 1024) -> dict[str, float]:
  """Accuracy and mean cross-entropy of ``apply_fn`` on ``(x, y)``.

  Batches of ``min(batch_size, N)`` samples; the ragged last batch is padded
  (`sap_jax.batching.padded_batches`) and masked, so one compilation serves every batch.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: ``(N, ...)`` inputs.
    y: ``(N,)`` integer labels.
    batch_size: evaluation batch size.

  Returns:
    ``{"accuracy": float, "loss": float}``.
  """
  x, y = _check_xy(x, y)
  n = len(x)
  fn = hashable(apply_fn)
  sums = []
  for (xb, yb), real in padded_batches(x, y, batch_size=batch_size):
    mask = np.arange(len(xb)) < real
    sums.append(_eval_batch(fn, variables, xb, yb, mask))
  sums = jax.device_get(sums)
  correct = sum(int(c) for c, _ in sums)
  loss = sum(float(l) for _, l in sums)
  return {"accuracy": correct / n, "loss": loss / n}


def predict_logits(apply_fn: ApplyFn, variables: Variables, x: Any,
                   batch_size: int = 1024) -> np.ndarray:
  """Logits of ``apply_fn`` on ``x`` as a host ``(N, K)`` array.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: ``(N, ...)`` inputs.
    batch_size: evaluation batch size (ragged last batch padded).

  Returns:
    ``np.ndarray`` of logits.
  """
  x, _ = _check_xy(x, None, "x")
  fn = hashable(apply_fn)
  outs = [(_predict_batch(fn, variables, xb), k)
          for (xb,), k in padded_batches(x, batch_size=batch_size)]
  return np.concatenate([np.asarray(o)[:k] for o, k in outs])


def fit_fraction(apply_fn: ApplyFn, variables: Variables, x: Any,
                 y_noisy: Any, mask: Any) -> float:
  """How much of the label noise the model has memorised.

  The accuracy, against their NOISY labels, on the corrupted samples
  (``mask`` true): 1.0 means every wrong label is fitted, as after the
  paper's 350 training epochs.

  Args:
    apply_fn: eval-mode forward.
    variables: the model variables.
    x: ``(N, ...)`` training inputs.
    y_noisy: ``(N,)`` training labels as trained on (with noise).
    mask: ``(N,)`` bool, true where the label was corrupted.

  Returns:
    The fraction of corrupted samples predicted as their noisy label.
  """
  x, y_noisy = _check_xy(x, y_noisy)
  mask = np.asarray(mask)
  if mask.shape != (len(x),) or mask.dtype != np.bool_:
    raise ValueError(f"mask must be a boolean array of shape ({len(x)},), "
                     f"got shape {mask.shape} dtype {mask.dtype}.")
  if not mask.any():
    raise ValueError("mask selects no corrupted sample; fit_fraction is "
                     "undefined without label noise.")
  return evaluate(apply_fn, variables, x[mask], y_noisy[mask])["accuracy"]


# --------------------------------------------------------------------------
# Outer loop.
# --------------------------------------------------------------------------


def train_model(model: nn.Module, x: Any, y: Any, config: TrainConfig, *,
                x_val: Any = None, y_val: Any = None, progress: bool = True,
                log_fn: Callable[[dict[str, float]], None] | None = None
                ) -> TrainResult:
  """Trains ``model`` on ``(x, y)`` with SGD and the configured options.

  Deterministic for a given ``config.seed`` on one device: parameters come
  from ``jax.random.key(seed, impl="rbg")``, the per-epoch data order from
  ``np.random.default_rng(seed)``, and step ``t``'s randomness from
  ``fold_in(key, t)``.

  Args:
    model: a Linen module called as ``model.apply(v, x, train=bool)``.
    x: ``(N, ...)`` training inputs (host arrays; batches are sent to the
      device per step).
    y: ``(N,)`` integer training labels (noisy).
    config: the training config.
    x_val: optional validation inputs (noisy labels, like the training set).
    y_val: optional validation labels.
    progress: show a tqdm bar over epochs with loss/accuracy.
    log_fn: called with each epoch's history dict.

  Returns:
    A :class:`TrainResult`.
  """
  x, y = _check_xy(x, y, "x/y")
  if (x_val is None) != (y_val is None):
    raise ValueError("Pass both x_val and y_val, or neither.")
  has_val = x_val is not None
  if has_val:
    x_val, y_val = _check_xy(x_val, y_val, "x_val/y_val")
  if config.early_stopping_patience is not None and not has_val:
    raise ValueError("early_stopping_patience needs a validation set: pass "
                     "x_val and y_val, or set early_stopping_patience=None.")
  n = len(x)
  if config.batch_size > n:
    raise ValueError(f"batch_size={config.batch_size} exceeds the {n} "
                     "training samples; pass a smaller TrainConfig.batch_size.")
  steps_per_epoch = n // config.batch_size

  start_time = time.perf_counter()
  # XLA compiles the "rbg" generator several times faster than threefry on CPU
  # (tiny ResNet18 init: 4 s against 46 s on 2 loaded cores); it is just as
  # deterministic for a seed on one platform.
  key = jax.random.key(config.seed, impl="rbg")
  init_key, step_key = jax.random.split(key)
  state = create_train_state(model, x[:1], config, init_key,
                             steps_per_epoch=steps_per_epoch)
  k = state.num_classes
  for name, labels in (("y", y), ("y_val", y_val)):
    if labels is not None and (labels.min() < 0 or labels.max() >= k):
      raise ValueError(f"{name} has labels outside [0, {k}) for a model with "
                       f"{k} outputs; check num_classes.")
  schedule = make_schedule(config, steps_per_epoch)
  apply_eval = eval_apply_fn(model)
  order_rng = np.random.default_rng(config.seed)

  history: list[dict[str, float]] = []
  best_acc, best_epoch, best_variables = -1.0, 0, None
  bar = tqdm(range(config.epochs), disable=not progress, desc="train",
             unit="epoch")
  for epoch in bar:
    perm = order_rng.permutation(n)
    lr = float(schedule(int(state.step)))
    metrics = []
    for i in range(steps_per_epoch):
      idx = perm[i * config.batch_size:(i + 1) * config.batch_size]
      rng = jax.random.fold_in(step_key, epoch * steps_per_epoch + i)
      state, m = train_step(state, x[idx], y[idx], rng, epoch, config=config)
      metrics.append(m)
    metrics = jax.device_get(metrics)
    entry = {
        "epoch": epoch + 1,
        "loss": float(np.mean([m["loss"] for m in metrics])),
        "train_accuracy": float(np.mean([m["accuracy"] for m in metrics])),
        "lr": lr,
    }
    last = epoch + 1 == config.epochs
    stop = False
    if has_val and ((epoch + 1) % config.eval_every == 0 or last):
      val = evaluate(apply_eval, variables_of(state), x_val, y_val)
      entry["val_accuracy"] = val["accuracy"]
      entry["val_loss"] = val["loss"]
      if val["accuracy"] > best_acc:
        best_acc, best_epoch = val["accuracy"], epoch + 1
        best_variables = variables_of(state)
      patience = config.early_stopping_patience
      stop = patience is not None and epoch + 1 - best_epoch >= patience
    history.append(entry)
    if not np.isfinite(entry["loss"]):
      raise FloatingPointError(
          f"Training loss became {entry['loss']} in epoch {epoch + 1}; lower "
          "the learning rate.")
    if log_fn is not None:
      log_fn(entry)
    postfix = {"loss": f"{entry['loss']:.4f}",
               "acc": f"{entry['train_accuracy']:.3f}"}
    if "val_accuracy" in entry:
      postfix["val"] = f"{entry['val_accuracy']:.3f}"
    bar.set_postfix(postfix)
    if stop:
      break
  bar.close()

  variables = variables_of(state)
  if config.early_stopping_patience is not None:
    variables = best_variables
  variables = jax.block_until_ready(variables)
  return TrainResult(variables=variables, history=history,
                     train_time_s=time.perf_counter() - start_time)
