"""Supervised training of Flax Linen classifiers on (noisy) labels.

The pieces follow the Flax examples: :func:`create_train_state`, :func:`train_step`
(pure, jitted) and one outer loop, :func:`train_model`, that shuffles, logs and shows
progress. Any Linen module called as ``model.apply(variables, x, train=bool)`` works,
with or without a ``batch_stats`` collection (BatchNorm) and with or without dropout (a
``"dropout"`` rng is always supplied in training mode).

Variables are plain nested dicts ``{"params": ..., "batch_stats": ...}``
(``batch_stats`` only when the model has BatchNorm), and the eval-mode forward the SAP
code consumes is ``apply_fn(variables, x) -> logits``, made by :func:`eval_apply_fn`.

The options live in :class:`~sap_jax.train_config.TrainConfig`, the optimizer
(``torch.optim.SGD``: momentum, dampening 0, L2 weight decay added to the gradient, so
hyperparameters from the paper's PyTorch code carry over) in :mod:`sap_jax.optim`, the
state (:class:`TrainState`, also the machinery of the baselines' continued training:
:func:`state_from_variables`, :func:`train_forward`) in :mod:`sap_jax.train_state`, and
evaluation in :mod:`sap_jax.evaluation`; this module re-exports them. The jitted step
and the run's random streams live in :mod:`sap_jax.training_step`, the checks and
per-epoch batches of the training data in :mod:`sap_jax.training_data`; this module owns
the outer loop. Noise-robust options (MixUp, SAM, logit clipping, generalised label
smoothing, MentorMix) come from :mod:`sap_jax.robust`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
from tqdm.auto import tqdm

from sap_jax import augmentation, multihost
from sap_jax import init_from as pretrained_init
from sap_jax import sharding as shd
from sap_jax.data.array_feeder import labels_on_host
from sap_jax.data.feed_layout import checked_mesh
from sap_jax.data.feeder import Transform
from sap_jax.data.sources import ArraySource, first_input, is_source
from sap_jax.evaluation import evaluate, fit_fraction, predict_logits
from sap_jax.hashable import EvalApply
from sap_jax.optim import make_optimizer, make_schedule
from sap_jax.pretrained import PretrainedReport
from sap_jax.train_config import TrainConfig
from sap_jax.train_state import (
  TrainState,
  create_train_state,
  model_output_width,
  state_from_variables,
  train_forward,
  variables_of,
)
from sap_jax.training_data import (
  checked_training_data,
  checked_training_source,
  epoch_batches_of,
  first_sample,
  training_mesh,
)
from sap_jax.training_step import RunRngs, jitted_train_step, run_rngs, train_step
from sap_jax.types import ApplyFn, Variables

__all__ = [
  "JITTED",
  "RunRngs",
  "TrainConfig",
  "TrainResult",
  "TrainState",
  "create_train_state",
  "eval_apply_fn",
  "evaluate",
  "fit_fraction",
  "make_optimizer",
  "make_schedule",
  "model_output_width",
  "predict_logits",
  "run_rngs",
  "state_from_variables",
  "train_forward",
  "train_model",
  "train_step",
  "variables_of",
]


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
    pretrained: what ``init_from`` loaded (`sap_jax.pretrained.PretrainedReport`), or
      None when the run started from a fresh initialisation.
  """

  variables: Variables
  history: list[dict[str, float]]
  train_time_s: float
  pretrained: PretrainedReport | None = None


def eval_apply_fn(model: nn.Module) -> ApplyFn:
  """The eval-mode forward ``apply_fn(variables, x) -> logits`` of a model.

  Equivalent to ``functools.partial(model.apply, train=False)`` but equal
  (and equally hashed) for equal modules, so jitted consumers such as
  :func:`evaluate` compile once per model, not once per call.
  """
  return EvalApply(model)


JITTED = {"train.step": jitted_train_step}
"""The module's compiled programs (see `sap_jax.compile_cache`)."""


# --------------------------------------------------------------------------
# Outer loop.
# --------------------------------------------------------------------------


