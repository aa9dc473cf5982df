"""Training Flax NNX classifiers: the Linen training code, run on an NNX model.

`train_model(model, x, y, config)` trains a *copy* of an NNX model (`train_model_in_place`
writes the result into the model itself) with exactly the code
that trains Linen models (`sap_jax.train.train_model`): the same optax chain
(`sap_jax.optim.make_optimizer`: SGD as ``torch.optim.SGD``, the schedule, SAM), the same
jitted step (`sap_jax.train.train_step`: MixUp, label smoothing, logit clipping, SAM,
MentorMix), the same data order, validation, early stopping and history. The model is
handed to it as a `LinenView`: ``nnx.split`` into the ``{"params", "batch_stats"}`` pair
the Linen code trains (``params``: every `nnx.Param`; ``batch_stats``: every other
variable but the RNG streams, e.g. `nnx.BatchNorm`'s running statistics), and
``nnx.merge`` in every forward. Training starts from the model's current weights (an
NNX model is built initialised); Linen twins with the same weights and seed give the
same trained weights and history.

Randomness: as for Linen, every random stream of the run comes from ``config.seed``
(`sap_jax.train.run_rngs`). Dropout draws from the step's ``"dropout"`` key: in each
training forward the model's RNG streams (`nnx.RngStream`, e.g. an `nnx.Dropout`'s)
are reseeded from it, one ``fold_in`` per stream; the model's own RNG state is neither
read nor advanced, and the returned copy keeps it as it was.

Many devices: ``train_model(..., mesh=)`` trains data-parallel over a mesh's data axis
with the Linen code's ``mesh`` option (the batch sharded, the variables replicated,
gradients and BatchNorm statistics synchronised), equal to one device to float tolerance.

`sap_jax.optim.make_optimizer(config, steps_per_epoch)` is an optax transformation, so
a hand-written NNX loop uses the same chain with
``nnx.Optimizer(model, make_optimizer(config, steps), wrt=nnx.Param)`` (`optimizer`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sap_jax import train as linen_train
from sap_jax.nnx.functional import check_module, from_pure, pure_state, variables_of, with_variables
from sap_jax.optim import make_optimizer
from sap_jax.train_config import TrainConfig
from sap_jax.types import Variables

__all__ = [
  "LinenView",
  "NNXTrainResult",
  "linen_view",
  "optimizer",
  "train_model",
  "train_model_in_place",
]


class NNXTrainResult(NamedTuple):
  """What `train_model` returns.

  Attributes:
    model: the trained copy of the model (same structure and mode as the input), at
      the final epoch, or at the best-validation epoch with early stopping.
    history: one dict per epoch, as `sap_jax.train.TrainResult.history` (``epoch``,
      ``loss``, ``train_accuracy``, ``lr`` and, when evaluated, ``val_accuracy``,
      ``val_loss``).
    train_time_s: wall-clock seconds of the training loop.
    pretrained: what ``init_from`` loaded (`sap_jax.pretrained.PretrainedReport`), or
      None.
  """

  model: nnx.Module
  history: list[dict[str, float]]
  train_time_s: float
  pretrained: Any = None


def _is_key(leaf: Any) -> bool:
  return jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


@dataclasses.dataclass(frozen=True)
class LinenView:
  """An NNX model as the Linen module `sap_jax.train` trains (``init_with_output``,
  ``apply``), over the variables ``{"params": …, ["batch_stats": …]}``.

  Equal for models of equal structure (the weights it starts from, ``initial``, take no
  part in equality or hashing), so jitted steps compile once per structure, as for
  equal Linen modules.

  Attributes:
    train_def: graphdef of the train-mode (``.train()``) model.
    eval_def: graphdef of the eval-mode (``.eval()``) model.
    params_def: treedef of the `nnx.Param` state.
    rngs_def: treedef of the RNG-stream state.
    rng_leaves: per RNG-state leaf: ``(is_key, shape)``.
    rest_def: treedef of every other variable (the ``batch_stats`` entry).
    initial: the variables the training starts from.
  """

  train_def: Any
  eval_def: Any
  params_def: Any
  rngs_def: Any
  rng_leaves: tuple[tuple[bool, tuple[int, ...]], ...]
  rest_def: Any
  initial: Variables = dataclasses.field(compare=False, hash=False, repr=False)

  def _rng_state(self, key: jax.Array | None) -> nnx.State:
    """Fresh RNG-stream state: stream ``i``'s key ``fold_in(key, i)``, counts 0."""
    if key is None:
      key = jax.random.key(0)  # eval mode: no stream is drawn from
    leaves, i = [], 0
    for is_key, shape in self.rng_leaves:
      if is_key:
        k = jax.random.fold_in(key, i)
        leaves.append(jax.random.split(k, shape) if shape else k)
        i += 1
      else:
        leaves.append(jnp.zeros(shape, jnp.uint32))
    return jax.tree_util.tree_unflatten(self.rngs_def, leaves)

  def merge(self, variables: Variables, *, train: bool, key: jax.Array | None) -> nnx.Module:
    """The model (train or eval mode) holding ``variables``, its RNG streams from ``key``."""
    return nnx.merge(
      self.train_def if train else self.eval_def,
      from_pure(self.params_def, variables["params"]),
      self._rng_state(key),
      from_pure(self.rest_def, variables.get("batch_stats", {})),
    )

  def init_with_output(self, rngs: Any, x: Any, train: bool = False) -> tuple[Any, Variables]:
    """``(logits, initial)``: the model's own weights (``rngs`` are not used)."""
    del rngs
    return self.apply(self.initial, x, train=train), self.initial

  def apply(
    self,
    variables: Variables,
    x: Any,
    train: bool = False,
    mutable: Any = False,
    rngs: dict[str, jax.Array] | None = None,
  ) -> Any:
    """Linen's ``module.apply``: logits, and with ``mutable`` the updated
    ``{"batch_stats": …}`` (every non-Param, non-RNG variable after the forward)."""
    key = None if not train or not rngs else rngs.get("dropout")
    model = self.merge(variables, train=train, key=key)
    logits = model(x)
    if not mutable:
      return logits
    _, _, _, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    return logits, {"batch_stats": pure_state(rest)[0]}