def train_model(
  model: nn.Module,
  x: Any,
  y: Any,
  config: TrainConfig,
  *,
  x_val: Any = None,
  y_val: Any = None,
  progress: bool = True,
  log_fn: Callable[[dict[str, float]], None] | None = None,
  mesh: jax.sharding.Mesh | None = None,
  transform: Transform | None = None,
  workers: int = 0,
  dataset: str | None = None,
  init_from: Any = None,
) -> TrainResult:
  """Trains ``model`` on ``(x, y)`` with SGD and the configured options.

  Deterministic for a given ``config.seed`` on one device: every random stream comes
  from :func:`run_rngs`.

  Args:
    model: a Linen module called as ``model.apply(v, x, train=bool)``.
    x: ``(N, ...)`` training inputs: a host array (batches are sent to the devices per
      step), a random-access source of labelled records (`sap_jax.data.sources`; then
      ``y`` is None and ``x_val`` a source or None: every epoch streams the source
      through `sap_jax.data.feeder.feed`, each process reading its own part of each
      batch, and nothing holds the whole data set), or a global array sharded over a mesh's data axis
      (`sap_jax.sharding.from_process_local`: each process holds only its part), which
      trains data-parallel over that mesh: each step's batch is gathered in place from
      the devices that hold its samples (`sap_jax.sharding.gather_rows`), the same
      batch, on the same devices, as from the host array.
    y: ``(N,)`` integer training labels (noisy): host, or sharded like ``x`` (labels are
      small: they are gathered to the host once).
    config: the training config.
    x_val: optional validation inputs (noisy labels, like the training set).
    y_val: optional validation labels.
    progress: show a tqdm bar over epochs with loss/accuracy (on a terminal only).
    log_fn: called with each epoch's history dict.
    transform: per-sample ``transform(image, rng) -> image`` applied to the training
      inputs (augmentation, `sap_jax.data.feeder.feed`): a function of the seed, the
      epoch and the sample's index only. Default: ``config.augment``'s
      (`sap_jax.augmentation.training_transform` for ``dataset``), none for "none".
      With a transform, host arrays are read as an `sap_jax.data.sources.ArraySource`
      (the same batches in the same order); global arrays are refused.
    workers: grain worker processes reading a source (0: in this process).
    dataset: the data set's name (``Dataset.name``, "cifar10", "folder", ...): picks
      the recipe of ``config.augment="auto"`` and the loader's standardisation (the
      standardised black of the CIFAR crop's padding).
    init_from: pretrained weights to start from instead of the random initialisation: a
      path or a tree (`sap_jax.init_from`; torchvision state dicts are converted). The
      ``head`` is re-initialised when its shape differs; any other mismatch is refused,
      naming the parameter and both shapes, before any training. The report is
      ``TrainResult.pretrained``.
    mesh: data-parallel training over a mesh with a data axis
      (`sap_jax.sharding.data_mesh`): each step's batch is sharded over the data axis
      (``config.batch_size`` a multiple of its devices), the state replicated; the
      compiled step's means (the loss, BatchNorm's batch statistics) are over the whole
      batch, so the gradients and BatchNorm are synchronised and the result equals one
      device's to float tolerance. Every process passes the same host ``(x, y)``, or
      its own part of a global ``x``. Default: the mesh of a global ``x``, else None.

  Returns:
    A :class:`TrainResult`.

  Raises:
    ValueError: bad data or options, before any work; with several processes
      (`jax.distributed`), also a model, config, data shapes or host data that differ
      between processes (`sap_jax.multihost.check_same_across_processes`), raised on
      every process.
  """
  mesh = None if mesh is None else checked_mesh(mesh)
  multihost.check_same_across_processes(
    {
      "model": model,
      "config": config,
      "x": x,
      "y": y,
      "x_val": x_val,
      "y_val": y_val,
      "mesh": None if mesh is None else (tuple(mesh.shape.items()), mesh.devices.tolist()),
    },
    "train_model",
  )
  if transform is None and config.augment != "none":
    shape = first_input(x, "training source").shape[1:] if is_source(x) else np.shape(x)[1:]
    transform = augmentation.training_transform(config.augment, dataset, shape)
  pretrained = None if init_from is None else pretrained_init.pretrained_arrays(init_from, model)
  if is_source(x):
    mesh = checked_mesh(mesh)
    shd.check_divides(config.batch_size, mesh, what="TrainConfig.batch_size")
    x, y, val = checked_training_source(model, x, y, x_val, y_val, config)
  else:
    if transform is not None and (shd.is_global(x) or shd.is_global(x_val)):
      raise ValueError(
        "augmentation (transform= or TrainConfig.augment) reads samples from the host: "
        "pass host arrays or a source, not arrays sharded over a mesh."
      )
    mesh = training_mesh(x, x_val, mesh)
    if mesh is not None:
      shd.check_divides(config.batch_size, mesh, what="TrainConfig.batch_size")
    y, y_val = labels_on_host(y), labels_on_host(y_val)  # the checks read every label
    x, y, val = checked_training_data(model, x, y, x_val, y_val, config)
    if transform is not None:  # augmented: read per sample through the feeder
      x, y = ArraySource(x, y), None
      mesh = checked_mesh(mesh)
  start_time = time.perf_counter()
  n_train = len(x)  # a source must keep it (checked every epoch)
  steps_per_epoch = n_train // config.batch_size
  rngs = run_rngs(config.seed)
  state = create_train_state(
    model, first_sample(x), config, rngs.init, steps_per_epoch=steps_per_epoch
  )
  report = None
  if pretrained is not None:
    state, report = _with_pretrained(state, pretrained)
  if mesh is not None:
    state = shd.replicate(state, mesh)
  schedule = make_schedule(config, steps_per_epoch)
  apply_eval = eval_apply_fn(model)

  history: list[dict[str, float]] = []
  best = _Best()
  # disable=None: no bar when stderr is not a terminal (a pipe or a log file gets no
  # carriage-return pile; pass log_fn for one line per epoch there).
  bar = tqdm(range(config.epochs), disable=None if progress else True, desc="train", unit="epoch")
  for epoch in bar:
    lr = float(schedule(int(state.step)))
    batches = epoch_batches_of(x, y, n_train, config, rngs, epoch, mesh, transform, workers)
    state, entry = _train_epoch(state, batches, n_train, config, rngs, epoch)
    entry = {"epoch": epoch + 1, **entry, "lr": lr}
    stop = False
    if val is not None and _validation_due(config, epoch):
      entry.update(_validate(apply_eval, variables_of(state), val, mesh))
      best = _track_best(best, entry["val_accuracy"], epoch + 1, state)
      stop = _patience_exhausted(best, epoch + 1, config.early_stopping_patience)
    history.append(entry)
    _check_finite_loss(entry)
    if log_fn is not None:
      log_fn(entry)
    bar.set_postfix(_progress_postfix(entry))
    if stop:
      break
  bar.close()

  variables = variables_of(state) if config.early_stopping_patience is None else best.variables
  variables = jax.block_until_ready(variables)
  return TrainResult(
    variables=variables,
    history=history,
    train_time_s=time.perf_counter() - start_time,
    pretrained=report,
  )