_LINEN_WAY = "sap_jax.train.train_model(model, x, y, config)"


def linen_view(model: nnx.Module) -> LinenView:
  """The `LinenView` of an NNX model (not modified), starting from its weights."""
  check_module(model, _LINEN_WAY)
  graphdef, params, rngs, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
  copy = nnx.merge(graphdef, params, rngs, rest)  # the library's own object
  copy.train()
  train_def = nnx.graphdef(copy)
  copy.eval()
  eval_def = nnx.graphdef(copy)
  _, params_def = pure_state(params)
  _, rest_def = pure_state(rest)
  rng_leaves, rngs_def = jax.tree_util.tree_flatten(rngs)
  return LinenView(
    train_def=train_def,
    eval_def=eval_def,
    params_def=params_def,
    rngs_def=rngs_def,
    rng_leaves=tuple((_is_key(leaf), tuple(leaf.shape)) for leaf in rng_leaves),
    rest_def=rest_def,
    initial=variables_of(model),
  )


def train_model(
  model: nnx.Module,
  x: Any,
  y: Any,
  config: TrainConfig,
  *,
  x_val: Any = None,
  y_val: Any = None,
  progress: bool = True,
  log_fn: Callable[[dict[str, float]], None] | None = None,
  mesh: jax.sharding.Mesh | None = None,
  transform: Any = None,
  workers: int = 0,
  dataset: str | None = None,
  init_from: Any = None,
) -> NNXTrainResult:
  """Trains a copy of the NNX ``model`` on ``(x, y)``: `sap_jax.train.train_model`'s
  loop, step and optimizer, from the model's current weights.

  Deterministic for a given ``config.seed``; the user's model is not modified.

  Args:
    model: an ``nnx.Module`` called as ``model(x)`` → ``(N, K)`` logits; its
      ``.train()``/``.eval()`` modes are used for training/validation.
    x: ``(N, ...)`` training inputs, as `sap_jax.train.train_model` takes them: a host
      array, a labelled source (`sap_jax.data.sources`; ``y`` None, streamed with
      ``transform`` and ``workers`` as there), or a global array sharded over a mesh's
      data axis (then trained data-parallel over that mesh).
    y: ``(N,)`` integer (noisy) labels (host, or sharded like ``x``).
    config: the training config (every option of `sap_jax.train_config.TrainConfig`).
    x_val: optional validation inputs.
    y_val: optional validation labels.
    progress: a tqdm bar over epochs (on a terminal only).
    log_fn: called with each epoch's history dict.
    mesh: data-parallel training over a mesh with a data axis
      (`sap_jax.sharding.data_mesh`), as `sap_jax.train.train_model`'s ``mesh``: each
      step's batch sharded over the data axis (``config.batch_size`` a multiple of its
      devices), the variables replicated, the gradients and BatchNorm statistics
      synchronised (the step's means run over the whole batch), so the result equals
      one device's to float tolerance. The trained model holds replicated arrays.
      Every process passes the same host ``(x, y)`` (as for the Linen function).
    dataset: the data set's name, for ``config.augment`` (as the Linen function).
    init_from: pretrained weights in the Linen twin's names (as the Linen function: a
      path or a tree; the NNX zoo mirrors the Linen paths), replacing the model's
      current weights before training.

  Returns:
    An `NNXTrainResult` (``.model``, ``.history``, ``.train_time_s``).

  Raises:
    TypeError: ``model`` is not an ``nnx.Module``.
    ValueError: bad data or options (as `sap_jax.train.train_model`), before any work.
  """
  view = linen_view(model)
  result = linen_train.train_model(
    view,
    x,
    y,
    config,
    x_val=x_val,
    y_val=y_val,
    progress=progress,
    log_fn=log_fn,
    mesh=mesh,
    transform=transform,
    workers=workers,
    dataset=dataset,
    init_from=init_from,
  )
  trained = with_variables(model, result.variables)
  return NNXTrainResult(
    model=trained,
    history=result.history,
    train_time_s=result.train_time_s,
    pretrained=result.pretrained,
  )


def train_model_in_place(
  model: nnx.Module, x: Any, y: Any, config: TrainConfig, **kwargs: Any
) -> NNXTrainResult:
  """`train_model`, then the trained arrays written into ``model`` itself
  (``nnx.update``; its RNG streams are left as they were). Options as `train_model`.

  Returns:
    The `NNXTrainResult`, its ``model`` the (now trained) ``model``.
  """
  result = train_model(model, x, y, config, **kwargs)
  nnx.update(model, nnx.state(result.model))
  return result._replace(model=model)


def optimizer(model: nnx.Module, config: TrainConfig, steps_per_epoch: int) -> nnx.Optimizer:
  """``nnx.Optimizer`` over ``model``'s `nnx.Param`\\ s with the training chain of
  ``config`` (`sap_jax.optim.make_optimizer`), for a hand-written NNX loop.

  With ``config.sam_rho > 0`` its ``update`` needs ``grad_fn=`` (see `sap_jax.robust.sam`).
  """
  check_module(model, _LINEN_WAY)
  return nnx.Optimizer(model, make_optimizer(config, steps_per_epoch), wrt=nnx.Param)