def _with_pretrained(state: TrainState, pretrained) -> tuple[TrainState, PretrainedReport]:
  """The state with its initial variables filled from pretrained arrays (the optimizer
  state restarted on them)."""
  variables, report = pretrained_init.initial_variables(variables_of(state), pretrained)
  params = variables["params"]
  state = state.replace(
    params=params,
    batch_stats=variables.get("batch_stats", state.batch_stats),
    opt_state=state.tx.init(params),
  )
  return state, report


def _train_epoch(
  state: TrainState, batches, num_samples: int, config: TrainConfig, rngs: RunRngs, epoch: int
) -> tuple[TrainState, dict[str, float]]:
  """One pass over an epoch's full batches; mean loss and training accuracy."""
  steps_per_epoch = num_samples // config.batch_size
  metrics = []
  for i, (xb, yb) in enumerate(batches):
    rng = jax.random.fold_in(rngs.steps, epoch * steps_per_epoch + i)
    state, m = train_step(state, xb, yb, rng, epoch, config=config)
    metrics.append(m)
  metrics = jax.device_get(metrics)
  return state, {
    "loss": float(np.mean([m["loss"] for m in metrics])),
    "train_accuracy": float(np.mean([m["accuracy"] for m in metrics])),
  }


def _validation_due(config: TrainConfig, epoch: int) -> bool:
  """Every ``eval_every`` epochs, and after the last one."""
  return (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs


def _validate(apply_fn: ApplyFn, variables: Variables, val, mesh) -> dict[str, float]:
  metrics = evaluate(apply_fn, variables, *val, mesh=mesh)
  return {"val_accuracy": metrics["accuracy"], "val_loss": metrics["loss"]}


class _Best(NamedTuple):
  """The best validation accuracy so far, its (1-based) epoch and variables."""

  accuracy: float = -1.0
  epoch: int = 0
  variables: Variables | None = None


def _track_best(best: _Best, accuracy: float, epoch: int, state: TrainState) -> _Best:
  """``best``, or this epoch if its accuracy is strictly higher."""
  if accuracy > best.accuracy:
    return _Best(accuracy, epoch, variables_of(state))
  return best


def _patience_exhausted(best: _Best, epoch: int, patience: int | None) -> bool:
  """Early stopping: ``patience`` epochs have passed without a new best."""
  return patience is not None and epoch - best.epoch >= patience


def _check_finite_loss(entry: dict[str, float]) -> None:
  if not np.isfinite(entry["loss"]):
    raise FloatingPointError(
      f"Training loss became {entry['loss']} in epoch {entry['epoch']}; lower the learning rate."
    )


def _progress_postfix(entry: dict[str, float]) -> dict[str, str]:
  postfix = {"loss": f"{entry['loss']:.4f}", "acc": f"{entry['train_accuracy']:.3f}"}
  if "val_accuracy" in entry:
    postfix["val"] = f"{entry['val_accuracy']:.3f}"
  return postfix
